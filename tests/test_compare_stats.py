"""The statistics behind cafusion compare, checked against values computed by hand."""

from __future__ import annotations

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


def test_ranks_friedman_and_nemenyi() -> None:
    table = {"a": {"x": 0.9, "y": 0.8, "z": 0.7}, "b": {"x": 0.9, "y": 0.9, "z": 0.6}, "c": {"x": 1.0, "y": 0.5}}
    r = stats.ranks(table)
    assert r is not None
    assert r["mean_rank"] == pytest.approx({"x": (1 + 1.5 + 1) / 3, "y": (2 + 1.5 + 2) / 3})  # z is not everywhere
    assert r["friedman_p"] is None  # two variants: no Friedman test
    assert r["nemenyi_cd"] == pytest.approx(1.960 * math.sqrt(2 * 3 / (6 * 3)))
    assert stats.ranks({"a": {"x": 1.0, "y": 0.5}}) is None
