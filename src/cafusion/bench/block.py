"""Benchmark of the block: ours (fast path) vs the reference, timm's CBAM ChannelAttn, and torch.compile.

For every shape x dtype x layout it times a plain copy of x (the bandwidth yardstick), the forward
without grad and forward+backward of each contender, and the peak memory of one training step. The
block is memory-bound, so the floor is counted in copies of x: the forward must read x twice (stats,
then scale) and write y once, 1.5 copies; forward+backward adds a pass reading dy and x and one reading
dy and writing dx, 3.5 copies. The floor leaves out allocating the outputs; the ``new+copy`` column (the
copy into a freshly allocated tensor) shows what each fresh y or dx costs. Prints a table, writes JSON.

On the CPU the benchmark re-runs itself with ``THP_MEM_ALLOC_ENABLE=1`` (unless ``--no-thp``): PyTorch
then backs large tensors with huge pages, and a fresh 50 MB output costs a few page faults instead of
twelve thousand. The setting is read once at start-up and applies to every contender alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from cafusion.bench.measure import median_ms, peak_extra_mib

SHAPES = [(16, 256, 56, 56), (16, 512, 28, 28), (16, 1024, 14, 14), (16, 2048, 7, 7), (1, 64, 7, 7), (1, 256, 14, 14)]
QUICK_SHAPES = [(4, 128, 28, 28), (1, 64, 7, 7)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
LAYOUTS = ("contiguous", "channels_last")
REFERENCE_FILE = "reference_channel_attention_fusion_t.py"
FLOOR_COPIES = {"forward": 1.5, "forward_backward": 3.5}
MODES = tuple(FLOOR_COPIES)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BxCxHxW (e.g. 16x256x56x56), got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is four positive sizes BxCxHxW, got {text!r}")
    return shape


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma separated), got {text!r}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cafusion bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="a small subset (< 1 minute): two small shapes, fp32, no compile"
    )
    p.add_argument("--out", default="bench-results", metavar="DIR", help="folder for block.json (default: %(default)s)")
    p.add_argument("--shapes", type=lambda s: [_shape(t) for t in s.split(",")], help="comma-separated BxCxHxW")
    p.add_argument("--dtypes", type=_csv(tuple(DTYPES)), help="comma-separated, default fp32,bf16")
    p.add_argument("--layouts", type=_csv(LAYOUTS), help="comma-separated, default both")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 15, quick 5)")
    p.add_argument("--reference", default=None, metavar="PATH", help=f"folder with {REFERENCE_FILE}")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="time torch.compile(ref)")
    p.add_argument("--no-thp", action="store_true", help="do not re-run with THP_MEM_ALLOC_ENABLE=1 on the CPU")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="wall clock (default) or the thread's CPU time (CPU only, needs --threads 1; robust on a busy machine)",
    )
    return p


def load_reference(path: str | None) -> ModuleType | None:
    """The reference module from ``path`` or ../shared/seed (relative to the cwd, then to the repo)."""
    here = Path(__file__).resolve().parents[3]
    folders = [Path(path)] if path else [Path("../shared/seed"), Path("shared/seed"), here.parent / "shared/seed"]
    for folder in folders:
        file = folder / REFERENCE_FILE
        if file.is_file():
            spec = importlib.util.spec_from_file_location("cafusion_bench_reference", file)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def contenders(
    channels: int, dtype: torch.dtype, device: torch.device, reference: ModuleType | None, compile_ref: bool
) -> dict[str, nn.Module]:
    """name -> module, all with weights in ``dtype`` (as after ``model.to(dtype)``)."""
    from timm.layers.cbam import ChannelAttn

    from cafusion import ChannelAttentionFusionT

    ours = ChannelAttentionFusionT(channels)
    out: dict[str, nn.Module] = {}
    if reference is not None:
        ref = reference.ChannelAttentionFusionT(channels).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
        out["reference"] = ref
    out["timm"] = ChannelAttn(channels).to(device, dtype)
    if reference is not None and compile_ref:
        out["ref_compiled"] = torch.compile(out["reference"])  # type: ignore[assignment]
    out["ours"] = ours.to(device, dtype)
    return out


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]


def run_case(
    shape: tuple[int, ...], dtype: torch.dtype, layout: str, device: torch.device, args: argparse.Namespace, ref: Any
) -> dict[str, Any]:
    """Time every contender on one (shape, dtype, layout)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    y = torch.empty_like(x)
    dy = torch.randn_like(x)
    xg = x.detach().clone().requires_grad_(True)
    copy_ms = median_ms(lambda: y.copy_(x), device, args.repeats, clock=args.clock)
    # The same copy into a freshly allocated tensor: what any block pays for its new y (and dx).
    fresh_copy_ms = median_ms(lambda: torch.empty_like(x).copy_(x), device, args.repeats, clock=args.clock)
    floor = {mode: copies * copy_ms for mode, copies in FLOOR_COPIES.items()}
    times: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
    peak: dict[str, float] = {}
    for name, module in contenders(shape[1], dtype, device, ref, args.compile).items():

        def forward(m: nn.Module = module) -> None:
            with torch.no_grad():
                m(x)

        def train_step(m: nn.Module = module) -> None:
            xg.grad = None
            m.zero_grad(set_to_none=True)
            torch.autograd.backward(_first(m(xg)), dy)

        times["forward"][name] = median_ms(forward, device, args.repeats, clock=args.clock)
        times["forward_backward"][name] = median_ms(train_step, device, args.repeats, clock=args.clock)
        if not args.no_memory and name != "ref_compiled":
            peak[name] = peak_extra_mib(train_step, device)
    case: dict[str, Any] = {
        "shape": list(shape),
        "dtype": next(k for k, v in DTYPES.items() if v == dtype),
        "layout": layout,
        "copy_ms": copy_ms,
        "fresh_copy_ms": fresh_copy_ms,
        "floor_ms": floor,
        "ms": times,
        "peak_train_step_mib": peak,
        "ours_over_floor": {m: times[m]["ours"] / floor[m] for m in MODES},
    }
    if "reference" in times["forward"]:
        case["speedup_vs_reference"] = {m: times[m]["reference"] / times[m]["ours"] for m in MODES}
    case["speedup_vs_timm"] = {m: times[m]["timm"] / times[m]["ours"] for m in MODES}
    return case


