"""``cafusion train --precision bf16`` on the CPU trains under autocast and takes the fused operator.

Under mixed precision the block used to fall back to the composite; now the operator runs with x in its
own dtype and the small path in float32. A subprocess runs a real training command with a counter on
the op (``cafusion.kernels.op.caft_forward``) that records whether autocast was on at each call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = """
import json, sys, torch
from cafusion.kernels import op
from cafusion.cli.main import main
calls = {"autocast": 0, "plain": 0}
real = op.caft_forward
def counted(*args):
    calls["autocast" if torch.is_autocast_enabled("cpu") else "plain"] += 1
    return real(*args)
op.caft_forward = counted
code = main(sys.argv[1:])
print(json.dumps({"code": code, **calls}))
"""


def test_cpu_bf16_training_runs_the_operator_under_autocast(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(32) % 2
    x = rng.standard_normal((32, 2, 16)).astype(np.float32) + y[:, None, None]
    np.savez(tmp_path / "s.npz", x=x, y=y)
    args = ["train", "--data", str(tmp_path / "s.npz"), "--epochs", "1", "--batch-size", "8", "--widths", "4,8"]
    args += ["--attention", "caft", "--precision", "bf16", "--out", str(tmp_path / "run"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["autocast"] > 0, result  # the fused op ran inside the autocast region
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001.safetensors").is_file()


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((4, 2, 8), np.float32), y=np.arange(4) % 2)
    proc = subprocess.run(
        [sys.executable, "-m", "cafusion", "train", "--data", str(tmp_path / "s.npz"), "--precision", "fp16"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "--precision fp16" in proc.stderr and "Traceback" not in proc.stderr
