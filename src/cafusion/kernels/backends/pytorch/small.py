"""The block's small path on (B, C) matrices: the composite's ``attend``, and its gradients by autograd.

Everything between the pooled statistics and the gate is tiny (B x C), so the op recomputes it in the
backward instead of saving it. The op's kernels run below the Autograd dispatch key, where autograd
records nothing; ``backward`` switches it back on for detached copies of the statistics and
parameters and differentiates ``cafusion.functional.composite.attend``, so the gradients are torch's
own (hardsigmoid's slope, NaN through ReLU, dtypes) with no second copy of the math to keep in step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from cafusion.functional import composite


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


class Attended(NamedTuple):
    """This small path's forward: its inputs (for the backward) and outputs, in the compute dtype."""

    avg: Tensor  # (B, C)
    mx: Tensor  # (B, C)
    w: Tensor | None  # (B, 2): fusion weights
    ca: Tensor  # (B, C): the gate


class Forward(NamedTuple):
    """The fused Triton small path's forward (``backends/triton/small.py``): every intermediate its
    backward reads, all (B, *) matrices in float32."""

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
# Triton small path's backward uses the same constant.
_ONE_SIXTH = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))


def forward(avg: Tensor, mx: Tensor, p: Params, fusion: str, gate: str, act: str) -> Attended:
    """avg, mx (B, C) in the compute dtype -> the gate and the fusion weights (``composite.attend``)."""
    ca, w = composite.attend(avg, mx, *p[:4], fusion, *p[4:8], p.temperature, gate, act)
    return Attended(avg, mx, w, ca)


def _leaf(t: Tensor | None) -> Any:
    """A detached copy that autograd differentiates (None stays None)."""
    return None if t is None else t.detach().requires_grad_()


def backward(fw: Attended, p: Params, g_ca: Tensor, g_w: Tensor | None, fusion: str, gate: str, act: str) -> Grads:
    """Gradients of everything from d(loss)/d(ca) (B, C) and d(loss)/d(fusion_w) (B, 2) or None.

    ``attend`` runs again on leaf copies with autograd on: below the Autograd key (``_AutoDispatchBelowAutograd``
    in the op's kernels) the autograd dispatch keys are excluded, and grad mode is off in a backward.
    """
    avg, mx, leaf_p = _leaf(fw.avg), _leaf(fw.mx), Params(*map(_leaf, p))
    if fusion == "sum":  # the router takes no part: no gradients for it (the op passes None there anyway)
        leaf_p = leaf_p._replace(r1_w=None, r1_b=None, r2_w=None, r2_b=None)
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
        ca, w = composite.attend(avg, mx, *leaf_p[:4], fusion, *leaf_p[4:8], leaf_p.temperature, gate, act)
        outputs, grad_outputs = [ca], [g_ca.to(ca.dtype)]
        if w is not None and g_w is not None:
            outputs.append(w)
            grad_outputs.append(g_w.to(w.dtype))
        leaves = [avg, mx, *leaf_p]
        wanted = [t for t in leaves if t is not None]
        found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True, materialize_grads=True))
    return Grads._make(None if t is None else next(found) for t in leaves)
