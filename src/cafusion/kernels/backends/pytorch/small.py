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

from cafusion.kernels.contract import Options, SmallGrads, Weights, attend


class Attended(NamedTuple):
    """This small path's forward: its inputs (for the backward) and outputs, in the compute dtype."""

    avg: Tensor  # (B, C)
    mx: Tensor  # (B, C)
    w: Tensor | None  # (B, 2): fusion weights
    ca: Tensor  # (B, C): the gate


def forward(avg: Tensor, mx: Tensor, w: Weights, opts: Options) -> Attended:
    """avg, mx (B, C) in the compute dtype -> the gate and the fusion weights (``composite.attend``)."""
    ca, fusion_w = attend(avg, mx, w, opts)
    return Attended(avg, mx, fusion_w, ca)


def _leaf(t: Tensor | None) -> Any:
    """A detached copy that autograd differentiates (None stays None)."""
    return None if t is None else t.detach().requires_grad_()


def backward(fw: Attended, w: Weights, g_ca: Tensor, g_w: Tensor | None, opts: Options) -> SmallGrads:
    """Gradients of everything from d(loss)/d(ca) (B, C) and d(loss)/d(fusion_w) (B, 2) or None.

    ``attend`` runs again on leaf copies with autograd on: below the Autograd key (``_AutoDispatchBelowAutograd``
    in the op's kernels) the autograd dispatch keys are excluded, and grad mode is off in a backward.
    """
    avg, mx, leaf_w = _leaf(fw.avg), _leaf(fw.mx), Weights._make(map(_leaf, w))
    if opts.fusion == "sum":  # the router takes no part: no gradients for it (the op passes None there anyway)
        leaf_w = leaf_w.without_router()
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
        ca, fusion_w = attend(avg, mx, leaf_w, opts)
        outputs, grad_outputs = [ca], [g_ca.to(ca.dtype)]
        if fusion_w is not None and g_w is not None:
            outputs.append(fusion_w)
            grad_outputs.append(g_w.to(fusion_w.dtype))
        leaves = [avg, mx, *leaf_w]
        wanted = [t for t in leaves if t is not None]
        found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True, materialize_grads=True))
    g_avg, g_mx, *g_weights = (None if t is None else next(found) for t in leaves)
    assert g_avg is not None and g_mx is not None
    return SmallGrads(g_avg, g_mx, Weights._make(g_weights))
