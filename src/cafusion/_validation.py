"""Argument checks shared by the module, the functional form and the integrations.

Every check raises before any tensor work, and every message names the argument, the value given
and what was expected, so a user's mistake is never a shape error three frames deep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1; a bool is not an int here."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")
    return value


def positive_finite(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a real number, finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a finite number > 0, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool; 0/1 or strings are refused so typos do not pass silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def checks_run() -> bool:
    """False while compiling or tracing: traced sizes are tensors, so comparing them warns, and a graph
    would not keep a check that reads sizes or values anyway."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return the lower-cased ``value`` if it is one of ``choices`` (any letter case, as the reference)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(choices)}, got {value!r} ({type(value).__name__})")
    lowered = value.lower()
    if lowered not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return lowered


def feature_map(name: str, x: Any, channels: int) -> None:
    """Check that ``x`` is a floating (B, C, *spatial) tensor with C == ``channels`` and no empty spatial dim."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), got {x.dtype}")
    if x.dim() < 3:
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with at least one spatial dim, got shape {tuple(x.shape)}"
        )
    if not checks_run():
        return
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
    for size in x.shape[2:]:
        if size == 0:
            raise ValueError(f"{name} must have non-empty spatial dims, got shape {tuple(x.shape)}")
