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

from cafusion._dtypes import compute_dtype
from cafusion.kernels.backends.pytorch import passes, small
from cafusion.kernels.contract import Gradients, Options, Outputs, Saved, Weights


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def empty(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The empty tensor the op returns where the math has no tensor (ops cannot return None)."""
    return like.new_empty((0,), dtype=dtype or like.dtype)


def gate_shape(x: Tensor) -> tuple[int, ...]:
    """ca's shape as the op returns it, (B, C, 1, ...): broadcastable against x, so that no caller reshapes it."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def unflat(t3: Tensor, x: Tensor) -> Tensor:
    """(B, C, N) -> x's shape without a copy, detached so that the op's output is not a view of an
    internal tensor (a view could not be modified in place afterwards: ``out += identity`` in a ResNet)."""
    return t3.reshape(x.shape).detach()


def compose_forward(
    ops: ModuleType,
    small_path: ModuleType,
    x: Tensor,
    w: Weights,
    opts: Options,
    need_index: bool,
    valid: Tensor | None = None,
) -> Outputs:
    """One statistics pass, the small path on (B, C), one scaling pass: the forward with any passes module.

    With ``valid`` (lengths or a mask) the statistics cover real positions only, in the form ``ops.padding``
    gives (range-checked here, before any work); the scaling pass is the same: y = x * ca everywhere.
    """
    pad = None if valid is None else ops.padding(valid, x, check=True)
    x3 = x.flatten(2)
    avg, mx, idx = ops.pool_stats(x3, need_index, pad)
    dtype = compute_dtype(avg.dtype, w.fc1_w.dtype)
    fw = small_path.forward(_cast(avg, dtype), _cast(mx, dtype), w, opts)
    ca = _cast(fw.ca, x.dtype)
    y = unflat(ops.scale(x3, ca), x)
    fusion_w = fw.w if fw.w is not None else avg.new_empty((x.shape[0], 0), dtype=dtype)
    ca_out = ca.reshape(gate_shape(x)).detach()  # detached as in unflat: not a view of an internal tensor
    return Outputs(y, ca_out, fusion_w, avg, mx, idx if idx is not None else empty(avg, torch.int64))


def compose_backward(
    ops: ModuleType,
    small_path: ModuleType,
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    saved: Saved,
    w: Weights,
    opts: Options,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """d(ca) from one pass over dy and x, the small path's backward (recomputing its tiny forward), and
    one pass writing dx (the mean's gradient at real positions only, with a ``valid`` mask or lengths)."""
    pad = None if valid is None else ops.padding(valid, x, check=False)
    x3, dy3 = x.flatten(2), dy.flatten(2)
    dtype = compute_dtype(saved.avg.dtype, w.fc1_w.dtype)
    fw = small_path.forward(_cast(saved.avg, dtype), _cast(saved.mx, dtype), w, opts)
    d_ca = _cast(ops.grad_ca(dy3, x3), dtype)
    if g_ca is not None:
        d_ca = d_ca + _cast(g_ca.reshape(d_ca.shape), dtype)
    g = small_path.backward(fw, w, d_ca, g_w if opts.fusion == "softmax" else None, opts)
    dx = empty(x)
    if need_x:
        count = x3.shape[2] if pad is None else ops.count(pad, g.avg.dtype)
        g_avg, g_mx = _cast(g.avg / count, saved.avg.dtype), _cast(g.mx, saved.avg.dtype)
        dx = unflat(ops.grad_input(dy3, _cast(fw.ca, x.dtype), g_avg, g_mx, saved.idx, pad), x)
    return Gradients.of(dx, g, lambda: empty(x))


def forward(x: Tensor, w: Weights, opts: Options, need_index: bool, valid: Tensor | None = None) -> Outputs:
    """The op's forward in torch calls (see ``compose_forward``)."""
    return compose_forward(passes, small, x, w, opts, need_index, valid)


def backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    saved: Saved,
    w: Weights,
    opts: Options,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """The op's backward in torch calls (see ``compose_backward``)."""
    return compose_backward(passes, small, dy, g_ca, g_w, x, saved, w, opts, need_x, valid)
