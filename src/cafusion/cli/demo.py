"""``cafusion demo``: train one small CNN with five attention blocks on real digits and compare them.

The data is scikit-learn's bundled handwritten digits (1797 8x8 images, 10 classes; no download),
split once with a fixed seed. Every variant trains from the same seeds with deterministic
algorithms, so a run is reproducible bit for bit on one machine. The learned-temperature softmax
block is watched by a FusionMonitor during training and on the test split, which answers the three
diagnostic questions (router preference, gate saturation, temperature drift).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cafusion.cli.errors import CLIError
from cafusion.training.demo import (
    FULL,
    MONITORED,
    QUICK,
    VARIANTS,
    RunResult,
    deterministic,
    diagnose,
    load_digits,
    train_one,
)


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
    from cafusion import dispatch
    from cafusion.kernels.backends import native

    if not native.enabled():
        return None
    started = time.perf_counter()
    dispatch.cpu_kernels_ready()
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
