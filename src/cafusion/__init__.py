"""cafusion: ChannelAttentionFusionT, a channel-attention block with learned avg/max fusion.

The public names load on first use (PEP 562), so ``import cafusion`` alone, and with it
``cafusion --help`` and argument errors, does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cafusion import _lazy

__version__ = "0.1.0"

_LAZY = {
    "ChannelAttentionFusionT": "cafusion.layers",
    "ChannelAttentionFusionTLayer": "cafusion.layers",
    "FusionMonitor": "cafusion.diagnostics",
    "create_attention": "cafusion.layers",
    "get_attention": "cafusion.layers",
    "list_attentions": "cafusion.layers",
    "register_attention": "cafusion.layers",
}

__all__ = ["__version__", "functional", *_LAZY]

if TYPE_CHECKING:  # the names as type checkers and IDEs see them (explicit re-exports)
    from cafusion import functional as functional
    from cafusion.diagnostics import FusionMonitor as FusionMonitor
    from cafusion.layers import ChannelAttentionFusionT as ChannelAttentionFusionT
    from cafusion.layers import ChannelAttentionFusionTLayer as ChannelAttentionFusionTLayer
    from cafusion.layers import create_attention as create_attention
    from cafusion.layers import get_attention as get_attention
    from cafusion.layers import list_attentions as list_attentions
    from cafusion.layers import register_attention as register_attention

__getattr__, __dir__ = _lazy.attach(__name__, {**_LAZY, "functional": "cafusion.functional"})
