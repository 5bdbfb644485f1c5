"""Where a padded batch's time goes on the CPU: the figures behind docs/performance.md "Padded batches".

Two probes, each in a default process:

1. The per-call cost of the padding at a small shape: a forward of the drop-in layer with and without
   lengths, and what building the (B, L) mask in Python (``masking.valid_mask``) alone would cost.
2. Pooling rows in part: the native ``pool_stats`` over 100x256x1000 float32 without padding, with
   random lengths in [L/2, L], and with every length 750, 500 and L, on 1 and 2 threads.

    python scripts/profile_padding.py

Prints the figures and writes ``--out``/profile_padding.json. Medians of timed repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cafusion import ChannelAttentionFusionTLayer, masking
from cafusion.kernels.backends import native


def median_us(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Median µs per call over ``repeats`` timings of ``inner`` back-to-back calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times) * 1e6


def lengths_for(b: int, size: int) -> torch.Tensor:
    """The benchmark's lengths: uniform in [L/2, L] from a generator seeded with 0, sample 0 full."""
    lengths = torch.randint(size // 2, size + 1, (b,), generator=torch.Generator().manual_seed(0))
    lengths[0] = size
    return lengths


def per_call(threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    b, c, size = 32, 16, 16
    layer = ChannelAttentionFusionTLayer(c, reduction=4)
    x, lengths = torch.randn(b, c, size), lengths_for(b, size)
    with torch.no_grad():
        return {
            "forward_us": median_us(lambda: layer(x), 7, 2000),
            "forward_lengths_us": median_us(lambda: layer(x, lengths), 7, 2000),
            "valid_mask_us": median_us(lambda: masking.valid_mask(x, lengths), 7, 2000),
        }


def pooling(threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    lib = native.library()
    assert lib is not None, "the native CPU kernels did not build"
    b, c, size = 100, 256, 1000
    x = torch.randn(b, c, size)
    cases: dict[str, torch.Tensor | None] = {
        "unpadded": None,
        "random [L/2, L]": lengths_for(b, size),
        "all 750": torch.full((b,), 750),
        "all 500": torch.full((b,), 500),
        "all L": torch.full((b,), size),
    }
    return {
        name: median_us(lambda v=v: lib.pool_stats(x, False) if v is None else lib.pool_stats(x, False, v), 11, 1) / 1e3
        for name, v in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-results", help="folder for profile_padding.json")
    args = parser.parse_args()
    results: dict[str, object] = {"torch": torch.__version__}
    calls = per_call(1)
    results["per_call_1_thread"] = calls
    print("32x16x16 float32, 1 thread, µs: " + ", ".join(f"{k} {v:.1f}" for k, v in calls.items()))
    for threads in (1, 2):
        pools = pooling(threads)
        results[f"pool_100x256x1000_ms_{threads}_threads"] = pools
        print(
            f"pool_stats 100x256x1000 float32, {threads} thread(s), ms: "
            + ", ".join(f"{k} {v:.2f}" for k, v in pools.items())
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_padding.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'profile_padding.json'}")


if __name__ == "__main__":
    main()
