"""Padded batches: the block with ``lengths`` against itself without, over the 1-D sweep's shapes.

Issue 12 asks that a mask costs little: with lengths, forward and training step stay within 10% of
the unmasked default path at the same shape. Per shape x dtype x mode three contenders run in one
alternation: ``unmasked`` (``auto``, no lengths), ``masked`` (``auto`` with lengths) and
``reference`` (the composite, ``impl="reference"``, with the same lengths), all with the same
weights. The lengths are drawn once per shape from a seeded generator, uniform in [L//2, L], with
sample 0 at full length, so every run times the same padding.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from cafusion.bench import report, sweep
from cafusion.bench.contenders import REDUCTION
from cafusion.bench.measure import interleaved_ms

SHAPES = sweep.SHAPES["1d"]
QUICK_SHAPES = [(32, 16, 40), (100, 25, 200)]
SEED = 0
LIMIT = 1.10
KIND = f"masked <= {LIMIT:.2f}x unmasked"
NAMES = ("unmasked", "masked", "reference")


def draw_lengths(batch: int, length: int, device: torch.device) -> Tensor:
    """Seeded lengths (B,) uniform in [L//2, L] (at least 1), sample 0 at full length L."""
    generator = torch.Generator().manual_seed(SEED)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=generator)
    lengths[0] = length
    return lengths.to(device)


def run_shape(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """The forward row and the step row of one (B, C, L) x dtype."""
    from cafusion import ChannelAttentionFusionTLayer

    batch, channels, length = shape
    auto = ChannelAttentionFusionTLayer(channels, reduction=REDUCTION)
    composite = ChannelAttentionFusionTLayer(channels, reduction=REDUCTION, impl="reference")
    composite.load_state_dict(auto.state_dict())
    auto, composite = auto.to(device, dtype), composite.to(device, dtype)
    lengths = draw_lengths(batch, length, device)
    x = torch.randn(shape, device=device, dtype=dtype)
    dy = torch.randn_like(x)
    xg = x.detach().clone().requires_grad_(True)
    calls: dict[str, tuple[nn.Module, Tensor | None]] = {
        "unmasked": (auto, None),
        "masked": (auto, lengths),
        "reference": (composite, lengths),
    }

    def forward(m: nn.Module, lens: Tensor | None) -> None:
        with torch.no_grad():
            m(x, lens)

    def step(m: nn.Module, lens: Tensor | None) -> None:
        xg.grad = None
        m.zero_grad(set_to_none=True)
        torch.autograd.backward(m(xg, lens), dy)

    fns: dict[str, dict[str, Callable[[], object]]] = {
        "forward": {name: partial(forward, *call) for name, call in calls.items()},
        "step": {name: partial(step, *call) for name, call in calls.items()},
    }
    padding = {
        "seed": SEED,
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "valid_fraction": round(float(lengths.sum()) / (batch * length), 4),
    }
    rows = []
    for mode, group in fns.items():
        ms = interleaved_ms(group, device, repeats)
        ratios = {
            "masked_over_unmasked": ms["masked"] / ms["unmasked"],
            "reference_over_masked": ms["reference"] / ms["masked"],
        }
        row = {"shape": list(shape), "dtype": report.dtype_name(dtype), "mode": mode, "lengths": padding}
        rows.append({**row, "ms": ms, "ratios": ratios})
    return rows


def format_table(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    """Median ms per contender, the two ratios and the verdict of the 10% target."""
    head = ["shape", "dtype", "mode", *NAMES, "masked/unmasked", "ref/masked", f"<={LIMIT:.2f}x"]
    lines = [
        [
            "x".join(map(str, row["shape"])),
            row["dtype"],
            sweep.MODES[row["mode"]],
            *(f"{row['ms'][n]:.3f}" for n in NAMES),
            f"{row['ratios']['masked_over_unmasked']:.2f}",
            f"{row['ratios']['reference_over_masked']:.2f}",
            report.verdict(targets, KIND, sweep.row_name(row)),
        ]
        for row in rows
    ]
    return report.table(head, lines)


def run(args: argparse.Namespace, device: torch.device, progress: Any = print) -> report.Part:
    """Every padded shape x dtype of ``args``; ``progress`` gets one line per finished shape."""
    rows: list[dict[str, Any]] = []
    for shape in args.padded_shapes:
        for dtype in args.dtype_list:
            rows += run_shape(shape, dtype, device, args.repeats)
            progress(f"padded: done {'x'.join(map(str, shape))} {report.dtype_name(dtype)}")
    targets = [
        report.target("padded", KIND, sweep.row_name(r), r["ratios"]["masked_over_unmasked"], LIMIT, False)
        for r in rows
    ]
    title = (
        "padded: median ms; ChannelAttentionFusionTLayer(C, reduction=4) without lengths (unmasked), "
        f"with lengths in [L//2, L] (masked), impl='reference' with them (reference); seed {SEED}"
    )
    return report.Part("padded", title, rows, targets, format_table(rows, targets))
