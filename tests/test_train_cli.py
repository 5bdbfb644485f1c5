"""``cafusion train`` end to end, in subprocesses: a run, bad input, SIGKILL + resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cafusion.training import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("CAFUSION_DEBUG", None)
TINY = ["--widths", "4,8", "--no-progress"]


def cafusion(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cafusion", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def spawn(*args: str | Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cafusion", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def write_images(root: Path, classes: int = 2, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((8, 8, 3)) * 40 + 80 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / (f"{i}.png" if i % 2 else f"{i}.jpg"))
    return root


def write_signals(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(1)
    y = np.arange(n) % 2
    x = rng.standard_normal((n, 2, 12)).astype(np.float32) + y[:, None, None]
    np.savez(path, x=x, y=y)
    return path


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cafusion"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_help_says_the_batch_size_is_global(capsys: pytest.CaptureFixture[str]) -> None:
    from cafusion.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "GLOBAL batch size: under torchrun each of N processes takes batch-size/N" in text
    assert "--resume [PATH]" in text


def test_image_folder_run_writes_the_run_folder(tmp_path: Path) -> None:
    data, out = write_images(tmp_path / "imgs"), tmp_path / "run"
    result = cafusion("train", "--data", data, "--out", out, "--epochs", "2", "--batch-size", "4", *TINY)
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "val_acc" in result.stdout
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["train_samples"] == 8 for h in history)  # 10 images, 2 held out, batches of 4
    diag = json.loads((out / "diagnostics" / "epoch-0002.json").read_text())
    assert [b["samples"] for b in diag["blocks"]] == [8, 8]  # one caft block per stage saw each sample once
    assert (out / "metrics.csv").read_text().startswith("epoch,train_loss")
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 2 and ckpt.config["attention"] == "caft"
    assert ckpt.state["optimizer"]["state"]  # the optimizer state travels with the weights


def _error_case(tmp_path: Path, case: str) -> tuple[list[str | Path], str]:
    imgs = tmp_path / "imgs"
    if case == "missing path":
        return ["--data", tmp_path / "nope"], "does not exist"
    if case == "malformed npz":
        (tmp_path / "bad.npz").write_bytes(b"garbage")
        return ["--data", tmp_path / "bad.npz"], "cannot read"
    if case == "single class":
        write_images(imgs, classes=1)
        return ["--data", imgs], "at least 2 class sub-folders"
    if case == "unreadable image":
        write_images(imgs)
        (imgs / "c1" / "corrupt.png").write_bytes(b"\x89PNG not really")
        return ["--data", imgs], "corrupt.png"
    if case == "mismatched x/y":
        np.savez(tmp_path / "d.npz", x=np.zeros((6, 1, 4), np.float32), y=np.array([0, 1, 0, 1]))
        return ["--data", tmp_path / "d.npz"], "x has 6 samples but y has 4 labels"
    data = write_signals(tmp_path / "sig.npz")
    if case == "bad lr":
        return ["--data", data, "--lr", "-1"], "--lr must be a finite number > 0"
    if case == "bad epochs":
        return ["--data", data, "--epochs", "zero"], "--epochs: invalid int value"
    if case == "bad attention option":
        return ["--data", data, "--attn-opt", "reduction=0"], "reduction must be a positive int"
    assert case == "unknown attention"
    return ["--data", data, "--attention", "nope"], "unknown attention 'nope'"


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "malformed npz",
        "single class",
        "unreadable image",
        "mismatched x/y",
        "bad lr",
        "bad epochs",
        "bad attention option",
        "unknown attention",
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path: Path, case: str) -> None:
    args, message = _error_case(tmp_path, case)
    epochs = [] if "--epochs" in args else ["--epochs", "1"]
    result = cafusion("train", *args, "--out", tmp_path / "run", *epochs, "--batch-size", "4", *TINY)
    assert message in one_error_line(result)
    assert not (tmp_path / "run" / "latest.json").exists()


def test_checkpoint_from_another_model_is_refused(tmp_path: Path) -> None:
    data, out = write_signals(tmp_path / "sig.npz"), tmp_path / "run"
    base = ["train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "4", *TINY]
    assert cafusion(*base).returncode == 0
    line = one_error_line(cafusion(*base, "--attention", "se", "--epochs", "2", "--resume"))
    assert "from another model" in line and "'se'" in line
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros((24, 3, 12), np.float32), y=np.arange(24) % 2)  # 3 input channels, not 2
    line = one_error_line(cafusion(*base[:2], other, *base[3:], "--epochs", "2", "--resume", out))
    assert "from another model" in line and "in_channels" in line
    line = one_error_line(cafusion(*base))  # a fresh run never overwrites a run folder with a checkpoint
    assert "already holds a checkpoint; continue it with --resume" in line
    assert load_checkpoint(out).epoch == 1  # the refused runs did not touch it


def _wait_for_checkpoint(proc: subprocess.Popen[str], run: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "latest.json").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


def _stop(run: Path, args: list[str | Path], sig: signal.Signals) -> int:
    """Start a run, send ``sig`` once its first checkpoint exists; return the checkpoint's epoch."""
    proc = spawn("train", *args, "--out", run)
    _wait_for_checkpoint(proc, run)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # Ctrl-C: one clean line that says where the checkpoint is, and exit status 130
        assert proc.returncode == 130, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], stderr
    assert not list((run / "checkpoints").glob("*.tmp"))
    return load_checkpoint(run).epoch  # the last checkpoint is complete and loadable


def test_killed_or_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    data, epochs = write_signals(tmp_path / "sig.npz", n=32), 30
    common: list[str | Path] = ["--data", data, "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.01"]
    common += ["--seed", "7", *TINY]
    straight = tmp_path / "straight"
    assert cafusion("train", *common, "--out", straight).returncode == 0
    expected = load_checkpoint(straight).weights
    expected_history = json.loads((straight / "metrics.json").read_text())

    for sig in (signal.SIGKILL, signal.SIGINT):
        run = tmp_path / sig.name
        stopped_at = _stop(run, common, sig)
        assert 1 <= stopped_at < epochs, "the run finished before it was stopped; make it longer"
        resumed = cafusion("train", *common, "--out", run, "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert f"after epoch {stopped_at}" in resumed.stdout
        weights = load_checkpoint(run).weights
        assert weights.keys() == expected.keys()
        for key, value in expected.items():  # bit-exact: same order, optimizer state and RNG states
            assert torch.equal(weights[key], value), (sig.name, key)
        history = json.loads((run / "metrics.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(history) == strip(expected_history)
