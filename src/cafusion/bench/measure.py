"""Timing and peak-memory measurement for the benchmarks.

Times are medians of repeated calls after a warm-up (the median resists the odd slow run on a busy
machine better than the mean); CUDA work is synchronised before the clock is read. Peak memory of
a step is what the step allocates on top of what existed before it: CUDA's allocator statistics on
a GPU, the profiler's allocation events on the CPU (the CPU allocator keeps no statistics).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2, clock: str = "wall"
) -> float:
    """Median time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls.

    ``clock="thread"`` reads the calling thread's CPU time instead of the wall clock: on a shared
    machine it leaves out the time the process waited for a core (meaningful with one torch thread).
    """
    now = time.thread_time if clock == "thread" else time.perf_counter
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        _sync(device)
        times.append(now() - start)
    return 1e3 * statistics.median(times)


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (MiB) that one call of ``fn`` holds above what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    from cafusion.kernels import native

    # cafusion's CPU kernels reuse freed output buffers outside torch's allocator, where the profiler
    # cannot see them; without the cache every buffer of the step is counted.
    with native.cache_disabled(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    results = prof.profiler.kineto_results
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20
