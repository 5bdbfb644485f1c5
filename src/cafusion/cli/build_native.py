"""``cafusion build-native``: compile the C++ CPU kernels now (and cache them) instead of on first use.

The first CPU forward otherwise pauses 30-60 s to compile them. Prints where the build is cached; a
machine without a C++ compiler or ninja gets a one-line error (the fast path then uses PyTorch).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from cafusion.cli.errors import CLIError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "build-native",
        help="compile and cache the C++ CPU kernels of the fast path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cafusion.kernels.backends import native

    if not native.enabled():
        raise CLIError(f"the native kernels are switched off ({native.ENV}=0)")
    start = time.perf_counter()
    try:
        lib = native.build(verbose=args.verbose, advice=False)
    except Exception as exc:  # compiler or ninja missing, or a failing build: the compiler's first error line
        raise CLIError(f"could not build the native CPU kernels: {native._build_error(exc)}") from None
    print(f"cafusion: native CPU kernels ready ({lib.__file__}, {time.perf_counter() - start:.1f} s)")
    return 0
