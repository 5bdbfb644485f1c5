"""BlockStats: one block's fusion, gate and temperature statistics over one monitor step.

A plain record with no torch dependency, so the exporters, the table and the plots read it
without importing the monitor that fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BlockStats:
    """Statistics of one block over one step (or over every step, in ``summary()``).

    Fusion fields are None for a sum-fusion block (it has no router). ``class_w_avg`` maps a label
    to the mean w_avg of the samples with that label (only labels that were seen).
    """

    block: str
    step: int | None
    samples: int
    w_avg_mean: float | None
    w_avg_std: float | None
    prefer_max: float | None
    hist: list[int] | None
    class_w_avg: dict[int, float] = field(default_factory=dict)
    gate_low: float = 0.0
    gate_high: float = 0.0
    T: float | None = None
    w_avg_low: float | None = None  # share of samples with w_avg < low: all weight on max
    w_avg_high: float | None = None  # share with w_avg > high: all weight on avg

    @property
    def saturation(self) -> float:
        """Share of gate values outside (low, high): those channels get almost no gradient."""
        return self.gate_low + self.gate_high

    def as_dict(self) -> dict[str, Any]:
        return {
            "block": self.block,
            "step": self.step,
            "samples": self.samples,
            "w_avg_mean": self.w_avg_mean,
            "w_avg_std": self.w_avg_std,
            "prefer_max": self.prefer_max,
            "hist": self.hist,
            "class_w_avg": {str(k): v for k, v in self.class_w_avg.items()},
            "gate_low": self.gate_low,
            "gate_high": self.gate_high,
            "saturation": self.saturation,
            "T": self.T,
            "w_avg_low": self.w_avg_low,
            "w_avg_high": self.w_avg_high,
        }

    def collapsed(self, share: float = 0.9) -> str | None:
        """'avg' or 'max' when more than ``share`` of the samples put all weight on that path, else None."""
        if self.w_avg_high is not None and self.w_avg_high > share:
            return "avg"
        if self.w_avg_low is not None and self.w_avg_low > share:
            return "max"
        return None
