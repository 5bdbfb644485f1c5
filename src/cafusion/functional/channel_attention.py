"""The public functional form of the block: checks its arguments, then runs the implementation
``cafusion.dispatch`` picks (the composite in ``composite`` or the fused operator)."""

from __future__ import annotations

from torch import Tensor

from cafusion import _validation as check
from cafusion import dispatch, masking
from cafusion.dispatch import IMPLS
from cafusion.functional.composite import FusionOutput

FUSIONS = ("sum", "softmax")
GATES = ("sigmoid", "hardsigmoid")
ACTS = ("relu", "silu")


def channel_attention_fusion(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor | None,
    fc2_weight: Tensor,
    fc2_bias: Tensor | None,
    *,
    fusion: str = "softmax",
    router1_weight: Tensor | None = None,
    router1_bias: Tensor | None = None,
    router2_weight: Tensor | None = None,
    router2_bias: Tensor | None = None,
    temperature: Tensor | float = 1.0,
    gate: str = "sigmoid",
    act: str = "relu",
    impl: str = "auto",
    lengths: Tensor | None = None,
    mask: Tensor | None = None,
) -> FusionOutput:
    """Channel attention with avg/max fusion and a temperature-scaled gate.

    Returns ``FusionOutput(y, ca, fusion_w)``: y = x * ca has x's shape and dtype, ca is
    (B, C, 1, ..., 1), and fusion_w is (B, 2) for softmax fusion, None for sum fusion.

    ``impl``: "reference" runs the readable composite below; "fast" the fused custom op
    (``cafusion.kernels``; RuntimeError where it cannot run, e.g. under TorchScript);
    "auto" (default) the fast path wherever it applies and the composite elsewhere (``cafusion.dispatch``).

    Padded batches (``cafusion.masking``): ``lengths`` (B,) integer valid lengths along the last dim, or
    ``mask`` (B, *spatial) boolean, True at real positions. The statistics then cover real positions
    only; y = x * ca everywhere (padding is scaled, not zeroed).
    """
    fusion = check.choice("fusion", fusion, FUSIONS)
    gate = check.choice("gate", gate, GATES)
    act = check.choice("act", act, ACTS)
    impl = check.choice("impl", impl, IMPLS)
    check.feature_map("x", x, fc1_weight.shape[1])
    if fusion == "softmax" and (router1_weight is None or router2_weight is None):
        raise ValueError("fusion='softmax' needs router1_weight and router2_weight (the fusion router)")
    valid = masking.valid_arg(x, lengths, mask)  # lengths stay lengths for (B, C, L): see masking.valid_arg
    weights = [fc1_weight, fc1_bias, fc2_weight, fc2_bias, router1_weight, router1_bias, router2_weight, router2_bias]
    return dispatch.run(x, weights, temperature, fusion, gate, act, impl, valid)
