"""cafusion: ChannelAttentionFusionT, a channel-attention block with learned avg/max fusion."""

from cafusion import functional
from cafusion.diagnostics import FusionMonitor
from cafusion.layers import (
    ChannelAttentionFusionT,
    ChannelAttentionFusionTLayer,
    create_attention,
    get_attention,
    list_attentions,
    register_attention,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelAttentionFusionT",
    "ChannelAttentionFusionTLayer",
    "FusionMonitor",
    "__version__",
    "create_attention",
    "functional",
    "get_attention",
    "list_attentions",
    "register_attention",
]
