"""Functional forms of the block: the math on plain tensors, with no module state.

``composite`` is the readable math (the ground truth); ``channel_attention_fusion`` checks arguments and
runs whichever implementation ``cafusion.dispatch`` picks. The two sit on either side of dispatch
(dispatch imports the composite; the public entry imports dispatch), so the entry and its option
names load on first use, and importing the composite never imports dispatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cafusion import _lazy
from cafusion.functional.composite import FusionOutput, apply_gate, excite, route, squeeze
from cafusion.functional.temperature import raw_from_temperature, softplus_inverse, temperature_from_raw

_ENTRY = ("ACTS", "FUSIONS", "GATES", "channel_attention_fusion")

if TYPE_CHECKING:
    from cafusion.functional.channel_attention import ACTS as ACTS
    from cafusion.functional.channel_attention import FUSIONS as FUSIONS
    from cafusion.functional.channel_attention import GATES as GATES
    from cafusion.functional.channel_attention import channel_attention_fusion as channel_attention_fusion

__all__ = [
    "ACTS",
    "FUSIONS",
    "GATES",
    "FusionOutput",
    "apply_gate",
    "channel_attention_fusion",
    "excite",
    "raw_from_temperature",
    "route",
    "softplus_inverse",
    "squeeze",
    "temperature_from_raw",
]

__getattr__, __dir__ = _lazy.attach(__name__, dict.fromkeys(_ENTRY, "cafusion.functional.channel_attention"))
