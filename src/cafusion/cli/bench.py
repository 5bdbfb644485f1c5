"""``cafusion bench``: the block benchmark of the fast-path work (``cafusion.bench.block``), from the CLI.

``--quick`` and ``--out`` are forwarded to ``cafusion.bench.block.main(argv)``, and so is any other
flag the benchmark itself understands (``cafusion bench --help-bench`` lists them).
"""

from __future__ import annotations

import argparse
from typing import Any

from cafusion.cli.errors import CLIError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the block (reference vs fast paths) and print the table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="run a subset of the benchmark")
    p.add_argument("--out", metavar="DIR", default=None, help="folder for the benchmark's result files")
    p.add_argument("--help-bench", action="store_true", help="show every flag of the benchmark itself")
    p.set_defaults(func=run, accepts_extra=True)


def _block_main() -> Any:
    try:
        from cafusion.bench.block import main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("cafusion"):
            raise CLIError("the block benchmark (cafusion.bench.block) is not available in this install") from None
        raise CLIError(f"the benchmark needs {exc.name}, which is not installed") from None
    return main


def run(args: argparse.Namespace) -> int:
    main = _block_main()
    if args.help_bench:
        argv = ["--help"]
    else:
        argv = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []) + list(args.extra)
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:  # the benchmark's own argparse has already printed its message
        return exc.code if isinstance(exc.code, int) else 1
