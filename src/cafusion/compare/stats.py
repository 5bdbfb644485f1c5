"""The statistics of a comparison, over seeds, with scipy.stats.

Per variant: mean, std and a 95% t confidence interval of the test accuracy over seeds. Against a
baseline: the per-seed paired differences (same seed = same split, batches and backbone init), their
mean and 95% CI, win/tie/loss, and a paired test. With fewer than ``WILCOXON_MIN`` pairs the test is
the paired t-test: Wilcoxon's exact signed-rank test cannot reach p < 0.05 with 5 pairs or fewer
(its smallest two-sided p is 2 / 2^n), so it would say nothing. With more pairs it is Wilcoxon,
which does not assume normal differences. ``holm`` corrects a family of such p-values (the report's
family: the distinct pairs tested in one (data set, model) table); ``effect_dz`` gives the size of
the difference, which a p-value over 3-5 seeds cannot.

When every pair differs by the same non-zero amount (for example one test series in each of three
seeds), the differences have no spread: the t statistic is mean / 0 and scipy returns p = 0, which
would read as overwhelming evidence. The t-test is undefined there, so ``paired`` returns p = None
and says why (``p_undefined``). Wilcoxon's signed-rank test stays defined (it uses only the signs
and ranks), and when every difference is zero both tests give p = 1.

Across data sets: the mean rank of each variant (rank 1 = best mean accuracy, ties averaged), the
Friedman test, and the critical difference of aeon's diagram (``plot_critical_difference``,
Wilcoxon-Holm): one-sided Wilcoxon signed-rank tests between variants over data sets and the cliques
they leave. The numbers are computed here with scipy by aeon's rule, so the report has them without
aeon; the drawing (plots.py) needs aeon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

WILCOXON_MIN = 6
UNDEFINED_EQUAL = "all pairs differ by the same amount: the t-test is undefined (zero variance)"
# Differences this close (relative to their size) count as equal: a - b over seeds can differ by
# float rounding even when every seed lost the same test series.
EQUAL_RTOL = 1e-9
# The critical difference: alpha of the Friedman test and of the pairwise tests (aeon divides it by
# k - 1), and the least data sets and variants. aeon's diagram starts with a Friedman test, which
# needs 3 variants; with 2 data sets a one-sided Wilcoxon cannot go below p = 1/4.
CD_ALPHA = 0.05
CD_MIN_DATASETS = 3
CD_MIN_VARIANTS = 3


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, std (ddof 1) and the 95% t interval of the mean."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    n = len(a)
    mean = float(a.mean()) if n else math.nan
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half] if n > 1 else None}


def all_equal(diff: np.ndarray) -> bool:
    """Whether every difference is the same (up to float rounding, ``EQUAL_RTOL`` of the largest)."""
    return bool(np.ptp(diff) <= EQUAL_RTOL * np.abs(diff).max())


def paired(variant: dict[int, float], baseline: dict[int, float]) -> dict[str, Any] | None:
    """Paired comparison over the seeds both have; None if they share fewer than 2 seeds.

    ``p`` is None when the paired t-test is undefined (every difference the same non-zero value);
    the result then has ``p_undefined``, the reason. The key is absent otherwise.
    """
    from scipy import stats

    seeds = sorted(set(variant) & set(baseline))
    if len(seeds) < 2:
        return None
    diff = np.array([variant[s] - baseline[s] for s in seeds], dtype=np.float64)
    effect = effect_dz(diff.tolist())
    wins, ties = int((diff > 0).sum()), int((diff == 0).sum())
    undefined = None
    p: float | None
    if not diff.any():
        test, p = ("paired t-test" if len(seeds) < WILCOXON_MIN else "Wilcoxon signed-rank"), 1.0
    elif len(seeds) < WILCOXON_MIN:
        test = "paired t-test"
        if all_equal(diff):
            p, undefined = None, UNDEFINED_EQUAL
        else:
            p = float(stats.ttest_rel([variant[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    else:
        test, p = "Wilcoxon signed-rank", float(stats.wilcoxon(diff).pvalue)
    result: dict[str, Any] = {
        "seeds": seeds,
        "diff": diff.tolist(),
        "mean_diff": effect["mean"],
        "ci95": effect["ci95"],
        "d_z": effect["d_z"],
        "test": test,
        "p": p,
        "win": wins,
        "tie": ties,
        "loss": len(seeds) - wins - ties,
    }
    if undefined is not None:
        result["p_undefined"] = undefined
    return result


def ranks(table: dict[str, dict[str, float]]) -> dict[str, Any] | None:
    """Mean ranks over data sets of {dataset: {variant: mean acc}}; only variants present everywhere count.

    Returns None for fewer than 2 data sets or 2 variants. ``cd`` is the critical difference
    (``critical_difference``) from ``CD_MIN_DATASETS`` data sets and ``CD_MIN_VARIANTS`` variants,
    else None with the reason in ``cd_skipped``; ``scores`` keeps the table for the diagram.
    """
    from scipy import stats

    datasets = sorted(table)
    if len(datasets) < 2:
        return None
    variants = sorted(set.intersection(*(set(table[d]) for d in datasets)))
    if len(variants) < 2:
        return None
    matrix = np.array([[table[d][v] for v in variants] for d in datasets], dtype=np.float64)
    rank = np.vstack([stats.rankdata(-row) for row in matrix])
    mean_rank = rank.mean(axis=0)
    k, n = len(variants), len(datasets)
    friedman_p = None
    if k >= 3:
        with np.errstate(all="ignore"):
            friedman_p = float(stats.friedmanchisquare(*matrix.T).pvalue)
        if math.isnan(friedman_p):  # every data set ranked the variants identically tied
            friedman_p = 1.0
    result: dict[str, Any] = {
        "datasets": datasets,
        "variants": variants,
        "scores": matrix.tolist(),
        "mean_rank": {v: float(r) for v, r in zip(variants, mean_rank, strict=True)},
        "friedman_p": friedman_p,
        "cd": None,
    }
    if n < CD_MIN_DATASETS or k < CD_MIN_VARIANTS or friedman_p is None:
        result["cd_skipped"] = (
            f"a critical-difference diagram needs at least {CD_MIN_DATASETS} data sets and {CD_MIN_VARIANTS} "
            f"variants run on all of them; here {n} and {k}"
        )
    else:
        result["cd"] = critical_difference(matrix, variants, friedman_p)
    return result


def critical_difference(
    scores: np.ndarray, variants: list[str], friedman_p: float, alpha: float = CD_ALPHA
) -> dict[str, Any]:
    """aeon's Wilcoxon-Holm critical difference of a (data sets x variants) accuracy table.

    As ``aeon.visualisation.plot_critical_difference`` (1.6) decides it: variants ordered by mean
    rank; for each pair, the one-sided Wilcoxon signed-rank test over data sets that the better-ranked
    is more accurate (p = 1 when the two are equal everywhere). If the Friedman p is below ``alpha``,
    a pair differs when p <= alpha / (k - 1), else none does; a clique is a run of variants in rank
    order with no difference inside, those within a larger one dropped. ``p_holm`` is Holm over the
    k (k - 1) / 2 pairs, for reading the table; the cliques follow aeon's rule, not ``p_holm``.
    """
    from scipy import stats

    mean_rank = np.vstack([stats.rankdata(-row) for row in scores]).mean(axis=0)
    order = np.argsort(mean_rank)  # as aeon sorts them
    k = len(order)
    p = np.triu(np.ones((k, k)))  # 1 (no difference) on and above the diagonal until tested
    for i in range(k - 1):
        for j in range(i + 1, k):
            a, b = scores[:, order[i]], scores[:, order[j]]
            if not np.all(a == b):
                p[i, j] = float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="greater").pvalue)
    upper = [(i, j) for i in range(k - 1) for j in range(i + 1, k)]
    adjusted = holm([float(p[i, j]) for i, j in upper])
    names = [variants[o] for o in order]
    same = np.triu(np.ones((k, k), dtype=bool)) if friedman_p >= alpha else p > alpha / (k - 1)
    return {
        "alpha": alpha,
        "order": names,
        "pairs": [
            {"better": names[i], "worse": names[j], "p": float(p[i, j]), "p_holm": h}
            for (i, j), h in zip(upper, adjusted, strict=True)
        ],
        "cliques": [[names[i] for i in np.flatnonzero(row)] for row in cliques(same)],
    }


def cliques(same: np.ndarray) -> list[np.ndarray]:
    """aeon's cliques from an upper-triangular "not different" matrix in rank order (diagonal True).

    A difference between i and j also separates i from every variant ranked below j; rows of one
    member and rows inside an earlier row are dropped.
    """
    same = np.array(same, dtype=bool)
    for i in range(len(same)):
        for j in range(i + 1, len(same)):
            if not same[i, j]:
                same[i, j + 1 :] = False
                break
    rows = [row for row in same if row.sum() > 1]
    return [r for i, r in enumerate(rows) if not any(np.all(rows[j][r]) for j in range(i))]


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values for one family, in input order.

    None (an undefined test) stays None and does not count towards the family size m.
    """
    known = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None]
    bad = [p for _, p in known if not 0.0 <= p <= 1.0]
    if bad:
        raise ValueError(f"pvalues: each p must be in [0, 1] or None, got {bad[0]!r}")
    m = len(known)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(known, key=lambda ip: ip[1])):
        running = max(running, min(1.0, (m - rank) * p))  # step-down: adjusted values never decrease
        out[i] = running
    return out


def effect_dz(diffs: Sequence[float]) -> dict[str, Any]:
    """Cohen's d_z (mean / sd of the paired differences) and the 95% t interval of the mean.

    d_z is None when the differences have no spread (it would be infinite).
    """
    if len(diffs) < 2:
        raise ValueError(f"diffs: need at least 2 paired differences, got {len(diffs)}")
    d = describe(diffs)
    return {"mean": d["mean"], "ci95": d["ci95"], "d_z": d["mean"] / d["std"] if d["std"] > 0 else None}
