"""The statistics of a comparison, over seeds, with scipy.stats.

Per variant: mean, std and a 95% t confidence interval of the test accuracy over seeds. Against a
baseline: the per-seed paired differences (same seed = same split, batches and backbone init), their
mean and 95% CI, win/tie/loss, and a paired test. With fewer than ``WILCOXON_MIN`` pairs the test is
the paired t-test: Wilcoxon's exact signed-rank test cannot reach p < 0.05 with 5 pairs or fewer
(its smallest two-sided p is 2 / 2^n), so it would say nothing. With more pairs it is Wilcoxon,
which does not assume normal differences. p-values are per comparison, not corrected for multiple
comparisons; the report says so.

When every pair differs by the same non-zero amount (for example one test series in each of three
seeds), the differences have no spread: the t statistic is mean / 0 and scipy returns p = 0, which
would read as overwhelming evidence. The t-test is undefined there, so ``paired`` returns p = None
and says why (``p_undefined``). Wilcoxon's signed-rank test stays defined (it uses only the signs
and ranks), and when every difference is zero both tests give p = 1.

Across data sets: the mean rank of each variant (rank 1 = best mean accuracy, ties averaged), the
Friedman test, and the Nemenyi critical difference of Demsar 2006.
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
# Nemenyi two-tailed q at alpha 0.05 for k = 2..10 (Demsar 2006, table 5a).
NEMENYI_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


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
    summary = describe(diff.tolist())
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
        "mean_diff": summary["mean"],
        "ci95": summary["ci95"],
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

    Returns None for fewer than 2 data sets or 2 variants. The Nemenyi CD says how far apart two mean
    ranks must be to differ at alpha 0.05; with few data sets it is large, which is the honest answer.
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
    q = NEMENYI_Q05.get(k)
    cd = None if q is None else float(q * math.sqrt(k * (k + 1) / (6 * n)))
    return {
        "datasets": datasets,
        "mean_rank": {v: float(r) for v, r in zip(variants, mean_rank, strict=True)},
        "friedman_p": friedman_p,
        "nemenyi_cd": cd,
    }


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
