"""The PyTorch backend: the fused op's forward and backward from plain torch calls.

It runs on any device (it is the op's ``CompositeExplicitAutograd`` kernel, so CPU without the native
kernels, CUDA without Triton, any other device). The big passes (``passes``) and the small (B, C) path
(``small``) are separate modules so that the Triton backend can reuse this composition with its own
passes. The small path is the composite's (``cafusion.functional.composite.attend``), differentiated by
autograd inside the kernel; the big passes' gradients are written out. Same names in every backend:
``forward`` and ``backward``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import compute_dtype
from cafusion.kernels.backends.pytorch import passes, small
from cafusion.kernels.backends.pytorch.small import Params

Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # y, ca (B, C), fusion_w, avg, max, argmax
Gradients = tuple[Tensor, ...]  # dx, then one per parameter of Params (empty where absent)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The empty tensor the op returns where the math has no tensor (ops cannot return None)."""
    return like.new_empty((0,), dtype=dtype or like.dtype)


def unflat(t3: Tensor, x: Tensor) -> Tensor:
    """(B, C, N) -> x's shape without a copy, detached so that the op's output is not a view of an
    internal tensor (a view could not be modified in place afterwards: ``out += identity`` in a ResNet)."""
    return t3.reshape(x.shape).detach()


def compose_forward(
    ops: ModuleType,
    small_path: ModuleType,
    x: Tensor,
    p: Params,
    fusion: str,
    gate: str,
    act: str,
    need_index: bool,
    valid: Tensor | None = None,
) -> Outputs:
    """One statistics pass, the small path on (B, C), one scaling pass: the forward with any passes module.

    With a ``valid`` mask (or lengths, made a mask here after their range check) the statistics come
    from the PyTorch passes' masked pooling (the scaling pass is the same: y = x * ca at every position).
    """
    valid = masking.as_mask(valid, x)
    x3 = x.flatten(2)
    avg, mx, idx = ops.pool_stats(x3, need_index) if valid is None else passes.pool_stats(x3, need_index, valid)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    fw = small_path.forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    ca = _cast(fw.ca, x.dtype)
    y = unflat(ops.scale(x3, ca), x)
    w = fw.w if fw.w is not None else avg.new_empty((x.shape[0], 0), dtype=dtype)
    return y, ca, w, avg, mx, idx if idx is not None else empty(avg, torch.int64)


def compose_backward(
    ops: ModuleType,
    small_path: ModuleType,
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor,
    p: Params,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """d(ca) from one pass over dy and x, the small path's backward (recomputing its tiny forward), and
    one pass writing dx (the mean's gradient at real positions only, with a ``valid`` mask or lengths)."""
    valid = masking.as_mask(valid, x, check=False)
    x3, dy3 = x.flatten(2), dy.flatten(2)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    fw = small_path.forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    d_ca = _cast(ops.grad_ca(dy3, x3), dtype)
    if g_ca is not None:
        d_ca = d_ca + _cast(g_ca.reshape(d_ca.shape), dtype)
    g = small_path.backward(fw, p, d_ca, g_w if fusion == "softmax" else None, fusion, gate, act)
    dx = empty(x)
    if need_x:
        ca = _cast(fw.ca, x.dtype)
        count = x3.shape[2] if valid is None else valid.sum(dim=1, keepdim=True).to(g.avg.dtype)
        g_avg, g_mx = _cast(g.avg / count, avg.dtype), _cast(g.mx, avg.dtype)
        dx = (
            ops.grad_input(dy3, ca, g_avg, g_mx, idx)
            if valid is None
            else passes.grad_input(dy3, ca, g_avg, g_mx, idx, valid)
        )
        dx = unflat(dx, x)
    params = (g.fc1_w, g.fc1_b, g.fc2_w, g.fc2_b, g.r1_w, g.r1_b, g.r2_w, g.r2_b, g.temperature)
    return (dx, *(empty(x) if t is None else t for t in params))


def forward(
    x: Tensor, p: Params, fusion: str, gate: str, act: str, need_index: bool, valid: Tensor | None = None
) -> Outputs:
    """The op's forward in torch calls (see ``compose_forward``)."""
    return compose_forward(passes, small, x, p, fusion, gate, act, need_index, valid)


def backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor,
    p: Params,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """The op's backward in torch calls (see ``compose_backward``)."""
    return compose_backward(passes, small, dy, g_ca, g_w, x, avg, mx, idx, p, fusion, gate, act, need_x, valid)
