"""Functional forms of the block: the math on plain tensors, with no module state.

``composite`` is the readable math (the ground truth); ``channel_attention_fusion`` checks arguments and
runs whichever implementation ``cafusion.dispatch`` picks."""

from cafusion.functional.channel_attention import ACTS, FUSIONS, GATES, channel_attention_fusion
from cafusion.functional.composite import FusionOutput, apply_gate, excite, route, squeeze
from cafusion.functional.temperature import raw_from_temperature, softplus_inverse, temperature_from_raw

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
