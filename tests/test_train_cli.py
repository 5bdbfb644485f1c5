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


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action. Tests started in the background by a shell without job
    control (``make test &``, nohup) inherit SIGINT as ignored, which the child would inherit too
    (Python then installs no KeyboardInterrupt handler), and the interrupt test would see a run that
    never noticed the signal. A user's background run keeps ignoring it, as Unix intends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(*args: str | Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "cafusion", *map(str, args)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_default_sigint
    )


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
        return ["--data", tmp_path / "bad.npz"], "not a zip archive of .npy arrays"
    if case == "object npz":
        np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4) % 2)
        return ["--data", tmp_path / "obj.npz"], "object array (pickled Python objects, never loaded)"
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
    if case == "unknown attention option":
        return ["--data", data, "--attn-opt", "nosuchopt=1"], (
            "--attn-opt nosuchopt: not an option of --attention 'caft'; it takes act, act_layer, bias, eps, fusion,"
        )
    if case == "out is a file":
        return ["--data", data, "--out", data], "--out"
    if case == "out cannot be created":
        return ["--data", data, "--out", "/proc/forbidden/run"], "--out '/proc/forbidden/run': cannot write"
    if case == "missing checkpoint":
        return ["--data", data, "--resume", tmp_path / "nowhere.safetensors"], "nowhere.safetensors' is missing"
    if case == "empty state":
        first = ["train", "--data", data, "--out", tmp_path / "first", "--epochs", "1", "--batch-size", "4", *TINY]
        assert cafusion(*first).returncode == 0
        (tmp_path / "first" / "checkpoints" / "epoch-0001.state.pt").write_bytes(b"")
        return ["--data", data, "--resume", tmp_path / "first", "--epochs", "2"], (
            "state.pt' is corrupt or truncated (0 bytes); no earlier checkpoint is kept in that folder"
        )
    if case == "truncated state":
        first = ["train", "--data", data, "--out", tmp_path / "first", "--epochs", "1", "--batch-size", "4", *TINY]
        assert cafusion(*first).returncode == 0
        state = tmp_path / "first" / "checkpoints" / "epoch-0001.state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        return ["--data", data, "--resume", tmp_path / "first", "--epochs", "2"], (
            "state.pt' is corrupt or truncated (not a complete torch file)"
        )
    assert case == "unknown attention"
    return ["--data", data, "--attention", "nope"], "unknown attention 'nope'"


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "malformed npz",
        "object npz",
        "single class",
        "unreadable image",
        "mismatched x/y",
        "bad lr",
        "bad epochs",
        "bad attention option",
        "unknown attention option",
        "unknown attention",
        "out is a file",
        "out cannot be created",
        "missing checkpoint",
        "empty state",
        "truncated state",
    ],
)
def test_bad_input_gives_one_line_and_exit_status_2(tmp_path: Path, case: str) -> None:
    """Every unusable argument (a value, a data file, a checkpoint, the run folder) exits 2 (docs/usage.md)."""
    args, message = _error_case(tmp_path, case)
    epochs = [] if "--epochs" in args else ["--epochs", "1"]
    result = cafusion("train", "--out", tmp_path / "run", *args, *epochs, "--batch-size", "4", *TINY)
    line = one_error_line(result)
    assert message in line
    assert result.returncode == 2, line
    assert "allow_pickle" not in line and ".tmp" not in line
    assert not (tmp_path / "run" / "latest.json").exists()


def test_a_write_failing_mid_run_names_the_run_folder_and_exits_1(tmp_path: Path) -> None:
    """A failure while running (here: the disk is full when a checkpoint is written) is exit 1, one line
    naming --out and the file, never a temporary name."""
    data, run = write_signals(tmp_path / "sig.npz"), tmp_path / "run"
    script = (
        "import errno, sys\n"
        "from cafusion.training import run_checkpoint as checkpoint\n"
        "real = checkpoint.atomic_write\n"
        "def full(path, write):\n"
        "    if path.suffix == '.safetensors':\n"
        "        def failing(f):\n"
        "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "        return real(path, failing)\n"
        "    return real(path, write)\n"
        "checkpoint.atomic_write = full\n"
        "from cafusion.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", script, "train", "--data", str(data), "--out", str(run), "--epochs", "1"]
    result = subprocess.run([*cmd, "--batch-size", "4", *TINY], capture_output=True, text=True, env=ENV, timeout=120)
    line = one_error_line(result)
    assert result.returncode == 1
    assert f"cannot write to the run folder --out {str(run)!r}: No space left on device" in line
    assert "epoch-0001.safetensors" in line and ".tmp" not in line
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_log_output_has_no_progress_bars_and_readable_epoch_times(tmp_path: Path) -> None:
    """stderr is a pipe (a log): no tqdm carriage returns even without --no-progress; short epochs in ms."""
    data = write_signals(tmp_path / "sig.npz")
    cmd = ["train", "--data", data, "--out", tmp_path / "run", "--epochs", "2", "--batch-size", "4", "--widths", "4,8"]
    result = cafusion(*cmd)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert all(line.endswith(" ms)") or line.endswith(" s)") for line in epoch_lines)
    assert "(0.0s)" not in result.stdout


def test_inspect_shows_an_image_folders_class_names(tmp_path: Path) -> None:
    data, out = write_images(tmp_path / "imgs"), tmp_path / "run"
    assert cafusion("train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "4", *TINY).returncode == 0
    result = cafusion("inspect", out, "--data", data)
    assert result.returncode == 0, result.stderr
    assert "mean w_avg per class: c0: " in result.stdout and ", c1: " in result.stdout
    (out / "checkpoints" / "epoch-0001.state.pt").unlink()  # inspecting needs no optimizer state
    again = cafusion("inspect", out / "checkpoints" / "epoch-0001.safetensors")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[2:] == result.stdout.splitlines()[2 : len(again.stdout.splitlines())]


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
    assert proc.returncode != 0, "the run finished before the signal reached it; make it longer"
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
