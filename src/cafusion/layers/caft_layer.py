"""The drop-in form of the block: ``layer(channels, **kw)`` -> a module whose forward returns y only.

Model builders (timm's ``attn_layer``, SE slots in torchvision-style blocks, ``nn.Sequential``)
expect one tensor out. The gate and the fusion weights stay reachable without changing that:
``register_inspector`` (inherited) sees every forward, and ``keep_last=True`` keeps the last
detached ``ca`` / ``fusion_w`` on the module for quick inspection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cafusion import _validation as check
from cafusion import masking
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

    def _linear(self, s: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """A 1x1-conv weight holder applied to (B, C) statistics (as the functional form does)."""
        b = bias
        if b is not None:
            b = b.to(s.dtype)
        return F.linear(s, weight.flatten(1).to(s.dtype), b)

    def _forward_script(self, x: Tensor) -> Tensor:
        """The block's math in the subset of Python that TorchScript compiles.

        The eager forward goes through ``cafusion.functional`` (argument checks, fast-path dispatch),
        which TorchScript cannot compile; ``torch.jit.script`` runs this instead. Parity with the eager
        forward is tested for every gate, fusion and temperature mode. Inspectors do not run here.
        """
        flat = x.flatten(2)
        acc = torch.promote_types(torch.promote_types(x.dtype, torch.float32), self.fc1.weight.dtype)
        avg = flat.mean(-1, dtype=acc)
        mx = flat.max(-1).values.to(acc)
        stats = [avg, mx]
        excited: list[Tensor] = []
        for s in stats:
            h = self._linear(s, self.fc1.weight, self.fc1.bias)
            h = F.relu(h) if self.act == "relu" else F.silu(h)
            excited.append(self._linear(h, self.fc2.weight, self.fc2.bias))
        router = self.fusion_router
        if router is not None:
            r1, r2 = router[0], router[2]
            hidden = F.relu(self._linear(torch.cat([avg, mx], 1), r1.weight, r1.bias))  # type: ignore[arg-type]
            w = torch.softmax(self._linear(hidden, r2.weight, r2.bias), 1)  # type: ignore[arg-type]
            z = w[:, 0:1] * excited[0] + w[:, 1:2] * excited[1]
        else:
            z = excited[0] + excited[1]
        t = F.softplus(self.t_raw) + self.eps if hasattr(self, "t_raw") else self.T
        z = z / t.to(z.dtype)
        ca = torch.sigmoid(z) if self.gate == "sigmoid" else F.hardsigmoid(z)
        shape = [ca.shape[0], ca.shape[1]] + [1] * (x.dim() - 2)
        return x * ca.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(f", return_fusion_weights={self.return_fusion_weights}", "") + (
            ", keep_last=True" if self.keep_last else ""
        )


__all__ = ["ChannelAttentionFusionTLayer"]
