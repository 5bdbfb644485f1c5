"""Pick the implementation of the four big-tensor primitives, and of the small (B, C) path, for a
tensor: Triton or plain PyTorch.

Triton is imported lazily and only once; a missing or broken Triton, a CPU tensor or float64 all
land on the PyTorch version, which gives the same results, so the choice never changes behaviour.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

from cafusion.kernels import cpu, small


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


@functools.cache
def _triton_small() -> ModuleType | None:
    """The fused small-path module, or None when triton cannot be imported."""
    try:
        from cafusion.kernels import triton_small
    except Exception:  # ImportError, or triton failing to initialise its backend
        return None
    return triton_small


# The fused small-path kernels run one program per sample, which streams the whole weight matrices.
# H200 (docs/gpu.md, second and third runs): alone they win up to C = 512 (fwd+bwd 46 vs 157 µs at
# (16, 256)), tie at C = 1024 (171 vs 168 µs; in the bf16 block they win, 175 vs 224 µs, as the
# PyTorch path converts bf16 weights op by op), and lose at C = 2048 (block 425 vs 226 µs).
_TRITON_SMALL_MAX_C = 1024


def small_path(t: Tensor, dtype: torch.dtype | None = None) -> ModuleType:
    """The module whose ``forward``/``backward`` run the small path for statistics like ``t`` in the compute
    ``dtype`` (default ``t.dtype``): the fused Triton kernels for float32 on CUDA, ``small`` otherwise."""
    if t.is_cuda and (dtype or t.dtype) == torch.float32 and t.shape[-1] <= _TRITON_SMALL_MAX_C:
        mod = _triton_small()
        if mod is not None and mod.is_available(t):
            return mod
    return small
