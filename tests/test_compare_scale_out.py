"""cafusion compare beyond one process: --devices (one run per device) and a submitit job array
(--executor local: submitit's LocalExecutor, the Slurm executor's code path on this machine)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cafusion.cli.main import main

pytest.importorskip("aeon")

TINY = ["--data", "ucr:UnitTest", "--model", "fcn", "--attention", "none,caft", "--seeds", "1", "--epochs", "2"]
TINY += ["--threads", "1", "--no-figures", "--no-progress"]


def _runs(out: Path) -> dict[str, Any]:
    """The stored results without what differs between identical runs (timings)."""
    keep = ("test_acc", "test_loss", "best_epoch", "settings", "budget_acc")
    return {p.name: {k: json.loads(p.read_text())[k] for k in keep} for p in sorted((out / "runs").glob("*.json"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("one")
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    return _runs(out)


def test_devices_run_one_run_per_device_with_the_same_results(
    tmp_path: Path, one_process: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *TINY, "--devices", "cpu,cpu", "--out", str(tmp_path)]) == 0
    assert "one per device on cpu,cpu" in capsys.readouterr().out
    assert _runs(tmp_path) == one_process


def test_a_local_submitit_array_runs_resumes_and_merges(
    tmp_path: Path, one_process: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    assert main(["compare", *TINY, "--executor", "local", "--time", "10", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "submitted 2 runs as local job array" in out and "report:" in out
    assert _runs(tmp_path) == one_process  # each task wrote its result as a local worker would
    assert main(["compare", *TINY, "--executor", "local", "--out", str(tmp_path)]) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out  # resume: nothing submitted again


def test_no_wait_returns_and_report_only_merges_later(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("submitit")
    argv = ["compare", *TINY, "--attention", "none", "--executor", "local", "--no-wait", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "--report-only" in capsys.readouterr().out and not (tmp_path / "report.json").exists()
    deadline = time.monotonic() + 240
    while not list((tmp_path / "runs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(1)
    assert main(["compare", "--report-only", "--no-figures", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["runs"] == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--devices", "gpu0"], "--devices must be comma-separated cpu, cuda or cuda:N"),
        (["--devices", "cuda:7"], "--devices cuda:7: this machine has"),
        (["--devices", "cpu", "--jobs", "2"], "it replaces --jobs"),
        (["--executor", "local", "--jobs", "2"], "--jobs and --devices do not apply"),
        (["--partition", "gpu"], "--partition applies to --executor slurm or local only"),
        (["--executor", "slurm", "--time", "0"], "--time must be a positive int"),
    ],
)
def test_bad_scale_out_options_are_one_line(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", *TINY, *extra, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
