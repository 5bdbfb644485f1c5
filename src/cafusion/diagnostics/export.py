"""Write FusionMonitor results to JSON, CSV and TensorBoard.

JSON keeps everything (summary + per-step history, histograms and per-class means included); CSV
is one row per (step, block) with the scalar columns, for spreadsheets and pandas. TensorBoard is
optional: ``tensorboard`` is imported only when ``log_tensorboard`` is called.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cafusion.diagnostics.stats import BlockStats

if TYPE_CHECKING:  # the monitor calls these writers; they only read it
    from cafusion.diagnostics.monitor import FusionMonitor

CSV_COLUMNS = (
    "step",
    "block",
    "samples",
    "w_avg_mean",
    "w_avg_std",
    "prefer_max",
    "gate_low",
    "gate_high",
    "saturation",
    "T",
)


def to_dict(monitor: FusionMonitor) -> dict[str, Any]:
    """Summary, history and the settings needed to read them (bins, thresholds)."""
    return {
        "bins": monitor.bins,
        "low": monitor.low,
        "high": monitor.high,
        "steps": monitor.steps,
        "summary": [s.as_dict() for s in monitor.summary()],
        "history": [s.as_dict() for s in monitor.history],
    }


def to_json(monitor: FusionMonitor, path: str | Path) -> Path:
    out = Path(path)
    out.write_text(json.dumps(to_dict(monitor), indent=2) + "\n", encoding="utf-8")
    return out


def to_csv(stats: Sequence[BlockStats] | FusionMonitor, path: str | Path) -> Path:
    """One row per block and step; a monitor writes its history (or its summary if no step was closed)."""
    if not isinstance(stats, Sequence):  # a FusionMonitor
        stats = stats.history or stats.summary()
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for s in stats:
            writer.writerow({k: "" if v is None else v for k, v in s.as_dict().items()})
    return out


def log_tensorboard(stats: Sequence[BlockStats], writer: Any, step: int, prefix: str = "fusion") -> None:
    """Add scalars (and the w_avg histogram) of ``stats`` to a ``SummaryWriter`` at ``step``."""
    for s in stats:
        tag = f"{prefix}/{s.block}"
        for key in ("w_avg_mean", "w_avg_std", "prefer_max", "gate_low", "gate_high", "T"):
            value = getattr(s, key)
            if value is not None:
                writer.add_scalar(f"{tag}/{key}", value, step)
        if s.hist is not None and s.samples > 0:
            _add_histogram(writer, f"{tag}/w_avg", s.hist, step)


def _add_histogram(writer: Any, tag: str, hist: list[int], step: int) -> None:
    """TensorBoard wants raw bin limits and counts; the bins split [0, 1] evenly."""
    bins = len(hist)
    limits = [(i + 1) / bins for i in range(bins)]
    centers = [(i + 0.5) / bins for i in range(bins)]
    total = sum(hist)
    writer.add_histogram_raw(
        tag,
        min=0.0,
        max=1.0,
        num=total,
        sum=sum(c * n for c, n in zip(centers, hist, strict=True)),
        sum_squares=sum(c * c * n for c, n in zip(centers, hist, strict=True)),
        bucket_limits=limits,
        bucket_counts=hist,
        global_step=step,
    )
