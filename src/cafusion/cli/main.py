"""``cafusion`` entry point: dispatches to sub-commands.

Each sub-command lives in its own ``cafusion.cli.<name>`` module with an ``add_parser(subparsers)``
function that registers its parser and sets ``func``; to add a command, add its module to
``COMMANDS``. Modules import their heavy dependencies inside ``func`` so ``--help`` stays fast.

Exit status, the same for every command: 0 done, 2 the command line cannot be used (a bad option
value, or a path argument that is missing or not what it should be; found before any work starts),
1 a failure while running (a write that failed, a missing optional package, a failed build),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from cafusion.cli.errors import CLIError

COMMANDS = (
    "cafusion.cli.demo",
    "cafusion.cli.bench",
    "cafusion.cli.inspect",
    "cafusion.cli.train",
    "cafusion.cli.compare",
    "cafusion.cli.export",
    "cafusion.cli.build_native",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cafusion demo: error: ...`` instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cafusion", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    parser.description = f"ChannelAttentionFusionT tools: {', '.join(sub.choices)}."
    for command in sub.choices.values():  # descriptions come from docstrings: no reST markup in --help
        command.description = _plain(command.description)
        command.epilog = _plain(command.epilog)
    return parser


def _plain(text: str | None) -> str | None:
    return None if text is None else text.replace("``", "").replace(":func:", "").replace(":class:", "")


def _fail(message: object, code: int) -> int:
    text = " ".join(str(message).split()) or "unknown error"  # one line, whatever the message
    print(f"cafusion: error: {text}", file=sys.stderr)
    return code


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Our own warnings (text starting ``cafusion:``) as one ``cafusion: warning:`` line; others as usual."""
    text = " ".join(str(message).split())
    if text.startswith("cafusion: "):
        print(f"cafusion: warning: {text.removeprefix('cafusion: ')}", file=sys.stderr)
        return
    _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        _exit_worker(code)
    return code


def _exit_worker(code: int) -> None:
    """End a torchrun worker without interpreter finalisation (after flushing its output).

    DDP keeps the gloo process group, and so its worker threads, alive past
    ``destroy_process_group``; a worker thread that releases a finished collective's tensors while
    the interpreter finalises needs the GIL and aborts the process ("terminate called without an
    active exception", ``scripts/soak_torchrun.py``). Every file of the run is already written
    and synced, so nothing is lost by skipping finalisation.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    warnings.showwarning = _show_warning
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
    except (ValueError, TypeError) as exc:  # our checks of arguments and input files
        return _fail(exc, 2)
    except ImportError as exc:  # an optional package; our own messages name the extra to install
        return _fail(exc, 1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror}{where}" if exc.strerror else exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