def check_targets(cases: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on the measured fp32 cases (CPU targets on CPU, the GPU one on CUDA)."""
    fp32 = [c for c in cases if c["dtype"] == "fp32"]
    large = sorted({tuple(c["shape"]) for c in fp32}, key=lambda s: -torch.Size(s).numel())[:3]
    checks: list[dict[str, Any]] = []

    def add(case: dict[str, Any], what: str, value: float, limit: float, higher_is_better: bool) -> None:
        ok = value >= limit if higher_is_better else value <= limit
        name = f"{'x'.join(map(str, case['shape']))} {case['layout']}: {what}"
        checks.append({"check": name, "value": round(value, 3), "limit": limit, "pass": ok})

    for c in fp32:
        is_large = tuple(c["shape"]) in large
        if device.type == "cuda":
            if is_large:
                for mode in MODES:
                    add(c, f"{mode} / floor", c["ours_over_floor"][mode], 1.25, False)
            continue
        if "speedup_vs_reference" in c:
            add(c, "fwd+bwd speedup vs reference", c["speedup_vs_reference"]["forward_backward"], 3.0, True)
            add(c, "fwd speedup vs reference", c["speedup_vs_reference"]["forward"], 1.5, True)
        for mode in MODES:
            add(c, f"{mode} speedup vs timm", c["speedup_vs_timm"][mode], 1.0, True)
        if is_large:
            add(c, "fwd+bwd / floor", c["ours_over_floor"]["forward_backward"], 2.0, False)
            add(c, "fwd / floor", c["ours_over_floor"]["forward"], 1.5, False)
    return checks


def format_table(cases: list[dict[str, Any]]) -> str:
    """One row per case and mode: median ms of each contender, ours vs reference, ours / floor."""
    names = ["reference", "timm", "ref_compiled", "ours"]
    head = [
        "shape",
        "dtype",
        "layout",
        "mode",
        "copy",
        "new+copy",
        *names,
        "ref/ours",
        "ours/floor",
        "peak MiB ref/ours",
    ]
    rows = [head]
    for c in cases:
        for mode in MODES:
            ms = c["ms"][mode]
            speed = c.get("speedup_vs_reference", {}).get(mode)
            peak = c["peak_train_step_mib"]
            peak_txt = (
                f"{peak.get('reference', float('nan')):.0f}/{peak.get('ours', float('nan')):.0f}" if peak else "-"
            )
            rows.append(
                [
                    "x".join(map(str, c["shape"])),
                    c["dtype"],
                    "CL" if c["layout"] == "channels_last" else "contig",
                    "fwd" if mode == "forward" else "fwd+bwd",
                    f"{c['copy_ms']:.2f}",
                    f"{c['fresh_copy_ms']:.2f}",
                    *(f"{ms[n]:.2f}" if n in ms else "-" for n in names),
                    "-" if speed is None else f"{speed:.2f}x",
                    f"{c['ours_over_floor'][mode]:.2f}",
                    peak_txt if mode == "forward_backward" else "",
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _rerun_with_thp(argv: list[str]) -> int:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    return subprocess.call([sys.executable, "-m", "cafusion.bench.block", *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (targets that are missed are reported, not turned into an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.no_thp and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        return _rerun_with_thp(argv)
    if args.clock == "thread" and (args.threads != 1 or device.type != "cpu"):
        raise SystemExit("--clock thread measures one thread's CPU time: use it on the CPU with --threads 1")
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.compile = (not args.quick) if args.compile is None else args.compile
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    dtypes = args.dtypes or (["fp32"] if args.quick else ["fp32", "bf16"])
    layouts = args.layouts or list(LAYOUTS)
    reference = load_reference(args.reference)
    if reference is None:
        print(f"note: {REFERENCE_FILE} not found (--reference PATH); comparing the other contenders only")
    start = time.time()
    cases = []
    for shape in shapes:
        for dtype_name in dtypes:
            for layout in layouts:
                case = run_case(shape, DTYPES[dtype_name], layout, device, args, reference)
                cases.append(case)
                print(f"done {case['shape']} {dtype_name} {layout} ({time.time() - start:.0f}s)", flush=True)
    targets = check_targets(cases, device)
    print(format_table(cases))
    if targets:
        missed = [t for t in targets if not t["pass"]]
        print(f"\ntargets: {len(targets) - len(missed)}/{len(targets)} met")
        for t in missed:
            print(f"  missed: {t['check']} = {t['value']} (limit {t['limit']})")
    meta = {
        "command": "python -m cafusion bench " + " ".join(argv),
        "torch": torch.__version__,
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "clock": args.clock,
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "seconds": round(time.time() - start, 1),
        "reference_found": reference is not None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "block.json").write_text(json.dumps({"meta": meta, "cases": cases, "targets": targets}, indent=2))
    print(f"\nwrote {out / 'block.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
