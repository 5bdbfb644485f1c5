"""Property test: random configurations, shapes, ranks, layouts and dtypes against the reference."""

from __future__ import annotations

import os
from types import ModuleType

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafusion import ChannelAttentionFusionT
from tests.parity import TOLERANCES, assert_same, run


@st.composite
def cases(draw: st.DrawFn) -> dict:
    rank = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))
    channels = draw(st.integers(1, 24))
    return {
        "shape": (draw(st.integers(1, 4)), channels, *spatial),
        "cfg": {
            "reduction": draw(st.integers(1, 8)),
            "min_hidden": draw(st.integers(1, 6)),
            "fusion": draw(st.sampled_from(["sum", "softmax"])),
            "gate": draw(st.sampled_from(["sigmoid", "hardsigmoid", "Sigmoid"])),
            "act": draw(st.sampled_from(["relu", "silu"])),
            "bias": draw(st.booleans()),
            "learnable_temperature": draw(st.booleans()),
            "temperature": draw(st.floats(0.05, 20.0)),
            "fusion_router_hidden": draw(st.integers(1, 8)),
            "return_fusion_weights": draw(st.booleans()),
        },
        "layout": draw(st.sampled_from(["contiguous", "channels_last", "permuted", "sliced"])),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "relu_input": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "permuted":  # same values, non-contiguous storage order
        perm = (0, *range(x.dim() - 1, 0, -1))
        return x.permute(perm).contiguous().permute(perm)
    if layout == "sliced":
        big = torch.zeros((x.shape[0], x.shape[1] * 2, *x.shape[2:]), dtype=x.dtype)
        big[:, ::2] = x
        return big[:, ::2]
    return x


@settings(
    max_examples=int(os.environ.get("CAFUSION_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases())
def test_random_cases_match_reference(reference: ModuleType, case: dict) -> None:
    torch.manual_seed(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    ref = reference.ChannelAttentionFusionT(shape[1], **case["cfg"]).to(dtype)
    ours = ChannelAttentionFusionT(shape[1], **case["cfg"]).to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=dtype)
    if case["relu_input"]:
        x = torch.relu(x)
    x = _layout(x, case["layout"])
    # the reference is 2-D only: give it the same data viewed as (B, C, first spatial dim, rest)
    view = torch.Size((shape[0], shape[1], shape[2], -1))
    assert_same(run(ours, x), run(ref, x, view_as=view), *TOLERANCES[dtype])
