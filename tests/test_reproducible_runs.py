"""Same seed, same result, the first run included: two processes, the first compiling the kernels.

With the kernel cache emptied, the first ``cafusion train`` compiles the C++ kernels and the second
imports them; both must write bit-identical weights and optimizer state. The first process also
checks that compiling does not change the build's name (torch's ``load`` appends to the flag lists
it is given), which would send the next process into a second compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cafusion.integrations.weights import read_safetensors
from cafusion.training import load_checkpoint

TRAIN = """
import json, sys
from cafusion.kernels.backends import native
before = native.build_name()
from cafusion.cli.main import main
code = main(sys.argv[1:])
lib = native.library()
print(json.dumps({"code": code, "same_name": before == native.build_name(), "native": lib is not None,
                  "built": (native.build_dir() / (native.build_name() + ".so")).is_file()}))
"""


def _train(data: Path, out: Path, cache: Path) -> tuple[dict[str, object], str]:
    env = {**os.environ, "CAFUSION_NATIVE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    for name in ("CAFUSION_NATIVE", "CAFUSION_POOL_GATHERS", "CAFUSION_DEBUG"):
        env.pop(name, None)
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    cmd = [sys.executable, "-c", TRAIN, *args, "--widths", "8,16", "--seed", "3", "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_two_seeded_runs_from_an_empty_kernel_cache_write_identical_checkpoints(tmp_path: Path) -> None:
    if os.environ.get("CAFUSION_NATIVE") == "0":
        pytest.fail("this test checks the native kernels; run it without CAFUSION_NATIVE=0")
    rng = np.random.default_rng(0)
    y = np.arange(48) % 3
    x = rng.standard_normal((48, 2, 40)).astype(np.float32) + y[:, None, None]
    np.savez(tmp_path / "sig.npz", x=x, y=y)
    cache = tmp_path / "kernels"
    first, first_err = _train(tmp_path / "sig.npz", tmp_path / "a", cache)
    second, second_err = _train(tmp_path / "sig.npz", tmp_path / "b", cache)
    assert "compiling the C++ CPU kernels" in first_err and "compiling" not in second_err
    for info in (first, second):
        assert info == {"code": 0, "same_name": True, "native": True, "built": True}
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    wa = read_safetensors(a.path)
    assert wa.keys() == read_safetensors(b.path).keys()
    assert a.path.read_bytes() == b.path.read_bytes()  # the weights, bit for bit
    for key, tensor in a.state["optimizer"]["state"].items():
        for name, value in tensor.items():
            other = b.state["optimizer"]["state"][key][name]
            assert torch.equal(value, other), (key, name)
    losses = [[h["train_loss"] for h in ck.state["history"]] for ck in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
