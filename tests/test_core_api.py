"""The module's API: constructor, temperature, state_dict, dtypes, factory kwargs, inspectors."""

from __future__ import annotations

import math
import re
from types import ModuleType

import pytest
import torch

from cafusion import ChannelAttentionFusionT
from cafusion.functional import channel_attention_fusion, softplus_inverse


def test_hidden_width_follows_reference_rule() -> None:
    assert ChannelAttentionFusionT(64, reduction=16, min_hidden=4).hidden == 4
    assert ChannelAttentionFusionT(256, reduction=16, min_hidden=4).hidden == 16
    assert ChannelAttentionFusionT(8, reduction=1, min_hidden=2).fc1.weight.shape == (8, 8, 1, 1)


def test_state_dict_keys_and_shapes() -> None:
    sd = ChannelAttentionFusionT(32, fusion="softmax", fusion_router_hidden=7).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "fc1.weight": (4, 32, 1, 1),
        "fc1.bias": (4,),
        "fc2.weight": (32, 4, 1, 1),
        "fc2.bias": (32,),
        "fusion_router.0.weight": (7, 64, 1, 1),
        "fusion_router.0.bias": (7,),
        "fusion_router.2.weight": (2, 7, 1, 1),
        "fusion_router.2.bias": (2,),
        "T": (),
    }
    sd = ChannelAttentionFusionT(32, fusion="sum", bias=False, learnable_temperature=True).state_dict()
    assert set(sd) == {"fc1.weight", "fc2.weight", "t_raw"}


def test_fixed_temperature_is_a_buffer_and_learnable_is_a_parameter() -> None:
    fixed = ChannelAttentionFusionT(8, temperature=2.5)
    assert "T" in dict(fixed.named_buffers()) and "T" not in dict(fixed.named_parameters())
    assert fixed.get_T().item() == 2.5 and not fixed.get_T().requires_grad
    learn = ChannelAttentionFusionT(8, temperature=2.5, learnable_temperature=True)
    assert "t_raw" in dict(learn.named_parameters())
    assert learn.get_T().requires_grad


@pytest.mark.parametrize("temperature", [1e-4, 3e-4, 1e-3, 0.1, 1.0, 7.5, 88.0, 89.0, 100.0, 1e3, 1e4])
def test_learnable_temperature_starts_exact_and_stays_finite(temperature: float) -> None:
    block = ChannelAttentionFusionT(8, temperature=temperature, learnable_temperature=True, return_fusion_weights=True)
    assert math.isclose(block.get_T().item(), temperature, rel_tol=1e-6)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    y, ca, w = block(x)
    (y.square().sum() + ca.sum() + w[:, 0].sum()).backward()
    grads = [x.grad, *(p.grad for p in block.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(y).all()


def test_reference_overflows_where_we_do_not(reference: ModuleType) -> None:
    ref = reference.ChannelAttentionFusionT(8, temperature=100.0, learnable_temperature=True)
    assert torch.isinf(ref.t_raw)  # the reference's exp(100) overflows in float32
    ours = ChannelAttentionFusionT(8, temperature=100.0, learnable_temperature=True)
    assert torch.isfinite(ours.t_raw) and math.isclose(ours.get_T().item(), 100.0, rel_tol=1e-6)


def test_softplus_inverse_is_exact() -> None:
    for y in [1e-8, 1e-4, 0.3, 1.0, 20.0, 88.5, 1e4]:
        x = softplus_inverse(y)
        assert math.isclose(torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float64)).item(), y, rel_tol=1e-12)


def test_reset_parameters_redraws_weights_and_restores_temperature() -> None:
    block = ChannelAttentionFusionT(16, temperature=3.0, learnable_temperature=True)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with torch.no_grad():
        block.t_raw.add_(5.0)
    block.reset_parameters()
    after = block.state_dict()
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert not torch.equal(before["fusion_router.0.weight"], after["fusion_router.0.weight"])
    assert math.isclose(block.get_T().item(), 3.0, rel_tol=1e-6)


def test_extra_repr_shows_configuration() -> None:
    text = repr(ChannelAttentionFusionT(64, fusion="sum", gate="HardSigmoid", act="SiLU", learnable_temperature=True))
    for part in ["channels=64", "hidden=4", "fusion=sum", "gate=hardsigmoid", "act=silu", "(learnable)"]:
        assert part in text


