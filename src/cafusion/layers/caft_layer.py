"""The drop-in form of the block: ``layer(channels, **kw)`` -> a module whose forward returns y only.

Model builders (timm's ``attn_layer``, SE slots in torchvision-style blocks, ``nn.Sequential``)
expect one tensor out. The gate and the fusion weights stay reachable without changing that:
``register_inspector`` (inherited) sees every forward, and ``keep_last=True`` keeps the last
detached ``ca`` / ``fusion_w`` on the module for quick inspection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cafusion import _validation as check
from cafusion import masking
from cafusion.functional import composite
from cafusion.functional.temperature import temperature_from_raw
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

    # TorchScript reads class annotations without resolving strings, and this file and the base
    # class use postponed (string) annotations; real types here also hide the base class's.
    __annotations__ = {"keep_last": bool}

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
        self.last_ca: Tensor | None = None  # no class-level annotation: TorchScript cannot parse it
        self.last_fusion_w: Tensor | None = None
        if self.keep_last:
            self.register_inspector(_keep_last)

    def forward(  # type: ignore[override]
        self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """y only; without ``lengths``/``mask`` the enclosing ``cafusion.masking.padding(...)`` block's, if any."""
        if torch.jit.is_scripting():  # type: ignore[attr-defined]
            if lengths is not None or mask is not None:
                raise RuntimeError("a scripted ChannelAttentionFusionTLayer takes no lengths/mask; export with ONNX")
            return self._forward_script(x)
        if lengths is None and mask is None:
            lengths, mask = masking.current(x)
        y: Tensor = super().forward(x, lengths, mask)[0]
        return y

    def _forward_script(self, x: Tensor) -> Tensor:
        """The composite (``cafusion.functional.composite``), which TorchScript compiles, on this layer's tensors.

        The eager forward goes through ``cafusion.functional`` (argument checks, fast-path dispatch),
        which TorchScript cannot compile; ``torch.jit.script`` runs this instead. Parity with the eager
        forward is tested for every gate, fusion and temperature mode. Inspectors do not run here.
        """
        r1_w: Tensor | None = None
        r1_b: Tensor | None = None
        r2_w: Tensor | None = None
        r2_b: Tensor | None = None
        router = self.fusion_router
        if router is not None:
            r1_w, r1_b, r2_w, r2_b = router[0].weight, router[0].bias, router[2].weight, router[2].bias  # type: ignore[assignment]
        t = temperature_from_raw(self.t_raw, self.eps) if hasattr(self, "t_raw") else self.T
        fc1, fc2 = self.fc1, self.fc2
        out = composite.channel_attention_fusion(
            x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, self.fusion, r1_w, r1_b, r2_w, r2_b, t, self.gate, self.act
        )
        return out.y

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f", return_fusion_weights={self.return_fusion_weights}", "") + (
            ", keep_last=True" if self.keep_last else ""
        )


__all__ = ["ChannelAttentionFusionTLayer"]
