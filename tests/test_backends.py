"""Every backend of the operator against the reference composite, through one harness (backend_harness.py).

pytorch, native and the dispatched op run in-process for every configuration x rank x layout x dtype;
Triton runs in a subprocess under TRITON_INTERPRET=1. In CI the native kernels must be built (make
test builds them first): a missing build fails there instead of skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import backend_harness as h
from tests.sweep import full_sweep


@pytest.mark.parametrize("backend", ["pytorch", "native", "op"])
@pytest.mark.parametrize(("rank", "layout", "dtype"), list(h.iter_groups()), ids=lambda v: str(v).replace("torch.", ""))
def test_backend_matches_composite(backend: str, rank: int, layout: str, dtype: torch.dtype) -> None:
    if backend == "native" and not os.environ.get("CI"):
        from cafusion.kernels.backends import native

        if native.library() is None:
            pytest.skip("native kernels not buildable here (required in CI)")
    selected = h.cases(rank, layout, dtype)
    assert len(selected) == 64
    failures = h.check(backend, selected)
    assert not failures, "\n".join(failures[:10]) + f"\n... {len(failures)} mismatches"


@pytest.mark.parametrize("backend", ["pytorch", "native", "op"])
@pytest.mark.parametrize(
    ("rank", "layout", "dtype", "padding"), list(h.iter_padded_groups()), ids=lambda v: str(v).replace("torch.", "")
)
def test_padded_batches_match_composite(backend: str, rank: int, layout: str, dtype: torch.dtype, padding: str) -> None:
    """Masked statistics (lengths or a general mask) in every backend, against the masked composite."""
    if backend == "native" and not os.environ.get("CI"):
        from cafusion.kernels.backends import native

        if native.library() is None:
            pytest.skip("native kernels not buildable here (required in CI)")
    failures = h.check(backend, h.cases(rank, layout, dtype, padding))
    assert not failures, "\n".join(failures[:10]) + f"\n... {len(failures)} mismatches"


def test_triton_backend_matches_composite_under_interpreter() -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), str(root), env.get("PYTHONPATH")) if p)
    script = Path(h.__file__)
    mode = [] if full_sweep() else ["quick"]  # the whole sweep: make test-triton-full
    proc = subprocess.run(
        [sys.executable, str(script), "triton", *mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "checked" in proc.stdout and ": 0 mismatches" in proc.stdout
