"""Matplotlib figures of FusionMonitor results, written straight to PNG files.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so nothing changes the user's
backend or global state, and matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cafusion.diagnostics.stats import BlockStats


def _figure(n_panels: int, width: float = 4.0, height: float = 3.0) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    n = max(n_panels, 1)
    fig = Figure(figsize=(width * n, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    fig.savefig(out, dpi=100)
    return out


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_fusion_histograms(stats: Sequence[BlockStats], path: str | Path, title: str = "") -> Path:
    """One panel per block: the histogram of w_avg over [0, 1]; left of 0.5 the sample prefers max."""
    routed = [s for s in stats if s.hist is not None]
    fig, axes = _figure(len(routed))
    if not routed:
        _empty(axes[0], "no softmax-fusion block")
    for ax, s in zip(axes, routed, strict=False):
        assert s.hist is not None
        bins = len(s.hist)
        ax.bar([(i + 0.5) / bins for i in range(bins)], s.hist, width=1.0 / bins, color="tab:blue", edgecolor="white")
        ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("w_avg (weight of the average path)")
        ax.set_ylabel("samples")
        ax.set_title(f"{s.block}: mean {s.w_avg_mean:.3f}, std {s.w_avg_std:.3f}", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_class_means(stats: Sequence[BlockStats], path: str | Path, title: str = "") -> Path:
    """Mean w_avg per class, one bar group per class and one bar per block."""
    routed = [s for s in stats if s.class_w_avg]
    fig, axes = _figure(1, width=max(5.0, 0.5 * max((len(s.class_w_avg) for s in routed), default=0) + 2))
    ax = axes[0]
    if not routed:
        _empty(ax, "no labelled samples")
        return _save(fig, path)
    classes = sorted({c for s in routed for c in s.class_w_avg})
    width = 0.8 / len(routed)
    for j, s in enumerate(routed):
        xs = [i + (j - (len(routed) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, [s.class_w_avg.get(c, 0.0) for c in classes], width=width, label=s.block)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("mean w_avg")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_training_curves(
    history: Sequence[BlockStats],
    path: str | Path,
    title: str = "",
    x_label: str = "epoch",
    limits: tuple[float, float] = (0.01, 0.99),
) -> Path:
    """Two panels over the monitor's steps: the temperature T of each block, and its gate saturation.

    The trainer and the demo close one monitor step per epoch, so the x axis counts epochs from 1;
    ``x_label`` names it for callers that step differently; ``limits`` are the monitor's ``low`` and
    ``high``, the gate values that count as saturated.
    """
    return _save(training_curves_figure(history, title, x_label, limits), path)


def training_curves_figure(
    history: Sequence[BlockStats],
    title: str = "",
    x_label: str = "epoch",
    limits: tuple[float, float] = (0.01, 0.99),
) -> Any:
    """The figure :func:`plot_training_curves` saves (x: step number from 1)."""
    fig, (ax_t, ax_s) = _figure(2)
    by_block: dict[str, list[BlockStats]] = {}
    for s in history:
        by_block.setdefault(s.block, []).append(s)
    if not by_block:
        _empty(ax_t, "no steps recorded")
        _empty(ax_s, "no steps recorded")
        return fig
    for name, rows in by_block.items():
        steps = [0 if s.step is None else s.step + 1 for s in rows]
        ax_t.plot(steps, [s.T for s in rows], marker=".", label=name)
        ax_s.plot(steps, [100 * s.saturation for s in rows], marker=".", label=name)
    ax_t.set_xlabel(x_label)
    ax_t.set_ylabel("temperature T")
    ax_s.set_xlabel(x_label)
    ax_s.set_ylabel("saturated gate values (%)")
    ax_s.set_title(f"share of ca < {limits[0]:g} or > {limits[1]:g}", fontsize=9)
    ax_t.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
