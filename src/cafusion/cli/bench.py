"""``cafusion bench``: the benchmarks of ``cafusion.bench`` (block table, shape sweep, autocast, networks).

Every flag is the benchmark's own (``cafusion bench --help`` lists them); this module only forwards.
"""

from __future__ import annotations

import argparse
from typing import Any

from cafusion.cli.errors import CLIError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the block (sweep, autocast, whole networks) and print the tables and targets",
        description=__doc__,
        add_help=False,  # --help goes to the benchmark's parser, which knows every flag
    )
    p.set_defaults(func=run, accepts_extra=True)


def _bench_main() -> Any:
    try:
        from cafusion.bench.main import main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("cafusion"):
            raise CLIError("the benchmarks (cafusion.bench) are not available in this install") from None
        raise CLIError(f"the benchmark needs {exc.name}, which is not installed") from None
    return main


def run(args: argparse.Namespace) -> int:
    main = _bench_main()
    argv = ["--help" if a == "--help-bench" else a for a in args.extra]  # --help-bench: the old spelling
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:  # the benchmark's own argparse has already printed its message
        return exc.code if isinstance(exc.code, int) else 1
