"""The block's math on plain tensors, as readable torch calls: the ground truth.

Squeeze, excite, fuse, temperature, gate, in the order the reference describes them. Every fast
backend is tested against this composite, and it imports nothing from them; the PyTorch backend
differentiates ``attend`` with autograd, and the scripted layer (``torch.jit.script``) compiles these
functions, so they keep to the Python that TorchScript compiles. Shapes: x is (B, C, *spatial) with
any number of spatial dims; the statistics and the small MLPs work on (B, C) matrices, and ``ca`` is
returned as (B, C, 1, ..., 1) with x's rank. Arguments are not checked here
(``cafusion.functional.channel_attention_fusion`` checks them before choosing an implementation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import compute_dtype

if TYPE_CHECKING:

    class RouterHook(Protocol):
        """Changes the softmax router (the router probes, ``cafusion.compare.probes``): its input and softmax."""

        def router_input(self, router_in: Tensor) -> Tensor: ...

        def router_softmax(self, logits: Tensor) -> Tensor: ...

else:
    RouterHook = Any  # TorchScript resolves annotations at run time; a hook never reaches scripted code


class FusionOutput(NamedTuple):
    """What one forward produces: the scaled map, the channel gate, and the (B, 2) fusion weights."""

    y: Tensor
    ca: Tensor
    fusion_w: Optional[Tensor]  # noqa: UP045 (TorchScript cannot read "Tensor | None" in a NamedTuple)


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
    avg = x.mean(list(range(2, x.dim())), dtype=acc)
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
    b = bias
    if b is not None:
        b = b.to(s.dtype)
    return F.linear(s, weight.flatten(1).to(s.dtype), b)


def excite(
    s: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor, fc2_bias: Tensor | None, act: str
) -> Tensor:
    """The shared bottleneck MLP C -> hidden -> C, applied to each row of a (B, C) statistic."""
    h = _linear(s, fc1_weight, fc1_bias)
    h = F.relu(h) if act == "relu" else F.silu(h)
    return _linear(h, fc2_weight, fc2_bias)


def route(
    avg: Tensor,
    mx: Tensor,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None,
    hook: RouterHook | None = None,
) -> Tensor:
    """Per-sample fusion weights (B, 2) = softmax(router(cat(avg, max))); column 0 weighs avg.

    ``hook`` (Python only) changes the router's input and replaces its softmax of the logits.
    """
    router_in = torch.cat([avg, mx], dim=1)
    if not torch.jit.is_scripting() and hook is not None:  # type: ignore[attr-defined]
        router_in = hook.router_input(router_in)
    logits = _linear(F.relu(_linear(router_in, w1, b1)), w2, b2)
    if not torch.jit.is_scripting() and hook is not None:  # type: ignore[attr-defined]
        return hook.router_softmax(logits)
    return torch.softmax(logits, dim=1)


def apply_gate(z: Tensor, gate: str) -> Tensor:
    """Map channel logits to [0, 1]."""
    return torch.sigmoid(z) if gate == "sigmoid" else F.hardsigmoid(z)


def attend(
    avg: Tensor,
    mx: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor | None,
    fc2_weight: Tensor,
    fc2_bias: Tensor | None,
    fusion: str,
    router1_weight: Tensor | None,
    router1_bias: Tensor | None,
    router2_weight: Tensor | None,
    router2_bias: Tensor | None,
    temperature: Tensor | float,
    gate: str,
    act: str,
    hook: RouterHook | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The small path: (B, C) statistics in the compute dtype -> (ca (B, C), fusion weights or None).

    One MLP call for both statistics (rows avg, then max): half the launches of two.
    """
    b = avg.shape[0]
    out = excite(torch.cat([avg, mx], dim=0), fc1_weight, fc1_bias, fc2_weight, fc2_bias, act)
    a, m = out[:b], out[b:]
    fusion_w: Tensor | None = None
    if fusion == "sum":
        z = a + m
    else:
        assert router1_weight is not None and router2_weight is not None
        fusion_w = route(avg, mx, router1_weight, router1_bias, router2_weight, router2_bias, hook)
        z = fusion_w[:, 0:1] * a + fusion_w[:, 1:2] * m
    z = z / temperature.to(z.dtype) if isinstance(temperature, Tensor) else z / temperature
    return apply_gate(z, gate), fusion_w


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
    hook: RouterHook | None = None,
) -> FusionOutput:
    """y = x * gate(fuse(MLP(avg), MLP(max)) / T): ``FusionOutput(y, ca, fusion_w)``, fusion_w None for sum.

    ``valid`` (B, N) marks the real positions of a padded batch; y = x * ca at every position.
    ``hook``: see ``route``.
    """
    avg, mx = squeeze(x, valid)
    dtype = compute_dtype(avg.dtype, fc1_weight.dtype)
    ca, fusion_w = attend(
        avg.to(dtype),
        mx.to(dtype),
        fc1_weight,
        fc1_bias,
        fc2_weight,
        fc2_bias,
        fusion,
        router1_weight,
        router1_bias,
        router2_weight,
        router2_bias,
        temperature,
        gate,
        act,
        hook,
    )
    shape = [ca.shape[0], ca.shape[1]] + [1] * (x.dim() - 2)
    ca = ca.view(shape).to(x.dtype)
    return FusionOutput(x * ca, ca, fusion_w)
