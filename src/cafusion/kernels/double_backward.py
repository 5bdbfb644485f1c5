"""The op's gradient as a differentiable function: double backward and gradient penalties.

The hand-written backward kernels have no graph of their own, so when autograd needs the gradient
itself to be differentiable (``create_graph=True``) the op's autograd (Python, and the native
library's C++ node through ``set_double_backward``) re-runs the reference composite on the saved
inputs instead. It imports only the composite, so every backend can use it without importing the op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cafusion import masking
from cafusion.kernels.contract import N_WEIGHTS, Options, Weights, reference


def differentiable_backward(x: Tensor, valid: Tensor | None, *args: Any) -> list[Tensor | None]:
    """Gradients of (x, *params) that autograd can differentiate again (gradient penalties, double backward).

    ``args``: the nine parameters, fusion, gate, act, then the upstream gradients of y, ca, fusion_w.
    The hand-written backward has no graph of its own, so the reference composite is re-run on the saved
    inputs and differentiated by autograd instead: slower, but exact and differentiable to any order.
    """
    w = Weights.of(args)
    fusion, gate, act, dy, g_ca, g_w = args[N_WEIGHTS:]
    mask = masking.as_mask(valid, x, check=False)
    with torch.enable_grad():
        y, ca, fusion_w = reference(x, w[: N_WEIGHTS - 1], w.temperature, Options(fusion, gate, act), mask)
    pairs = [(y, dy), (ca, g_ca), (fusion_w, g_w)]
    outputs = [o for o, g in pairs if o is not None and g is not None and g.numel()]
    grad_outputs = [g for o, g in pairs if o is not None and g is not None and g.numel()]
    inputs = [x, *w]
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = torch.autograd.grad(outputs, wanted, grad_outputs, create_graph=True, allow_unused=True)
    by_id = {id(t): g for t, g in zip(wanted, found, strict=True)}
    return [None if t is None else by_id.get(id(t)) for t in inputs]
