"""The statistics of the compare report, built from hand-made result files: Holm, effect sizes, the CD diagram."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("scipy")

from cafusion.compare import report


def _run(dataset: str, variant: str, seed: int, acc: float, model: str = "fcn") -> dict[str, Any]:
    """A finished run's record as compare writes it (plan.write_result), with only what the report reads."""
    settings = {
        "source": f"file:{dataset}",
        "model": model,
        "variant": variant,
        "attention": variant,
        "attention_kwargs": {},
        "seed": seed,
        "epochs": 4,
    }
    return {
        "dataset": dataset,
        "data": f"{dataset} (hand-made)",
        "published_split": False,
        "settings": settings,
        "test_acc": acc,
        "test_loss": 1 - acc,
        "best_epoch": 4,
        "batch_size": 8,
        "params": 100,
        "seconds_per_epoch": 0.5,
        "budget_acc": {"2": acc - 0.01, "4": acc},
    }


def _write(out: Path, runs: list[dict[str, Any]]) -> Path:
    folder = out / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    for r in runs:
        s = r["settings"]
        (folder / f"{r['dataset']}__{s['model']}__{s['variant']}__seed{s['seed']}.json").write_text(json.dumps(r))
    return out


def _entry(name: str, **versus: float | None) -> dict[str, Any]:
    return {"variant": name, "versus": {b: {"p": p} for b, p in versus.items()}}


def test_holm_family_is_the_distinct_pairs_of_one_table() -> None:
    # p = 0.01, 0.04, 0.03 for three pairs -> Holm: 3 * 0.01 = 0.03, max(2 * 0.03, 0.03) = 0.06, max(0.04, 0.06)
    variants = [
        _entry("none", se=0.04),  # the same pair as se vs none: counted once
        _entry("se", none=0.04),
        _entry("cbam", none=0.03),
        _entry("caft", none=0.01, se=None),  # undefined: not in the family, stays None
    ]
    assert report._holm_family(variants) == 3
    holm = {(v["variant"], b): c["p_holm"] for v in variants for b, c in v["versus"].items()}
    assert holm == pytest.approx(
        {
            ("none", "se"): 0.06,
            ("se", "none"): 0.06,
            ("cbam", "none"): 0.06,
            ("caft", "none"): 0.03,
            ("caft", "se"): None,
        }
    )


