"""Profile of the CPU fast path, piece by piece: each big-tensor pass in the C++ kernels against the
PyTorch primitives (and with the output cache off), and the per-call costs that decide tiny maps.

The block benchmark (``make bench``) times whole blocks; this script says where their time goes, so
that the figures in docs/performance.md can be re-measured:

    python scripts/profile_native.py --out bench-results/profile-native

Prints one table per shape and writes ``profile.json``. Times are medians in ms (per-call costs in µs).
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

from cafusion import ChannelAttentionFusionT
from cafusion.kernels import op
from cafusion.kernels.backends import native
from cafusion.kernels.backends.pytorch import passes as cpu

SHAPES = ["16x256x56x56", "16x1024x14x14", "16x2048x7x7", "1x64x7x7", "1x256x14x14"]


def median_s(fn: Callable[[], object], repeats: int, inner: int = 1) -> float:
    """Median seconds per call over ``repeats`` timings of ``inner`` back-to-back calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def passes(shape: tuple[int, ...], layout: str, repeats: int) -> dict[str, float]:
    """ms per pass: copy yardsticks, the kernels' four passes (cache on and off), the PyTorch ones."""
    lib = native.library()
    assert lib is not None, "the native kernels did not build"
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x3, dy3 = x.flatten(2), torch.randn_like(x).flatten(2)
    y = torch.empty_like(x)
    ca = torch.rand(shape[:2])
    _, _, idx = lib.pool_stats(x3, True)
    ms = {
        "copy": median_s(lambda: y.copy_(x), repeats),
        "new+copy": median_s(lambda: torch.empty_like(x).copy_(x), repeats),
        "native pool_stats": median_s(lambda: lib.pool_stats(x3, True), repeats),
        "native scale": median_s(lambda: lib.scale(x3, ca), repeats),
        "native grad_ca": median_s(lambda: lib.grad_ca(dy3, x3), repeats),
        "native grad_input": median_s(lambda: lib.grad_input(dy3, ca, ca, ca, idx), repeats),
    }
    with native.cache_disabled():
        ms["native scale, cache off"] = median_s(lambda: lib.scale(x3, ca), repeats)
        ms["native grad_input, cache off"] = median_s(lambda: lib.grad_input(dy3, ca, ca, ca, idx), repeats)
    ms["torch pool_stats"] = median_s(lambda: cpu.pool_stats(x3, True), repeats)
    ms["torch scale"] = median_s(lambda: cpu.scale(x3, ca), repeats)
    ms["torch grad_ca"] = median_s(lambda: cpu.grad_ca(dy3, x3), repeats)
    ms["torch grad_input"] = median_s(lambda: cpu.grad_input(dy3, ca, ca, ca, idx), repeats)
    return {k: 1e3 * v for k, v in ms.items()}


def calls(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """µs per call of the pieces of one block call: module, kernels alone, and bare autograd."""
    lib = native.library()
    assert lib is not None
    block = ChannelAttentionFusionT(shape[1])
    x = torch.randn(shape)
    xg = x.clone().requires_grad_(True)
    dy = torch.randn(shape)
    r1, r2 = block._router_layers()
    assert r1 is not None and r2 is not None
    params = [block.fc1.weight, block.fc1.bias, block.fc2.weight, block.fc2.bias]
    params += [r1.weight, r1.bias, r2.weight, r2.bias, block.get_T()]
    leaves = list(block.parameters())
    grads = [torch.randn_like(p) for p in leaves]

    class Identity(torch.autograd.Function):  # autograd's own cost for a node with the block's inputs
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (g, *grads)

    def step() -> None:
        block(xg)[0].backward(dy)

    def bare_step() -> None:
        Identity.apply(xg, *leaves).backward(dy)

    config = {"fusion": "softmax", "gate": "sigmoid", "act": "relu"}  # the block's defaults
    named = dict(zip(PARAM_NAMES, params, strict=True))
    fwd_args = schema_order(op.caft_forward, x=x, **named, **config, need_index=True)
    with torch.no_grad():
        _, _, _, avg, mx, idx = lib.forward(*fwd_args)
        stats = {"avg": avg, "mx": mx, "idx": idx}
        bwd_args = schema_order(op.caft_backward, dy=dy, x=x, **stats, **named, **config, need_x=True)
        us = {
            "module forward (no grad)": median_s(lambda: block(x), repeats, 200),
            "kernels forward call": median_s(lambda: lib.forward(*fwd_args), repeats, 200),
            "kernels backward call": median_s(lambda: lib.backward(*bwd_args), repeats, 200),
        }
    us["module training step"] = median_s(step, repeats, 100)
    us["empty autograd.Function step, same inputs"] = median_s(bare_step, repeats, 100)
    return {k: 1e6 * v for k, v in us.items()}


PARAM_NAMES = ("fc1_w", "fc1_b", "fc2_w", "fc2_b", "r1_w", "r1_b", "r2_w", "r2_b", "temperature")


def schema_order(overload: Any, **named: Any) -> list[Any]:
    """Positional arguments of the op (the native entry points take the same) from their names, in the
    schema's order; optional ones not named are None."""
    args = [named.pop(a.name, None) for a in overload._schema.arguments]
    assert not named, f"not in the schema of {overload}: {sorted(named)}"
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated BxCxHxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="bench-results/profile-native", help="folder for profile.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "cases": []}
    for text in args.shapes.split(","):
        shape = tuple(int(v) for v in text.split("x"))
        for layout in ("contiguous", "channels_last") if len(shape) == 4 else ("contiguous",):
            case = {"shape": text, "layout": layout, "ms": passes(shape, layout, args.repeats)}
            report["cases"].append(case)
            print(f"{text} {layout} (ms)")
            for name, value in case["ms"].items():
                print(f"  {name:32s} {value:9.3f}")
        if len(shape) == 4 and shape[0] * shape[1] * shape[2] * shape[3] <= 1 << 16:
            per_call = calls(shape, args.repeats)
            report["cases"].append({"shape": text, "calls_us": per_call})
            print(f"{text} per call (µs)")
            for name, value in per_call.items():
                print(f"  {name:42s} {value:9.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'profile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
