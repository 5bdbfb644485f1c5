"""Lightning callback: a FusionMonitor on any LightningModule, logged once per training epoch.

``FusionMonitorCallback`` attaches a ``FusionMonitor`` to the module at fit start and counts the
forwards of training steps only (its hooks are on from each training batch's start to its end, so
sanity checks and validation never mix in). At every train epoch end it closes one monitor step
(summed over ranks under DDP, as in ``cafusion train``) and logs per-block ``w_avg_mean``,
``prefer_max``, ``T`` and ``saturation`` through ``pl_module.log_dict``, so TensorBoard, CSV or any
logger gets them. The monitor's collapse alarm fires here too. Needs the ``lightning`` extra;
importing ``cafusion`` never imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from cafusion.diagnostics.export import to_csv, to_dict
from cafusion.diagnostics.monitor import FusionMonitor
from cafusion.diagnostics.stats import BlockStats

LabelsFn = Callable[[Any], Tensor | None]
_LABEL_KEYS = ("y", "label", "labels", "target")
METRICS = ("w_avg_mean", "prefer_max", "T", "saturation")
FILES = ("fusion.json", "fusion.csv", "fusion_hist.png", "class_w_avg.png", "training_curves.png")


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

    ``labels_from_batch(batch)`` returns a batch's (B,) integer labels or None (default:
    ``default_labels``); ``out_dir`` also writes ``fusion.json``, ``fusion.csv`` and the three PNGs at
    fit end (rank 0 only); other keyword arguments go to ``FusionMonitor`` (``bins``, ``low``,
    ``collapse_epochs``, ...). ``monitor`` is the last fit's ``FusionMonitor``; ``written`` lists
    the files this process wrote.
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
            raise TypeError(
                "labels_from_batch must be callable (batch -> labels tensor or None), "
                f"got {type(labels_from_batch).__name__}"
            )
        if out_dir is not None and not isinstance(out_dir, (str, Path)):
            raise TypeError(f"out_dir must be a str, a Path or None, got {type(out_dir).__name__}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        if "attach" in monitor_kwargs:
            raise TypeError("attach is not an argument of FusionMonitorCallback: it attaches during training steps")
        FusionMonitor(nn.Module(), attach=False, **monitor_kwargs)  # bad monitor arguments fail here, not at fit
        self.labels_from_batch = labels_from_batch or default_labels
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.prefix = prefix
        self.monitor_kwargs = monitor_kwargs
        self.monitor: FusionMonitor | None = None
        self.written: list[Path] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = FusionMonitor(pl_module, attach=False, **self.monitor_kwargs)
        if not monitor.blocks:
            raise ValueError(
                f"FusionMonitorCallback: {type(pl_module).__name__} has no ChannelAttentionFusionT block to monitor"
            )
        self.monitor, self.written = monitor, []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            return
        labels = self.labels_from_batch(batch)
        if labels is not None and (not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point()):
            raise TypeError(f"labels_from_batch must return a 1-D integer tensor or None, got {_describe(labels)}")
        self.monitor.attach()
        self.monitor.set_labels(labels)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.detach()  # also forgets the labels

    def metrics(self, stats: list[BlockStats]) -> dict[str, float]:
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
        stats = self.monitor.step()  # every rank: it sums over them, so every rank holds the same values
        # Identical on every rank: a max over ranks returns them exactly (a mean could round) and keeps
        # them usable by ModelCheckpoint/EarlyStopping on each rank; the loggers write on rank 0.
        pl_module.log_dict(
            self.metrics(stats), on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max", batch_size=1
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None:
            return
        self.monitor.detach()
        if self.out_dir is not None:
            self.written = self.write(self.out_dir, trainer.is_global_zero)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.monitor is not None:  # a fit that failed mid-batch leaves no hook behind
            self.monitor.detach()

    def write(self, out_dir: str | Path, is_main: bool) -> list[Path]:
        """fusion.json, fusion.csv and the PNGs; every rank must call it (collectives), rank 0 writes."""
        if self.monitor is None:
            raise RuntimeError("FusionMonitorCallback.write: no fit has started, there is nothing to write")
        data = to_dict(self.monitor)
        summary = self.monitor.summary()
        if not is_main:
            return []
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fusion.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        csv_path = to_csv(self.monitor.history, out / "fusion.csv")
        return [out / "fusion.json", csv_path, *self.monitor.save_plots(out, stats=summary, x_label="epoch")]


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor"
    return type(value).__name__
