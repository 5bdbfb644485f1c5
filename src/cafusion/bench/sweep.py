"""The shape sweep: the block on 1-D sequences, 2-D maps and 3-D volumes against the composite and SE.

For every shape x dtype x mode (forward without grad, training step = forward + backward into x and
the weights) the contenders run side by side in one alternation: the default path (``auto``), the
composite (``impl="reference"``), the reference file (2-D, where found), cafusion's SE block and timm's
``ChannelAttn`` (2-D). A copy of x gives the memory floor as in the block table (1.5 copies forward,
3.5 a step). The targets: the default path is never slower than the composite (within 5% without the
C++ kernels, where it is the composite), at most 1.1x SE, not slower than timm in 2-D, and the
16x256x56x56 step stays within 2x its floor.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

import torch
from torch import nn

from cafusion.bench import report
from cafusion.bench.block import SHAPES as IMAGE_SHAPES
from cafusion.bench.contenders import first, sweep_contenders
from cafusion.bench.measure import interleaved_ms
from cafusion.bench.names import RANKS
from cafusion.dispatch import cpu_kernels_ready

SHAPES: dict[str, list[tuple[int, ...]]] = {
    "1d": [(b, c, n) for b in (32, 100, 256) for c in (16, 25, 64, 256) for n in (16, 40, 200, 1000)],
    "2d": list(IMAGE_SHAPES),
    "3d": [(2, 32, 16, 32, 32)],
}
QUICK_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "1d": [(32, 16, 40), (100, 25, 200), (32, 256, 16)],
    "2d": [(1, 64, 7, 7), (4, 128, 28, 28)],
    "3d": [(1, 16, 8, 16, 16)],
}
MODES = {"forward": "fwd", "step": "step"}
FLOOR_COPIES = {"forward": 1.5, "step": 3.5}
NAMES = ("auto", "reference", "ref_file", "se", "timm")
FLOOR_SHAPE = (16, 256, 56, 56)  # the "large maps" target: step <= 2x floor, without THP
VS_REFERENCE = "auto not slower than impl=reference"
VS_REFERENCE_NO_NATIVE = "auto <= 1.05x impl=reference without the C++ kernels"
VS_SE = "auto <= 1.1x cafusion SE"
VS_TIMM = "auto not slower than timm ChannelAttn"
WITHIN_FLOOR = "16x256x56x56 step <= 2x floor"


def shapes_for(parts: list[str], quick: bool, given: list[tuple[int, ...]] | None) -> list[tuple[int, ...]]:
    """The selected parts' shapes: ``given`` (--shapes) filtered by rank, else the built-in lists."""
    ranks = {RANKS[p] for p in parts}
    if given is not None:
        return [s for s in given if len(s) - 2 in ranks]
    table = QUICK_SHAPES if quick else SHAPES
    return [s for p in parts for s in table[p]]


def row_name(row: dict[str, Any]) -> str:
    return f"{'x'.join(map(str, row['shape']))} {row['dtype']} {MODES[row['mode']]}"


def run_shape(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, repeats: int, reference: ModuleType | None
) -> list[dict[str, Any]]:
    """The forward row and the step row of one shape x dtype."""
    x = torch.randn(shape, device=device, dtype=dtype)
    y = torch.empty_like(x)
    dy = torch.randn_like(x)
    xg = x.detach().clone().requires_grad_(True)
    modules = sweep_contenders(shape[1], len(shape) - 2, dtype, device, reference)

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)

    def step(m: nn.Module) -> None:
        xg.grad = None
        m.zero_grad(set_to_none=True)
        torch.autograd.backward(first(m(xg)), dy)

    fns: dict[str, dict[str, Callable[[], object]]] = {
        "forward": {name: partial(forward, m) for name, m in modules.items()},
        "step": {name: partial(step, m) for name, m in modules.items()},
    }
    fns["forward"]["copy"] = lambda: y.copy_(x)
    times = {mode: interleaved_ms(group, device, repeats) for mode, group in fns.items()}
    copy_ms = times["forward"].pop("copy")
    rows = []
    for mode, ms in times.items():
        auto = ms["auto"]
        floor = FLOOR_COPIES[mode] * copy_ms
        ratios = {f"{name}_over_auto": ms[name] / auto for name in ms if name != "auto"}
        ratios["auto_over_floor"] = auto / floor
        rows.append(
            {
                "shape": list(shape),
                "rank": len(shape) - 2,
                "dtype": report.dtype_name(dtype),
                "mode": mode,
                "ms": ms,
                "floor_ms": floor,
                "ratios": ratios,
            }
        )
    return rows


