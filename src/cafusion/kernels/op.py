"""The fast path as two ``torch.library`` custom ops with a hand-written autograd formula.

``cafusion::caft_forward`` runs the whole block: one statistics pass over x, the small path on (B, C),
one pass writing y. ``cafusion::caft_backward`` is its gradient: one pass reading dy and x for
d(ca), the small path's backward by hand, one pass reading dy and writing dx. Both ops are opaque to
autograd, torch.compile and torch.export (each has a fake kernel), so the only full-size tensors
are x, y, dy and dx, and nothing full-size is saved for the backward besides x itself.

The forward also returns the pooled statistics and the argmax; the public wrapper drops them. They
are outputs (not recomputed) because the backward needs them and ``setup_context`` can only save
inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from cafusion._dtypes import compute_dtype
from cafusion.kernels import native, small
from cafusion.kernels.dispatch import backend, small_path

_N_PARAMS = 9  # fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature
State = Sequence[Tensor | None]  # the small path's saved intermediates, as fused_forward returns them


def _flat(x: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, C, N); a view for contiguous and channels_last maps."""
    return x.flatten(2)


def _unflat(t3: Tensor, shape: torch.Size) -> Tensor:
    """(B, C, N) -> (B, C, *spatial) without a copy (t3 is dense: x's strides, or contiguous).

    Detached so that the result is not a *view* of the internal (B, C, N) tensor: an op output that is
    a view cannot be modified in place afterwards (``out += identity`` in a ResNet block).
    """
    return t3.reshape(shape).detach()


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when it is already there (small path: many calls)."""
    return t if t.dtype == dtype else t.to(dtype)


def _native_flags(fusion: str, gate: str, act: str) -> tuple[bool, bool, bool]:
    """The configuration as the C++ kernels take it: (softmax fusion, hardsigmoid gate, silu activation)."""
    return fusion == "softmax", gate == "hardsigmoid", act == "silu"


def _nothing(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The empty tensor a custom op returns where the math has no tensor (ops cannot return None)."""
    return like.new_empty((0,), dtype=dtype or like.dtype)


def fused_forward(
    x: Tensor, p: small.Params, fusion: str, gate: str, act: str, need_index: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor | None, State]:
    """The forward math: (y, ca (B, C) in x.dtype, fusion_w, avg, max, argmax or None, small-path state).

    The state is what ``fused_backward`` takes back: ``small.Forward`` from the PyTorch small path, the
    CPU kernels' own list otherwise (possibly empty: they recompute a small problem's small path).
    """
    x3 = _flat(x)
    lib = native.for_tensor(x3)
    if lib is not None:  # the CPU kernels: the whole forward in one call
        flags = _native_flags(fusion, gate, act)
        y, ca, fusion_w, avg, mx, idx, *state = lib.forward(x, list(p), *flags, need_index)
        return y, ca, fusion_w, avg, mx, idx, state
    ops = backend(x)
    avg, mx, idx = ops.pool_stats(x3, need_index)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    fw = small_path(avg, dtype).forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    ca = _cast(fw.ca, x.dtype)
    y = _unflat(ops.scale(x3, ca), x.shape)
    return y, ca, fw.w, avg, mx, idx, fw


def fused_backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_fusion_w: Tensor | None,
    g_avg: Tensor | None,
    g_mx: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor | None,
    p: small.Params,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
    fw: State | None = None,
) -> tuple[Tensor | None, small.Grads]:
    """The backward math: (dx or None, gradients of the parameters); ``fw`` None recomputes the small path."""
    x3 = _flat(x)
    lib = native.for_tensor(x3)
    if lib is not None:  # the CPU kernels: the whole backward in one call
        flags = _native_flags(fusion, gate, act)
        state = [] if fw is None else list(fw)  # empty: the kernels recompute the small path
        dy = native.like(dy, x)
        dx, *grads = lib.backward(dy, g_ca, g_fusion_w, g_avg, g_mx, x, avg, mx, idx, list(p), state, *flags, need_x)
        return dx, small.Grads(*grads)
    ops = backend(x)
    dy3 = _flat(dy)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    if fw is None:
        fw = small_path(avg, dtype).forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    elif not isinstance(fw, small.Forward):  # saved by autograd as a plain tuple
        fw = small.Forward(*fw)  # type: ignore[arg-type]
    d_ca = _cast(ops.grad_ca(dy3, x3), dtype)
    if g_ca is not None:
        d_ca = d_ca + _cast(g_ca.reshape(d_ca.shape), dtype)
    g = small_path(d_ca).backward(fw, p, d_ca, g_fusion_w, fusion, gate, act)
    if not need_x:
        return None, g
    assert idx is not None, "the forward ran without the argmax but x needs a gradient"
    d_avg = g.avg if g_avg is None else g.avg + _cast(g_avg, dtype)
    d_mx = g.mx if g_mx is None else g.mx + _cast(g_mx, dtype)
    n = x3.shape[2]
    assert isinstance(fw, small.Forward)
    dx3 = ops.grad_input(dy3, _cast(fw.ca, x.dtype), _cast(d_avg / n, avg.dtype), _cast(d_mx, avg.dtype), idx)
    return _unflat(dx3, x.shape), g


