"""The statistics behind cafusion compare, checked against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("scipy")

from cafusion.compare import stats


def test_describe_mean_std_and_t_interval() -> None:
    d = stats.describe([0.9, 0.8, 1.0])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.9) and d["std"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2)
    assert d["ci95"] == pytest.approx([0.9 - half, 0.9 + half])
    assert stats.describe([0.5])["ci95"] is None


def test_paired_t_test_for_few_seeds() -> None:
    variant = {0: 0.91, 1: 0.93, 2: 0.90}
    base = {0: 0.90, 1: 0.90, 2: 0.90, 7: 0.5}  # seed 7 has no partner and is left out
    p = stats.paired(variant, base)
    assert p is not None and p["seeds"] == [0, 1, 2] and p["test"] == "paired t-test"
    assert p["mean_diff"] == pytest.approx(0.04 / 3)
    # by hand: d = (0.01, 0.03, 0.00), mean 0.01333, sd 0.01528, t = 1.5119, df 2 -> p = 0.2697
    assert p["p"] == pytest.approx(0.2697, abs=1e-3)
    assert (p["win"], p["tie"], p["loss"]) == (2, 1, 0)


def test_wilcoxon_from_six_seeds() -> None:
    base = dict.fromkeys(range(6), 0.5)
    variant = {s: 0.5 + 0.01 * (s + 1) for s in range(6)}
    p = stats.paired(variant, base)
    assert p is not None and p["test"] == "Wilcoxon signed-rank"
    assert p["p"] == pytest.approx(2 / 2**6)  # all six positive: the exact two-sided minimum
    assert p["win"] == 6


def test_identical_results_and_too_few_pairs() -> None:
    same = {0: 0.8, 1: 0.9}
    p = stats.paired(same, dict(same))
    assert p is not None and p["p"] == 1.0 and p["tie"] == 2
    assert stats.paired({0: 0.8}, {0: 0.7}) is None


def test_identical_nonzero_differences_leave_the_t_test_undefined() -> None:
    # every seed loses one test series of 370 (JapaneseVowels): d = -1/370 three times, sd 0, so
    # t = mean / (0 / sqrt 3) is infinite and scipy would say p = 0; the test is undefined instead
    base = {0: 367 / 370, 1: 366 / 370, 2: 368 / 370}
    variant = {s: a - 1 / 370 for s, a in base.items()}
    p = stats.paired(variant, base)
    assert p is not None and p["test"] == "paired t-test"
    assert p["p"] is None and p["p_undefined"] == stats.UNDEFINED_EQUAL
    assert p["mean_diff"] == pytest.approx(-1 / 370) and p["ci95"] == pytest.approx([-1 / 370, -1 / 370])
    assert (p["win"], p["tie"], p["loss"]) == (0, 0, 3)
    assert json.loads(json.dumps(p))["p"] is None  # report.json: null, not NaN
    # exactly equal floats too
    q = stats.paired({0: 0.5, 1: 0.75}, {0: 0.25, 1: 0.5})
    assert q is not None and q["p"] is None and q["mean_diff"] == 0.25


def test_nearly_equal_differences_still_get_a_t_test() -> None:
    # d = (0.01, 0.01, 0.02): mean 0.01333, sd 0.005774, t = 0.01333 / (0.005774 / sqrt 3) = 4.0, df 2;
    # for df 2 the two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - 4 / sqrt 18 = 0.05719
    p = stats.paired({0: 0.51, 1: 0.61, 2: 0.72}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert p is not None and "p_undefined" not in p
    assert p["p"] == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-6)


def test_identical_differences_with_wilcoxon_stay_defined() -> None:
    # Wilcoxon uses signs and ranks only: six equal positive differences give the exact minimum 2 / 2^6
    base = dict.fromkeys(range(6), 0.5)
    p = stats.paired({s: 0.52 for s in range(6)}, base)
    assert p is not None and p["test"] == "Wilcoxon signed-rank"
    assert p["p"] == pytest.approx(2 / 2**6) and "p_undefined" not in p


def test_report_prints_an_undefined_p_as_such() -> None:
    from cafusion.compare import report

    entry = {"versus": {"none": stats.paired({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.91, 1: 0.81, 2: 0.71})}}
    assert report._versus(entry, "none") == "-1.00 (p=n/a (identical differences); 0/0/3)"
    defined = {"versus": {"none": stats.paired({0: 0.51, 1: 0.61, 2: 0.72}, {0: 0.5, 1: 0.6, 2: 0.7})}}
    assert report._versus(defined, "none") == "+1.33 (p=0.0572; 3/0/0)"
    tables = {"tables": [{"variants": [entry, defined]}]}
    assert report._any_undefined(tables) and not report._any_undefined({"tables": [{"variants": [defined]}]})


def test_ranks_friedman_and_nemenyi() -> None:
    table = {"a": {"x": 0.9, "y": 0.8, "z": 0.7}, "b": {"x": 0.9, "y": 0.9, "z": 0.6}, "c": {"x": 1.0, "y": 0.5}}
    r = stats.ranks(table)
    assert r is not None
    assert r["mean_rank"] == pytest.approx({"x": (1 + 1.5 + 1) / 3, "y": (2 + 1.5 + 2) / 3})  # z is not everywhere
    assert r["friedman_p"] is None  # two variants: no Friedman test
    assert r["nemenyi_cd"] == pytest.approx(1.960 * math.sqrt(2 * 3 / (6 * 3)))
    assert stats.ranks({"a": {"x": 1.0, "y": 0.5}}) is None


def test_holm_by_hand() -> None:
    # p = [0.01, 0.04, None, 0.03], m = 3 (None excluded). Sorted: 0.01*3=0.03, 0.03*2=0.06,
    # 0.04*1=0.04 -> running max 0.06. Back in input order: [0.03, 0.06, None, 0.06].
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]  # 0.6*2 clipped at 1
    with pytest.raises(ValueError, match="pvalues"):
        stats.holm([1.5])


def test_effect_dz_by_hand() -> None:
    # diffs 0.01, 0.02, 0.03: mean 0.02, sd 0.01, d_z = 2; half = t(0.975, 2) * 0.01 / sqrt(3).
    e = stats.effect_dz([0.01, 0.02, 0.03])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert e["mean"] == pytest.approx(0.02) and e["d_z"] == pytest.approx(2.0)
    assert e["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert stats.effect_dz([0.1, 0.1])["d_z"] is None
    with pytest.raises(ValueError, match="diffs"):
        stats.effect_dz([0.1])
