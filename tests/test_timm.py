"""The drop-in layer inside real timm models: ResNet, ByobNet and CSPNet built with ``attn_layer``."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from timm.models.cspnet import CspModelCfg, CspNet, CspStagesCfg, CspStemCfg
from torch import nn

import cafusion
from cafusion import ChannelAttentionFusionTLayer


def blocks_in(model: nn.Module) -> list[ChannelAttentionFusionTLayer]:
    return [m for m in model.modules() if isinstance(m, ChannelAttentionFusionTLayer)]


def train_step_reaches_every_block(model: nn.Module, size: int = 32) -> None:
    """Forward + backward; every block must run once per forward and receive a gradient.

    Models are built with ``zero_init_last=False``: timm zeroes the last BN of each residual branch,
    which would feed the block zeros and make its gradient vanish by construction.
    """
    blocks = blocks_in(model)
    assert blocks, "no ChannelAttentionFusionTLayer inside the model"
    calls: list[int] = []
    handles = [b.register_inspector(lambda m, ca, w, t: calls.append(id(m))) for b in blocks]
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert sorted(calls) == sorted(id(b) for b in blocks)
    for i, b in enumerate(blocks):
        grads = [p.grad for p in b.parameters()]
        assert all(g is not None for g in grads), f"block {i} is not in the autograd graph"
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, f"block {i} got a zero gradient"
    for h in handles:
        h.remove()


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_timm_resnet18_block_args(impl: str) -> None:
    torch.manual_seed(0)
    layer = ChannelAttentionFusionTLayer if impl == "auto" else partial(ChannelAttentionFusionTLayer, impl=impl)
    model = timm.create_model("resnet18", num_classes=10, zero_init_last=False, block_args=dict(attn_layer=layer))
    blocks = blocks_in(model)
    assert len(blocks) == 8  # one per BasicBlock, in the ``se`` slot
    assert [b.channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(isinstance(blk.se, ChannelAttentionFusionTLayer) for blk in model.modules() if hasattr(blk, "se"))
    train_step_reaches_every_block(model)


def test_timm_resnet18_by_registry_name() -> None:
    model = timm.create_model(
        "resnet18", num_classes=10, zero_init_last=False, block_args=dict(attn_layer=cafusion.get_attention("caft_sum"))
    )
    assert {b.fusion for b in blocks_in(model)} == {"sum"}
    train_step_reaches_every_block(model)


def test_timm_byobnet_cfg_with_attn_kwargs() -> None:
    torch.manual_seed(0)
    cfg = ByoModelCfg(
        blocks=(
            ByoBlockCfg(type="basic", d=1, c=16, s=1),
            ByoBlockCfg(type="bottle", d=2, c=32, s=2, br=0.5),
        ),
        stem_chs=8,
        attn_layer=ChannelAttentionFusionTLayer,  # type: ignore[arg-type]
        attn_kwargs=dict(fusion="sum", gate="hardsigmoid", reduction=4),
    )
    model = ByobNet(cfg, num_classes=10, zero_init_last=False)
    blocks = blocks_in(model)
    assert len(blocks) == 3
    assert all(b.fusion == "sum" and b.gate == "hardsigmoid" for b in blocks)
    train_step_reaches_every_block(model)


def test_timm_cspnet_with_partial_non_default_options() -> None:
    torch.manual_seed(0)
    layer = partial(
        ChannelAttentionFusionTLayer, learnable_temperature=True, temperature=2.0, reduction=4, keep_last=True
    )
    cfg = CspModelCfg(  # a cspresnet50-style config, narrowed for speed
        stem=CspStemCfg(out_chs=16, kernel_size=3, stride=2, pool=""),
        stages=CspStagesCfg(
            depth=(1, 1),
            out_chs=(32, 64),
            stride=(1, 2),
            expand_ratio=2.0,
            bottle_ratio=0.5,
            cross_linear=True,
            attn_layer=layer,  # type: ignore[arg-type]
        ),
        act_layer="silu",
    )
    model = CspNet(cfg, num_classes=10, zero_init_last=False)
    blocks = blocks_in(model)
    assert len(blocks) == 2
    for b in blocks:
        assert b.learnable_temperature and b.act == "silu"  # CSPNet's act_layer hint reached the block
        torch.testing.assert_close(b.get_T().detach(), torch.tensor(2.0))
    train_step_reaches_every_block(model)
    for b in blocks:
        assert b.t_raw.grad is not None
        assert b.last_fusion_w is not None and b.last_fusion_w.shape == (2, 2)
