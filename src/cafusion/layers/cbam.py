"""CBAM's channel attention (Woo et al., 2018), without the spatial branch.

The closest baseline to this library's block: the same shared MLP on the average and the max, but
fused by a plain sum, no temperature and no router. Comparing the two isolates what the learned
fusion and the temperature add. Rank-agnostic, channels first, timm-style constructor. Takes the
main block's ``lengths`` / ``mask``: mean and max over real positions only (padding never enters the
max, however large), as SE does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cafusion import _validation as check
from cafusion import masking
from cafusion.layers._act import broadcast, gate_fn, positions, script_positions, spatial_mean
from cafusion.layers.se import SqueezeExcite


class CbamChannelAttention(SqueezeExcite):
    """y = x * gate(mlp(mean(x)) + mlp(max(x))), the statistics taken over every dim after C.

    The constructor, parameters and state_dict are SE's; only the squeeze adds the max path.
    """

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``lengths`` (B,) along the last dim or ``mask`` (B, *spatial) (True = real); see ``cafusion.masking``."""
        if not torch.jit.is_scripting():  # type: ignore[attr-defined]
            check.feature_map("x", x, self.channels)
            valid = positions(x, lengths, mask)
        else:
            valid = script_positions(x, lengths, mask)
        avg = spatial_mean(x, self.fc1.weight.dtype, valid)
        mx = (x.flatten(2).amax(-1) if valid is None else masking.masked_max(x, valid)).to(self.fc1.weight.dtype)
        weights = gate_fn(self._mlp(avg) + self._mlp(mx), self.gate)
        return x * broadcast(weights, x)