def check_targets(rows: list[dict[str, Any]], native: bool = True) -> list[dict[str, Any]]:
    """Per row: auto <= composite (<= 1.05x without the C++ kernels, where auto is the composite),
    auto <= 1.1x SE (se/auto >= 0.909), auto <= timm (2-D); the large map's step within 2x floor."""
    out = []
    for row in rows:
        name, ratios = row_name(row), row["ratios"]
        if native:
            out.append(report.target("sweep", VS_REFERENCE, name, ratios["reference_over_auto"], 1.0, True))
        else:
            out.append(report.target("sweep", VS_REFERENCE_NO_NATIVE, name, ratios["reference_over_auto"], 0.952, True))
        out.append(report.target("sweep", VS_SE, name, ratios["se_over_auto"], 0.909, True))
        if "timm_over_auto" in ratios:
            out.append(report.target("sweep", VS_TIMM, name, ratios["timm_over_auto"], 1.0, True))
        if tuple(row["shape"]) == FLOOR_SHAPE and row["mode"] == "step":
            out.append(report.target("sweep", WITHIN_FLOOR, name, ratios["auto_over_floor"], 2.0, False))
    return out


def _ratio(ratios: dict[str, float], key: str) -> str:
    return f"{ratios[key]:.2f}" if key in ratios else "-"


def format_table(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    """Median ms per contender, the ratios of the others to auto (> 1: auto is faster) and the verdicts."""
    head = [
        "shape",
        "dtype",
        "mode",
        *NAMES,
        "ref/auto",
        "se/auto",
        "timm/auto",
        "auto/floor",
        "<=ref",
        "<=se",
        "<=timm",
    ]
    lines = []
    for row in rows:
        ms, ratios, name = row["ms"], row["ratios"], row_name(row)
        lines.append(
            [
                "x".join(map(str, row["shape"])),
                row["dtype"],
                MODES[row["mode"]],
                *(f"{ms[n]:.3f}" if n in ms else "-" for n in NAMES),
                _ratio(ratios, "reference_over_auto"),
                _ratio(ratios, "se_over_auto"),
                _ratio(ratios, "timm_over_auto"),
                _ratio(ratios, "auto_over_floor"),
                report.verdict(targets, VS_REFERENCE, name)
                if report.verdict(targets, VS_REFERENCE, name) != "-"
                else report.verdict(targets, VS_REFERENCE_NO_NATIVE, name),
                *(report.verdict(targets, kind, name) for kind in (VS_SE, VS_TIMM)),
            ]
        )
    return report.table(head, lines)


def run(
    args: argparse.Namespace, device: torch.device, reference: ModuleType | None, progress: Any = print
) -> report.Part:
    """Every sweep shape x dtype of ``args``; ``progress`` gets one line per finished shape."""
    rows: list[dict[str, Any]] = []
    for shape in args.sweep_shapes:
        for dtype in args.dtype_list:
            rows += run_shape(shape, dtype, device, args.repeats, reference)
            progress(f"sweep: done {'x'.join(map(str, shape))} {report.dtype_name(dtype)}")
    targets = check_targets(rows, native=device.type != "cpu" or cpu_kernels_ready())
    title = "sweep: median ms; auto = ChannelAttentionFusionTLayer(C, reduction=4) on its default path"
    return report.Part("sweep", title, rows, targets, format_table(rows, targets))
