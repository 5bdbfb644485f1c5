"""Pick the implementation of the four big-tensor primitives for a tensor: Triton or plain PyTorch.

Triton is imported lazily and only once; a missing or broken Triton, a CPU tensor or float64 all
land on the PyTorch version, which gives the same results, so the choice never changes behaviour.
"""

from __future__ import annotations

import functools
from types import ModuleType

from torch import Tensor

from cafusion.kernels import cpu


@functools.cache
def _triton_ops() -> ModuleType | None:
    """The Triton module, or None when triton (or a GPU toolchain for it) cannot be imported."""
    try:
        from cafusion.kernels import triton_ops
    except Exception:  # ImportError, or triton failing to initialise its backend
        return None
    return triton_ops


def backend(x: Tensor) -> ModuleType:
    """The module whose ``pool_stats``/``scale``/``grad_ca``/``grad_input`` should run on ``x``."""
    ops = _triton_ops() if x.is_cuda else None
    if ops is not None and ops.is_available(x):
        return ops
    return cpu
