"""``cafusion`` entry point: dispatches to sub-commands.

Each sub-command lives in its own ``cafusion.cli.<name>`` module with an ``add_parser(subparsers)``
function that registers its parser and sets ``func``; to add a command, add its module to
``COMMANDS``. Modules import their heavy dependencies inside ``func`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cafusion.cli.errors import CLIError

COMMANDS = (
    "cafusion.cli.demo",
    "cafusion.cli.bench",
    "cafusion.cli.inspect",
    "cafusion.cli.train",
    "cafusion.cli.compare",
    "cafusion.cli.build_native",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cafusion demo: error: ...`` instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cafusion", description="ChannelAttentionFusionT tools: demo, train, bench, inspect.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def _fail(message: object, code: int) -> int:
    text = " ".join(str(message).split()) or "unknown error"  # one line, whatever the message
    print(f"cafusion: error: {text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if os.environ.get("CAFUSION_DEBUG"):
        return int(args.func(args))
    try:
        return int(args.func(args))
    except CLIError as exc:
        return _fail(exc, exc.code)
    except (ValueError, TypeError) as exc:
        return _fail(exc, 2)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror}{where}" if exc.strerror else exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
