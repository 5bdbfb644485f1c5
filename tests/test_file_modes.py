"""Files cafusion writes get the mode a plain ``open()`` would give (0o666 less the umask), atomically."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cafusion import ChannelAttentionFusionT
from cafusion.integrations.weights import save_weights
from cafusion.models.checkpoint import save_model
from cafusion.models.small_cnn import SmallCNN


@pytest.fixture(params=[0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_weights_and_model_checkpoints_follow_the_umask(tmp_path: Path, umask: int) -> None:
    block = ChannelAttentionFusionT(8)
    save_weights(block, tmp_path / "w.safetensors")
    save_weights(block, tmp_path / "w.pt")
    save_model(SmallCNN(1, 10), tmp_path / "demo" / "model.safetensors")
    (tmp_path / "plain.txt").write_text("x")  # what open() gives, the reference
    modes = _modes(tmp_path)
    assert set(modes) == {"w.safetensors", "w.pt", "demo/model.safetensors", "demo/model.json", "plain.txt"}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_train_run_folder_is_readable_by_the_group_under_umask_022(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sig.npz", x=rng.standard_normal((16, 2, 12)).astype(np.float32), y=np.arange(16) % 2)
    script = "import os, sys; os.umask(0o022); from cafusion.cli.main import main; sys.exit(main(sys.argv[1:]))"
    args = ["train", "--data", tmp_path / "sig.npz", "--out", tmp_path / "run", "--epochs", "1"]
    cmd = [sys.executable, "-c", script, *map(str, [*args, "--batch-size", "4", "--widths", "4,8", "--no-progress"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    modes = _modes(tmp_path / "run")
    assert any(name.endswith(".state.pt") for name in modes) and "metrics.json" in modes
    assert set(modes.values()) == {0o644}, modes