def test_report_holds_holm_and_effect_sizes_computed_by_hand(tmp_path: Path) -> None:
    from scipy import stats as sp

    base = [0.50, 0.60, 0.70]
    runs = [_run("SetA", "none", s, a) for s, a in enumerate(base)]
    runs += [_run("SetA", "se", s, a + d) for s, (a, d) in enumerate(zip(base, (0.01, 0.01, 0.02), strict=True))]
    runs += [_run("SetA", "caft", s, a + d) for s, (a, d) in enumerate(zip(base, (0.01, 0.02, 0.03), strict=True))]
    rep = report.build_report(_write(tmp_path, runs), baselines=("none",))
    (table,) = rep["tables"]
    assert table["holm_family"] == 2
    se, caft = (next(v for v in table["variants"] if v["variant"] == n)["versus"]["none"] for n in ("se", "caft"))
    # paired t-test, df 2, two-sided p = 1 - t / sqrt(t^2 + 2). se: d = 1, 1, 2 points, t = 4.
    # caft: d = 1, 2, 3 points, mean 2, sd 1, t = 2 sqrt 3.
    p_se, p_caft = 1 - 4 / math.sqrt(18), 1 - 2 * math.sqrt(3) / math.sqrt(14)
    assert se["p"] == pytest.approx(p_se) and caft["p"] == pytest.approx(p_caft)
    assert se["p_holm"] == pytest.approx(2 * p_se) and caft["p_holm"] == pytest.approx(max(2 * p_se, p_caft))
    half = sp.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # caft: sd 0.01 over 3 seeds
    assert caft["mean_diff"] == pytest.approx(0.02) and caft["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert caft["d_z"] == pytest.approx(2.0)
    assert "not corrected" not in json.dumps(rep["notes"]) and "distinct pair" in rep["notes"]["holm"]
    md = report.render_markdown(rep, [])
    assert (
        f"+2.00 [{100 * (0.02 - half):+.1f}, {100 * (0.02 + half):+.1f}], d_z 2.00 (p=0.0742, Holm 0.114; 3/0/0)" in md
    )
    assert "Holm family: the 2 tests of this table." in md
    assert "Holm's correction per (data set, model) table" in md


def _four_sets(out: Path) -> Path:
    """FOUR of test_compare_stats (ranks 1.25, 1.75, 3), each set's accuracy the same over two seeds."""
    four = {
        "s1": {"a": 0.90, "b": 0.80, "c": 0.70},
        "s2": {"a": 0.85, "b": 0.80, "c": 0.75},
        "s3": {"a": 0.95, "b": 0.90, "c": 0.60},
        "s4": {"a": 0.90, "b": 0.92, "c": 0.50},
    }
    return _write(out, [_run(d, v, s, acc) for d, row in four.items() for v, acc in row.items() for s in (0, 1)])


def test_cd_diagram_over_four_sets(tmp_path: Path) -> None:
    pytest.importorskip("aeon")
    pytest.importorskip("matplotlib")
    out = _four_sets(tmp_path)
    rep = report.build_report(out, baselines=("a",))
    rank = rep["ranking"]["fcn"]
    assert rank["mean_rank"] == pytest.approx({"a": 1.25, "b": 1.75, "c": 3.0})
    assert rank["cd"]["cliques"] == [["a", "b", "c"]] and "cd_diagram" not in rep["notes"]
    written = report.write_report(out, rep)
    assert out / "cd_fcn.png" in written
    assert (out / "cd_fcn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "cliques of variants not shown to differ: {a, b, c}" in md and "![cd_fcn.png](cd_fcn.png)" in md
    assert "| a | b | 0.125 | 0.188 |" in md
    assert md.count("cd_fcn.png") == 2  # in the ranking section only, not again under Figures
    saved = json.loads((out / "report.json").read_text())["ranking"]["fcn"]["cd"]
    assert saved["pairs"][0] == {"better": "a", "worse": "b", "p": 0.125, "p_holm": 0.1875}
    # aeon's own pairwise p-values (rank order, one-sided) are the ones the report holds
    from cafusion.compare.plots import write_cd

    _, p_values = write_cd(tmp_path / "again.png", rank)
    assert [float(p_values[i, j]) for i, j in ((0, 1), (0, 2), (1, 2))] == pytest.approx(
        [p["p"] for p in saved["pairs"]]
    )


def test_fewer_than_three_sets_say_so(tmp_path: Path) -> None:
    runs = [_run(d, v, s, acc) for d in ("s1", "s2") for v, acc in (("a", 0.9), ("b", 0.8), ("c", 0.7)) for s in (0, 1)]
    rep = report.build_report(_write(tmp_path, runs), baselines=("a",))
    assert rep["ranking"]["fcn"]["cd"] is None
    md = report.render_markdown(rep, [])
    assert "No critical-difference diagram: a critical-difference diagram needs at least 3 data sets" in md
    assert "here 2 and 3" in md


def test_without_aeon_the_report_is_built_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aeon" else real(name, *a))
    out = _four_sets(tmp_path)
    rep = report.build_report(out, baselines=("a",))
    assert rep["notes"]["cd_diagram"] == report.NO_AEON_NOTE
    assert rep["ranking"]["fcn"]["cd"]["cliques"] == [["a", "b", "c"]]  # the numbers need scipy only
    written = report.write_report(out, rep)
    assert not (out / "cd_fcn.png").exists() and out / "cd_fcn.png" not in written
    assert (
        "aeon is not installed (the timeseries extra): no critical-difference diagram is drawn"
        in (out / "report.md").read_text()
    )
