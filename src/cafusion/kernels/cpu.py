"""The four big-tensor primitives in plain PyTorch: the CPU path, and the fallback on any device.

Every function works on a 3-D view ``x3`` of shape (B, C, N) (N = product of the spatial dims). The
block is memory-bound, so each primitive is one pass over the large tensors with no full-size
temporary: ``amax`` instead of max-with-indices when no index is needed, ``out=`` into an output
allocated in x's layout, ``addcmul`` for dx. Statistics of low-precision inputs accumulate in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Elements per chunk for the product-then-sum of grad_ca: small enough that the temporary stays in
# cache, large enough that the per-chunk Python overhead is negligible.
_CHUNK = 1 << 20


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are kept in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pool_stats(x3: Tensor, need_index: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-(b, c) mean and max over N, plus the FIRST argmax when the backward will need it.

    ``torch.max(dim)`` returns the first maximal index, which is where AdaptiveMaxPool sends the
    gradient; it is several times slower than ``amax``, so it only runs when gradients are needed.
    """
    acc = acc_dtype(x3.dtype)
    avg = x3.mean(dim=2, dtype=acc)
    if need_index:
        mx, idx = x3.max(dim=2)
        return avg, mx.to(acc), idx
    return avg, x3.amax(dim=2).to(acc), None


def scale(x3: Tensor, ca: Tensor) -> Tensor:
    """y = x * ca[:, :, None], written once into a tensor with x3's strides (so channels_last stays so)."""
    y3 = torch.empty_like(x3)
    torch.mul(x3, ca.to(x3.dtype).unsqueeze(2), out=y3)
    return y3


def grad_ca(dy3: Tensor, x3: Tensor) -> Tensor:
    """sum over N of dy * x, per (b, c), in the statistics dtype.

    The product is formed chunk by chunk over the batch into one reused buffer, so the only
    temporary is cache-sized instead of a second full-size tensor.
    """
    acc = acc_dtype(x3.dtype)
    b, c, n = x3.shape
    out = torch.empty((b, c), dtype=acc, device=x3.device)
    if out.numel() == 0:
        return out.zero_()
    step = max(1, _CHUNK // max(1, c * n))
    buf = torch.empty_like(x3[:step], dtype=torch.promote_types(dy3.dtype, x3.dtype))
    for start in range(0, b, step):
        stop = min(b, start + step)
        prod = buf[: stop - start]
        torch.mul(dy3[start:stop], x3[start:stop], out=prod)
        torch.sum(prod, dim=2, dtype=acc, out=out[start:stop])
    return out


def grad_input(dy3: Tensor, ca: Tensor, g_avg: Tensor, g_max: Tensor, idx: Tensor) -> Tensor:
    """dx = dy * ca + g_avg + (g_max at the argmax), in one pass over dy, written with dy3's strides.

    ``g_avg`` is already divided by N. dy has y's layout, which is x's, so a channels_last input gets
    a channels_last gradient.
    """
    dtype = dy3.dtype
    dx3 = torch.empty_like(dy3)
    torch.addcmul(g_avg.to(dtype).unsqueeze(2), dy3, ca.to(dtype).unsqueeze(2), out=dx3)
    if dx3.numel():
        dx3.scatter_add_(2, idx.unsqueeze(2), g_max.to(dtype).unsqueeze(2))
    return dx3
