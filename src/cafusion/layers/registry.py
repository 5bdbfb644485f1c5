"""Attention blocks by name, like timm's ``get_attn`` / ``create_attn``: ablations swap blocks by name.

Every entry is a factory ``f(channels, **kw) -> nn.Module`` mapping x (B, C, *spatial) to a tensor of
the same shape. Names are case-insensitive. A class or partial passes through ``get_attention``
unchanged, so code can take either a name or a factory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor, nn

from cafusion import _validation as check
from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer
from cafusion.layers.cbam import CbamChannelAttention
from cafusion.layers.eca import EfficientChannelAttention
from cafusion.layers.se import SqueezeExcite

AttentionFactory = Callable[..., nn.Module]


class NoAttention(nn.Module):
    """The 'none' entry: returns x unchanged, with the attention constructor's signature.

    Options meant for a real block are accepted and ignored, so an ablation can swap the block for
    nothing by name without changing the keyword arguments it passes.
    """

    def __init__(self, channels: int, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.channels = check.positive_int("channels", channels)

    def forward(self, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x itself; ``lengths`` / ``mask`` are taken (and ignored) like every other entry's."""
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


_REGISTRY: dict[str, AttentionFactory] = {
    "caft": ChannelAttentionFusionTLayer,
    "caft_sum": partial(ChannelAttentionFusionTLayer, fusion="sum"),
    "se": SqueezeExcite,
    "cbam": CbamChannelAttention,
    "eca": EfficientChannelAttention,
    "none": NoAttention,
}


def list_attentions() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def register_attention(name: str, factory: AttentionFactory, *, overwrite: bool = False) -> None:
    """Add ``factory`` under ``name`` (lower-cased); refuses to replace an entry unless ``overwrite``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable as factory(channels, **kw), got {factory!r}")
    key = name.lower()
    if key in _REGISTRY and not check.boolean("overwrite", overwrite):
        raise ValueError(f"attention {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory


def get_attention(name: str | AttentionFactory) -> AttentionFactory:
    """The factory registered as ``name``; a class or partial is returned as is."""
    if isinstance(name, str):
        factory = _REGISTRY.get(name.lower())
        if factory is None:
            raise ValueError(f"unknown attention {name!r}; known names: {list_attentions()}")
        return factory
    if callable(name):
        return name
    raise TypeError(f"attention must be a name (one of {list_attentions()}) or a factory, got {name!r}")


def create_attention(name: str | AttentionFactory, channels: int, **kwargs: Any) -> nn.Module:
    """An instance: ``get_attention(name)(channels, **kwargs)``."""
    return get_attention(name)(channels, **kwargs)
