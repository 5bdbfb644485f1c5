"""Attention blocks as nn.Modules, one block per file."""

from cafusion.layers.caft_layer import ChannelAttentionFusionTLayer
from cafusion.layers.cbam import CbamChannelAttention
from cafusion.layers.channel_attention_fusion_t import ChannelAttentionFusionT
from cafusion.layers.eca import EfficientChannelAttention
from cafusion.layers.registry import (
    NoAttention,
    create_attention,
    get_attention,
    list_attentions,
    register_attention,
)
from cafusion.layers.se import SqueezeExcite

__all__ = [
    "CbamChannelAttention",
    "ChannelAttentionFusionT",
    "ChannelAttentionFusionTLayer",
    "EfficientChannelAttention",
    "NoAttention",
    "SqueezeExcite",
    "create_attention",
    "get_attention",
    "list_attentions",
    "register_attention",
]
