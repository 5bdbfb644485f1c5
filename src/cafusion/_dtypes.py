"""The one dtype rule every path shares, so the reference and fast paths cannot drift apart."""

from __future__ import annotations

import torch

# The dtypes the fast path (and its CPU kernels) compute in; anything else takes the reference composite.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype, other: torch.dtype = torch.float32) -> torch.dtype:
    """The wider of the two and never below float32: statistics of float16/bfloat16 input and the
    small (B, C) path accumulate in float32, float64 stays float64. Two arguments: TorchScript compiles it."""
    return torch.promote_types(torch.promote_types(dtype, torch.float32), other)