def test_factory_kwargs() -> None:
    block = ChannelAttentionFusionT(8, learnable_temperature=True, dtype=torch.float64)
    assert {p.dtype for p in block.parameters()} == {torch.float64}
    meta = ChannelAttentionFusionT(8, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    block = ChannelAttentionFusionT(16, return_fusion_weights=True, learnable_temperature=True)
    x32 = torch.randn(2, 16, 9, 9)
    want = block(x32)
    x = x32.to(dtype).requires_grad_(True)
    y, ca, w = block(x)  # float32 weights, low-precision input
    assert y.dtype == dtype and ca.dtype == dtype
    torch.testing.assert_close(y.float(), want[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w, want[2], rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()
    # the whole block in low precision too
    low = ChannelAttentionFusionT(16, return_fusion_weights=True).to(dtype)
    out = low(x.detach())
    assert out[0].dtype == dtype and torch.isfinite(out[0].float()).all()


def test_low_precision_mean_accumulates_in_float32() -> None:
    # 4096 values of 1 + 1/256 steps: a bfloat16 running sum would lose the small parts entirely
    x = (1 + torch.arange(4096).remainder(2) / 128).reshape(1, 1, 64, 64)
    fc1, fc2 = torch.eye(1).view(1, 1, 1, 1), torch.eye(1).view(1, 1, 1, 1)
    _, ca32, _ = channel_attention_fusion(x, fc1, None, fc2, None, fusion="sum", act="silu")
    _, ca16, _ = channel_attention_fusion(x.to(torch.bfloat16), fc1, None, fc2, None, fusion="sum", act="silu")
    torch.testing.assert_close(ca16.float(), ca32, rtol=1e-2, atol=0)


def test_cpu_autocast_bfloat16() -> None:
    block = ChannelAttentionFusionT(16, return_fusion_weights=True, learnable_temperature=True)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    want = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _, w = block(x)
    torch.testing.assert_close(y.float(), want[0], rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(w.float(), want[2], rtol=3e-2, atol=3e-2)
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert block.t_raw.grad is not None and torch.isfinite(block.t_raw.grad).all()


def test_return_fusion_weights_only_with_softmax() -> None:
    x = torch.randn(2, 8, 4, 4)
    assert len(ChannelAttentionFusionT(8, fusion="sum", return_fusion_weights=True)(x)) == 2
    assert len(ChannelAttentionFusionT(8, fusion="softmax", return_fusion_weights=True)(x)) == 3
    assert len(ChannelAttentionFusionT(8, fusion="softmax")(x)) == 2
    w = ChannelAttentionFusionT(8, return_fusion_weights=True)(x)[2]
    torch.testing.assert_close(w.sum(1), torch.ones(2))


def test_inspector_sees_fusion_weights_without_changing_outputs() -> None:
    block = ChannelAttentionFusionT(8)
    seen: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
    handle = block.register_inspector(lambda m, ca, w, t: seen.append((ca, w, t)))
    out = block(torch.randn(3, 8, 4, 4))
    assert len(out) == 2 and len(seen) == 1
    ca, w, t = seen[0]
    assert torch.equal(ca, out[1]) and w is not None and w.shape == (3, 2) and t.item() == 1.0
    handle.remove()
    block(torch.randn(3, 8, 4, 4))
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("saved", "loading", "needle"),
    [
        ({"fusion": "softmax"}, {"fusion": "sum"}, "fusion='softmax'"),
        ({"fusion": "sum"}, {"fusion": "softmax"}, "fusion='sum'"),
        ({"learnable_temperature": True}, {}, "learnable (t_raw)"),
        ({}, {"learnable_temperature": True}, "fixed (buffer T)"),
        ({"channels": 32}, {}, "channels=32"),
        ({"bias": False}, {}, "bias=False"),
    ],
)
def test_mismatched_checkpoint_says_what_differs(saved: dict, loading: dict, needle: str) -> None:
    src = ChannelAttentionFusionT(**{"channels": 16, **saved})
    dst = ChannelAttentionFusionT(**{"channels": 16, **loading})
    with pytest.raises(RuntimeError, match=re.escape(needle)):
        dst.load_state_dict(src.state_dict())


def test_non_strict_load_of_another_configuration_loads_the_shared_weights() -> None:
    src = ChannelAttentionFusionT(16, fusion="sum", learnable_temperature=True)
    dst = ChannelAttentionFusionT(16, fusion="softmax")
    result = dst.load_state_dict(src.state_dict(), strict=False)
    assert torch.equal(dst.fc1.weight, src.fc1.weight) and torch.equal(dst.fc2.bias, src.fc2.bias)
    missing = " ".join(result.missing_keys)
    assert (
        "fusion_router.0.weight (ChannelAttentionFusionT at '<root>': checkpoint was saved with fusion='sum'" in missing
    )
    assert "T (" in missing and "learnable (t_raw) temperature" in missing
    assert any(k.startswith("t_raw") for k in result.unexpected_keys)


def test_nested_block_mismatch_names_its_prefix() -> None:
    src = torch.nn.Sequential(torch.nn.Identity(), ChannelAttentionFusionT(16, fusion="sum"))
    dst = torch.nn.Sequential(torch.nn.Identity(), ChannelAttentionFusionT(16))
    with pytest.raises(RuntimeError, match="at '1'"):
        dst.load_state_dict(src.state_dict())


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_may_be_modified_in_place(reference: ModuleType, channels_last: bool) -> None:
    """Residual blocks do ``out += shortcut`` on the attention output (timm's ResNet)."""
    ref = reference.ChannelAttentionFusionT(16)
    ours = ChannelAttentionFusionT(16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 5, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for block in (ours, ref):
        xin = x.clone().requires_grad_(True)
        y, _ = block(xin)
        y += xin
        y.square().sum().backward()
        grads.append(xin.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_double_backward_gradient_penalty_matches_reference_impl(fusion: str) -> None:
    """Gradient penalties differentiate the gradient: the default fast path must support it exactly."""
    block = ChannelAttentionFusionT(8, fusion=fusion, learnable_temperature=True, return_fusion_weights=True)
    block = block.double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    results = {}
    for impl in ("reference", "auto"):
        block.impl = impl
        out = block(x)
        loss = out[0].square().sum() + out[1].sum() + out[-1][:, 0].sum()
        grads = torch.autograd.grad(loss, [x, *block.parameters()], create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results[impl] = torch.autograd.grad(penalty, [x, *block.parameters()])
    for ref, fast in zip(results["reference"], results["auto"], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
