"""Registry, drop-in layer and baselines: names, shapes over ranks, math, errors."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cafusion
from cafusion.layers import (
    CbamChannelAttention,
    ChannelAttentionFusionT,
    ChannelAttentionFusionTLayer,
    EfficientChannelAttention,
    NoAttention,
    SqueezeExcite,
    registry,
)
from cafusion.layers.eca import eca_kernel_size

NAMES = ("caft", "caft_sum", "se", "cbam", "eca", "none")
SHAPES = ((3, 16, 7), (3, 16, 5, 6), (2, 16, 3, 4, 5))


def test_required_names_are_registered() -> None:
    assert set(NAMES) <= set(cafusion.list_attentions())
    assert cafusion.list_attentions() == sorted(cafusion.list_attentions())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=("1d", "2d", "3d"))
def test_every_layer_keeps_shape_and_trains(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = cafusion.create_attention(name, 16)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, pname
    if name != "none":
        assert not torch.equal(y, x)
        assert any(p.grad.abs().sum() > 0 for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_factory_kwargs(name: str) -> None:
    layer = cafusion.create_attention(name, 8, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_keeps_its_dtype(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = cafusion.create_attention(name, 8)
    x = torch.randn(2, 8, 6, 6).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), layer(x.float()), rtol=2e-2, atol=2e-2)


def test_registry_works_without_the_optional_packages() -> None:
    """timm, torchvision, onnx and safetensors are extras: importing the library must not need them."""
    code = (
        "import sys\n"
        "for m in ('timm', 'torchvision', 'onnx', 'onnxruntime', 'onnxscript', 'safetensors'):\n"
        "    sys.modules[m] = None\n"
        "import torch, cafusion, cafusion.integrations.torchvision, cafusion.integrations.weights\n"
        "for n in cafusion.list_attentions():\n"
        "    assert cafusion.create_attention(n, 8)(torch.randn(2, 8, 3)).shape == (2, 8, 3)\n"
        "print(len(cafusion.list_attentions()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= len(NAMES)


def test_case_insensitive_and_factories_pass_through() -> None:
    assert cafusion.get_attention("CAFT") is ChannelAttentionFusionTLayer
    p = partial(SqueezeExcite, reduction=2)
    assert cafusion.get_attention(p) is p
    assert cafusion.get_attention(EfficientChannelAttention) is EfficientChannelAttention
    assert cafusion.create_attention("caft_sum", 8).fusion == "sum"
    assert cafusion.create_attention("caft", 8).fusion == "softmax"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown attention 'sse'") as err:
        cafusion.get_attention("sse")
    for name in NAMES:
        assert f"'{name}'" in str(err.value)
    with pytest.raises(TypeError, match="name"):
        cafusion.get_attention(3)  # type: ignore[arg-type]


def test_register_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    cafusion.register_attention("My_SE", partial(SqueezeExcite, reduction=2))
    assert "my_se" in cafusion.list_attentions()
    assert cafusion.create_attention("my_se", 8).hidden == 4
    with pytest.raises(ValueError, match="already registered"):
        cafusion.register_attention("se", SqueezeExcite)
    cafusion.register_attention("se", CbamChannelAttention, overwrite=True)
    assert isinstance(cafusion.create_attention("se", 8), CbamChannelAttention)
    with pytest.raises(TypeError, match="factory"):
        cafusion.register_attention("bad", 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("fusion", ["softmax", "sum"])
def test_drop_in_layer_returns_the_blocks_y(fusion: str) -> None:
    torch.manual_seed(0)
    kw = dict(fusion=fusion, gate="hardsigmoid", temperature=2.0, learnable_temperature=True, reduction=4)
    block = ChannelAttentionFusionT(16, **kw)
    layer = ChannelAttentionFusionTLayer(16, **kw)
    layer.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(layer(x), block(x)[0], rtol=0, atol=0)
    assert isinstance(layer, ChannelAttentionFusionT)


@pytest.mark.parametrize("name", NAMES)
def test_output_can_be_modified_in_place(name: str) -> None:
    """Residual blocks do ``out += shortcut`` on the attention's output (timm's ResNet does)."""
    layer = cafusion.create_attention(name, 8)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    shortcut = torch.randn(2, 8, 4, 4)
    expected = layer(x).detach() + shortcut
    y = layer(x * 1.0)
    y += shortcut
    torch.testing.assert_close(y.detach(), expected)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_inspector_and_keep_last_see_ca_and_fusion_weights() -> None:
    layer = ChannelAttentionFusionTLayer(16, keep_last=True)
    seen: list[tuple[torch.Size, torch.Size | None]] = []
    handle = layer.register_inspector(lambda m, ca, w, t: seen.append((ca.shape, None if w is None else w.shape)))
    x = torch.randn(3, 16, 4, 4)
    y = layer(x)
    assert seen == [(torch.Size([3, 16, 1, 1]), torch.Size([3, 2]))]
    assert layer.last_ca is not None and layer.last_fusion_w is not None
    assert not layer.last_ca.requires_grad
    torch.testing.assert_close(y, x * layer.last_ca)
    torch.testing.assert_close(layer.last_fusion_w.sum(1), torch.ones(3))
    handle.remove()
    layer(x)
    assert len(seen) == 1
    sum_layer = ChannelAttentionFusionTLayer(16, fusion="sum", keep_last=True)
    sum_layer(x)
    assert sum_layer.last_ca is not None and sum_layer.last_fusion_w is None
    plain = ChannelAttentionFusionTLayer(16)
    plain(x)
    assert plain.last_ca is None


def test_drop_in_layer_refuses_tuple_output_and_bad_options() -> None:
    with pytest.raises(TypeError, match="return_fusion_weights"):
        ChannelAttentionFusionTLayer(8, return_fusion_weights=True)
    with pytest.raises(TypeError, match="keep_last"):
        ChannelAttentionFusionTLayer(8, keep_last=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion"):
        ChannelAttentionFusionTLayer(8, fusion="mean")


@pytest.mark.parametrize("factory", [ChannelAttentionFusionTLayer, SqueezeExcite, CbamChannelAttention])
def test_timm_act_layer_hint(factory: type[nn.Module]) -> None:
    assert factory(8, act_layer=nn.SiLU).act == "silu"
    assert factory(8, act_layer="swish").act == "silu"
    assert factory(8, act_layer="leaky_relu").act == "relu"  # unsupported hint keeps the default
    assert factory(8, act="relu", act_layer=nn.SiLU).act == "relu"  # explicit act wins
    with pytest.raises(ValueError, match="act"):
        factory(8, act="gelu")


def test_se_matches_its_formula() -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(16, reduction=4, act="silu", gate="hardsigmoid")
    x = torch.randn(2, 16, 3, 5)
    s = x.mean(dim=(2, 3))
    g = F.hardsigmoid(F.linear(F.silu(F.linear(s, se.fc1.weight, se.fc1.bias)), se.fc2.weight, se.fc2.bias))
    torch.testing.assert_close(se(x), x * g[:, :, None, None])


def test_cbam_equals_caft_sum_at_unit_temperature() -> None:
    """CBAM's channel branch is this block with sum fusion and T=1: two implementations, one answer."""
    torch.manual_seed(0)
    cbam = CbamChannelAttention(16, reduction=4)
    caft = ChannelAttentionFusionTLayer(16, reduction=4, fusion="sum")
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            getattr(caft, name).weight.copy_(getattr(cbam, name).weight[:, :, None, None])
            getattr(caft, name).bias.copy_(getattr(cbam, name).bias)
    x = torch.randn(2, 16, 4, 3, 2)
    torch.testing.assert_close(cbam(x), caft(x))


