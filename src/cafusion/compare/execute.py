"""Run the pending runs of a plan: one at a time, or ``jobs`` at once in worker processes.

Workers split the machine's cores between them (``torch.set_num_threads``) so N jobs do not
oversubscribe it. A run's result file is written by the worker as soon as the run finishes, so an
interruption loses at most the runs in flight; the next invocation skips every finished one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cafusion.compare.plan import RunSpec, write_result

Printer = Callable[[str], None]


def threads_per_job(jobs: int, threads: int | None) -> int:
    """``threads`` if given, else the cores split evenly over the jobs (at least 1)."""
    if threads is not None:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // jobs)


def _run_one(spec: RunSpec, out: str, threads: int | None, progress: bool) -> dict[str, Any]:
    import torch

    from cafusion.compare.runner import train_run

    if threads is not None:
        torch.set_num_threads(threads)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.config.epochs, desc=spec.run_id, unit="epoch", leave=False)
    try:
        result = train_run(spec, on_epoch=(lambda _: bar.update()) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    write_result(Path(out), spec, result)
    return result


def _summary(result: dict[str, Any]) -> str:
    return (
        f"{result['run_id']}: test acc {100 * result['test_acc']:.2f}% "
        f"({result['seconds_per_epoch']:.3f} s/epoch, best epoch {result['best_epoch']})"
    )


def execute(
    runs: list[RunSpec],
    out: Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    progress: bool | None = None,
    printer: Printer = print,
) -> int:
    """Run ``runs`` (all pending), writing each result under ``out``; returns the number run."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not runs:
        return 0
    overall: Any = None
    if progress:
        from tqdm.auto import tqdm

        overall = tqdm(total=len(runs), desc="runs", unit="run")
    try:
        if jobs == 1:
            for spec in runs:
                printer(_summary(_run_one(spec, str(out), threads, progress)))
                if overall is not None:
                    overall.update()
            return len(runs)
        per_job = threads_per_job(jobs, threads)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            pending: set[Future[dict[str, Any]]] = {
                pool.submit(_run_one, spec, str(out), per_job, False) for spec in runs
            }
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        printer(_summary(future.result()))
                        if overall is not None:
                            overall.update()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return len(runs)
    finally:
        if overall is not None:
            overall.close()
