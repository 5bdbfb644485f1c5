"""The drop-in form of the block: ``layer(channels, **kw)`` -> a module whose forward returns y only.

Model builders (timm's ``attn_layer``, SE slots in torchvision-style blocks, ``nn.Sequential``)
expect one tensor out. The gate and the fusion weights stay reachable without changing that:
``register_inspector`` (inherited) sees every forward, and ``keep_last=True`` keeps the last
detached ``ca`` / ``fusion_w`` on the module for quick inspection.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cafusion import _validation as check
from cafusion.layers._act import resolve_act
from cafusion.layers.channel_attention_fusion_t import ChannelAttentionFusionT


def _keep_last(module: ChannelAttentionFusionT, ca: Tensor, fusion_w: Tensor | None, temperature: Tensor) -> None:
    """Inspector used by ``keep_last=True``: store detached copies, never part of the autograd graph."""
    module.last_ca = ca.detach()  # type: ignore[assignment]
    module.last_fusion_w = None if fusion_w is None else fusion_w.detach()  # type: ignore[assignment]


class ChannelAttentionFusionTLayer(ChannelAttentionFusionT):
    """``ChannelAttentionFusionT`` whose forward returns ``y = x * ca`` only.

    Takes every option of ``ChannelAttentionFusionT`` except ``return_fusion_weights``, plus:

    - ``keep_last``: after each forward, store ``last_ca`` (B, C, 1, ...) and ``last_fusion_w``
      (B, 2, or None for sum fusion), detached. Off by default: it holds one batch of gates alive.
    - ``act_layer``: timm's activation hint (CSPNet passes it); maps ReLU/SiLU to ``act``, anything
      else keeps the default 'relu'. An explicit ``act=`` wins.
    """

    last_ca: Tensor | None
    last_fusion_w: Tensor | None

    def __init__(
        self,
        channels: int,
        *,
        keep_last: bool = False,
        act_layer: Any = None,
        **kwargs: Any,
    ) -> None:
        if "return_fusion_weights" in kwargs:
            raise TypeError(
                "ChannelAttentionFusionTLayer returns y only and does not take return_fusion_weights; "
                "use register_inspector(hook) or keep_last=True to see the fusion weights, "
                "or ChannelAttentionFusionT for the tuple output"
            )
        kwargs["act"] = resolve_act(kwargs.pop("act", None), act_layer)
        super().__init__(channels, **kwargs)
        self.keep_last = check.boolean("keep_last", keep_last)
        self.last_ca = None
        self.last_fusion_w = None
        if self.keep_last:
            self.register_inspector(_keep_last)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x)[0]

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f", return_fusion_weights={self.return_fusion_weights}", "") + (
            ", keep_last=True" if self.keep_last else ""
        )


__all__ = ["ChannelAttentionFusionTLayer"]
