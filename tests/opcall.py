"""Calls of the operators (and of the native library's entry points, which take the same arguments)
by argument name, in the order the registered schema gives: tests then keep working when an optional
input is added to the schema (it is passed as None unless named)."""

from __future__ import annotations

from typing import Any

import torch

from cafusion.kernels import op

PARAM_NAMES = ("fc1_w", "fc1_b", "fc2_w", "fc2_b", "r1_w", "r1_b", "r2_w", "r2_b", "temperature")


def ordered(overload: Any, **named: Any) -> tuple[Any, ...]:
    """The positional arguments of ``overload`` (e.g. ``op.caft_forward``) from their names; optional
    arguments left out are None, a required one left out (or a name the schema lacks) is an error."""
    args = []
    for arg in overload._schema.arguments:
        if arg.name in named:
            args.append(named.pop(arg.name))
        elif isinstance(arg.type, torch.OptionalType):
            args.append(None)
        else:
            raise KeyError(f"{overload}: argument {arg.name!r} not given")
    if named:
        raise KeyError(f"{overload} has no argument(s) {sorted(named)}")
    return tuple(args)


def forward_args(x: torch.Tensor, params: list[Any], config: tuple[str, str, str], need_index: bool) -> tuple[Any, ...]:
    """caft_forward's arguments: x, the nine parameters (``PARAM_NAMES``), fusion/gate/act, need_index."""
    fusion, gate, act = config
    named = dict(zip(PARAM_NAMES, params, strict=True))
    return ordered(op.caft_forward, x=x, **named, fusion=fusion, gate=gate, act=act, need_index=need_index)


def backward_args(
    dy: torch.Tensor,
    g_ca: torch.Tensor | None,
    g_w: torch.Tensor | None,
    x: torch.Tensor,
    stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    params: list[Any],
    config: tuple[str, str, str],
    need_x: bool,
) -> tuple[Any, ...]:
    """caft_backward's arguments; ``stats`` is (avg, max, argmax) from the forward."""
    fusion, gate, act = config
    avg, mx, idx = stats
    named = dict(zip(PARAM_NAMES, params, strict=True))
    return ordered(
        op.caft_backward,
        dy=dy,
        g_ca=g_ca,
        g_fusion_w=g_w,
        x=x,
        avg=avg,
        mx=mx,
        idx=idx,
        **named,
        fusion=fusion,
        gate=gate,
        act=act,
        need_x=need_x,
    )
