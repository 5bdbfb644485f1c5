"""Measure the rules the native CPU backend applies at run time, so docs/performance.md can cite them.

1. The small (B, C) path's matrix products: as loops up to ``loop_macs`` multiply-adds, as ATen's matmul
   (MKL) above. Times the block's forward (no grad) and training step with the threshold set to each of
   THRESHOLDS (0: every product through the matmul; "all": every product as loops).
2. Short-row pooling: AVX-512 gathers vs row by row (the rule is measured per machine at load time by
   ``choose_pool_variant``; this prints both timings and the choice).

Wall clock in this process's default threads (run it on an idle machine), medians of seven.
Prints a table and writes JSON: ``python scripts/small_path_rule.py [--out bench-results]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cafusion import ChannelAttentionFusionTLayer
from cafusion.kernels.backends import native

SHAPES = [
    (1, 64, 7, 7),
    (4, 64, 20),
    (8, 25, 40),
    (32, 16, 40),
    (32, 64, 16),
    (100, 25, 10),
    (100, 64, 40),
    (256, 256, 16),
    (16, 1024, 14, 14),
]
THRESHOLDS = (0, 1024, 4096, 16384, 65536, 1 << 40)


# Short float32 rows, where the two pooling variants differ most (both give the same bits).
POOL_SHAPES = [(64, 256, 49), (16, 256, 196), (4, 256, 784)]


def median_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    for _ in range(max(5, calls // 10)):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def label(threshold: int) -> str:
    return "all" if threshold >= 1 << 40 else str(threshold)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-results", help="folder for small_path_rule.json")
    parser.add_argument("--shapes", help="comma-separated BxCx..., instead of the default list")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    lib = native.library()
    if lib is None:
        print("the native CPU kernels are not available here")
        return 1
    default = lib.loop_macs()
    rows = []
    print(f"small path, block forward / training step in us, by the largest product run as loops (default {default}):")
    print(f"{'shape':>18} " + " ".join(f"{label(t):>13}" for t in THRESHOLDS))
    for shape in shapes:
        x = torch.randn(*shape)
        block = ChannelAttentionFusionTLayer(shape[1], reduction=4)
        xg = x.clone().requires_grad_(True)
        timing = {}
        calls = max(20, min(2000, int(2e7 // x.numel())))
        for threshold in THRESHOLDS:
            lib.set_loop_macs(threshold)
            with torch.no_grad():
                fwd = median_us(lambda: block(x), calls)  # noqa: B023
            step = median_us(lambda: block(xg).sum().backward(), max(10, calls // 3))  # noqa: B023
            timing[label(threshold)] = (fwd, step)
        lib.set_loop_macs(default)
        rows.append({"shape": list(shape), "us": timing})
        cells = " ".join(f"{f:6.0f}/{s:6.0f}" for f, s in timing.values())
        print(f"{'x'.join(map(str, shape)):>18} {cells}")
    chosen, limit = lib.gather_rows(), lib.gather_max_n()
    lib.set_gather_max_n(1024)
    pool = {}
    for shape in POOL_SHAPES:
        x3 = torch.randn(*shape)
        for gathers in (False, True):
            lib.set_gather_rows(gathers)
            pool[f"{shape[2]}:{'gathers' if gathers else 'rows'}"] = median_us(lambda: lib.pool_stats(x3, True), 20)  # noqa: B023
        print(
            f"pool_stats {shape} fp32: row by row {pool[f'{shape[2]}:rows']:.1f} us, "
            f"gathers {pool[f'{shape[2]}:gathers']:.1f} us"
        )
    lib.set_gather_rows(chosen)
    lib.set_gather_max_n(limit)
    print(
        f"this process pools rows up to {limit} positions through the gathers (measured, or {native.GATHER_ENV})"
        if chosen
        else f"this process pools every row without the gathers (measured, or {native.GATHER_ENV}=0)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "small_path": rows,
        "pool_us": pool,
        "gathers_chosen": chosen,
        "gather_max_n": limit,
        "threads": torch.get_num_threads(),
        "loop_macs": default,
    }
    (out / "small_path_rule.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
