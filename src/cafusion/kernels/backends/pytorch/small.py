"""The block's small path on (B, C) matrices, forward and a hand-written backward.

Everything between the pooled statistics and the gate is tiny (B x C), so the fast path recomputes
it in the backward instead of saving it; the backward is written out by hand (linear, relu/silu,
softmax, temperature division, sigmoid/hardsigmoid) because it runs inside a custom op, where
autograd is not available. The math mirrors ``cafusion.functional.channel_attention_fusion``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Params(NamedTuple):
    """The block's parameters as the functional form takes them (conv-shaped weights are fine)."""

    fc1_w: Tensor
    fc1_b: Tensor | None
    fc2_w: Tensor
    fc2_b: Tensor | None
    r1_w: Tensor | None
    r1_b: Tensor | None
    r2_w: Tensor | None
    r2_b: Tensor | None
    temperature: Tensor


class Grads(NamedTuple):
    """Gradients for the pooled statistics and every parameter, each in its parameter's dtype and shape."""

    avg: Tensor
    mx: Tensor
    fc1_w: Tensor
    fc1_b: Tensor | None
    fc2_w: Tensor
    fc2_b: Tensor | None
    r1_w: Tensor | None
    r1_b: Tensor | None
    r2_w: Tensor | None
    r2_b: Tensor | None
    temperature: Tensor


class Forward(NamedTuple):
    """What the backward needs from the forward; all (B, *) matrices in the compute dtype."""

    s: Tensor  # (2B, C): avg rows, then max rows
    pre: Tensor  # (2B, H): fc1 output before the activation
    hid: Tensor  # (2B, H): after the activation
    out: Tensor  # (2B, C): fc2 output, rows a then m
    cat: Tensor | None  # (B, 2C): router input
    q: Tensor | None  # (B, R): router hidden before ReLU
    w: Tensor | None  # (B, 2): fusion weights
    t: Tensor  # () temperature
    u: Tensor  # (B, C): z / T
    ca: Tensor  # (B, C): gate(u)


# torch's hardsigmoid_backward multiplies by 1/6 rounded to float32 even for float64 tensors; the
# reference's gradients carry that rounding, so the fast path uses the same constant.
_ONE_SIXTH = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` minus the dispatcher round trip when nothing changes (the small path is overhead-bound)."""
    return t if t.dtype == dtype else t.to(dtype)


def _mat(weight: Tensor, dtype: torch.dtype) -> Tensor:
    return _cast(weight.flatten(1), dtype)


def _vec(bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if bias is None else _cast(bias, dtype)


def forward(avg: Tensor, mx: Tensor, p: Params, fusion: str, gate: str, act: str) -> Forward:
    """avg, mx (B, C) in the compute dtype -> ca and the intermediates; one batched MLP for both rows."""
    dtype = avg.dtype
    b = avg.shape[0]
    s = torch.cat([avg, mx], dim=0)
    pre = F.linear(s, _mat(p.fc1_w, dtype), _vec(p.fc1_b, dtype))
    hid = F.relu(pre) if act == "relu" else F.silu(pre)
    out = F.linear(hid, _mat(p.fc2_w, dtype), _vec(p.fc2_b, dtype))
    a, m = out[:b], out[b:]
    cat = q = w = None
    if fusion == "sum":
        z = a + m
    else:
        assert p.r1_w is not None and p.r2_w is not None
        cat = torch.cat([avg, mx], dim=1)
        q = F.linear(cat, _mat(p.r1_w, dtype), _vec(p.r1_b, dtype))
        logits = F.linear(F.relu(q), _mat(p.r2_w, dtype), _vec(p.r2_b, dtype))
        w = torch.softmax(logits, dim=1)
        z = w[:, 0:1] * a + w[:, 1:2] * m
    t = _cast(p.temperature, dtype).reshape(())
    u = z / t
    ca = torch.sigmoid(u) if gate == "sigmoid" else F.hardsigmoid(u)
    return Forward(s, pre, hid, out, cat, q, w, t, u, ca)


def _linear_backward(
    g: Tensor, inp: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """For out = inp @ W^T + b: (d inp, dW shaped and typed like ``weight``, db like ``bias``)."""
    w = _mat(weight, g.dtype)
    d_inp = g @ w
    d_w = _cast((g.t() @ inp).reshape(weight.shape), weight.dtype)
    d_b = None if bias is None else _cast(g.sum(0), bias.dtype)
    return d_inp, d_w, d_b


def backward(fw: Forward, p: Params, g_ca: Tensor, g_w: Tensor | None, fusion: str, gate: str, act: str) -> Grads:
    """Gradients of everything from d(loss)/d(ca) (B, C) and d(loss)/d(fusion_w) (B, 2) or None."""
    b = fw.u.shape[0]
    if gate == "sigmoid":
        g_u = g_ca * fw.ca * (1 - fw.ca)
    else:  # hardsigmoid: slope 1/6 strictly inside (-3, 3), as torch's hardsigmoid_backward
        g_u = torch.where((fw.u > -3) & (fw.u < 3), g_ca * _ONE_SIXTH, torch.zeros_like(g_ca))
    g_z = g_u / fw.t
    g_t = -(g_u * fw.u).sum() / fw.t

    a, m = fw.out[:b], fw.out[b:]
    d_cat: Tensor | None = None
    d_r1_w = d_r1_b = d_r2_w = d_r2_b = None
    if fusion == "sum":
        g_out = torch.cat([g_z, g_z], dim=0)
    else:
        assert fw.w is not None and fw.q is not None and fw.cat is not None
        assert p.r1_w is not None and p.r2_w is not None
        g_out = torch.cat([g_z * fw.w[:, 0:1], g_z * fw.w[:, 1:2]], dim=0)
        g_w_total = torch.stack([(g_z * a).sum(1), (g_z * m).sum(1)], dim=1)
        if g_w is not None:
            g_w_total = g_w_total + _cast(g_w, g_w_total.dtype)
        g_logits = fw.w * (g_w_total - (g_w_total * fw.w).sum(1, keepdim=True))
        r = F.relu(fw.q)
        d_r, d_r2_w, d_r2_b = _linear_backward(g_logits, r, p.r2_w, p.r2_b)
        g_q = torch.where(fw.q <= 0, torch.zeros_like(d_r), d_r)  # NaN passes, as in aten
        d_cat, d_r1_w, d_r1_b = _linear_backward(g_q, fw.cat, p.r1_w, p.r1_b)

    d_hid, d_fc2_w, d_fc2_b = _linear_backward(g_out, fw.hid, p.fc2_w, p.fc2_b)
    if act == "relu":
        g_pre = torch.where(fw.pre <= 0, torch.zeros_like(d_hid), d_hid)  # NaN passes, as in aten
    else:
        sig = torch.sigmoid(fw.pre)
        g_pre = d_hid * sig * (1 + fw.pre * (1 - sig))
    d_s, d_fc1_w, d_fc1_b = _linear_backward(g_pre, fw.s, p.fc1_w, p.fc1_b)
    g_avg, g_mx = d_s[:b], d_s[b:]
    if d_cat is not None:
        c = g_avg.shape[1]
        g_avg = g_avg + d_cat[:, :c]
        g_mx = g_mx + d_cat[:, c:]
    temp = p.temperature
    return Grads(
        g_avg,
        g_mx,
        d_fc1_w,
        d_fc1_b,
        d_fc2_w,
        d_fc2_b,
        d_r1_w,
        d_r1_b,
        d_r2_w,
        d_r2_b,
        _cast(g_t.reshape(temp.shape), temp.dtype),
    )
