"""The ``cafusion`` command run as a user runs it: a subprocess, its output, its files, its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cafusion.cli.main import main
from cafusion.models import SmallCNN
from cafusion.models.checkpoint import save_model, sidecar_path
from cafusion.training.demo import VARIANTS
from tests.test_diagnostics_export import assert_png

# The smallest demo that still exercises everything: 1 seed, 1 epoch, 300 training digits.
TINY_DEMO = ["demo", "--quick", "--epochs", "1", "--train-limit", "300"]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cafusion", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CAFUSION_DEBUG", None)
    return env


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=timeout, env=_env(), check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cafusion") and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0]


def test_help_lists_every_command() -> None:
    from cafusion.cli.main import COMMANDS

    result = cli("--help")
    assert result.returncode == 0
    blurb = " ".join(result.stdout.split())
    for module in COMMANDS:
        command = module.rsplit(".", 1)[1].replace("_", "-")
        assert f" {command}" in blurb.split("positional arguments")[0], command  # in the description


BAD_OPTION = ["train", "--epochs", "zero"]
HELP_WITHOUT_TORCH = """
import sys
from cafusion.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.parametrize(
    "argv",
    [[], *([c] for c in ("demo", "train", "bench", "inspect", "compare", "export", "build-native")), BAD_OPTION],
    ids=lambda a: " ".join(a) or "top",
)
def test_help_and_argument_errors_come_before_torch_is_imported(argv: list[str]) -> None:
    """--help and a bad option are instant: the command line is parsed before torch loads."""
    args = argv if "--epochs" in argv else [*argv, "--help"]
    cmd = [sys.executable, "-c", HELP_WITHOUT_TORCH, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def _without_timing(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "timing"}


def test_demo_end_to_end_is_deterministic_and_writes_a_valid_report(tmp_path: Path) -> None:
    # Two runs with the same seed, side by side. stderr is a pipe here, as in a log: no progress bars
    # (no carriage returns), one plain line per trained model instead, unless --no-progress.
    runs = {
        name: subprocess.Popen(
            _command(*TINY_DEMO, "--out", str(tmp_path / name), *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for name, extra in (("a", []), ("b", ["--no-progress"]))
    }
    outputs = {name: p.communicate(timeout=240) for name, p in runs.items()}
    for name, p in runs.items():
        assert p.returncode == 0, outputs[name][1]
    stdout, stderr = outputs["a"]
    assert "Traceback" not in stderr and "\r" not in stderr and "\r" not in stdout
    assert "caft_softmax_T  seed 0: test acc" in stdout
    assert "seed 0:" not in outputs["b"][0] + outputs["b"][1]

    # the comparison table: one row per variant with accuracy mean ± std, params and time per epoch
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "test acc (1 seed)" in lines[header] and "params" in lines[header] and "s/epoch" in lines[header]
    rows = lines[header + 2 : header + 2 + len(VARIANTS)]
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    for row, variant in zip(rows, report["variants"], strict=True):
        assert row.split()[0] == variant["name"]
        assert f"{variant['params']:,}" in row
        assert f"{100 * variant['accuracy_mean']:.2f}%" in row and "±" not in row  # one seed: no spread
    assert [v["name"] for v in report["variants"]] == [v[0] for v in VARIANTS]
    assert all(0.0 <= v["accuracy_mean"] <= 1.0 for v in report["variants"])
    kernels = report["timing"]["native_kernels"]  # loaded (or compiled) before the first timed epoch
    assert kernels["in_epoch_times"] is False
    assert (kernels["load_seconds"] is None) == (os.environ.get("CAFUSION_NATIVE") == "0")

    # the fusion diagnostics of the learned-T softmax block, and the three answers
    assert "fusion diagnostics of caft_softmax_T on the test split" in stdout
    for s in report["diagnostics"]["caft_softmax_T"]["test"]["summary"]:
        assert s["samples"] == 360 and sum(s["hist"]) == 360
        assert f"{s['T']:.4f}" in stdout
    for topic in ("router", "gate", "temperature"):
        assert any(line.startswith(f"- {topic} ") for line in lines)

    # same seed, same numbers (wall-clock times aside)
    report_b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert _without_timing(report) == _without_timing(report_b)

    # the report folder: markdown that embeds valid PNGs, and an inspectable checkpoint
    md = (tmp_path / "a" / "report.md").read_text()
    pngs = sorted(tmp_path.joinpath("a").glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        assert f"]({png.name})" in md
        assert_png(png)
    checkpoint = tmp_path / "a" / "caft_softmax_T.safetensors"
    inspected = cli("inspect", str(checkpoint), "--data", "digits")
    assert inspected.returncode == 0, inspected.stderr
    out = inspected.stdout
    assert "stages.0.3" in out and "stages.1.3" in out and "(learned)" in out
    assert "diagnostics on digits test split (360 samples" in out
    for s in report["diagnostics"]["caft_softmax_T"]["test"]["summary"]:
        assert f"{s['w_avg_mean']:.3f}" in out and f"{s['T']:.4f}" in out


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(args)`` in this process: the same code path as the command, without a second startup."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inspect_prints_config_temperature_and_router_bias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = SmallCNN(1, 3, attention_kwargs={"learnable_temperature": True, "temperature": 1.5}, widths=(4, 8))
    router = model.stages[1][3].fusion_router
    router[2].bias.data = router[2].bias.data.new_tensor([0.25, -0.5])
    path = save_model(model, tmp_path / "m.safetensors")
    code, out, err = run_in_process(capsys, "inspect", str(path))
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("stages.1.3"))
    assert row.split()[1:6] == ["8", "4", "softmax", "sigmoid", "relu"]
    assert "1.5000 (learned)" in row and "(+0.2500, -0.5000)" in row and "+0.7500" in row


def _npz(path: Path, channels: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(6, channels, 5, 5)).astype("float32"), y=np.arange(6) % 3)
    return path


def test_inspect_runs_diagnostics_on_a_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_model(SmallCNN(2, 3, widths=(4,)), tmp_path / "m.safetensors")
    code, out, err = run_in_process(capsys, "inspect", str(path), "--data", str(_npz(tmp_path / "d.npz", channels=2)))
    assert code == 0, err
    assert "diagnostics on" in out and "(6 samples" in out
    assert "mean w_avg per class: 0:" in out


def test_inspect_runs_a_time_series_checkpoint_on_ucr_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("aeon")
    from cafusion.models.timeseries import FCN

    path = save_model(FCN(1, 2, "caft"), tmp_path / "fcn.safetensors")  # records no "dims": it takes (N, C, L)
    code, out, err = run_in_process(capsys, "inspect", str(path), "--data", "ucr:ItalyPowerDemand")
    assert code == 0, err
    assert "diagnostics on ucr:ItalyPowerDemand (67 samples" in out


def test_inspect_names_a_collapsed_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = SmallCNN(2, 3, widths=(4, 8))
    router = model.stages[1][3].fusion_router
    router[2].weight.data.zero_()
    router[2].bias.data = router[2].bias.data.new_tensor([8.0, -8.0])  # every sample: all weight on avg
    path = save_model(model, tmp_path / "m.safetensors")
    code, out, err = run_in_process(capsys, "inspect", str(path), "--data", str(_npz(tmp_path / "d.npz", channels=2)))
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "COLLAPSED" in line]  # the mixed first block is not named
    assert line.startswith("stages.1.3: router COLLAPSED onto avg (w_avg > 0.99 for 100.0% of samples)")


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, str]:
    """A missing, a corrupt and another architecture's checkpoint, plus a good one."""
    good = save_model(SmallCNN(1, 3, widths=(4,)), tmp_path / "good.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    sidecar_path(corrupt).write_text(sidecar_path(good).read_text())
    other = save_model(SmallCNN(1, 3, widths=(8,)), tmp_path / "other.safetensors")
    sidecar_path(other).write_text(sidecar_path(good).read_text())  # weights of another architecture
    return {
        "missing": str(tmp_path / "missing.safetensors"),
        "corrupt": str(corrupt),
        "other": str(other),
        "good": str(good),
        "file": str(sidecar_path(good)),
        "npz3": str(_npz(tmp_path / "d.npz", channels=3)),
        "tmp": str(tmp_path),
    }


# One case per kind runs as a real subprocess; the rest call main() in-process (same handler, faster).
# Every one is an argument the command cannot use, found before any work: exit status 2 (docs/usage.md).
BAD_INPUT = [
    (["demo", "--seeds", "0"], ["--seeds", "positive integer"], True),
    (["demo", "--quick", "--out", "{file}/sub"], ["--out", "cannot write to the output folder"], True),
    (["inspect", "{corrupt}"], ["not a readable safetensors"], True),
    (["inspect", "{npz3}"], ["d.npz' is not a cafusion checkpoint", ".json sidecar of the same name"], True),
    (["demo", "--epochs", "many"], ["--epochs", "'many'"], False),
    (["demo", "--colour"], ["unrecognized arguments: --colour"], False),
    (["frobnicate"], ["invalid choice"], False),
    (["inspect", "{missing}"], ["does not exist"], False),
    (["inspect", "{tmp}"], ["not a run folder", "a cafusion checkpoint is a .safetensors file"], False),
    (["inspect", "{other}"], ["does not fit SmallCNN", "channels=8"], False),
    (["inspect", "{good}", "--data", "{npz3}"], ["expects 1 channel"], False),
    (["inspect", "{good}", "--batch-size", "-3"], ["--batch-size"], False),
]


@pytest.mark.parametrize(("args", "needles", "subprocess_run"), BAD_INPUT)
def test_bad_input_is_one_clear_line_and_exit_status_2(
    args: list[str],
    needles: list[str],
    subprocess_run: bool,
    checkpoints: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [a.format(**checkpoints) for a in args]
    if subprocess_run:
        result = cli(*argv)
    else:
        code, out, err = run_in_process(capsys, *argv)
        result = subprocess.CompletedProcess(argv, code, out, err)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2, result.stderr


def test_help_texts_are_plain_text() -> None:
    """Descriptions come from docstrings: no reST markup may reach --help."""
    for command in ("demo", "bench", "inspect", "train", "build-native"):
        result = cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "``" not in result.stdout and ":func:" not in result.stdout, command
    assert "normalisation layers; default: batch" in " ".join(cli("train", "--help").stdout.split())


# The benchmark's own flags that make it tiny: the block table only, one small shape, dtype and layout, one round.
TINY_BENCH = ["--block", "--shapes", "1x8x4x4", "--dtypes", "fp32", "--layouts", "contiguous", "--repeats", "1"]
TINY_BENCH += ["--no-memory", "--no-compile"]


def test_bench_forwards_to_the_block_benchmark(tmp_path: Path) -> None:
    result = cli("bench", "--help")
    assert result.returncode == 0 and "--quick" in result.stdout and "--out" in result.stdout
    result = cli("bench", "--quick", "--out", str(tmp_path), *TINY_BENCH, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "1x8x4x4" in result.stdout and "ours" in result.stdout  # the benchmark's table
    written = json.loads((tmp_path / "block.json").read_text())  # written where --out said
    assert [c["shape"] for c in written["rows"]] == [[1, 8, 4, 4]]


def test_a_failing_kernel_build_is_announced_then_one_short_warning_at_the_users_call(tmp_path: Path) -> None:
    """First use compiles the CPU kernels: one stderr line says so before; a failing compiler gives one
    warning with the compiler's first error line, attributed to the user's own line, and the model runs."""
    compiler = tmp_path / "cc"
    compiler.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "g++ (GCC) 12.2.0"; exit 0; }\n'
        "echo 'caft_cpu.cpp:1:1: error: no such intrinsic (test compiler)' >&2\nexit 1\n"
    )
    compiler.chmod(0o755)
    script = tmp_path / "user.py"
    script.write_text(
        "import torch\nfrom cafusion import ChannelAttentionFusionT\n"
        "block = ChannelAttentionFusionT(16)\n"
        "out = block(torch.randn(2, 16, 8, 8))\n"
        "print('ok', tuple(out[0].shape if isinstance(out, tuple) else out.shape))\n"
    )
    env = {**_env(), "CXX": str(compiler), "CAFUSION_NATIVE_DIR": str(tmp_path / "cache")}
    env.pop("CAFUSION_NATIVE", None)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ok (2, 16, 8, 8)" in result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("cafusion: compiling the C++ CPU kernels") and "CAFUSION_NATIVE=0" in lines[0]
    warning = next(line for line in lines if "RuntimeWarning" in line)
    assert warning.startswith(f"{script}:4: RuntimeWarning: cafusion: the C++ CPU kernels could not be built")
    assert "error: no such intrinsic (test compiler)" in warning and "ninja" not in warning
    assert len(warning) < 400 and "Traceback" not in result.stderr
