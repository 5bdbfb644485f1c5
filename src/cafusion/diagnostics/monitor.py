"""FusionMonitor: collects fusion-weight, gate and temperature statistics from every block of a model.

It answers three questions about a trained ``ChannelAttentionFusionT``: does the router prefer avg,
max, or does it vary per sample (w_avg mean/std/histogram, share preferring max, per-class means)?
Is the gate saturating (share of ca below/above the thresholds)? Where does the temperature go?

Collection uses the block's inspector hook, so user code is unchanged and the forward output is
untouched. Each forward only adds into small on-device tensors (no host sync); ``step()`` closes a
step: it sums the counters across ranks when torch.distributed is initialised, converts them to
Python numbers once, and appends them to ``history``. After ``detach()`` no hook remains.

A router that sends nearly every sample to one path for ``collapse_epochs`` consecutive steps
raises one ``RouterCollapseWarning`` per block: such a block pays for a router it does not use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cafusion import _validation as check
from cafusion.diagnostics.stats import BlockStats
from cafusion.layers import ChannelAttentionFusionT

# Layout of the flat counter vector of one block; the histogram and the per-class sums follow it.
_N, _SUM_W, _SUM_W2, _N_MAX, _N_CA, _CA_LOW, _CA_HIGH, _SUM_T, _N_T, _W_LOW, _W_HIGH = range(11)
_N_SCALARS = 11


class RouterCollapseWarning(UserWarning):
    """A router has sent (almost) every sample to one path for several consecutive steps."""


class _Counters:
    """Running sums for one block: the open step's (``current``) and every closed step's (``total``).

    Data-dependent sums live on the block's device so a forward never waits for the host; counts
    the host already knows (samples, gate entries, forwards) stay Python ints until a step closes.
    The per-class part grows when a new label appears.
    """

    def __init__(self, bins: int, num_classes: int) -> None:
        self.bins = bins
        self.num_classes = num_classes
        self.current: Tensor | None = None  # created lazily on the block's device
        self.total: Tensor | None = None
        self.counts = [0, 0, 0]  # samples, gate entries, forwards of the open step

    @property
    def width(self) -> int:
        return _N_SCALARS + self.bins + 2 * self.num_classes

    def zeros(self, like: Tensor | None = None, device: torch.device | None = None) -> Tensor:
        device = like.device if like is not None else device or torch.device("cpu")
        dtype = like.dtype if like is not None else torch.float32 if device.type == "mps" else torch.float64
        return torch.zeros(self.width, dtype=dtype, device=device)

    def _widen(self, flat: Tensor | None, old: int) -> Tensor | None:
        return None if flat is None else _pad_classes(flat, old, self.num_classes, self.bins)

    def grow(self, num_classes: int) -> None:
        """Widen the per-class sums (zero-padded) so that ``num_classes`` labels fit."""
        if num_classes > self.num_classes:
            old, self.num_classes = self.num_classes, num_classes
            self.current, self.total = self._widen(self.current, old), self._widen(self.total, old)

    @torch.no_grad()
    def add(
        self,
        ca: Tensor,
        fusion_w: Tensor | None,
        temperature: Tensor,
        labels: tuple[Tensor, int] | None,
        lo: float,
        hi: float,
    ) -> None:
        """Add one forward; ``labels`` is (labels, number of classes they need)."""
        if labels is not None:
            self.grow(labels[1])
        if self.current is None:
            self.current = self.zeros(device=ca.device)
        elif self.current.device != ca.device:  # the model moved since the last forward
            self.current = self.current.to(ca.device)
        flat = self.current
        ca = ca.detach()
        self.counts[0] += ca.shape[0]
        self.counts[1] += ca.numel()
        self.counts[2] += 1
        t = temperature.detach().to(device=flat.device, dtype=flat.dtype).reshape(())
        flat[_CA_LOW : _SUM_T + 1] += torch.stack([(ca < lo).sum().to(flat.dtype), (ca > hi).sum().to(flat.dtype), t])
        if fusion_w is None:
            return
        w = fusion_w.detach()[:, 0].to(flat.dtype)
        flat[_SUM_W : _N_MAX + 1] += torch.stack([w.sum(), (w * w).sum(), (w < 0.5).sum().to(flat.dtype)])
        flat[_W_LOW : _W_HIGH + 1] += torch.stack([(w < lo).sum(), (w > hi).sum()]).to(flat.dtype)
        # Histogram by comparison with the bin indices: deterministic on every device, unlike histc.
        idx = (w * self.bins).long().clamp_(0, self.bins - 1)
        flat[_N_SCALARS : _N_SCALARS + self.bins] += (idx[:, None] == torch.arange(self.bins, device=w.device)).sum(0)
        if labels is not None:
            y = labels[0].to(w.device)
            if y.shape != w.shape:
                raise ValueError(
                    f"FusionMonitor labels have shape {tuple(y.shape)} but the batch has {w.numel()} samples"
                )
            onehot = (y[:, None] == torch.arange(self.num_classes, device=w.device)).to(flat.dtype)
            start = _N_SCALARS + self.bins
            flat[start : start + self.num_classes] += onehot.t() @ w
            flat[start + self.num_classes :] += onehot.sum(0)

    def _open_step(self) -> Tensor:
        flat = self.current.clone() if self.current is not None else self.zeros(like=self.total)
        for index, count in zip((_N, _N_CA, _N_T), self.counts, strict=True):
            flat[index] = count
        return flat

    def close(self) -> Tensor:
        """The open step's sums (folded into the total), and a fresh open step."""
        flat = self._open_step()
        self.total = flat.clone() if self.total is None else self.total.to(flat.device) + flat
        self.current, self.counts = None, [0, 0, 0]
        return flat

    def snapshot(self) -> Tensor:
        """Every closed step plus the open one, without closing anything."""
        flat = self._open_step()
        return flat if self.total is None else self.total.to(flat.device) + flat

    def clear(self) -> None:
        self.current, self.total, self.counts = None, None, [0, 0, 0]


