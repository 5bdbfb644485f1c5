"""Attention blocks as nn.Modules, one block per file."""

from cafusion.layers.channel_attention_fusion_t import ChannelAttentionFusionT

__all__ = ["ChannelAttentionFusionT"]
