"""What an op's autograd costs per call, by how it is registered: the measurement behind the choice of a
C++ autograd kernel for the CPU (docs/performance.md, "One operator").

A do-nothing op (it clones a (100, 25, 8) tensor) is timed three ways: an ``autograd.Function``, a
``torch.library`` op with ``register_autograd`` (Python autograd through the dispatcher), and a
``custom_op``; plus cafusion's own op (C++ autograd when the native kernels are built) on the same
shape. Forward alone and a training step (forward + backward). Median of 5 runs, 2 threads. Prints a
table and writes JSON: ``python scripts/dispatch_overhead.py [--out bench-results]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cafusion import ChannelAttentionFusionT


def _clone(x: Tensor, w: Tensor) -> Tensor:
    return x.clone()


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
    return g, None


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return g, None


def median_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(calls // 10):
        fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-results", help="folder for dispatch_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lib = torch.library.Library("cafusion_probe", "DEF")  # type: ignore[no-untyped-call]
    lib.define("g(Tensor x, Tensor w) -> Tensor")
    lib.impl("g", _clone, "CPU")
    torch.library.register_autograd("cafusion_probe::g", _backward, setup_context=_setup)
    custom = torch.library.custom_op("cafusion_probe::h", mutates_args=())(_clone)
    custom.register_autograd(_backward, setup_context=_setup)
    x, w = torch.randn(100, 25, 8), torch.randn(25, 25, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    block = ChannelAttentionFusionT(25, reduction=4, fusion="sum")
    contenders: dict[str, Callable[[Tensor], Any]] = {
        "autograd.Function": lambda t: _Function.apply(t, w),
        "library op + register_autograd": lambda t: torch.ops.cafusion_probe.g(t, w),
        "custom_op + register_autograd": lambda t: custom(t, w),
        "cafusion block (sum fusion)": lambda t: block(t)[0],
    }
    rows = []
    print(f"{'contender':>32} {'forward us':>11} {'step us':>9}")
    for name, fn in contenders.items():
        fwd = median_us(lambda fn=fn: fn(xg), 2000)
        step = median_us(lambda fn=fn: fn(xg).sum().backward(), 1000)
        rows.append({"contender": name, "forward_us": fwd, "step_us": step})
        print(f"{name:>32} {fwd:11.1f} {step:9.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dispatch_overhead.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
