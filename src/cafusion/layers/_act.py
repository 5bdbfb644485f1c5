"""Shared helpers for the attention layers: activation names, timm's ``act_layer`` hint, squeezing.

The squeeze takes an optional (B, N) ``valid`` mask of real positions (padded batches, see
``cafusion.masking``); ``positions`` builds it from a layer's ``lengths`` / ``mask`` arguments.

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
from cafusion import masking

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


def spatial_mean(x: Tensor, dtype: torch.dtype, valid: Tensor | None = None) -> Tensor:
    """(B, C) mean over every dim after C (real positions only, given ``valid``), accumulated in at
    least float32, returned in ``dtype``."""
    acc = torch.promote_types(x.dtype, torch.float32)
    if valid is None:
        return x.flatten(2).mean(-1, dtype=acc).to(dtype)
    return masking.masked_mean(x, valid, acc).to(dtype)


def positions(x: Tensor, lengths: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """The (B, N) real positions for a layer's ``lengths`` / ``mask`` arguments (None: all real).

    Neither given: those of an enclosing ``cafusion.masking.padding`` block, so layers inside
    ``nn.Sequential`` see them too. Bad arguments get ``masking.valid_mask``'s one-line errors.
    """
    if lengths is None and mask is None:
        lengths, mask = masking.current(x)
    return masking.valid_mask(x, lengths, mask)


def script_positions(x: Tensor, lengths: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """``positions`` in the subset of Python TorchScript compiles: the same mask, no checks, no context."""
    if mask is not None:
        return mask.reshape(x.shape[0], -1)
    if lengths is None:
        return None
    size = x.shape[-1]
    shape = [x.shape[0]] + [1] * (x.dim() - 3) + [size]
    last = torch.arange(size, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return last.view(shape).expand(x.shape[:1] + x.shape[2:]).reshape(x.shape[0], -1)


def broadcast(weights: Tensor, x: Tensor) -> Tensor:
    """(B, C) channel weights -> (B, C, 1, ..., 1) in x's dtype, ready to multiply x."""
    shape = [weights.shape[0], weights.shape[1]] + [1] * (x.dim() - 2)
    return weights.to(x.dtype).view(shape)
