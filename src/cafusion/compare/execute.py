"""Run the pending runs of a plan: one at a time, ``jobs`` at once in worker processes, one per
device (``devices``), or as a job array on a cluster through submitit (:func:`submit`).

Workers split the machine's cores between them (``torch.set_num_threads``) so N jobs do not
oversubscribe it. A run's result file is written by the worker as soon as the run finishes, so an
interruption loses at most the runs in flight; the next invocation skips every finished one. Where a
run executes never changes its result's settings: the device is not one of them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
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


def _run_one(spec: RunSpec, out: str, threads: int | None, progress: bool, device: str | None = None) -> dict[str, Any]:
    import torch

    from cafusion.compare.runner import train_run

    if threads is not None:
        torch.set_num_threads(threads)
    if device is not None:
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, device=device))
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


def _finished(running: dict[Future[dict[str, Any]], str | None], printer: Printer) -> list[Future[dict[str, Any]]]:
    """Wait for at least one run in flight; print each finished one (raising its error, if any)."""
    done, _ = wait(running, return_when=FIRST_COMPLETED)
    for future in done:
        printer(_summary(future.result()))
    return list(done)


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
    devices: Sequence[str] = (),
    threads: int | None = None,
    progress: bool | None = None,
    printer: Printer = print,
) -> int:
    """Run ``runs`` (all pending), writing each result under ``out``; returns the number run.

    ``devices`` (e.g. cuda:0, cuda:1): one worker per device, each run on a free one; else ``jobs``
    workers on the configured device.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if not runs:
        return 0
    overall: Any = None
    if progress:
        from tqdm.auto import tqdm

        overall = tqdm(total=len(runs), desc="runs", unit="run")
    try:
        slots: list[str | None] = list(devices) or [None] * jobs
        if len(slots) == 1:
            for spec in runs:
                printer(_summary(_run_one(spec, str(out), threads, progress, slots[0])))
                if overall is not None:
                    overall.update()
            return len(runs)
        per_job = threads_per_job(len(slots), threads)
        queue = list(runs)
        with ProcessPoolExecutor(max_workers=len(slots), mp_context=get_context("spawn")) as pool:
            running: dict[Future[dict[str, Any]], str | None] = {}
            free = list(slots)  # a device, or a place among the jobs
            try:
                while queue or running:
                    while queue and free:
                        slot = free.pop(0)
                        running[pool.submit(_run_one, queue.pop(0), str(out), per_job, False, slot)] = slot
                    for future in _finished(running, printer):
                        free.append(running.pop(future))
                    if overall is not None:
                        overall.n = len(runs) - len(queue) - len(running)
                        overall.refresh()
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        return len(runs)
    finally:
        if overall is not None:
            overall.close()


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where and how big each task of a submitit job array is (``--executor`` and its options)."""

    executor: str  # "slurm", or "local": submitit's LocalExecutor, the same path on this machine
    partition: str | None = None
    time_min: int = 60
    cpus: int = 1
    gpus: int = 0
    parallel: int | None = None  # tasks of the array at once (Slurm's %N); None: the scheduler's choice


def require_submitit() -> Any:
    """The submitit module, or one line naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise ImportError("--executor needs submitit: pip install 'cafusion[slurm]'") from None
    return submitit


def submit(runs: list[RunSpec], out: Path, cluster: Cluster, *, wait_for: bool = True, printer: Printer = print) -> int:
    """Submit ``runs`` as one submitit job array; with ``wait_for``, wait and print each result.

    Each task trains one run and writes its result file, exactly as a local worker does, so a
    later invocation skips what finished and ``--report-only`` merges the results.
    """
    if not runs:
        return 0
    submitit = require_submitit()
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster.executor)
    params: dict[str, Any] = {"name": "cafusion-compare", "timeout_min": cluster.time_min}
    params["cpus_per_task"] = cluster.cpus
    if cluster.gpus:
        params["gpus_per_node"] = cluster.gpus
    if cluster.partition is not None:
        params["slurm_partition"] = cluster.partition
    if cluster.parallel is not None:
        params["slurm_array_parallelism"] = cluster.parallel
    executor.update_parameters(**params)
    n = len(runs)
    jobs = executor.map_array(_run_one, runs, [str(out)] * n, [cluster.cpus] * n, [False] * n)
    printer(f"submitted {n} runs as {cluster.executor} job array {str(jobs[0].job_id).split('_')[0]}")
    if not wait_for:
        printer(f"not waiting: 'cafusion compare --report-only --out {out}' merges the results once they finish")
        return 0
    for job in jobs:
        printer(_summary(job.result()))
    return n
