"""Lightning callback: a FusionMonitor on any LightningModule, logged once per training epoch.

``FusionMonitorCallback`` attaches a ``FusionMonitor`` to the module at fit start, feeds it each
training batch's labels, and at every train epoch end closes one monitor step (summed over ranks
under DDP, as in ``cafusion train``) and logs per-block ``w_avg_mean``, ``prefer_max``, ``T`` and
``saturation`` through ``pl_module.log_dict``, so TensorBoard, CSV or any logger gets them. The
monitor's collapse alarm fires here too. Needs the ``lightning`` extra; importing ``cafusion``
never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from cafusion.diagnostics.monitor import FusionMonitor

LabelsFn = Callable[[Any], Tensor | None]
_LABEL_KEYS = ("y", "label", "labels", "target")
METRICS = ("w_avg_mean", "prefer_max", "T", "saturation")


def default_labels(batch: Any) -> Tensor | None:
    """The labels of an ``(x, y, ...)`` tuple/list or of a dict with y/label/labels/target, else None."""
    candidate: Any = None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        candidate = batch[1]
    elif isinstance(batch, Mapping):
        candidate = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
    if isinstance(candidate, Tensor) and candidate.dim() == 1 and not candidate.is_floating_point():
        return candidate
    return None


class FusionMonitorCallback(pl.Callback):
    """Monitor every ChannelAttentionFusionT block of the LightningModule during ``fit``.

    ``labels_from_batch(batch)`` returns a batch's (B,) labels or None (default: ``default_labels``);
    ``out_dir`` also writes ``fusion.json``, ``fusion.csv`` and the three PNGs at fit end; other
    keyword arguments go to ``FusionMonitor`` (``bins``, ``low``, ``collapse_epochs``, ...).
    """

    def __init__(
        self,
        *,
        labels_from_batch: LabelsFn | None = None,
        out_dir: str | Path | None = None,
        prefix: str = "fusion",
        **monitor_kwargs: Any,
    ) -> None:
        if labels_from_batch is not None and not callable(labels_from_batch):
            raise TypeError("labels_from_batch must be callable (batch -> labels tensor or None)")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.labels_from_batch = labels_from_batch or default_labels
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.prefix = prefix
        self.monitor_kwargs = monitor_kwargs
        self.monitor: FusionMonitor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor = FusionMonitor(pl_module, **self.monitor_kwargs)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.set_labels(self.labels_from_batch(batch))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.set_labels(None)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:  # validation forwards are not training statistics
            self.monitor.detach()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None and trainer.training:
            self.monitor.attach()

    def metrics(self, stats: list[Any]) -> dict[str, float]:
        """``{prefix}/{block}/{name}`` for each block and each of METRICS that the block has."""
        out: dict[str, float] = {}
        for s in stats:
            for name in METRICS:
                value = getattr(s, name)
                if value is not None:
                    out[f"{self.prefix}/{s.block}/{name}"] = float(value)
        return out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None:
            return
        stats = self.monitor.step()  # every rank: it reduces over them; the values agree afterwards
        pl_module.log_dict(self.metrics(stats), on_step=False, on_epoch=True, sync_dist=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None:
            return
        if self.out_dir is not None:
            self._write(trainer.is_global_zero)
        self.monitor.detach()

    def _write(self, is_main: bool) -> None:
        from cafusion.diagnostics.export import to_csv, to_dict
        from cafusion.diagnostics.plots import plot_class_means, plot_fusion_histograms, plot_training_curves

        assert self.monitor is not None and self.out_dir is not None
        data = to_dict(self.monitor)  # collective under DDP: every rank calls it
        summary = self.monitor.summary()
        if not is_main:
            return
        import json

        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "fusion.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        to_csv(self.monitor.history, out / "fusion.csv")
        plot_fusion_histograms(summary, out / "fusion_hist.png")
        plot_class_means(summary, out / "class_w_avg.png")
        plot_training_curves(self.monitor.history, out / "training_curves.png", x_label="epoch")
