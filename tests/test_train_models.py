"""Model building for ``cafusion train`` and the in-process trainer on timm/torchvision/1D models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cafusion import ChannelAttentionFusionT
from cafusion.training import ModelError, ModelSpec, TrainConfig, build_model, load_checkpoint, train


def _blocks(model: nn.Module) -> list[ChannelAttentionFusionT]:
    return [m for m in model.modules() if isinstance(m, ChannelAttentionFusionT)]


def _count_calls(model: nn.Module) -> list[int]:
    calls: list[int] = []
    for block in _blocks(model):
        block.register_inspector(lambda m, ca, w, t: calls.append(id(m)))
    return calls


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_small_cnn_any_rank(dims: int) -> None:
    spec = ModelSpec("small_cnn", in_channels=2, num_classes=3, dims=dims, widths=(4, 8))
    model = build_model(spec)
    out = model(torch.randn(2, 2, *([6] * dims)))
    assert out.shape == (2, 3)
    assert len(_blocks(model)) == 2


def test_norm_swap_removes_batch_statistics() -> None:
    for norm, kind in (("group", nn.GroupNorm), ("none", nn.Identity)):
        model = build_model(ModelSpec("small_cnn", 1, 2, 2, widths=(4, 8), norm=norm))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert sum(isinstance(m, kind) for m in model.modules()) == 2
        # no cross-sample effect: a sample's output does not depend on the rest of the batch
        model.train()
        x = torch.randn(4, 1, 6, 6)
        torch.testing.assert_close(model(x)[:1], model(x[:1]))


def test_timm_and_torchvision_get_the_block() -> None:
    timm_model = build_model(ModelSpec("timm:resnet10t", 1, 4, 2, attention="caft"))
    assert len(_blocks(timm_model)) > 0
    assert timm_model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    tv_model = build_model(ModelSpec("torchvision:resnet18", 1, 4, 2, attention="caft_sum"))
    blocks = _blocks(tv_model)
    assert blocks and {b.fusion for b in blocks} == {"sum"}
    assert tv_model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    plain = build_model(ModelSpec("torchvision:resnet18", 3, 4, 2, attention="none"))
    assert not _blocks(plain)
    for norm in ("group", "none"):  # the block still runs once per residual branch after the norm swap
        model = build_model(ModelSpec("torchvision:resnet18", 3, 4, 2, attention="caft", norm=norm))
        calls = _count_calls(model)
        model(torch.randn(1, 3, 32, 32))
        assert len(calls) == len(_blocks(model)) == 8
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ModelSpec("resnet18", 3, 2, 2), "must be 'small_cnn', 'timm:<name>' or 'torchvision:<name>'"),
        (ModelSpec("timm:no_such_net", 3, 2, 2), "timm has no model 'no_such_net'"),
        (ModelSpec("torchvision:no_such_net", 3, 2, 2), "torchvision has no model"),
        (ModelSpec("timm:resnet18", 3, 2, 1), "use --model small_cnn for 1D signals"),
        (ModelSpec("small_cnn", 3, 2, 2, norm="layer"), "--norm must be one of"),
    ],
)
def test_bad_model_specs(spec: ModelSpec, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_model(spec)


def test_train_in_process_timm_on_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((12, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(12) % 2)
    config = TrainConfig(
        data=str(tmp_path / "img.npz"),
        out=str(tmp_path / "run"),
        model="timm:resnet10t",
        attention="caft",
        attention_kwargs={"reduction": 8},
        epochs=1,
        batch_size=4,
        val_fraction=0.25,
        progress=False,
    )
    lines: list[str] = []
    result = train(config, printer=lines.append)
    assert result.epochs_done == 1 and result.history[0]["train_samples"] == 8
    assert any(line.startswith("epoch 1/1") for line in lines)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.config["model"] == "timm:resnet10t" and ckpt.config["attention_kwargs"] == {"reduction": 8}
    assert any(".se." in key and "fc1" in key for key in ckpt.weights)
