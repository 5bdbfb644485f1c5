"""The fast path in plain eager mode: an autograd.Function around the same forward and backward math.

The custom ops in ``op`` are what torch.compile and torch.export see; in eager mode their Python
dispatch (schema checks, default filling, boxing of 14 arguments, twice) costs more than the whole
block at small shapes. This Function runs the same ``fused_forward``/``fused_backward`` directly and,
unlike the op, can keep the small path's (B, C) intermediates for the backward instead of
recomputing them. Only x, the statistics, the argmax and (B, C)-sized tensors are saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cafusion.kernels import small
from cafusion.kernels.op import fused_backward, fused_forward

_N_PARAMS = len(small.Params._fields)


def _own_storage(t: Tensor) -> Tensor:
    """The same memory as a tensor that is not a view.

    y comes back as a reshape of the (B, C, N) result; autograd forbids in-place changes to a view
    returned from a Function, and models do change y in place (timm's ResNet: ``x += shortcut``).
    """
    if t._base is None:
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


class FusedChannelAttention(torch.autograd.Function):
    """apply(x, fc1_w, fc1_b, fc2_w, fc2_b, r1_w, r1_b, r2_w, r2_b, temperature, fusion, gate, act, need_index)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, *args: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        p = small.Params(*args[:_N_PARAMS])
        fusion, gate, act, need_index = args[_N_PARAMS:]
        y, ca, fusion_w, avg, mx, idx, fw = fused_forward(x, p, fusion, gate, act, need_index)
        y = _own_storage(y)
        ctx.config = (fusion, gate, act)
        ctx.set_materialize_grads(False)  # an unused output gets None, not a zero tensor of its size
        ctx.save_for_backward(x, avg, mx, idx, *p, *fw)
        return y, ca, fusion_w

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, g_ca: Tensor | None, g_fw: Tensor | None) -> tuple[Any, ...]:
        x, avg, mx, idx, *rest = ctx.saved_tensors
        p = small.Params(*rest[:_N_PARAMS])
        fw = rest[_N_PARAMS:]
        fusion, gate, act = ctx.config
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself must be differentiable
            return (*_differentiable_backward(x, p, fusion, gate, act, dy, g_ca, g_fw), None, None, None, None)
        need_x = bool(ctx.needs_input_grad[0])
        if dy is None:
            dy = torch.zeros_like(x)
        dx, g = fused_backward(
            dy,
            g_ca,
            g_fw if fusion == "softmax" else None,
            None,
            None,
            x,
            avg,
            mx,
            idx,
            p,
            fusion,
            gate,
            act,
            need_x,
            fw,
        )
        grads = (g.fc1_w, g.fc1_b, g.fc2_w, g.fc2_b, g.r1_w, g.r1_b, g.r2_w, g.r2_b, g.temperature)
        return (dx, *(d if t is not None else None for d, t in zip(grads, p, strict=True)), None, None, None, None)


def _differentiable_backward(
    x: Tensor,
    p: small.Params,
    fusion: str,
    gate: str,
    act: str,
    dy: Tensor | None,
    g_ca: Tensor | None,
    g_fw: Tensor | None,
) -> list[Tensor | None]:
    """Gradients of (x, *p) that autograd can differentiate again (gradient penalties, double backward).

    The hand-written backward writes into preallocated buffers and has no graph of its own, so for
    ``create_graph=True`` the reference composite is re-run on the saved inputs and differentiated by
    autograd instead: slower, but exact and differentiable to any order.
    """
    from cafusion.functional.channel_attention import channel_attention_fusion

    with torch.enable_grad():
        y, ca, fusion_w = channel_attention_fusion(
            x,
            p.fc1_w,
            p.fc1_b,
            p.fc2_w,
            p.fc2_b,
            fusion=fusion,
            router1_weight=p.r1_w,
            router1_bias=p.r1_b,
            router2_weight=p.r2_w,
            router2_bias=p.r2_b,
            temperature=p.temperature,
            gate=gate,
            act=act,
            impl="reference",
        )
    pairs = [(y, dy), (ca.flatten(1), g_ca), (fusion_w, g_fw)]
    outputs = [o for o, g in pairs if o is not None and g is not None]
    grad_outputs = [g for o, g in pairs if o is not None and g is not None]
    inputs = [x, *p]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = torch.autograd.grad(outputs, wanted, grad_outputs, create_graph=True, allow_unused=True)
    by_id = {id(t): g for t, g in zip(wanted, found, strict=True)}
    return [None if t is None else by_id.get(id(t)) for t in inputs]
