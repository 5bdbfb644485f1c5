"""The error type CLI commands raise for an expected failure (bad option, unusable file).

``cafusion.cli.main`` turns it, and ValueError/TypeError/OSError, into one ``cafusion: error:`` line
and a non-zero exit instead of a traceback. Set ``CAFUSION_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations


class CLIError(Exception):
    """An expected failure with a message meant for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
