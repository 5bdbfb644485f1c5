"""cafusion bench: the benchmark parts, their tables, a final "targets" section and one JSON per part.

Parts (selecting any runs only those; selecting none runs all five):

- --block: image maps x layouts: ours vs the reference file, timm, torch.compile; memory floor, peak memory.
- --sweep [1d,2d,3d]: 1-D/2-D/3-D shapes, fp32 and bf16, forward and training step: the default path
  vs the composite (impl="reference"), the reference file, cafusion's SE and timm's ChannelAttn.
- --padded: the 1-D sweep's shapes with lengths (a padded batch) vs without, and the composite with them.
- --autocast: a training step under bf16 autocast, default path vs composite.
- --networks [cnn1d,resnet18,resnet1d,fcn-5x361,fcn-16x150,resnet1d-20x427]: a whole training step per attention block.

Contenders are timed in alternation and each gets the median of its rounds. The benchmark runs in
the process it was started in, with default settings. --thp adds a second, labelled run of the
same parts beside it, in a child process with THP_MEM_ALLOC_ENABLE=1 (PyTorch then backs large CPU
tensors with huge pages, which makes fresh outputs cheaper than a user's default process sees them);
its files go to OUT/thp/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cafusion.bench import names
from cafusion.bench.names import PARTS, REFERENCE_FILE

if TYPE_CHECKING:
    pass

# The parser needs only names (cafusion.bench.names), so --help and argument errors come before torch
# loads; the parts and torch are imported once the arguments are known to be usable.


class Parser(argparse.ArgumentParser):
    """One-line errors (``cafusion bench: error: ...``), found before any work starts."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape is BxCxL, BxCxHxW or BxCxDxHxW of positive sizes, got {text!r}")
    return shape


def _csv_any(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma separated), got {text!r}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="cafusion bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, fp32 only, 5 rounds, no compile (~1 minute)")
    p.add_argument("--out", default="bench-results", metavar="DIR", help="folder for the JSON files (%(default)s)")
    g = p.add_argument_group("parts (none selected: all of them)")
    g.add_argument("--block", action="store_true", help="the image-map table")
    ranks = tuple(names.RANKS)
    g.add_argument("--sweep", nargs="?", const=list(ranks), type=_csv(ranks), metavar="1d,2d,3d", help="shape sweep")
    g.add_argument("--padded", action="store_true", help="1-D sweep shapes with lengths vs without")
    g.add_argument("--autocast", action="store_true", help="training step under bf16 autocast")
    nets = names.NETWORKS
    g.add_argument("--networks", nargs="?", const=list(nets), type=_csv(nets), metavar=",".join(nets))
    p.add_argument("--attentions", type=_csv_any, help="networks: these registered blocks only (comma separated)")
    p.add_argument("--amp", action="store_true", help="networks: forward and loss under bf16 autocast")
    p.add_argument("--thp", action="store_true", help="add a labelled second run with THP_MEM_ALLOC_ENABLE=1")
    p.add_argument(
        "--native-off", action="store_true", help="add a labelled second run with CAFUSION_NATIVE=0 (no C++ kernels)"
    )
    p.add_argument("--shapes", type=lambda s: [_shape(t) for t in s.split(",")], help="comma-separated BxCx...")
    p.add_argument("--dtypes", type=_csv(names.DTYPES), help="block, sweep, padded: comma-separated (fp32,bf16)")
    p.add_argument("--threads", type=_positive, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda where available, else cpu)")
    p.add_argument("--repeats", type=_positive, default=None, help="timed rounds (default 15, quick 5)")
    p.add_argument("--reference", default=None, metavar="PATH", help=f"folder with {REFERENCE_FILE}")
    p.add_argument("--layouts", type=_csv(names.LAYOUTS), help="block: comma-separated, default both")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="block: torch.compile(ref)")
    p.add_argument("--no-memory", action="store_true", help="block: skip the peak-memory measurement")
    p.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="block: wall clock or the thread's CPU time (CPU only, --threads 1; robust on a busy machine)",
    )
    return p


def resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Fill in the defaults that depend on --quick and check the combinations; returns the parts to run."""
    import torch

    from cafusion import list_attentions
    from cafusion.bench import autocast, block, padded, report, sweep

    parts = [name for name in PARTS if getattr(args, name)] or list(PARTS)
    args.sweep = args.sweep or list(names.RANKS)
    args.networks = args.networks or list(names.NETWORKS)
    unknown = [a for a in args.attentions or () if a not in list_attentions()]
    if unknown:
        parser.error(f"--attentions: choose from {', '.join(list_attentions())} (comma separated), got {unknown}")
    args.attentions = args.attentions or list(names.ATTENTIONS)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device: CUDA is not available here")
    if args.clock == "thread" and (args.threads != 1 or device.type != "cpu"):
        parser.error("--clock thread measures one thread's CPU time: use it on the CPU with --threads 1")
    if args.thp and device.type != "cpu":
        parser.error("--thp changes PyTorch's CPU allocator: use it with --device cpu")
    if args.native_off and device.type != "cpu":
        parser.error("--native-off switches off the C++ CPU kernels: use it with --device cpu")
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.compile = (not args.quick) if args.compile is None else args.compile
    dtypes = {name: dtype for dtype, name in report.DTYPE_NAMES.items()}
    args.dtype_list = [dtypes[d] for d in args.dtypes or (["fp32"] if args.quick else ["fp32", "bf16"])]
    args.layouts = args.layouts or list(names.LAYOUTS)
    given = args.shapes
    args.block_shapes = (
        [s for s in given if len(s) == 4] if given else (block.QUICK_SHAPES if args.quick else block.SHAPES)
    )
    args.sweep_shapes = sweep.shapes_for(args.sweep, args.quick, given)
    args.padded_shapes = (
        [s for s in given if len(s) == 3] if given else (padded.QUICK_SHAPES if args.quick else padded.SHAPES)
    )
    args.autocast_shapes = given or (autocast.QUICK_SHAPES if args.quick else autocast.SHAPES)
    if "block" in parts and not args.block_shapes:
        parser.error(
            "--shapes: the image table (--block, part of the default run) takes 4-D shapes BxCxHxW and none "
            "is given; add one, or select other parts (--sweep, --autocast)"
        )
    if "sweep" in parts and not args.sweep_shapes:
        parser.error(f"--shapes: none has the rank of the selected sweep parts ({','.join(args.sweep)})")
    if "padded" in parts and not args.padded_shapes:
        parser.error(
            "--shapes: the padded part (--padded, part of the default run) takes 1-D shapes BxCxL and none "
            "is given; add one, or select other parts"
        )
    return parts


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# The labelled second runs: flag -> (environment setting, folder under --out).
SECOND_RUNS = {"--thp": ("THP_MEM_ALLOC_ENABLE", "1", "thp"), "--native-off": ("CAFUSION_NATIVE", "0", "native-off")}


def run_second(argv: list[str], out: Path, flag: str) -> int:
    """The same parts again in a child process with the setting ``flag`` names, files under OUT/<folder>."""
    name, value, folder = SECOND_RUNS[flag]
    child = [a for a in argv if a not in SECOND_RUNS] + ["--out", str(out / folder)]
    env = dict(os.environ, **{name: value})
    print(f"\n=== second run, labelled {name}={value} ({flag}) ===", flush=True)
    return subprocess.call([sys.executable, "-m", "cafusion.bench", *child], env=env)


def main(argv: list[str] | None = None) -> int:
    """Run the selected parts; returns 0, or the --thp run's status (missed targets are reported, not errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = resolve(args, parser)
    import torch

    from cafusion.bench import autocast, block, networks, padded, report, sweep
    from cafusion.bench.contenders import load_reference

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"cafusion bench: {report.process_label()}, {args.threads} threads, {device.type}, parts {','.join(parts)}")
    reference = load_reference(args.reference)
    if reference is None and ("block" in parts or "sweep" in parts):
        print(f"note: reference not available: {REFERENCE_FILE} not found (--reference PATH); its columns show -")
    out = Path(args.out)
    results: list[report.Part] = []
    begin = time.time()
    for name in parts:
        start = time.time()
        if name == "block":
            part = block.run(args, device, reference, _progress)
        elif name == "sweep":
            part = sweep.run(args, device, reference, _progress)
        elif name == "padded":
            part = padded.run(args, device, _progress)
        elif name == "autocast":
            part = autocast.run(args, device, _progress)
        else:
            part = networks.run(args, device, _progress)
        meta = report.meta(argv, device, args.threads, args.repeats, time.time() - start)
        meta["reference_found"] = reference is not None
        report.write_json(out / f"{part.name}.json", meta, part.rows, part.targets)
        print(f"\n{part.title} [{report.process_label()}]\n{part.text}", *part.notes, sep="\n", flush=True)
        results.append(part)
    targets = [t for part in results for t in part.targets]
    meta = report.meta(argv, device, args.threads, args.repeats, time.time() - begin)
    report.write_json(out / "targets.json", meta, [], targets)
    print(f"\n[{report.process_label()}] {report.format_targets(targets)}")
    print(f"\nwrote {', '.join(str(out / f'{p.name}.json') for p in results)}, {out / 'targets.json'}")
    status = 0
    for flag, already in (("--thp", report.thp_enabled()), ("--native-off", report.native_off())):
        if flag in argv:
            name, value, _ = SECOND_RUNS[flag]
            if already:
                print(f"{flag}: this process already runs with {name}={value}; no second run")
            else:
                status = run_second(argv, out, flag) or status
    return status
