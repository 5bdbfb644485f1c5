"""cafusion: ChannelAttentionFusionT, a channel-attention block with learned avg/max fusion."""

from cafusion import functional
from cafusion.layers import ChannelAttentionFusionT

__version__ = "0.1.0"

__all__ = ["ChannelAttentionFusionT", "__version__", "functional"]
