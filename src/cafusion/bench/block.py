"""The image-map table: the block (fast path) vs the reference file, timm's ChannelAttn and torch.compile.

For every shape x dtype x layout it times a plain copy of x (the bandwidth yardstick), the forward
without grad and forward+backward of each contender, and the peak memory of one training step. The
block is memory-bound, so the floor is counted in copies of x: the forward must read x twice (stats,
then scale) and write y once, 1.5 copies; forward+backward adds a pass reading dy and x and one reading
dy and writing dx, 3.5 copies. The floor leaves out allocating the outputs; the ``new+copy`` column (the
copy into a freshly allocated tensor) shows what each fresh y or dx costs.
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
from cafusion.bench.contenders import first, timm_channel_attn
from cafusion.bench.measure import interleaved_ms, peak_extra_mib

SHAPES: list[tuple[int, ...]] = [
    (16, 256, 56, 56),
    (16, 512, 28, 28),
    (16, 1024, 14, 14),
    (16, 2048, 7, 7),
    (1, 64, 7, 7),
    (1, 256, 14, 14),
]
LARGE = SHAPES[:3]  # the "large maps" of the floor targets
QUICK_SHAPES: list[tuple[int, ...]] = [(4, 128, 28, 28), (1, 64, 7, 7)]
FLOOR_COPIES = {"forward": 1.5, "forward_backward": 3.5}
MODES = tuple(FLOOR_COPIES)
NAMES = ("reference", "timm", "ref_compiled", "ours")


def contenders(
    channels: int, dtype: torch.dtype, device: torch.device, reference: ModuleType | None, compile_ref: bool
) -> dict[str, nn.Module]:
    """name -> module, all with weights in ``dtype`` (as after ``model.to(dtype)``)."""
    from cafusion import ChannelAttentionFusionT

    ours = ChannelAttentionFusionT(channels)
    out: dict[str, nn.Module] = {}
    if reference is not None:
        ref = reference.ChannelAttentionFusionT(channels).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
        out["reference"] = ref
    timm = timm_channel_attn(channels)
    if timm is not None:
        out["timm"] = timm.to(device, dtype)
    if reference is not None and compile_ref:
        out["ref_compiled"] = torch.compile(out["reference"])  # type: ignore[assignment]
    out["ours"] = ours.to(device, dtype)
    return out


def run_case(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    layout: str,
    device: torch.device,
    args: argparse.Namespace,
    reference: ModuleType | None,
) -> dict[str, Any]:
    """Time every contender on one (shape, dtype, layout), alternating them within each mode."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    y = torch.empty_like(x)
    dy = torch.randn_like(x)
    xg = x.detach().clone().requires_grad_(True)
    modules = contenders(shape[1], dtype, device, reference, args.compile)

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)

    def train_step(m: nn.Module) -> None:
        xg.grad = None
        m.zero_grad(set_to_none=True)
        torch.autograd.backward(first(m(xg)), dy)

    fwd: dict[str, Callable[[], object]] = {name: partial(forward, m) for name, m in modules.items()}
    fwd["copy"] = lambda: y.copy_(x)
    # The same copy into a freshly allocated tensor: what any block pays for its new y (and dx).
    fwd["new+copy"] = lambda: torch.empty_like(x).copy_(x)
    step: dict[str, Callable[[], object]] = {name: partial(train_step, m) for name, m in modules.items()}
    fwd_ms = interleaved_ms(fwd, device, args.repeats, clock=args.clock)
    copy_ms, fresh_copy_ms = fwd_ms.pop("copy"), fwd_ms.pop("new+copy")
    times = {"forward": fwd_ms, "forward_backward": interleaved_ms(step, device, args.repeats, clock=args.clock)}
    floor = {mode: copies * copy_ms for mode, copies in FLOOR_COPIES.items()}
    peak: dict[str, float] = {}
    if not args.no_memory:
        peak = {name: peak_extra_mib(step[name], device) for name in modules if name != "ref_compiled"}
    case: dict[str, Any] = {
        "shape": list(shape),
        "dtype": report.dtype_name(dtype),
        "layout": layout,
        "copy_ms": copy_ms,
        "fresh_copy_ms": fresh_copy_ms,
        "floor_ms": floor,
        "ms": times,
        "peak_train_step_mib": peak,
        "ours_over_floor": {m: times[m]["ours"] / floor[m] for m in MODES},
    }
    if "reference" in modules:
        case["speedup_vs_reference"] = {m: times[m]["reference"] / times[m]["ours"] for m in MODES}
    if "timm" in modules:
        case["speedup_vs_timm"] = {m: times[m]["timm"] / times[m]["ours"] for m in MODES}
    return case


