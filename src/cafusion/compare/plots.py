"""The report's figures (matplotlib, Agg): per (dataset, model) accuracy with 95% CI bars, per-seed
paired differences to ``none``, accuracy against the epoch budget, and each router's w_avg per epoch;
per model over data sets, aeon's critical-difference diagram (when aeon is installed)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def cd_figure_name(model: str) -> str:
    """The file name of one model's critical-difference diagram."""
    return f"cd_{_SAFE.sub('_', model)}.png"


def write_figures(out: Path, report: dict[str, Any]) -> list[Path]:
    """One PNG of four panels per (dataset, model) table, then the CD diagrams; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for t in report["tables"]:
        fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
        _accuracy(axes[0], t)
        _differences(axes[1], t)
        _budgets(axes[2], t)
        _router(axes[3], t, out)
        fig.suptitle(f"{t['dataset']} · {t['model']}")
        fig.tight_layout()
        path = out / f"{_SAFE.sub('_', t['dataset'])}__{t['model']}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    for model, rank in report["ranking"].items():
        if rank is not None and rank["cd"] is not None and importlib.util.find_spec("aeon") is not None:
            paths.append(write_cd(out / cd_figure_name(model), rank)[0])
    return paths


def write_cd(path: Path, rank: dict[str, Any]) -> tuple[Path, Any]:
    """aeon's critical-difference diagram of one model's ``stats.ranks``; returns the path and aeon's p-values.

    aeon draws the cliques by the rule ``stats.critical_difference`` computes (same alpha), so the
    figure shows the cliques the report lists.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from aeon.visualisation import plot_critical_difference

    fig, _, p_values = plot_critical_difference(
        np.asarray(rank["scores"]), list(rank["variants"]), alpha=rank["cd"]["alpha"], return_p_values=True
    )
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path, p_values


def _accuracy(ax: Any, t: dict[str, Any]) -> None:
    names = [v["variant"] for v in t["variants"]]
    means = [100 * v["acc"]["mean"] for v in t["variants"]]
    err = [0.0 if v["acc"]["ci95"] is None else 100 * (v["acc"]["ci95"][1] - v["acc"]["mean"]) for v in t["variants"]]
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    for i, v in enumerate(t["variants"]):
        ax.scatter([i] * len(v["test_acc"]), [100 * a for a in v["test_acc"]], color="black", s=10, zorder=3)
    if t["published_acc"] is not None:
        ax.axhline(t["published_acc"], color="tab:red", ls="--", lw=1, label=f"published {t['published_acc']:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    low = min(min(100 * a for a in v["test_acc"]) for v in t["variants"])
    ax.set_ylim(max(0.0, low - 5), 100.5)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("test accuracy % (bars: 95% CI, dots: seeds)")


def _differences(ax: Any, t: dict[str, Any]) -> None:
    rows = [(v["variant"], v["versus"].get("none")) for v in t["variants"]]
    rows = [(n, p) for n, p in rows if p is not None]
    for i, (_, p) in enumerate(rows):
        ax.scatter([i] * len(p["diff"]), [100 * d for d in p["diff"]], color="tab:green", s=14)
        ax.hlines(100 * p["mean_diff"], i - 0.3, i + 0.3, color="black")
    ax.axhline(0, color="gray", lw=1)
    ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=30, ha="right")
    ax.set_ylabel("paired difference to none (points; per seed)")


def _budgets(ax: Any, t: dict[str, Any]) -> None:
    for v in t["variants"]:
        b = v["budget_acc"]
        if b:
            ax.plot([int(k) for k in b], [100 * a for a in b.values()], marker=".", label=v["variant"])
    if t["published_acc"] is not None:
        ax.axhline(t["published_acc"], color="tab:red", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epoch budget")
    ax.set_ylabel("test accuracy % (mean over seeds)")
    ax.legend(fontsize=7)


def _router(ax: Any, t: dict[str, Any], out: Path) -> None:
    """Mean over seeds of each router's training w_avg per epoch, one line per (variant, block)."""
    from cafusion.compare.plan import iter_results

    traces: dict[str, list[list[float]]] = {}
    for r in iter_results(out):
        if r["dataset"] != t["dataset"] or r["settings"]["model"] != t["model"] or "router" not in r:
            continue
        for block, b in r["router"].items():
            w = [x for x in b["w_avg_per_epoch"] if x is not None]
            if w:
                traces.setdefault(f"{r['settings']['variant']} {block.replace('.attention', '')}", []).append(w)
    for label, runs in sorted(traces.items()):
        n = min(len(w) for w in runs)
        mean = [sum(w[i] for w in runs) / len(runs) for i in range(n)]
        ax.plot(range(1, n + 1), mean, lw=1, label=f"{label} ({len(runs)} seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("router w_avg (train, per epoch, mean over seeds)")
    if traces:
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no softmax router in this comparison", ha="center", transform=ax.transAxes)
