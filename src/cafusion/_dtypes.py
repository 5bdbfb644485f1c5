"""The one dtype rule every path shares, so the reference and fast paths cannot drift apart."""

from __future__ import annotations

import torch

# The dtypes the fast path (and its CPU kernels) compute in; anything else takes the reference composite.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The widest of ``dtypes`` and never below float32: statistics of float16/bfloat16 input and the
    small (B, C) path accumulate in float32, float64 stays float64."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out