@torch.library.custom_op("cafusion::caft_forward", mutates_args=())
def caft_forward(
    x: Tensor,
    fc1_w: Tensor,
    fc1_b: Tensor | None,
    fc2_w: Tensor,
    fc2_b: Tensor | None,
    r1_w: Tensor | None,
    r1_b: Tensor | None,
    r2_w: Tensor | None,
    r2_b: Tensor | None,
    temperature: Tensor,
    fusion: str,
    gate: str,
    act: str,
    need_index: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (y, ca (B, C) in x.dtype, fusion_w (B, 2) or (B, 0), avg, max, argmax or empty)."""
    p = small.Params(fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature)
    y, ca, fusion_w, avg, mx, idx, _ = fused_forward(x, p, fusion, gate, act, need_index)
    if fusion_w is None:
        fusion_w = avg.new_empty((x.shape[0], 0), dtype=compute_dtype(avg.dtype, fc1_w.dtype))
    index = idx if idx is not None else _nothing(avg, torch.int64)
    return y, ca, fusion_w, avg, mx, index


@caft_forward.register_fake
def _caft_forward_fake(
    x: Tensor,
    fc1_w: Tensor,
    fc1_b: Tensor | None,
    fc2_w: Tensor,
    fc2_b: Tensor | None,
    r1_w: Tensor | None,
    r1_b: Tensor | None,
    r2_w: Tensor | None,
    r2_b: Tensor | None,
    temperature: Tensor,
    fusion: str,
    gate: str,
    act: str,
    need_index: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    b, c = x.shape[0], x.shape[1]
    acc = compute_dtype(x.dtype)
    dtype = compute_dtype(acc, fc1_w.dtype)
    y = _unflat(torch.empty_like(_flat(x)), x.shape)
    ca = x.new_empty((b, c))
    fusion_w = x.new_empty((b, 2 if fusion == "softmax" else 0), dtype=dtype)
    avg = x.new_empty((b, c), dtype=acc)
    mx = x.new_empty((b, c), dtype=acc)
    index = x.new_empty((b, c) if need_index else (0,), dtype=torch.int64)
    return y, ca, fusion_w, avg, mx, index


@torch.library.custom_op("cafusion::caft_backward", mutates_args=())
def caft_backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_fusion_w: Tensor | None,
    g_avg: Tensor | None,
    g_mx: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor,
    fc1_w: Tensor,
    fc1_b: Tensor | None,
    fc2_w: Tensor,
    fc2_b: Tensor | None,
    r1_w: Tensor | None,
    r1_b: Tensor | None,
    r2_w: Tensor | None,
    r2_b: Tensor | None,
    temperature: Tensor,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dx, d fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature); absent ones empty."""
    p = small.Params(fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature)
    dx, g = fused_backward(dy, g_ca, g_fusion_w, g_avg, g_mx, x, avg, mx, idx, p, fusion, gate, act, need_x)
    rest = (g.fc1_w, g.fc1_b, g.fc2_w, g.fc2_b, g.r1_w, g.r1_b, g.r2_w, g.r2_b, g.temperature)
    return (_nothing(x) if dx is None else dx, *(_nothing(x) if t is None else t for t in rest))  # type: ignore[return-value]


@caft_backward.register_fake
def _caft_backward_fake(
    dy: Tensor,
    g_ca: Tensor | None,
    g_fusion_w: Tensor | None,
    g_avg: Tensor | None,
    g_mx: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor,
    fc1_w: Tensor,
    fc1_b: Tensor | None,
    fc2_w: Tensor,
    fc2_b: Tensor | None,
    r1_w: Tensor | None,
    r1_b: Tensor | None,
    r2_w: Tensor | None,
    r2_b: Tensor | None,
    temperature: Tensor,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx = _unflat(torch.empty_like(_flat(dy)), x.shape) if need_x else _nothing(x)
    params = (fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature)
    return (dx, *(_nothing(x) if t is None else torch.empty_like(t) for t in params))  # type: ignore[return-value]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, *params = inputs[: 1 + _N_PARAMS]
    ctx.config = inputs[1 + _N_PARAMS : 1 + _N_PARAMS + 3]
    ctx.need_x = bool(ctx.needs_input_grad[0])
    if ctx.need_x and not inputs[-1]:
        raise RuntimeError("cafusion::caft_forward ran without need_index but x requires grad")
    _, _, _, avg, mx, idx = output
    ctx.save_for_backward(x, avg, mx, idx, *params)


def _backward(ctx: Any, dy: Tensor | None, g_ca: Tensor | None, g_fw: Tensor | None, *rest: Any) -> tuple[Any, ...]:
    x, avg, mx, idx, *params = ctx.saved_tensors
    fusion, gate, act = ctx.config
    g_avg, g_mx = rest[0], rest[1]
    if dy is None:
        dy = torch.zeros_like(x)
    if fusion != "softmax":
        g_fw = None
    dx, *d_params = caft_backward(dy, g_ca, g_fw, g_avg, g_mx, x, avg, mx, idx, *params, fusion, gate, act, ctx.need_x)
    grads = [d if p is not None else None for d, p in zip(d_params, params, strict=True)]
    return (dx if ctx.need_x else None, *grads, None, None, None, None)


caft_forward.register_autograd(_backward, setup_context=_setup_context)
