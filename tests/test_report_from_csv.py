"""A report folder pruned to report.md, report.json and runs.csv rebuilds its report: runs.csv holds
every run's compact row, and ``--report-only`` reads it when runs/ is gone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cafusion.cli.main import main
from cafusion.compare import plan

pytest.importorskip("aeon", reason="ucr: data needs the timeseries extra (aeon); the dev environment has it")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir())
TINY = ["--data", "ucr:UnitTest", "--model", "fcn", "--attention", "none,caft", "--seeds", "2", "--epochs", "2"]
TINY += ["--threads", "1", "--no-figures", "--no-progress"]
OUTPUTS = ("report.json", "report.md", "runs.csv")


def _report_only(out: Path, *extra: str) -> None:
    assert main(["compare", "--report-only", "--no-figures", "--out", str(out), *extra]) == 0


def test_report_from_runs_csv_equals_the_report_from_runs(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    from_json = list(plan.iter_results(out))
    shutil.rmtree(out / "runs")
    assert list(plan.iter_results(out)) == from_json  # every field of every row, read back from runs.csv
    _report_only(out)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before  # byte-identical
    caft = json.loads(before["report.json"])["tables"][0]["variants"][1]
    assert caft["variant"] == "caft" and len(caft["router"]) == 3  # the router summaries came through the csv
    assert all(len(b["w_avg_per_epoch"]) == 2 for b in from_json[0]["router"].values())  # the figure's trace


def test_figures_are_drawn_from_runs_csv(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "c"
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    shutil.rmtree(out / "runs")
    assert main(["compare", "--report-only", "--out", str(out)]) == 0
    assert (out / "UnitTest__fcn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![UnitTest__fcn.png](UnitTest__fcn.png)" in (out / "report.md").read_text()


def test_a_runs_csv_without_the_report_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs.csv").write_text("dataset,model,variant,seed,test_acc\nA,fcn,none,0,0.5\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) test_loss, .* rebuild it from the runs/\*\.json"):
        list(plan.iter_results(tmp_path))


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_each_kept_study_rebuilds_its_committed_report(study: Path, tmp_path: Path) -> None:
    """Only runs.csv is copied: it is all the report needs. report.md and runs.csv come out
    byte-identical, report.json field-identical (its "out" names the folder it was built in)."""
    assert not (study / "runs").exists()
    shutil.copy(study / "runs.csv", tmp_path / "runs.csv")
    committed = json.loads((study / "report.json").read_text())
    _report_only(tmp_path, "--baselines", ",".join(committed["baselines"]))
    assert (tmp_path / "report.md").read_bytes() == (study / "report.md").read_bytes()
    assert (tmp_path / "runs.csv").read_bytes() == (study / "runs.csv").read_bytes()
    rebuilt = json.loads((tmp_path / "report.json").read_text())
    assert rebuilt.pop("out") == str(tmp_path) and committed.pop("out") == f"docs/results/{study.name}"
    assert rebuilt == committed
