"""Instructions per call of the drop-in block, forward (no grad) and training step, counted by valgrind's
callgrind: a number that does not move with what else the machine runs, for comparing two versions of
the code (or two code paths) on a noisy VM where wall-clock ratios between processes wander by 2x.

Each shape and mode runs once under callgrind with instrumentation off; after the set-up and a warm-up
the loop of ``--calls`` calls switches it on and off through callgrind's client requests (a three-line C
helper compiled here with the system compiler, ``<valgrind/callgrind.h>``), so only the loop is counted.
One thread, default block (softmax fusion). Instructions are not time (a cache miss costs more than an
add), so this complements ``cafusion bench``, it does not replace it. Needs valgrind and a C compiler.
Prints a table and writes JSON:
``python scripts/count_instructions.py [--shapes 1x64x7x7,100x25x10] [--calls 100] [--out bench-results]``.
For another version of the code run it with ``PYTHONPATH=<that checkout>/src``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("forward", "step")
HELPER = """#include <valgrind/callgrind.h>
void count_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void count_off(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""
DEFAULT_SHAPES = "1x64x7x7,1x256x14x14,100x25x10,32x16x40"


def _helper(folder: Path) -> Path:
    """The client-request helper, compiled into ``folder``."""
    source, library = folder / "count.c", folder / "libcount.so"
    source.write_text(HELPER)
    done = subprocess.run(
        ["cc", "-O2", "-shared", "-fPIC", str(source), "-o", str(library)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"count_instructions: cannot compile the callgrind helper: {done.stderr.strip()[-300:]}")
    return library


def _child(shape: tuple[int, ...], calls: int, mode: str, helper: str) -> None:
    """What runs under callgrind: set up, warm up, then ``calls`` calls of the block, the only ones counted."""
    import torch

    from cafusion.kernels.backends import native
    from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer

    native.library()  # built and loaded before the count (a first build is not counted either way)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    block = ChannelAttentionFusionTLayer(shape[1])
    x = torch.randn(*shape)
    xg = x.clone().requires_grad_(True)

    def forward() -> None:
        with torch.no_grad():
            block(x)

    def step() -> None:
        block(xg).sum().backward()

    call = forward if mode == "forward" else step
    for _ in range(3):
        forward()
        step()
    count = ctypes.CDLL(helper)
    count.count_on()
    for _ in range(calls):
        call()
    count.count_off()


def _count(shape: str, calls: int, mode: str, helper: Path) -> int:
    """Instructions of the child's counted loop (callgrind's 'Collected' line)."""
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null", sys.executable]
    child = [__file__, "--child", shape, str(calls), mode, str(helper)]
    done = subprocess.run([*cmd, *child], capture_output=True, text=True, check=False)
    found = re.search(r"Collected\s*:\s*([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"count_instructions: callgrind failed for {shape} {mode}: {done.stderr.strip()[-300:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxCx... (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=100, help="calls counted per shape and mode (default: 100)")
    parser.add_argument("--out", default="bench-results", help="folder for count_instructions.json")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, calls, mode, helper = args.child
        _child(tuple(int(s) for s in shape.split("x")), int(calls), mode, helper)
        return 0
    for tool in ("valgrind", "cc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"count_instructions: {tool} is not on PATH (Debian/Ubuntu: apt install valgrind gcc)")
    if args.calls < 1:
        raise SystemExit(f"count_instructions: --calls must be a positive integer, got {args.calls}")
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="cafusion-count-"))
    helper = _helper(folder)
    print(f"{'shape':>14} {'mode':>8} {'instructions per call':>22}")
    for shape in args.shapes.split(","):
        for mode in MODES:
            per_call = _count(shape, args.calls, mode, helper) / args.calls
            rows.append({"shape": shape, "mode": mode, "instructions": round(per_call)})
            print(f"{shape:>14} {mode:>8} {per_call / 1000:>21.1f}K", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"calls": args.calls, "threads": 1, "rows": rows}
    (out / "count_instructions.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {out / 'count_instructions.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