def case_name(case: dict[str, Any], mode: str | None = None) -> str:
    layout = "CL" if case["layout"] == "channels_last" else "contig"
    text = f"{'x'.join(map(str, case['shape']))} {case['dtype']} {layout}"
    return text if mode is None else f"{text} {'fwd' if mode == 'forward' else 'fwd+bwd'}"


def check_targets(cases: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The targets of the fast-path issues on the fp32 cases (CPU targets on CPU, the GPU one on CUDA)."""
    fp32 = [c for c in cases if c["dtype"] == "fp32"]
    checks: list[dict[str, Any]] = []

    def add(case: dict[str, Any], mode: str, kind: str, value: float, limit: float, higher: bool) -> None:
        checks.append(report.target("block", kind, case_name(case, mode), value, limit, higher))

    for c in fp32:
        is_large = tuple(c["shape"]) in LARGE
        if device.type == "cuda":
            if is_large:
                for mode in MODES:
                    add(c, mode, "large maps: ours / floor", c["ours_over_floor"][mode], 1.25, False)
            continue
        if "speedup_vs_reference" in c:
            add(
                c,
                "forward_backward",
                "fwd+bwd speed-up vs reference file",
                c["speedup_vs_reference"]["forward_backward"],
                3.0,
                True,
            )
            add(c, "forward", "fwd speed-up vs reference file", c["speedup_vs_reference"]["forward"], 1.5, True)
        if "speedup_vs_timm" in c:
            for mode in MODES:
                add(c, mode, "not slower than timm ChannelAttn", c["speedup_vs_timm"][mode], 1.0, True)
        if is_large:
            add(
                c,
                "forward_backward",
                "large maps: fwd+bwd / floor",
                c["ours_over_floor"]["forward_backward"],
                2.0,
                False,
            )
            add(c, "forward", "large maps: fwd / floor", c["ours_over_floor"]["forward"], 1.5, False)
    return checks


def format_table(cases: list[dict[str, Any]]) -> str:
    """One row per case and mode: median ms of each contender, ours vs reference, ours / floor."""
    head = [
        "shape",
        "dtype",
        "layout",
        "mode",
        "copy",
        "new+copy",
        *NAMES,
        "ref/ours",
        "ours/floor",
        "peak MiB ref/ours",
    ]
    rows = []
    for c in cases:
        for mode in MODES:
            ms = c["ms"][mode]
            speed = c.get("speedup_vs_reference", {}).get(mode)
            peak = c["peak_train_step_mib"]
            peak_txt = f"{_mib(peak.get('reference'))}/{_mib(peak.get('ours'))}" if peak else "-"
            rows.append(
                [
                    "x".join(map(str, c["shape"])),
                    c["dtype"],
                    "CL" if c["layout"] == "channels_last" else "contig",
                    "fwd" if mode == "forward" else "fwd+bwd",
                    f"{c['copy_ms']:.3f}",
                    f"{c['fresh_copy_ms']:.3f}",
                    *(f"{ms[n]:.3f}" if n in ms else "-" for n in NAMES),
                    "-" if speed is None else f"{speed:.2f}x",
                    f"{c['ours_over_floor'][mode]:.2f}",
                    peak_txt if mode == "forward_backward" else "",
                ]
            )
    return report.table(head, rows)


def run(
    args: argparse.Namespace, device: torch.device, reference: ModuleType | None, progress: Any = print
) -> report.Part:
    """Every 4-D shape x dtype x layout of ``args``; ``progress`` gets one line per finished case."""
    cases = []
    for shape in args.block_shapes:
        for dtype in args.dtype_list:
            for layout in args.layouts:
                cases.append(run_case(shape, dtype, layout, device, args, reference))
                progress(f"block: done {case_name(cases[-1])}")
    title = "block (image maps): median ms; ours = ChannelAttentionFusionT(C), the fast path"
    return report.Part("block", title, cases, check_targets(cases, device), format_table(cases))


def _mib(value: float | None) -> str:
    """A peak-memory figure, or '-' for a contender that did not run (no reference file)."""
    return "-" if value is None else f"{value:.0f}"