def _pad_classes(flat: Tensor, have: int, want: int, bins: int) -> Tensor:
    if want == have:
        return flat
    start = _N_SCALARS + bins
    pad = torch.zeros(want - have, dtype=flat.dtype, device=flat.device)
    return torch.cat([flat[:start], flat[start : start + have], pad, flat[start + have :], pad])


def _reduce(flats: list[Tensor], num_classes: list[int], bins: int) -> list[Tensor]:
    """Sum every block's counters over ranks in two collectives, whatever the number of blocks.

    Ranks may have seen different labels, so the per-class widths are agreed (MAX) first.
    """
    if not flats or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flats
    device, dtype = flats[0].device, flats[0].dtype
    widths = torch.tensor(num_classes, dtype=torch.int64, device=device)
    dist.all_reduce(widths, op=dist.ReduceOp.MAX)
    agreed = [int(w) for w in widths.tolist()]
    padded = [
        _pad_classes(f.to(device, dtype), have, want, bins)
        for f, have, want in zip(flats, num_classes, agreed, strict=True)
    ]
    joined = torch.cat(padded)
    dist.all_reduce(joined, op=dist.ReduceOp.SUM)
    return list(torch.split(joined, [f.numel() for f in padded]))


def _stats(name: str, step: int | None, flat: Tensor, bins: int, has_router: bool) -> BlockStats:
    values = flat.tolist()
    n_w, n_ca, n_t = values[_N], values[_N_CA], values[_N_T]
    mean = std = prefer = w_low = w_high = None
    hist = None
    classes: dict[int, float] = {}
    if has_router and n_w > 0:
        mean = values[_SUM_W] / n_w
        std = max(values[_SUM_W2] / n_w - mean * mean, 0.0) ** 0.5
        prefer = values[_N_MAX] / n_w
        w_low, w_high = values[_W_LOW] / n_w, values[_W_HIGH] / n_w
        hist = [int(v) for v in values[_N_SCALARS : _N_SCALARS + bins]]
        k = (len(values) - _N_SCALARS - bins) // 2
        sums, counts = values[_N_SCALARS + bins : _N_SCALARS + bins + k], values[_N_SCALARS + bins + k :]
        classes = {c: s / n for c, (s, n) in enumerate(zip(sums, counts, strict=True)) if n > 0}
    return BlockStats(
        block=name,
        step=step,
        samples=int(n_w),
        w_avg_mean=mean,
        w_avg_std=std,
        prefer_max=prefer,
        hist=hist,
        class_w_avg=classes,
        gate_low=values[_CA_LOW] / n_ca if n_ca else 0.0,
        gate_high=values[_CA_HIGH] / n_ca if n_ca else 0.0,
        T=values[_SUM_T] / n_t if n_t else None,
        w_avg_low=w_low,
        w_avg_high=w_high,
    )


