"""An experimental variant for the router-collapse study: ``caft_rn``, a LayerNorm on the router's input.

The softmax router of ``caft`` reads cat(avg, max) of the block's input, whose max half is several
times larger than its avg half, and it tends to collapse onto one path. ``RouterNormProbe`` is the
same block with the router's input normalised (LayerNorm over the 2C statistics, no affine): same
weights, same state_dict keys, same diagnostics hook, only that one line differs. It lives here, as
a probe registered for comparisons, rather than as an option of ``ChannelAttentionFusionT`` itself;
if the paired comparison supports it, it belongs in the block (see docs/results.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer
from cafusion.layers.registry import list_attentions, register_attention

NAME = "caft_rn"


def _linear(s: Tensor, conv: nn.Module) -> Tensor:
    """A 1x1 conv's weights applied to (B, C) statistics."""
    weight, bias = conv.weight, conv.bias
    assert isinstance(weight, Tensor) and (bias is None or isinstance(bias, Tensor))
    return F.linear(s, weight.flatten(1), bias)


class RouterNormProbe(ChannelAttentionFusionTLayer):
    """``caft`` with ``router_norm``: LayerNorm (no affine) on cat(avg, max) before the router.

    Softmax fusion and the sigmoid/hardsigmoid gates only; ``router_norm=False`` computes exactly
    what the block computes (tested), which is what makes the comparison about the norm alone.
    """

    def __init__(self, channels: int, *, router_norm: bool = True, **kwargs: Any) -> None:
        if kwargs.get("fusion", "softmax") != "softmax":
            raise ValueError(f"{NAME} is the softmax-router block; got fusion={kwargs['fusion']!r}")
        super().__init__(channels, **kwargs)
        self.router_norm = bool(router_norm)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        dims = tuple(range(2, x.dim()))
        avg, mx = x.mean(dims), x.amax(dims)
        act = F.relu if self.act == "relu" else F.silu
        a = _linear(act(_linear(avg, self.fc1)), self.fc2)
        m = _linear(act(_linear(mx, self.fc1)), self.fc2)
        router_in = torch.cat([avg, mx], dim=1)
        if self.router_norm:
            router_in = F.layer_norm(router_in, router_in.shape[1:])
        router = self.fusion_router
        assert router is not None
        w = torch.softmax(_linear(F.relu(_linear(router_in, router[0])), router[2]), dim=1)
        temperature = self.get_T()
        z = (w[:, 0:1] * a + w[:, 1:2] * m) / temperature
        ca = torch.sigmoid(z) if self.gate == "sigmoid" else F.hardsigmoid(z)
        for hook in getattr(self, "_inspectors", {}).values():  # FusionMonitor's diagnostics
            hook(self, ca, w, temperature)
        y: Tensor = x * ca.view(ca.shape + (1,) * len(dims))
        return y


if NAME not in list_attentions():
    register_attention(NAME, RouterNormProbe)
