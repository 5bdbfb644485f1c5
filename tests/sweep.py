"""How much of the Triton interpreter sweeps runs: a fixed sample by default (``make test``, CI), every
case with ``make test-triton-full``. The interpreter runs a kernel ~1000x slower than a GPU, so the
sample keeps every group, shape, dtype and layout but not every combination."""

from __future__ import annotations

import os

FULL_ENV = "CAFUSION_TRITON_FULL"


def full_sweep() -> bool:
    """Whether the interpreter checks run every case."""
    return os.environ.get(FULL_ENV) == "1"
