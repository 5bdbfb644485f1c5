"""The demo's study: five attention blocks in one small CNN, trained on scikit-learn's digits.

The data (1797 8x8 images, 10 classes, bundled with scikit-learn) is split once with a fixed seed.
Every variant trains from the same seeds with deterministic algorithms, so a run is reproducible bit
for bit on one machine. ``cafusion demo`` (``cli/demo.py``) runs it and prints; ``cli/demo_report.py``
writes the report; ``compare`` and ``export`` reuse the data (``load_digits``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# (name, registry attention, attention kwargs, description): the five blocks of the comparison.
VARIANTS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("none", "none", {}, "no attention"),
    ("se", "se", {}, "squeeze-and-excitation"),
    ("cbam", "cbam", {}, "CBAM channel attention"),
    ("caft_sum", "caft_sum", {}, "ChannelAttentionFusionT, sum fusion"),
    ("caft_softmax_T", "caft", {"learnable_temperature": True}, "ChannelAttentionFusionT, softmax fusion, learnable T"),
)
MONITORED = ("caft_sum", "caft_softmax_T")
DIAGNOSED = "caft_softmax_T"
FULL = {"epochs": 12, "seeds": 3}
QUICK = {"epochs": 2, "seeds": 1}


# -- data -------------------------------------------------------------------------------------------
@dataclass
class Digits:
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


def load_digits(limit: int | None = None) -> Digits:
    """The bundled digits as (N, 1, 8, 8) float tensors scaled to [0, 1]; a fixed stratified 80/20 split."""
    import torch
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    data = sk_load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=data.target)
    if limit is not None:
        idx_train = idx_train[:limit]
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


# -- training ---------------------------------------------------------------------------------------
@dataclass
class RunResult:
    variant: str
    seed: int
    accuracy: float
    loss: float
    params: int
    epoch_seconds: list[float]
    model: Any = None
    history: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the run; the caller's settings come back after.

    One thread is the default: these models are far too small to gain from more, and on a busy
    machine OpenMP threads waiting on each other made a step 50x slower in our measurements.
    """
    import torch

    before, before_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(before_threads)


def accuracy(model: Any, x: Any, y: Any, batch: int = 512, monitor: Any = None) -> float:
    """Eval-mode accuracy; an attached ``monitor`` also gets the labels of each batch."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            if monitor is not None:
                monitor.set_labels(y[i : i + batch])
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(y)


def train_one(
    variant: str, attention: str, kwargs: dict[str, Any], seed: int, data: Digits, args: Any, bar: Any
) -> RunResult:
    """Train one variant from one seed; the monitored variants record one monitor step per epoch.

    The monitor is attached only for an untimed pass over the training set after each epoch (eval
    mode), so the seconds per epoch compare the blocks themselves, not the blocks plus the monitor.
    """
    import torch
    import torch.nn.functional as F

    from cafusion.diagnostics import FusionMonitor
    from cafusion.models import SmallCNN

    torch.manual_seed(seed)
    model = SmallCNN(1, 10, attention=attention, attention_kwargs=kwargs, widths=(32, 64))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    monitor = FusionMonitor(model, num_classes=10, attach=False) if variant in MONITORED else None
    n = len(data.y_train)
    times: list[float] = []
    loss_sum = torch.zeros(())
    for _ in range(args.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        for i in range(0, n, args.batch_size):
            idx = order[i : i + args.batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            loss_sum += loss.detach() * len(idx)
        times.append(time.perf_counter() - start)
        if monitor is not None:
            with monitor:
                accuracy(model, data.x_train, data.y_train, monitor=monitor)
            monitor.step()
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss_sum) / n:.3f}")
    history = list(monitor.history) if monitor is not None else []
    acc = accuracy(model, data.x_test, data.y_test)
    return RunResult(variant, seed, acc, float(loss_sum) / n, params, times, model, history)


def diagnose(model: Any, data: Digits) -> Any:
    """FusionMonitor over the test split in eval mode, with labels: the post-training diagnosis."""
    from cafusion.diagnostics import FusionMonitor

    with FusionMonitor(model, num_classes=10) as mon:
        accuracy(model, data.x_test, data.y_test, monitor=mon)
    return mon


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
