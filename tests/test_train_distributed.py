"""``cafusion train`` under torchrun: 2 CPU processes (gloo) against 1 process, same global batch and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cafusion.training import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ARGS = ["--epochs", "2", "--batch-size", "8", "--seed", "3", "--norm", "group", "--widths", "4,8", "--no-progress"]
ARGS += ["--attn-opt", "learnable_temperature=true", "--attn-opt", "reduction=2", "--val-fraction", "0.25"]


def run_training(out: Path, data: Path, nproc: int) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "cafusion"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += ["-m", "cafusion"]
    cmd = [*launcher, "train", "--data", str(data), "--out", str(out), *ARGS]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_two_processes_match_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(36) % 3
    x = rng.standard_normal((36, 2, 6, 6)).astype(np.float32) + y[:, None, None, None]
    np.savez(tmp_path / "d.npz", x=x, y=y)

    two = run_training(tmp_path / "two", tmp_path / "d.npz", nproc=2)
    run_training(tmp_path / "one", tmp_path / "d.npz", nproc=1)

    assert "2 process(es)" in two.stdout and two.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    ranks = json.loads((tmp_path / "two" / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and len(ranks["state_sha256"]) == 2
    assert ranks["state_sha256"][0] == ranks["state_sha256"][1]  # both ranks end with the same parameters

    one_w, two_w = load_checkpoint(tmp_path / "one").weights, load_checkpoint(tmp_path / "two").weights
    assert one_w.keys() == two_w.keys()
    for key in one_w:  # equal to one process up to float summation order
        torch.testing.assert_close(two_w[key], one_w[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any("t_raw" in key for key in one_w)

    for epoch in (1, 2):
        name = f"diagnostics/epoch-{epoch:04d}.json"
        one_d = json.loads((tmp_path / "one" / name).read_text())["blocks"]
        two_d = json.loads((tmp_path / "two" / name).read_text())["blocks"]
        assert [b["block"] for b in one_d] == [b["block"] for b in two_d] and len(one_d) == 2
        for a, b in zip(one_d, two_d, strict=True):
            assert a["samples"] == b["samples"] == 24  # 27 training samples -> 3 full global batches of 8
            assert a["hist"] == b["hist"]  # the monitor's totals are reduced over the ranks
            assert a["class_w_avg"].keys() == b["class_w_avg"].keys()
            for field in ("w_avg_mean", "w_avg_std", "prefer_max", "gate_low", "gate_high", "T"):
                assert b[field] == pytest.approx(a[field], rel=1e-5, abs=1e-6), field

    one_m = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two_m = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for a, b in zip(one_m, two_m, strict=True):
        assert a["train_samples"] == b["train_samples"] == 24
        for field in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert b[field] == pytest.approx(a[field], rel=1e-5, abs=1e-6), field
