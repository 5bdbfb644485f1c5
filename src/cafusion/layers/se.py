"""Squeeze-and-Excitation (Hu et al., 2018): the baseline every channel-attention block is compared with.

Rank-agnostic (any ``(B, C, *spatial)``), channels first, timm-style constructor: ``SqueezeExcite(
channels, **kw)`` and ``act_layer`` / ``device`` / ``dtype`` accepted so it slots into timm models.
The hidden width follows the main block's rule ``max(min_hidden, channels // reduction)`` so that
ablations compare blocks of the same size. ``forward(x, lengths=None, mask=None)`` takes the main
block's padding arguments (``cafusion.masking``): the mean runs over real positions only, so ablations
on padded batches are fair; y = x * gate at every position, padding included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cafusion import _validation as check
from cafusion.layers._act import (
    GATES,
    activate,
    broadcast,
    gate_fn,
    positions,
    resolve_act,
    script_positions,
    spatial_mean,
)


class SqueezeExcite(nn.Module):
    """y = x * gate(fc2(act(fc1(mean(x))))), the mean taken over every dim after C."""

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        min_hidden: int = 4,
        act: str | None = None,
        gate: str = "sigmoid",
        bias: bool = True,
        *,
        act_layer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check.positive_int("channels", channels)
        self.reduction = check.positive_int("reduction", reduction)
        self.min_hidden = check.positive_int("min_hidden", min_hidden)
        self.act = resolve_act(act, act_layer)
        self.gate = check.choice("gate", gate, GATES)
        check.boolean("bias", bias)
        self.hidden = max(self.min_hidden, self.channels // self.reduction)
        self.fc1 = nn.Linear(channels, self.hidden, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(self.hidden, channels, bias=bias, device=device, dtype=dtype)

    def _mlp(self, s: Tensor) -> Tensor:
        out: Tensor = self.fc2(activate(self.fc1(s), self.act))
        return out

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``lengths`` (B,) along the last dim or ``mask`` (B, *spatial) (True = real); see ``cafusion.masking``."""
        if not torch.jit.is_scripting():  # type: ignore[attr-defined]
            check.feature_map("x", x, self.channels)
            valid = positions(x, lengths, mask)
        else:
            valid = script_positions(x, lengths, mask)
        s = spatial_mean(x, self.fc1.weight.dtype, valid)
        weights = gate_fn(self._mlp(s), self.gate)
        return x * broadcast(weights, x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, act={self.act}, gate={self.gate}"
