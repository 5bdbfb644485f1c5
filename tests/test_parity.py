"""Outputs and gradients equal the reference's for every configuration, rank, layout and edge case."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

from cafusion import ChannelAttentionFusionT
from tests.parity import TOLERANCES, all_configs, assert_same, config_id, run

SHAPES = [(2, 8, 1, 1), (3, 16, 5, 7), (2, 33, 4, 3)]


def make_pair(reference: ModuleType, channels: int, dtype: torch.dtype = torch.float32, impl: str = "auto", **cfg: Any):
    """The reference and our block with identical weights (ours loads the reference's state_dict)."""
    ref = reference.ChannelAttentionFusionT(channels, **cfg).to(dtype)
    ours = ChannelAttentionFusionT(channels, impl=impl, **cfg).to(dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cfg", all_configs(), ids=config_id)
def test_all_configurations_match_reference(
    reference: ModuleType, cfg: dict[str, Any], dtype: torch.dtype, impl: str
) -> None:
    """The composite (impl="reference", the ground truth of every backend) and the default path, both
    against the reference file."""
    rtol, atol = TOLERANCES[dtype]
    for shape in SHAPES:
        ref, ours = make_pair(reference, shape[1], dtype, reduction=4, impl=impl, **cfg)
        x = torch.randn(shape, dtype=dtype)
        assert_same(run(ours, x), run(ref, x), rtol, atol)


@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_same_seed_gives_reference_initial_weights(reference: ModuleType, fusion: str) -> None:
    torch.manual_seed(123)
    ref = reference.ChannelAttentionFusionT(32, fusion=fusion)
    torch.manual_seed(123)
    ours = ChannelAttentionFusionT(32, fusion=fusion)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert ref_sd.keys() == our_sd.keys()
    for key in ref_sd:
        torch.testing.assert_close(our_sd[key], ref_sd[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_checkpoints_move_both_ways(reference: ModuleType, fusion: str, learnable: bool) -> None:
    cfg = {"fusion": fusion, "learnable_temperature": learnable, "temperature": 2.0}
    ref = reference.ChannelAttentionFusionT(24, **cfg)
    ours = ChannelAttentionFusionT(24, **cfg)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    x = torch.randn(2, 24, 6, 5)
    # reference -> ours
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_same(run(ours, x), run(ref, x), *TOLERANCES[torch.float32])
    # ours -> a fresh reference
    torch.manual_seed(7)
    ours2 = ChannelAttentionFusionT(24, **cfg)
    ref2 = reference.ChannelAttentionFusionT(24, **cfg)
    ref2.load_state_dict(ours2.state_dict(), strict=True)
    assert_same(run(ours2, x), run(ref2, x), *TOLERANCES[torch.float32])


@pytest.mark.parametrize("shape", [(2, 8, 11), (3, 8, 1), (2, 8, 3, 4, 5), (1, 8, 2, 1, 3)], ids=str)
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_1d_and_3d_equal_reference_on_4d_view(reference: ModuleType, shape: tuple[int, ...], fusion: str) -> None:
    ref, ours = make_pair(reference, 8, torch.float64, fusion=fusion, learnable_temperature=True)
    x = torch.randn(shape, dtype=torch.float64)
    view = torch.Size((shape[0], shape[1], shape[2], -1)) if len(shape) == 5 else torch.Size((*shape, 1))
    got, want = run(ours, x), run(ref, x, view_as=view)
    assert got["y"].shape == (shape[0], x[0].numel())
    assert_same(got, want, *TOLERANCES[torch.float64])


def test_one_module_serves_every_rank() -> None:
    block = ChannelAttentionFusionT(8, return_fusion_weights=True)
    for shape in [(2, 8, 5), (2, 8, 5, 4), (2, 8, 5, 4, 3), (2, 8, 2, 2, 2, 2)]:
        y, ca, w = block(torch.randn(shape))
        assert y.shape == shape
        assert ca.shape == (2, 8) + (1,) * (len(shape) - 2)
        assert w.shape == (2, 2)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
def test_memory_layouts_match_reference(reference: ModuleType, layout: str) -> None:
    ref, ours = make_pair(reference, 16, torch.float32, fusion="softmax", reduction=4)
    base = torch.randn(2, 16, 6, 10)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    else:
        x = base[:, :, ::2, 1::3]
    assert_same(run(ours, x), run(ref, x), *TOLERANCES[torch.float32])


def test_channels_last_output_keeps_layout() -> None:
    x = torch.randn(2, 16, 6, 10).contiguous(memory_format=torch.channels_last)
    y, _ = ChannelAttentionFusionT(16)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["relu_zeros", "repeated_max", "constant"])
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_max_ties_send_gradient_where_reference_does(reference: ModuleType, kind: str, fusion: str) -> None:
    ref, ours = make_pair(reference, 8, torch.float64, fusion=fusion)
    if kind == "relu_zeros":
        x = torch.relu(torch.randn(3, 8, 4, 5, dtype=torch.float64))
        x[:, ::2] = 0.0  # whole channels of zeros after ReLU: every position ties
    elif kind == "repeated_max":
        x = torch.randint(0, 3, (3, 8, 4, 5)).to(torch.float64)
    else:
        x = torch.full((3, 8, 4, 5), 0.5, dtype=torch.float64)
    got, want = run(ours, x), run(ref, x)
    assert_same(got, want, *TOLERANCES[torch.float64])
    # the max part of the gradient lands on exactly one (the first) position per channel
    assert torch.equal(got["grad_x"] != 0, want["grad_x"] != 0)


def test_nan_inputs_behave_as_reference(reference: ModuleType) -> None:
    ref, ours = make_pair(reference, 8, torch.float32, fusion="softmax", return_fusion_weights=True)
    x = torch.randn(3, 8, 4, 4)
    x[1, 2, 1, 3] = float("nan")
    got, want = run(ours, x), run(ref, x)
    assert_same(got, want, *TOLERANCES[torch.float32])
    assert got["y"][1].isnan().all() and not got["y"][[0, 2]].isnan().any()


@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_empty_batch_returns_empty_outputs(fusion: str) -> None:
    block = ChannelAttentionFusionT(8, fusion=fusion, return_fusion_weights=True)
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    out = block(x)
    assert out[0].shape == (0, 8, 5, 5) and out[1].shape == (0, 8, 1, 1)
    if fusion == "softmax":
        assert out[2].shape == (0, 2)
    out[0].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
