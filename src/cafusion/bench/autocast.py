"""The block under bf16 autocast: a training step of the default path vs the composite.

Mixed precision is how training runs on GPUs (timm ``--amp``, Lightning ``bf16-mixed``); on the CPU
it is ``torch.autocast("cpu", dtype=torch.bfloat16)``. x and the weights stay float32 as in such a
run; autocast decides the compute dtype. Target of the issue: the default path's step at least 1.5x
faster than the composite's at the large 2-D shapes and at (32, 64, 500).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cafusion.bench import report
from cafusion.bench.contenders import REDUCTION
from cafusion.bench.measure import interleaved_ms

SHAPES = [(16, 256, 56, 56), (16, 512, 28, 28), (16, 1024, 14, 14), (16, 2048, 7, 7), (32, 64, 500)]
QUICK_SHAPES = [(4, 128, 28, 28), (8, 64, 100)]
SPEEDUP = 1.5
KIND = f"bf16 autocast step: auto >= {SPEEDUP}x impl=reference"


def shape_name(shape: list[int] | tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) + " step"


def run_shape(shape: tuple[int, ...], device: torch.device, repeats: int) -> dict[str, Any]:
    """One row: the step of ``auto`` and ``reference`` alternated, both under bf16 autocast."""
    from cafusion import ChannelAttentionFusionTLayer

    auto = ChannelAttentionFusionTLayer(shape[1], reduction=REDUCTION).to(device)
    composite = ChannelAttentionFusionTLayer(shape[1], reduction=REDUCTION, impl="reference").to(device)
    composite.load_state_dict(auto.state_dict())
    x = torch.randn(shape, device=device, requires_grad=True)
    dy = torch.randn(shape, device=device)

    def step(m: nn.Module) -> None:
        x.grad = None
        m.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = m(x)
        y.backward(dy.to(y.dtype))

    fns: dict[str, Callable[[], object]] = {"auto": lambda: step(auto), "reference": lambda: step(composite)}
    ms = interleaved_ms(fns, device, repeats)
    return {
        "shape": list(shape),
        "autocast": "bfloat16",
        "mode": "step",
        "ms": ms,
        "speedup": ms["reference"] / ms["auto"],
    }


def run(args: argparse.Namespace, device: torch.device, progress: Any = print) -> report.Part:
    """Every autocast shape of ``args``; ``progress`` gets one line per finished shape."""
    rows = []
    for shape in args.autocast_shapes:
        rows.append(run_shape(shape, device, args.repeats))
        progress(f"autocast: done {shape_name(shape)}")
    targets = [report.target("autocast", KIND, shape_name(r["shape"]), r["speedup"], SPEEDUP, True) for r in rows]
    head = ["shape", "mode", "auto", "reference", "ref/auto", f">= {SPEEDUP}x"]
    lines = [
        [
            "x".join(map(str, r["shape"])),
            "step",
            f"{r['ms']['auto']:.3f}",
            f"{r['ms']['reference']:.3f}",
            f"{r['speedup']:.2f}",
            report.verdict(targets, KIND, shape_name(r["shape"])),
        ]
        for r in rows
    ]
    title = f"autocast: median ms of a step under torch.autocast({device.type!r}, torch.bfloat16), fp32 x and weights"
    return report.Part("autocast", title, rows, targets, report.table(head, lines))
