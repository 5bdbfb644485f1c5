"""Property test: random configurations, shapes, ranks, layouts and dtypes against the reference."""

from __future__ import annotations

import copy
import os
from types import ModuleType

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cafusion import ChannelAttentionFusionT
from tests.parity import TOLERANCES, assert_same, assert_same_or_more_accurate, run


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
        "dtype": draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
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
    low = dtype in (torch.bfloat16, torch.float16)
    weights = torch.float32 if low else dtype  # low-precision inputs meet float32 weights, as under AMP
    ref = reference.ChannelAttentionFusionT(shape[1], **case["cfg"]).to(weights)
    ours = ChannelAttentionFusionT(shape[1], **case["cfg"]).to(weights)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=dtype)
    if case["relu_input"]:
        x = torch.relu(x)
    x = _layout(x, case["layout"])
    # the reference is 2-D only: give it the same data viewed as (B, C, first spatial dim, rest)
    view = torch.Size((shape[0], shape[1], shape[2], -1))
    if dtype == torch.float64:
        assert_same(run(ours, x), run(ref, x, view_as=view), *TOLERANCES[dtype])
        return
    if dtype == torch.float32:
        exact = run(copy.deepcopy(ref).double(), x.double(), view_as=view)
        assert_same_or_more_accurate(run(ours, x), run(ref, x, view_as=view), exact, *TOLERANCES[dtype])
        return
    # low precision: the reference cannot take it, so it sees the same (rounded) values in float32;
    # ours keeps x's dtype for y and ca, which costs one rounding of ca and one of y
    with torch.no_grad():
        got, want = ours(x), ref(x.float().reshape(view))
    assert got[0].dtype == dtype and got[1].dtype == dtype  # y and ca keep the input's dtype
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float().reshape(w.shape), w, rtol=2e-2, atol=2e-2)
