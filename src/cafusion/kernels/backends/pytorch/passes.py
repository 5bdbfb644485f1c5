"""The four big-tensor primitives in plain PyTorch: the CPU path, and the fallback on any device.

Every function works on a 3-D view ``x3`` of shape (B, C, N) (N = product of the spatial dims). The
block is memory-bound, so each primitive is one pass over the large tensors with no full-size
temporary: ``amax`` instead of max-with-indices when no index is needed, ``out=`` into an output
allocated in x's layout, ``addcmul`` for dx. Statistics of low-precision inputs accumulate in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import compute_dtype

# Elements per chunk for the product-then-sum of grad_ca: small enough that the temporary stays in
# cache, large enough that the per-chunk Python overhead is negligible.
_CHUNK = 1 << 20


def padding(valid: Tensor, x: Tensor, *, check: bool) -> Tensor:
    """The padding as these passes take it: the (B, N) mask of real positions (lengths become one after
    their range check, ``check``: a backward's forward already checked them)."""
    mask = masking.as_mask(valid, x, check=check)
    assert mask is not None
    return mask


def count(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Real positions per sample of a ``padding`` mask, (B, 1) in ``dtype``."""
    return valid.sum(dim=1, keepdim=True, dtype=dtype)


def pool_stats(x3: Tensor, need_index: bool, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-(b, c) mean and max over N, plus the FIRST argmax when the backward will need it.

    Max-with-index is several times slower than ``amax`` on the CPU, so it only runs when gradients
    are needed. For channels_last maps (C has stride 1) adaptive max pooling has a kernel vectorised
    over C that is ~5x faster than ``max(dim)``; both return the first maximal position, which is
    where AdaptiveMaxPool sends the gradient. Half-precision input is widened a few samples at a time
    into a cache-sized float32 buffer: reducing bf16 directly is ~5x slower than copying it.
    """
    acc = compute_dtype(x3.dtype)
    if valid is not None:
        return _masked_stats(x3, valid, acc, need_index)
    if x3.dtype == acc:
        return _stats(x3, need_index)
    b = x3.shape[0]
    avg = x3.new_empty(x3.shape[:2], dtype=acc)
    mx = torch.empty_like(avg)
    idx = torch.empty_like(avg, dtype=torch.int64) if need_index else None
    step = _step(x3)
    buf = torch.empty_like(x3[:step], dtype=acc)
    for start in range(0, b, step):
        stop = min(b, start + step)
        wide = buf[: stop - start]
        wide.copy_(x3[start:stop])
        a, m, i = _stats(wide, need_index)
        avg[start:stop], mx[start:stop] = a, m
        if idx is not None and i is not None:
            idx[start:stop] = i
    return avg, mx, idx


def _stats(x3: Tensor, need_index: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """pool_stats for float32/float64 input: no ``dtype=`` (the input's own dtype takes a ~30x slower kernel)."""
    avg = x3.mean(dim=2)
    if not need_index:
        return avg, x3.amax(dim=2), None
    if x3.stride(1) == 1 and x3.shape[2] > 1:
        mx, idx = F.adaptive_max_pool1d(x3, 1, return_indices=True)
        return avg, mx.squeeze(2), idx.squeeze(2)
    mx, idx = x3.max(dim=2)
    return avg, mx, idx


def _masked_stats(
    x3: Tensor, valid: Tensor, acc: torch.dtype, need_index: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """pool_stats over the real positions of a padded batch (``valid`` (B, N)); padding never enters."""
    keep = valid.unsqueeze(1)
    total = torch.where(keep, x3, torch.zeros((), dtype=x3.dtype, device=x3.device)).sum(dim=2, dtype=acc)
    avg = total / valid.sum(dim=1, keepdim=True).to(acc)
    low = torch.full((), float("-inf"), dtype=x3.dtype, device=x3.device)
    masked = torch.where(keep, x3, low)
    if not need_index:
        return avg, masked.amax(dim=2).to(acc), None
    mx, idx = masked.max(dim=2)
    return avg, mx.to(acc), idx


def _step(x3: Tensor) -> int:
    """Samples per chunk so that a chunk holds about ``_CHUNK`` elements."""
    return max(1, _CHUNK // max(1, x3.shape[1] * x3.shape[2]))


def scale(x3: Tensor, ca: Tensor) -> Tensor:
    """y = x * ca[:, :, None], written once into a tensor with x3's strides (so channels_last stays so)."""
    y3 = torch.empty_like(x3)
    torch.mul(x3, ca.to(x3.dtype).unsqueeze(2), out=y3)
    return y3


def grad_ca(dy3: Tensor, x3: Tensor) -> Tensor:
    """sum over N of dy * x, per (b, c), in the statistics dtype.

    The product is formed a few samples at a time into one reused, cache-sized buffer, so there is no
    full-size temporary. The buffer has the inputs' dtype: a float32 ``out=`` for bf16 operands takes a
    mixed-dtype path that is >10x slower on channels_last; the sum then accumulates in float32.
    """
    acc = compute_dtype(x3.dtype)
    b = x3.shape[0]
    out = torch.zeros(x3.shape[:2], dtype=acc, device=x3.device)
    if out.numel() == 0:
        return out
    step = _step(x3)
    buf = torch.empty_like(x3[:step], dtype=torch.promote_types(dy3.dtype, x3.dtype))
    for start in range(0, b, step):
        stop = min(b, start + step)
        prod = buf[: stop - start]
        torch.mul(dy3[start:stop], x3[start:stop], out=prod)
        if prod.dtype == acc:
            torch.sum(prod, dim=2, out=out[start:stop])
        else:
            out[start:stop] = prod.sum(dim=2, dtype=acc)
    return out


def grad_input(
    dy3: Tensor, ca: Tensor, g_avg: Tensor, g_max: Tensor, idx: Tensor, valid: Tensor | None = None
) -> Tensor:
    """dx = dy * ca + g_avg + (g_max at the argmax), in one pass over dy, written with dy3's strides.

    ``g_avg`` is already divided by the count of positions; with a (B, N) ``valid`` mask it reaches the
    real positions only. dy has y's layout, which is x's, so a channels_last input gets a channels_last
    gradient.
    """
    dtype = dy3.dtype
    dx3 = torch.empty_like(dy3)
    # mul + in-place add measured faster than addcmul with two broadcast operands (~13 vs ~22 ms at
    # 16x256x56x56 fp32): addcmul's three-input kernel does not vectorise the broadcasts well.
    torch.mul(dy3, ca.to(dtype).unsqueeze(2), out=dx3)
    if valid is None:
        dx3.add_(g_avg.to(dtype).unsqueeze(2))
    else:
        dx3.add_(torch.where(valid.unsqueeze(1), g_avg.to(dtype).unsqueeze(2), torch.zeros((), dtype=dtype)))
    if dx3.numel():
        _add_at_argmax(dx3, idx, g_max.to(dtype))
    return dx3


def _add_at_argmax(dx3: Tensor, idx: Tensor, g_max: Tensor) -> None:
    """dx3[b, c, idx[b, c]] += g_max[b, c], through a flat view of dx3's (dense) storage.

    ``scatter_add_`` on a channels_last view copies the whole tensor to contiguous and back; B*C
    computed offsets into the storage touch only the B*C elements that change.
    """
    b, c, _ = dx3.shape
    s_b, s_c, s_n = dx3.stride()
    base = torch.arange(b, device=dx3.device).unsqueeze(1) * s_b + torch.arange(c, device=dx3.device) * s_c
    flat = dx3.as_strided((dx3.numel(),), (1,))
    flat.index_add_(0, (base + idx * s_n).flatten(), g_max.flatten())
