"""Where the time of one small block call goes: the layer, the op, the C++ kernels alone, SE.

For each shape (default 100x25x10, the MNIST-1D CNN's first block, and 32x25x40) it prints, in µs
(2 threads, wall clock, median of five loops): the drop-in layer's forward, ``op.run`` (the op without
the layer's Python path), the op called through ``torch.ops``, the native library called directly,
its pooling and scale passes alone, cafusion's SE forward, and the training step of the layer and
of SE. docs/performance.md ("Short of the targets") quotes it:
``python scripts/small_block_time.py [--shapes 100x25x10,32x25x40]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import cafusion
from cafusion import dispatch
from cafusion.kernels import op
from cafusion.kernels.backends import native
from cafusion.kernels.contract import Options, Weights


def median_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(50):
        fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def step_of(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        torch.autograd.backward(module(x), dy)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="100x25x10,32x25x40", help="comma-separated BxCx...")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not dispatch.cpu_kernels_ready():
        parser.error("the native CPU kernels are not available here")
    lib = native.library()
    assert lib is not None
    opts = Options("softmax", "sigmoid", "relu")
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        x, dy = torch.randn(shape), torch.randn(shape)
        caft = cafusion.ChannelAttentionFusionTLayer(shape[1], reduction=4)
        se = cafusion.create_attention("se", shape[1])
        w = Weights.build(caft._tensors(), caft.get_T(), x)
        flat = (x, None, *w, *opts)
        ca = torch.rand(shape[0], shape[1])
        with torch.no_grad():
            row = {
                "layer fwd": median_us(lambda: caft(x), 2000),  # noqa: B023
                "op.run": median_us(lambda: op.run(x, w, opts), 2000),  # noqa: B023
                "torch.ops": median_us(lambda: op.caft_forward(*flat, False), 2000),  # noqa: B023
                "C++ fwd": median_us(lambda: lib.forward(*flat, False), 2000),  # noqa: B023
                "pool": median_us(lambda: lib.pool_stats(x.flatten(2), False), 2000),  # noqa: B023
                "scale": median_us(lambda: lib.scale(x, ca), 2000),  # noqa: B023
                "se fwd": median_us(lambda: se(x), 2000),  # noqa: B023
            }
        xg = x.clone().requires_grad_(True)
        row["layer step"] = median_us(step_of(caft, xg, dy), 500)
        row["se step"] = median_us(step_of(se, xg, dy), 500)
        print(text, "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
