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
    assert report._versus(entry, "none") == "-1.00 [-1.0, -1.0], d_z n/a (p=n/a (identical differences); 0/0/3)"
    versus = stats.paired({0: 0.51, 1: 0.61, 2: 0.72}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert versus is not None
    defined = {"versus": {"none": versus}}
    # d = (1, 1, 2) points: mean 1.333, sd 0.5774, half = t(0.975, 2) * 0.5774 / sqrt 3 = 1.434; d_z = 2.309
    assert report._versus(defined, "none") == "+1.33 [-0.1, +2.8], d_z 2.31 (p=0.0572; 3/0/0)"
    versus["p_holm"] = 0.1144
    assert report._versus(defined, "none") == "+1.33 [-0.1, +2.8], d_z 2.31 (p=0.0572, Holm 0.114; 3/0/0)"
    tables = {"tables": [{"variants": [entry, defined]}]}
    assert report._any_undefined(tables) and not report._any_undefined({"tables": [{"variants": [defined]}]})


def test_paired_carries_the_effect_size_computed_by_hand() -> None:
    from scipy import stats as sp

    # d = (0.01, 0.01, 0.02): mean 0.04 / 3, sd sqrt(((-1/3)^2 * 2 + (2/3)^2) / 2) * 0.01 = 0.01 / sqrt 3
    p = stats.paired({0: 0.51, 1: 0.61, 2: 0.72}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert p is not None
    mean, sd = 0.04 / 3, 0.01 / math.sqrt(3)
    half = sp.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert p["mean_diff"] == pytest.approx(mean) and p["ci95"] == pytest.approx([mean - half, mean + half])
    assert p["d_z"] == pytest.approx(mean / sd) and p["d_z"] == pytest.approx(4 / math.sqrt(3))
    flat = stats.paired({0: 0.5, 1: 0.75}, {0: 0.25, 1: 0.5})
    assert flat is not None and flat["d_z"] is None  # no spread: d_z would be infinite


def test_ranks_and_friedman_without_a_cd_below_three_variants() -> None:
    table = {"a": {"x": 0.9, "y": 0.8, "z": 0.7}, "b": {"x": 0.9, "y": 0.9, "z": 0.6}, "c": {"x": 1.0, "y": 0.5}}
    r = stats.ranks(table)
    assert r is not None
    assert r["mean_rank"] == pytest.approx({"x": (1 + 1.5 + 1) / 3, "y": (2 + 1.5 + 2) / 3})  # z is not everywhere
    assert r["friedman_p"] is None  # two variants: no Friedman test
    assert (
        r["cd"] is None
        and "at least 3 data sets and 3 variants" in r["cd_skipped"]
        and "here 3 and 2" in r["cd_skipped"]
    )
    two = stats.ranks({"a": {"x": 0.9, "y": 0.8, "z": 0.7}, "b": {"x": 0.9, "y": 0.9, "z": 0.6}})
    assert two is not None and two["cd"] is None and "here 2 and 3" in two["cd_skipped"]
    assert stats.ranks({"a": {"x": 1.0, "y": 0.5}}) is None


# 4 data sets x 3 variants. Ranks per set (1 = best): a b c = 1 2 3, 1 2 3, 1 2 3, 2 1 3 -> mean 1.25, 1.75, 3.
FOUR = {
    "s1": {"a": 0.90, "b": 0.80, "c": 0.70},
    "s2": {"a": 0.85, "b": 0.80, "c": 0.75},
    "s3": {"a": 0.95, "b": 0.90, "c": 0.60},
    "s4": {"a": 0.90, "b": 0.92, "c": 0.50},
}


def test_critical_difference_of_four_sets_by_hand() -> None:
    r = stats.ranks(FOUR)
    assert r is not None and r["mean_rank"] == pytest.approx({"a": 1.25, "b": 1.75, "c": 3.0})
    # Friedman: rank sums 5, 7, 12; chi2 = 12 / (n k (k + 1)) * sum R^2 - 3 n (k + 1) = 218 / 4 - 48 = 6.5,
    # 2 degrees of freedom: p = exp(-6.5 / 2)
    assert r["friedman_p"] == pytest.approx(math.exp(-3.25))
    cd = r["cd"]
    assert cd["order"] == ["a", "b", "c"] and cd["alpha"] == 0.05
    # one-sided exact Wilcoxon over 4 sets (16 sign patterns). a - b = .10, .05, .05, -.02: ranks 4, 2.5, 2.5, 1;
    # W+ = 9, reached or passed by 2 patterns -> 2/16. a - c and b - c: all four positive -> 1/16.
    pairs = {(p["better"], p["worse"]): (p["p"], p["p_holm"]) for p in cd["pairs"]}
    assert pairs == {
        ("a", "b"): pytest.approx((0.125, 0.1875)),
        ("a", "c"): pytest.approx((0.0625, 0.1875)),  # Holm over 3: 3 * 0.0625, then max(2 * 0.0625, 0.1875)
        ("b", "c"): pytest.approx((0.0625, 0.1875)),
    }
    # Friedman p < 0.05, so pairs decide: none reaches alpha / (k - 1) = 0.025, so one clique holds all three
    assert cd["cliques"] == [["a", "b", "c"]]


def test_critical_difference_separates_a_variant_that_always_loses() -> None:
    # 6 sets: c is last everywhere (a - c and b - c: 6 positive differences, p = 1/64 < 0.025); a beats b on
    # 5 sets and loses the smallest difference, W+ = 20 of 21: p = 2/64 = 0.031 > 0.025 -> clique {a, b}
    b = [0.91, 0.88, 0.87, 0.86, 0.85, 0.84]
    table = {f"s{i}": {"a": 0.90, "b": b[i], "c": 0.5} for i in range(6)}
    r = stats.ranks(table)
    assert r is not None and r["mean_rank"] == pytest.approx({"a": 7 / 6, "b": 11 / 6, "c": 3.0})
    assert r["friedman_p"] == pytest.approx(math.exp(-(494 / 6 - 72) / 2))
    pairs = {(p["better"], p["worse"]): p["p"] for p in r["cd"]["pairs"]}
    assert pairs == pytest.approx({("a", "b"): 2 / 64, ("a", "c"): 1 / 64, ("b", "c"): 1 / 64})
    assert r["cd"]["cliques"] == [["a", "b"]]
    # Friedman not significant (two sets tie every variant): one clique of all, whatever the pairs say
    tied = {f"s{i}": {"a": 0.5, "b": 0.5, "c": 0.5} for i in range(3)}
    t = stats.ranks(tied)
    assert t is not None and t["friedman_p"] == 1.0 and t["cd"]["cliques"] == [["a", "b", "c"]]


def test_cliques_follow_aeons_rule() -> None:
    import numpy as np

    # rank order A B C D; differ: A-C (hence A-D too); same: A-B, B-C, B-D, C-D.
    same = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    rows = stats.cliques(same)
    assert [list(np.flatnonzero(r)) for r in rows] == [[0, 1], [1, 2, 3]]  # C-D lies inside B-C-D
    assert stats.cliques(np.eye(3, dtype=bool)) == []  # every pair differs: no clique


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
