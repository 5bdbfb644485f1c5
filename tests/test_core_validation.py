"""Every bad argument or input fails before any work, with a message naming it and what was expected."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch

from cafusion import ChannelAttentionFusionT
from cafusion.functional import channel_attention_fusion


@pytest.mark.parametrize("name", ["channels", "reduction", "min_hidden", "fusion_router_hidden"])
@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError), ("8", TypeError), (None, TypeError)],
)
def test_positive_int_arguments(name: str, value: Any, error: type[Exception]) -> None:
    kwargs = {"channels": 8, name: value}
    with pytest.raises(error, match=rf"{name} must be a positive int.*{re.escape(repr(value))}"):
        ChannelAttentionFusionT(**kwargs)


@pytest.mark.parametrize(
    ("name", "value", "choices"),
    [
        ("fusion", "mean", "['sum', 'softmax']"),
        ("gate", "relu", "['sigmoid', 'hardsigmoid']"),
        ("act", "gelu", "['relu', 'silu']"),
        ("gate", 1, "['sigmoid', 'hardsigmoid']"),
    ],
)
def test_unknown_choice_lists_the_choices(name: str, value: Any, choices: str) -> None:
    error = TypeError if not isinstance(value, str) else ValueError
    with pytest.raises(error, match=re.escape(f"{name} must be one of {choices}, got {value!r}")):
        ChannelAttentionFusionT(8, **{name: value})


def test_gate_and_act_accept_any_letter_case() -> None:
    block = ChannelAttentionFusionT(8, gate="HardSigmoid", act="SILU", fusion="Softmax")
    assert (block.gate, block.act, block.fusion) == ("hardsigmoid", "silu", "softmax")


@pytest.mark.parametrize("name", ["temperature", "eps"])
@pytest.mark.parametrize(
    ("value", "error"),
    [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), (math.nan, ValueError), ("1", TypeError)],
)
def test_temperature_and_eps_must_be_finite_positive(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"{name} must be a finite number > 0"):
        ChannelAttentionFusionT(8, **{name: value})


def test_learnable_temperature_must_exceed_eps() -> None:
    with pytest.raises(ValueError, match=r"temperature must be > eps.*temperature=1e-07, eps=1e-06"):
        ChannelAttentionFusionT(8, temperature=1e-7, learnable_temperature=True)
    ChannelAttentionFusionT(8, temperature=1e-7)  # a fixed temperature has no eps floor


@pytest.mark.parametrize("name", ["learnable_temperature", "bias", "return_fusion_weights"])
def test_flags_must_be_bool(name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a bool, got 'yes'"):
        ChannelAttentionFusionT(8, **{name: "yes"})


@pytest.mark.parametrize(
    ("x", "error", "needle"),
    [
        (torch.randn(2, 8), ValueError, "at least one spatial dim, got shape (2, 8)"),
        (torch.randn(8), ValueError, "got shape (8,)"),
        (torch.randn(2, 4, 5, 5), ValueError, "must have 8 channels (dim 1), got shape (2, 4, 5, 5)"),
        (torch.ones(2, 8, 5, 5, dtype=torch.int64), TypeError, "floating dtype"),
        (torch.ones(2, 8, 5, 5, dtype=torch.bool), TypeError, "got torch.bool"),
        (torch.ones(2, 8, 5, 5, dtype=torch.complex64), TypeError, "got torch.complex64"),
        (torch.randn(2, 8, 0, 5), ValueError, "non-empty spatial dims, got shape (2, 8, 0, 5)"),
        ([[1.0]], TypeError, "x must be a torch.Tensor, got list"),
    ],
)
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_bad_inputs_rejected_before_work(x: Any, error: type[Exception], needle: str, fusion: str) -> None:
    block = ChannelAttentionFusionT(8, fusion=fusion)
    calls: list[int] = []
    block.register_inspector(lambda *_: calls.append(1))
    with pytest.raises(error, match=re.escape(needle)):
        block(x)
    assert not calls


def test_functional_requires_router_for_softmax() -> None:
    w1, w2 = torch.randn(4, 8, 1, 1), torch.randn(8, 4, 1, 1)
    with pytest.raises(ValueError, match="fusion='softmax' needs router1_weight"):
        channel_attention_fusion(torch.randn(2, 8, 3, 3), w1, None, w2, None, fusion="softmax")
    _, ca, w = channel_attention_fusion(torch.randn(2, 8, 3, 3), w1, None, w2, None, fusion="sum")
    assert w is None and ca.shape == (2, 8, 1, 1)
