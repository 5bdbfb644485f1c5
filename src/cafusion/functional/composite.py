"""The block's math on plain tensors, as readable torch calls: the ground truth.

Squeeze, excite, fuse, temperature, gate, in the order the reference describes them. Every fast
backend is tested against this composite, and it imports nothing from them. Shapes: x is
(B, C, *spatial) with any number of spatial dims; the statistics and the small MLPs work on (B, C)
matrices, and ``ca`` is returned as (B, C, 1, ..., 1) with x's rank. Arguments are not checked here
(``cafusion.functional.channel_attention_fusion`` checks them before choosing an implementation).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import compute_dtype


class FusionOutput(NamedTuple):
    """What one forward produces: the scaled map, the channel gate, and the (B, 2) fusion weights."""

    y: Tensor
    ca: Tensor
    fusion_w: Tensor | None


def squeeze(x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and max over every dim after C, as (B, C) in at least float32.

    ``valid`` (B, N), for a padded batch: the statistics cover the real positions only
    (``cafusion.masking``); the max's gradient then goes to the first maximal real position.

    The max goes through adaptive max pooling (ranks 3-5) so that its gradient lands on the first
    maximal position, exactly where the reference's AdaptiveMaxPool2d sends it; NaNs propagate the
    same way. Low-precision inputs accumulate the mean in float32.
    """
    acc = compute_dtype(x.dtype)
    if valid is not None:
        return masking.masked_mean(x, valid, acc), masking.masked_max(x, valid).to(acc)
    dims = tuple(range(2, x.dim()))
    avg = x.mean(dim=dims, dtype=acc)
    n_spatial = x.dim() - 2
    if n_spatial == 1:
        mx = F.adaptive_max_pool1d(x, 1)
    elif n_spatial == 2:
        mx = F.adaptive_max_pool2d(x, 1)
    elif n_spatial == 3:
        mx = F.adaptive_max_pool3d(x, 1)
    else:
        mx = x.flatten(2).max(dim=2).values
    return avg, mx.flatten(1).to(acc)


def _linear(s: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution on a 1x1 map is a linear layer on (B, C); weights may be (out, in, 1, ...)."""
    w = weight.flatten(1).to(s.dtype)
    b = None if bias is None else bias.to(s.dtype)
    return F.linear(s, w, b)


def excite(
    s: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor, fc2_bias: Tensor | None, act: str
) -> Tensor:
    """The shared bottleneck MLP C -> hidden -> C, applied to one (B, C) statistic."""
    h = _linear(s, fc1_weight, fc1_bias)
    h = F.relu(h) if act == "relu" else F.silu(h)
    return _linear(h, fc2_weight, fc2_bias)


def route(avg: Tensor, mx: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """Per-sample fusion weights (B, 2) = softmax(router(cat(avg, max))); column 0 weighs avg."""
    logits = _linear(F.relu(_linear(torch.cat([avg, mx], dim=1), w1, b1)), w2, b2)
    return torch.softmax(logits, dim=1)


def apply_gate(z: Tensor, gate: str) -> Tensor:
    """Map channel logits to [0, 1]."""
    return torch.sigmoid(z) if gate == "sigmoid" else F.hardsigmoid(z)


def channel_attention_fusion(
    x: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor | None,
    fc2_weight: Tensor,
    fc2_bias: Tensor | None,
    fusion: str = "softmax",
    router1_weight: Tensor | None = None,
    router1_bias: Tensor | None = None,
    router2_weight: Tensor | None = None,
    router2_bias: Tensor | None = None,
    temperature: Tensor | float = 1.0,
    gate: str = "sigmoid",
    act: str = "relu",
    valid: Tensor | None = None,
) -> FusionOutput:
    """y = x * gate(fuse(MLP(avg), MLP(max)) / T): ``FusionOutput(y, ca, fusion_w)``, fusion_w None for sum.

    ``valid`` (B, N) marks the real positions of a padded batch; y = x * ca at every position.
    """
    avg, mx = squeeze(x, valid)
    dtype = compute_dtype(avg.dtype, fc1_weight.dtype)
    avg, mx = avg.to(dtype), mx.to(dtype)
    a = excite(avg, fc1_weight, fc1_bias, fc2_weight, fc2_bias, act)
    m = excite(mx, fc1_weight, fc1_bias, fc2_weight, fc2_bias, act)

    fusion_w: Tensor | None = None
    if fusion == "sum":
        z = a + m
    else:
        assert router1_weight is not None and router2_weight is not None
        fusion_w = route(avg, mx, router1_weight, router1_bias, router2_weight, router2_bias)
        z = fusion_w[:, 0:1] * a + fusion_w[:, 1:2] * m

    t = temperature.to(z.dtype) if isinstance(temperature, Tensor) else temperature
    ca = apply_gate(z / t, gate)
    ca = ca.view(ca.shape + (1,) * (x.dim() - 2)).to(x.dtype)
    return FusionOutput(x * ca, ca, fusion_w)
