"""Temperature parameterisation: T = softplus(t_raw) + eps, and its exact inverse.

The reference inverts softplus as log(clamp(exp(T) - 1, eps)); exp overflows in float32 for T above
about 88 (t_raw becomes inf and every gradient NaN) and the clamp distorts T below eps. Here the
inverse is computed in float64 as y + log(-expm1(-y)), which is exact over the whole positive range,
and it inverts ``softplus(t_raw) + eps`` (not just softplus) so that ``get_T()`` returns the requested
temperature right after construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def softplus_inverse(y: float) -> float:
    """Return x with softplus(x) == y, for any finite y > 0, without overflow."""
    if not y > 0 or not math.isfinite(y):
        raise ValueError(f"softplus_inverse needs a finite y > 0, got {y!r}")
    return y + math.log(-math.expm1(-y))


def raw_from_temperature(temperature: float, eps: float) -> float:
    """The t_raw whose ``softplus(t_raw) + eps`` equals ``temperature``; needs temperature > eps."""
    if not temperature > eps:
        raise ValueError(
            f"temperature must be > eps when learnable_temperature=True (T = softplus(t_raw) + eps), "
            f"got temperature={temperature!r}, eps={eps!r}"
        )
    return softplus_inverse(temperature - eps)


def temperature_from_raw(t_raw: Tensor, eps: float) -> Tensor:
    """T = softplus(t_raw) + eps; torch's softplus is linear above its threshold, so it never overflows."""
    return F.softplus(t_raw) + eps


def fill_raw(t_raw: Tensor, temperature: float, eps: float) -> None:
    """Write the t_raw for ``temperature`` into an existing tensor (used by reset_parameters)."""
    with torch.no_grad():
        t_raw.fill_(raw_from_temperature(temperature, eps))
