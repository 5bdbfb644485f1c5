"""``cafusion demo``: train one small CNN with five attention blocks on real digits and compare them.

The data is scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes; no download),
split once with a fixed seed. Every variant trains from the same seeds with deterministic
algorithms, so a run is reproducible bit for bit on one machine. The learned-temperature softmax
block is watched by a FusionMonitor during training and on the test split, which answers the three
diagnostic questions (router preference, gate saturation, temperature drift).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cafusion.cli.errors import CLIError

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


def positive_int(text: str) -> int:
    """argparse type: an int >= 1, with a message that names what was wrong."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="train a small CNN with five attention blocks on the digits dataset and compare them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs (under a minute)")
    p.add_argument("--out", default="reports/demo", metavar="DIR", help="report folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed, seed+1, ... (default: 0)")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (default: 3, quick: 1)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default: 12, quick: 2)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="default: %(default)s")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--train-limit", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests: fewer samples
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


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
    variant: str, attention: str, kwargs: dict[str, Any], seed: int, data: Digits, args: argparse.Namespace, bar: Any
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


# -- command ----------------------------------------------------------------------------------------
def _prepare_out(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise CLIError(
            f"--out {str(out)!r}: cannot write to the output folder ({exc.strerror or exc})", code=2
        ) from None
    return out


def _require_extras() -> None:
    missing = []
    for module in ("sklearn", "matplotlib", "tqdm"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CLIError(f"the demo needs {', '.join(missing)}: pip install 'cafusion[demo]'")


def load_kernels() -> float | None:
    """Load the CPU kernels (compiling them on a fresh machine) before anything is timed; returns
    the seconds it took, or None when they are switched off. The compile is a one-time cost of the
    machine, not of any block, so it must not land in the first variant's seconds per epoch."""
    from cafusion.kernels.backends import native

    if not native.enabled():
        return None
    started = time.perf_counter()
    native.library()
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    out = _prepare_out(args.out)  # first: a bad folder fails at once, before imports and training
    _require_extras()
    from tqdm import tqdm

    preset = QUICK if args.quick else FULL
    args.epochs = args.epochs or preset["epochs"]
    args.seeds = args.seeds or preset["seeds"]
    data = load_digits(args.train_limit)
    seeds = [args.seed + i for i in range(args.seeds)]
    print(
        f"digits: {len(data.y_train)} train / {len(data.y_test)} test images (8x8, 10 classes); "
        f"{len(VARIANTS)} variants x {len(seeds)} seed(s) x {args.epochs} epoch(s); torch threads: {args.threads}",
        flush=True,
    )
    kernel_seconds = load_kernels()
    bars = not args.no_progress and sys.stderr.isatty()  # in a log, one plain line per run instead
    results: list[RunResult] = []
    with deterministic(args.threads):
        for variant, attention, kwargs, _ in VARIANTS:
            for seed in seeds:
                desc = f"{variant:<15} seed {seed}"
                with tqdm(total=args.epochs, desc=desc, unit="ep", file=sys.stderr, disable=not bars) as bar:
                    results.append(train_one(variant, attention, kwargs, seed, data, args, bar))
                if not bars and not args.no_progress:
                    r = results[-1]
                    per_epoch = sum(r.epoch_seconds) / len(r.epoch_seconds)
                    print(f"{desc}: test acc {100 * r.accuracy:.2f}% ({per_epoch:.3f} s/epoch)", flush=True)
        first = {r.variant: r for r in results if r.seed == seeds[0]}
        monitors = {name: diagnose(first[name].model, data) for name in MONITORED}

    from cafusion.cli.demo_report import build_report, comparison_rows, write_report

    report = build_report(args, data, results, monitors, first, kernel_seconds)
    print()
    print(comparison_rows(report, markdown=False))
    print()
    for name in MONITORED:
        print(f"fusion diagnostics of {name} on the test split (seed {seeds[0]}):")
        print(monitors[name].summary_table())
        print()
    for line in report["diagnosis"]["answers"]:
        print(f"- {line}")
    path = write_report(out, report, results, monitors, first)
    print(f"\nreport: {path}")
    return 0


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