class FusionMonitor:
    """Watch every ``ChannelAttentionFusionT`` in ``model`` (found by isinstance, any depth).

    Typical use::

        with FusionMonitor(model) as mon:
            for x, y in loader:
                with mon.labels(y):
                    loss = F.cross_entropy(model(x), y)
                ...
                mon.step()
            print(mon.summary_table())

    ``step()`` closes one step (an iteration or an epoch, as the caller chooses) and returns its
    per-block stats; ``summary()`` covers every forward since the monitor was created or reset.

    Collapse alarm: when, for ``collapse_epochs`` consecutive steps, more than ``collapse_share`` of
    a block's samples have w_avg beyond ``low``/``high``, ``step()`` warns once for that block
    (``RouterCollapseWarning``; on rank 0 only under torch.distributed). ``collapse_alarm=False``
    turns it off; ``collapsed`` maps each alarmed block to (path, first step of the run).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        bins: int = 20,
        low: float = 0.01,
        high: float = 0.99,
        num_classes: int | None = None,
        attach: bool = True,
        collapse_alarm: bool = True,
        collapse_epochs: int = 3,
        collapse_share: float = 0.9,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.bins = check.positive_int("bins", bins)
        self.low = check.positive_finite("low", low)
        self.high = check.positive_finite("high", high)
        if not self.low < self.high < 1:
            raise ValueError(f"need 0 < low < high < 1, got low={low!r}, high={high!r}")
        if not isinstance(collapse_alarm, bool):
            raise TypeError(f"collapse_alarm must be a bool, got {type(collapse_alarm).__name__}")
        self.collapse_alarm = collapse_alarm
        self.collapse_epochs = check.positive_int("collapse_epochs", collapse_epochs)
        self.collapse_share = check.positive_finite("collapse_share", collapse_share)
        if not self.collapse_share < 1:
            raise ValueError(f"collapse_share must be in (0, 1), got {collapse_share!r}")
        classes = 0 if num_classes is None else check.positive_int("num_classes", num_classes)
        self.model = model
        self.blocks: dict[str, ChannelAttentionFusionT] = {
            name or "<root>": m for name, m in model.named_modules() if isinstance(m, ChannelAttentionFusionT)
        }
        self._counters = {name: _Counters(self.bins, classes) for name in self.blocks}
        self._handles: list[RemovableHandle] = []
        self._labels: tuple[Tensor, int] | None = None
        self.history: list[BlockStats] = []
        self.steps = 0
        self.collapsed: dict[str, tuple[str, int]] = {}
        self._runs: dict[str, tuple[str, int]] = {}  # block -> (path, first step) of the current run
        if attach:
            self.attach()

    # -- hooks ---------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> FusionMonitor:
        """Register one inspector per block (idempotent)."""
        if not self._handles:
            for name, block in self.blocks.items():
                self._handles.append(block.register_inspector(self._make_hook(name)))
        return self

    def detach(self) -> None:
        """Remove every hook: the model runs exactly as if the monitor had never existed."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._labels = None

    def __enter__(self) -> FusionMonitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _make_hook(self, name: str) -> Any:
        counters = self._counters[name]

        def hook(module: ChannelAttentionFusionT, ca: Tensor, fusion_w: Tensor | None, temperature: Tensor) -> None:
            counters.add(ca, fusion_w, temperature, self._labels, self.low, self.high)

        return hook

    # -- labels --------------------------------------------------------------------------------
    def set_labels(self, labels: Tensor | None) -> None:
        """Labels (B,) of the next forwards, for per-class means of w_avg; None stops per-class stats.

        Pass them on the model's device: then only this call syncs (once, to size the class table).
        """
        if labels is None:
            self._labels = None
            return
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
            raise TypeError("labels must be a 1-D integer tensor (one class index per sample) or None")
        classes = 0
        if labels.numel():
            lo, hi = (int(v) for v in torch.aminmax(labels))  # one host sync per batch, not per block
            if lo < 0:
                raise ValueError(f"labels must be class indices >= 0, got {lo}")
            classes = hi + 1
        self._labels = (labels, classes)

    @contextlib.contextmanager
    def labels(self, labels: Tensor) -> Iterator[None]:
        """``with monitor.labels(y): model(x)`` — labels apply to the forwards inside the block only."""
        self.set_labels(labels)
        try:
            yield
        finally:
            self._labels = None

    # -- results -------------------------------------------------------------------------------
    def _collect(self, step: int | None) -> list[BlockStats]:
        out = []
        counters = list(self._counters.values())
        flats = [c.close() if step is not None else c.snapshot() for c in counters]
        flats = _reduce(flats, [c.num_classes for c in counters], self.bins)
        for name, flat in zip(self._counters, flats, strict=True):
            stats = _stats(name, step, flat, self.bins, self.blocks[name].fusion == "softmax")
            if step is None:  # the summary reports where T is now; a step reports its mean
                stats.T = float(self.blocks[name].get_T().detach())
            out.append(stats)
        return out

    def step(self) -> list[BlockStats]:
        """Close the current step: reduce its counters over ranks, append them to history, reset them.

        Under torch.distributed every rank must call it (it runs collectives), like any all_reduce.
        """
        stats = self._collect(self.steps)
        self.history.extend(stats)
        self.steps += 1
        if self.collapse_alarm:
            self._check_collapse(stats)
        return stats

    def _check_collapse(self, stats: list[BlockStats]) -> None:
        """Track each block's run of collapsed steps; warn once when a run reaches collapse_epochs."""
        for s in stats:
            side = s.collapsed(self.collapse_share) if s.samples else None
            run = self._runs.get(s.block)
            if side is None:
                self._runs.pop(s.block, None)
                continue
            if run is None or run[0] != side:
                run = self._runs[s.block] = (side, s.step or 0)
            if s.block in self.collapsed or (s.step or 0) - run[1] + 1 < self.collapse_epochs:
                continue
            self.collapsed[s.block] = run
            if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
                continue
            share = s.w_avg_high if side == "avg" else s.w_avg_low
            limit = f"w_avg > {self.high:g}" if side == "avg" else f"w_avg < {self.low:g}"
            warnings.warn(
                f"cafusion: FusionMonitor: block {s.block!r}: the router has collapsed onto {side} "
                f"since epoch {run[1] + 1} "
                f"({limit} for {100 * (share or 0.0):.1f}% of samples, {self.collapse_epochs} consecutive steps); "
                "the results suggest sum fusion (fusion='sum') computes the same gate cheaper; see docs/router.md",
                RouterCollapseWarning,
                stacklevel=3,
            )

    def summary(self) -> list[BlockStats]:
        """Per-block stats over every forward since creation or ``reset()``, reduced over ranks.

        Under torch.distributed every rank must call it, as for ``step()``.
        """
        return self._collect(None)

    def reset(self) -> None:
        """Forget every counter and the history (the hooks stay as they are)."""
        for c in self._counters.values():
            c.clear()
        self.history.clear()
        self.steps = 0
        self.collapsed.clear()
        self._runs.clear()

    def summary_table(self, stats: list[BlockStats] | None = None) -> str:
        """A fixed-width text table of ``stats`` (default: ``summary()``), one row per block."""
        from cafusion.diagnostics.table import format_table

        return format_table(self.summary() if stats is None else stats, low=self.low, high=self.high)

    # -- output --------------------------------------------------------------------------------
    def to_json(self, path: str | Path) -> Path:
        """Summary and history as JSON (see ``cafusion.diagnostics.export``)."""
        from cafusion.diagnostics.export import to_json

        return to_json(self, path)

    def to_csv(self, path: str | Path) -> Path:
        """History (one row per step and block) as CSV."""
        from cafusion.diagnostics.export import to_csv

        return to_csv(self, path)

    def save_plots(
        self,
        folder: str | Path,
        prefix: str = "",
        *,
        stats: list[BlockStats] | None = None,
        x_label: str = "monitor step",
    ) -> list[Path]:
        """Write the three figures (w_avg histograms, w_avg per class, T and saturation per step) as PNGs.

        ``stats`` is a ``summary()`` taken already: under torch.distributed every rank must take it
        (a collective) and then only rank 0 calls this to write. ``x_label`` names what a step is.
        """
        from cafusion.diagnostics.plots import plot_class_means, plot_fusion_histograms, plot_training_curves

        if not isinstance(x_label, str):
            raise TypeError(f"x_label must be a string, got {type(x_label).__name__}")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        stats = self.summary() if stats is None else stats
        return [
            plot_fusion_histograms(stats, out / f"{prefix}fusion_hist.png"),
            plot_class_means(stats, out / f"{prefix}class_w_avg.png"),
            plot_training_curves(
                self.history, out / f"{prefix}training_curves.png", x_label=x_label, limits=(self.low, self.high)
            ),
        ]

    def log_tensorboard(self, writer: Any, step: int | None = None) -> None:
        """Log the last closed step to a ``torch.utils.tensorboard.SummaryWriter``."""
        from cafusion.diagnostics.export import log_tensorboard

        last = [s for s in self.history if s.step == self.steps - 1]
        log_tensorboard(last, writer, self.steps - 1 if step is None else step)
