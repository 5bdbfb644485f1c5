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
from tests.gloo_pair import spawn_pair

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


def _torchrun(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cafusion"]
    cmd += ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    cmd += ["--widths", "4,8", "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def test_default_options_with_batch_norm_finish_cleanly(tmp_path: Path) -> None:
    """Default --norm batch on the CPU: running statistics are averaged every epoch (--dist-bn reduce), so
    both replicas end equal and the run ends with exit 0, no traceback, no abort at exit; with
    --dist-bn none they differ in the buffers only: one warning line, still exit 0, checkpoints kept."""
    rng = np.random.default_rng(0)
    y = np.arange(32) % 2
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((32, 2, 6, 6)).astype(np.float32) + y[:, None, None, None], y=y)

    result = _torchrun(tmp_path / "reduce", tmp_path / "d.npz")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output and "terminate called" not in output and "error" not in result.stderr
    ranks = json.loads((tmp_path / "reduce" / "ranks.json").read_text())
    assert ranks["state_sha256"][0] == ranks["state_sha256"][1]
    weights = load_checkpoint(tmp_path / "reduce").weights
    assert any(key.endswith("running_var") for key in weights)  # batch norm was really there

    result = _torchrun(tmp_path / "none", tmp_path / "d.npz", "--dist-bn", "none")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("cafusion: warning:")]
    assert len(warnings) == 1 and "different buffers" in warnings[0] and "running_" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    ranks = json.loads((tmp_path / "none" / "ranks.json").read_text())
    assert ranks["state_sha256"][0] != ranks["state_sha256"][1]
    assert load_checkpoint(tmp_path / "none").epoch == 2


def _bn_worker(rank: int, store: str, mode: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from cafusion.training.distributed import DistContext, distribute_bn

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(rank + 1.0)  # rank 0: 1, rank 1: 2
    bn.running_var.fill_(2.0 * (rank + 1))  # rank 0: 2, rank 1: 4
    distribute_bn(DistContext(rank, 2, rank, torch.device("cpu")), nn.Sequential(bn), mode)
    torch.save({"mean": bn.running_mean.clone(), "var": bn.running_var.clone()}, f"{out}-{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize(("mode", "mean", "var"), [("reduce", 1.5, 3.0), ("broadcast", 1.0, 2.0), ("none", None, None)])
def test_distribute_bn(tmp_path: Path, mode: str, mean: float | None, var: float | None) -> None:
    spawn_pair(_bn_worker, tmp_path, mode, str(tmp_path / "bn"))
    got = [torch.load(tmp_path / f"bn-{r}.pt") for r in range(2)]
    for rank, stats in enumerate(got):
        expected_mean = rank + 1.0 if mean is None else mean
        expected_var = 2.0 * (rank + 1) if var is None else var
        assert torch.equal(stats["mean"], torch.full((3,), expected_mean)), (mode, rank)
        assert torch.equal(stats["var"], torch.full((3,), expected_var)), (mode, rank)


def _differ_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from cafusion.training.config import TrainConfig
    from cafusion.training.distributed import DistContext
    from cafusion.training.trainer import ReplicasDiffer, _Run

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    if rank == 1:
        with torch.no_grad():
            model[0].weight[0, 0] += 1.0  # a rank that trained on something else
    run = _Run(TrainConfig(data="unused", out=out), DistContext(rank, 2, rank, torch.device("cpu")), print)
    try:
        run._check_ranks_agree(model)
        outcome = "agreed"
    except ReplicasDiffer as exc:
        outcome = str(exc)
    with open(f"{out}/outcome-{rank}.txt", "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


def test_replicas_with_different_parameters_fail_on_every_rank_in_one_line(tmp_path: Path) -> None:
    """The check after training: rank 1's weights differ, so every rank raises ReplicasDiffer (the CLI turns it
    into one error line and exit 1) and rank 0 has written both digests to ranks.json."""
    (tmp_path / "run").mkdir()
    spawn_pair(_differ_worker, tmp_path, str(tmp_path / "run"))
    for rank in range(2):
        message = (tmp_path / "run" / f"outcome-{rank}.txt").read_text()
        assert message.startswith("the 2 processes ended with different parameters (0.weight"), message
        assert "\n" not in message and "hold rank 0's copy" in message
    digests = json.loads((tmp_path / "run" / "ranks.json").read_text())["state_sha256"]
    assert len(digests) == 2 and digests[0] != digests[1]