def test_eca_kernel_rule_and_formula() -> None:
    assert eca_kernel_size(16) == 3
    assert eca_kernel_size(64) == 3
    assert eca_kernel_size(256) == 5
    assert eca_kernel_size(2048) == 7
    assert EfficientChannelAttention(256).kernel_size == 5
    torch.manual_seed(0)
    eca = EfficientChannelAttention(16, kernel_size=5)
    x = torch.randn(2, 16, 6)
    conv = F.conv1d(x.mean(2)[:, None, :], eca.conv.weight, padding=2)[:, 0]
    torch.testing.assert_close(eca(x), x * torch.sigmoid(conv)[:, :, None])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        EfficientChannelAttention(16, kernel_size=4)
    with pytest.raises(TypeError, match="beta"):
        EfficientChannelAttention(16, beta="1")  # type: ignore[arg-type]


def test_none_is_identity_and_ignores_block_options() -> None:
    layer = cafusion.create_attention("none", 8, reduction=4, act_layer=nn.ReLU, device="cpu")
    assert isinstance(layer, NoAttention)
    x = torch.randn(2, 8, 3)
    assert layer(x) is x
    with pytest.raises(ValueError, match="channels"):
        NoAttention(0)


@pytest.mark.parametrize("name", ["se", "cbam", "eca", "caft"])
def test_bad_inputs_name_the_argument(name: str) -> None:
    layer = cafusion.create_attention(name, 8)
    with pytest.raises(ValueError, match="8 channels"):
        layer(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="spatial"):
        layer(torch.randn(2, 8))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 8, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        cafusion.create_attention(name, 0)
    with pytest.raises(ValueError, match="gate"):
        cafusion.create_attention(name, 8, gate="tanh")
