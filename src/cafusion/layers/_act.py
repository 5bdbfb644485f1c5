"""Shared helpers for the attention layers: activation names, timm's ``act_layer`` hint, squeezing.

timm's CSPNet builds attention as ``attn_layer(channels, act_layer=..., device=..., dtype=...)``;
our layers run the MLP activation functionally (so that they stay scriptable and rank-agnostic),
so the hint is mapped to one of the activation names they support.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cafusion import _validation as check

ACTS = ("relu", "silu")
GATES = ("sigmoid", "hardsigmoid")
_ACT_ALIASES = {"relu": "relu", "silu": "silu", "swish": "silu"}


def act_from_layer(act_layer: Any, default: str) -> str:
    """Map timm's ``act_layer`` (a name, an nn.Module class or None) to 'relu' / 'silu'.

    An activation the block does not support (e.g. CSPNet's leaky_relu) keeps ``default``: the
    network's activation is a hint for the small attention MLP, not a requirement, and refusing it
    would make the layer unusable in those networks. Explicit ``act=`` always wins over the hint.
    """
    if act_layer is None:
        return default
    if isinstance(act_layer, str):
        return _ACT_ALIASES.get(act_layer.lower(), default)
    if isinstance(act_layer, type):
        if issubclass(act_layer, nn.ReLU):
            return "relu"
        if issubclass(act_layer, nn.SiLU):
            return "silu"
    return default


def resolve_act(act: str | None, act_layer: Any) -> str:
    """``act`` if given (validated), else the mapped ``act_layer`` hint, else 'relu'."""
    if act is not None:
        return check.choice("act", act, ACTS)
    return act_from_layer(act_layer, "relu")


def activate(h: Tensor, act: str) -> Tensor:
    """The MLP activation by name (functional, so the layer needs no activation submodule)."""
    return F.relu(h) if act == "relu" else F.silu(h)


def gate_fn(z: Tensor, gate: str) -> Tensor:
    """Map logits to [0, 1] with the named gate."""
    return torch.sigmoid(z) if gate == "sigmoid" else F.hardsigmoid(z)


def spatial_mean(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, C) mean over every dim after C, accumulated in at least float32, returned in ``dtype``."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return x.flatten(2).mean(-1, dtype=acc).to(dtype)


def broadcast(weights: Tensor, x: Tensor) -> Tensor:
    """(B, C) channel weights -> (B, C, 1, ..., 1) in x's dtype, ready to multiply x."""
    shape = [weights.shape[0], weights.shape[1]] + [1] * (x.dim() - 2)
    return weights.to(x.dtype).view(shape)
