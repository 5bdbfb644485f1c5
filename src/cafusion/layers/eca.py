"""Efficient Channel Attention (Wang et al., 2020): a 1D convolution across channels, no bottleneck.

The cheapest learned baseline (a handful of weights). The kernel size follows the paper's rule
k = odd(|log2(C) + beta| / gamma), at least 3, unless given. Rank-agnostic, channels first,
timm-style constructor (``act_layer`` accepted and unused: ECA has no activation). Takes the main
block's ``lengths`` / ``mask`` (mean over real positions only), as SE does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from cafusion import _validation as check
from cafusion.layers._act import GATES, broadcast, gate_fn, positions, script_positions, spatial_mean


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The paper's adaptive kernel size: grows with log2(channels), always odd and >= 3."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nn.Module):
    """y = x * gate(conv1d(mean(x) over spatial dims, across the channel axis))."""

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate: str = "sigmoid",
        *,
        act_layer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check.positive_int("channels", channels)
        gamma = check.positive_finite("gamma", gamma)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
            raise TypeError(f"beta must be a finite number, got {beta!r} ({type(beta).__name__})")
        if kernel_size is None:
            kernel_size = eca_kernel_size(self.channels, gamma, float(beta))
        self.kernel_size = check.positive_int("kernel_size", kernel_size)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (so the output keeps C channels), got {kernel_size!r}")
        self.gate = check.choice("gate", gate, GATES)
        self.conv = nn.Conv1d(
            1, 1, self.kernel_size, padding=(self.kernel_size - 1) // 2, bias=False, device=device, dtype=dtype
        )

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``lengths`` (B,) along the last dim or ``mask`` (B, *spatial) (True = real); see ``cafusion.masking``."""
        if not torch.jit.is_scripting():  # type: ignore[attr-defined]
            check.feature_map("x", x, self.channels)
            valid = positions(x, lengths, mask)
        else:
            valid = script_positions(x, lengths, mask)
        s = spatial_mean(x, self.conv.weight.dtype, valid)
        weights = gate_fn(self.conv(s.unsqueeze(1)).squeeze(1), self.gate)
        return x * broadcast(weights, x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, gate={self.gate}"
