"""Timing and peak-memory measurement for the benchmarks.

Contenders are timed in alternation (round r runs each once, in an order rotated by r), so that a
slow spell of a shared machine, a frequency change or the allocator warming up hits all of them
alike; each one's time is the median of its rounds, which resists the odd slow round. A call much
shorter than a millisecond is repeated within a round so that the clock's resolution and the loop
cost do not dominate it. CUDA work is synchronised before the clock is read.

Peak memory of a step is what the step allocates on top of what existed before it: CUDA's allocator
statistics on a GPU, the profiler's allocation events on the CPU (the CPU allocator keeps no statistics).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

MIN_SAMPLE_S = 1e-3  # each timed sample lasts at least this long (short calls are repeated)
MAX_CALLS_PER_SAMPLE = 200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(
    fns: Mapping[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    warmup: int = 2,
    clock: str = "wall",
) -> dict[str, float]:
    """Median milliseconds per call of each ``fns[name]()``, the contenders alternated round by round.

    ``clock="thread"`` reads the calling thread's CPU time instead of the wall clock: on a shared
    machine it leaves out the time the process waited for a core (meaningful with one torch thread).
    """
    now = time.thread_time if clock == "thread" else time.perf_counter
    names = list(fns)
    calls: dict[str, int] = {}
    for name in names:  # warm up; the last warm-up call sizes the samples
        once = 0.0
        for _ in range(max(1, warmup)):
            start = now()
            fns[name]()
            _sync(device)
            once = max(now() - start, 1e-9)
        calls[name] = max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(MIN_SAMPLE_S / once)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], calls[name]
            start = now()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append((now() - start) / n)
    return {name: 1e3 * statistics.median(times) for name, times in samples.items()}


def _output_cache_off() -> contextlib.AbstractContextManager[Any]:
    """cafusion's CPU kernels may reuse freed output buffers outside torch's allocator, where the
    profiler cannot see them; switching that cache off (a no-op without the library) counts every buffer."""
    from cafusion.kernels.backends import native

    return native.cache_disabled()


# What torch's profiler (libkineto, c10) prints on its own while it runs on a CPU-only machine: start/stop
# markers, a failed GPU probe, and a note about blocks allocated before it started. None is about the run.
_PROFILER_CHATTER = re.compile(
    r"^(USDT:.*SyncActivityProfilerHandler|ERROR:.*gpuGetDeviceCount failed|\[W.*CPUAllocator.*profiling started)"
)


@contextlib.contextmanager
def _profiler_chatter_off() -> Iterator[None]:
    """Route file descriptor 2 to a temporary file while the profiler runs; print back every other line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if not _PROFILER_CHATTER.match(line):
                    print(line, file=sys.stderr)


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

    cpu = [ProfilerActivity.CPU]
    with _profiler_chatter_off(), _output_cache_off(), profile(activities=cpu, profile_memory=True) as prof:
        fn()
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    results = prof.profiler.kineto_results
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20
