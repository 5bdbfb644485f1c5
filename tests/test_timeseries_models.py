"""FCN and ResNet (Wang et al. 2017): shapes, where the attention blocks sit, parameter counts, the factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cafusion import ChannelAttentionFusionT
from cafusion.layers.registry import NoAttention
from cafusion.layers.se import SqueezeExcite
from cafusion.models import FCN, ResNet
from cafusion.models.checkpoint import load_model, save_model
from cafusion.training import ModelError, ModelSpec, build_model

# One input channel, two classes: conv weights + biases, BN weight + bias, the linear head.
FCN_PARAMS_1IN_2CLS = (1 * 128 * 8 + 128) + 2 * 128 + (128 * 256 * 5 + 256) + 2 * 256 + (256 * 128 * 3 + 128)
FCN_PARAMS_1IN_2CLS += 2 * 128 + 128 * 2 + 2


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cls", [FCN, ResNet])
@pytest.mark.parametrize("attention", ["none", "se", "eca", "cbam", "caft", "caft_sum"])
def test_shapes_1d(cls: type[nn.Module], attention: str) -> None:
    model = cls(3, 5, attention=attention)
    for length in (1, 24, 37):  # any length, odd or even, down to 1
        assert model(torch.randn(2, 3, length)).shape == (2, 5)


@pytest.mark.parametrize("kernel", [1, 3, 5, 8])
def test_same_padding_keeps_length_like_keras(kernel: int) -> None:
    from cafusion.models.timeseries import SameConv1d

    conv = SameConv1d(2, 4, kernel)
    x = torch.randn(3, 2, 11)
    assert conv(x).shape == (3, 4, 11)
    # Keras/TensorFlow 'same': (k - 1) // 2 zeros on the left, the rest on the right
    ref = torch.nn.functional.conv1d(
        torch.nn.functional.pad(x, ((kernel - 1) // 2, kernel // 2)), conv.weight, conv.bias
    )
    torch.testing.assert_close(conv(x), ref)


def test_fcn_parameter_count_matches_the_paper_architecture() -> None:
    assert _params(FCN(1, 2)) == FCN_PARAMS_1IN_2CLS == 264_962


def test_resnet_parameter_count() -> None:
    def conv(i: int, o: int, k: int) -> int:
        return i * o * k + o

    block1 = conv(1, 64, 8) + conv(64, 64, 5) + conv(64, 64, 3) + 3 * 128 + conv(1, 64, 1) + 128
    block2 = conv(64, 128, 8) + conv(128, 128, 5) + conv(128, 128, 3) + 3 * 256 + conv(64, 128, 1) + 256
    block3 = conv(128, 128, 8) + conv(128, 128, 5) + conv(128, 128, 3) + 3 * 256 + 256  # BN-only shortcut
    assert _params(ResNet(1, 2)) == block1 + block2 + block3 + 128 * 2 + 2


def test_fcn_attention_after_each_conv_block() -> None:
    from cafusion.models.timeseries import SameConv1d

    model = FCN(1, 2, attention="se")
    blocks = list(model.blocks)
    assert len(blocks) == 3
    for block, width, kernel in zip(blocks, (128, 256, 128), (8, 5, 3), strict=True):
        children = list(block.children())
        assert [type(c) for c in children] == [SameConv1d, nn.BatchNorm1d, nn.ReLU, SqueezeExcite]
        assert block.conv.out_channels == width and block.conv.kernel_size == (kernel,)
    assert sum(isinstance(m, SqueezeExcite) for m in model.modules()) == 3


def test_fcn_block_applies_attention_to_relu_output() -> None:
    model = FCN(1, 2, attention="caft").eval()
    seen: list[torch.Tensor] = []
    block = model.blocks[0]
    block.attention.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(2, 1, 16)
    model(x)
    expected = torch.relu(block.bn(block.conv(x)))
    torch.testing.assert_close(seen[0], expected)


def test_resnet_attention_after_last_bn_before_the_add() -> None:
    model = ResNet(2, 3, attention="caft").eval()
    blocks = list(model.blocks)
    assert sum(isinstance(m, ChannelAttentionFusionT) for m in model.modules()) == 3
    assert all(isinstance(b.attention, ChannelAttentionFusionT) for b in blocks)
    block = blocks[0]
    seen: list[torch.Tensor] = []
    block.attention.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(2, 2, 20)
    out = block(x)
    h = torch.relu(block.bn1(block.conv1(x)))
    h = torch.relu(block.bn2(block.conv2(h)))
    torch.testing.assert_close(seen[0], block.bn3(block.conv3(h)))  # input: the last BN's output
    torch.testing.assert_close(out, torch.relu(block.attention(seen[0]) + block.shortcut(x)))


def test_none_is_the_plain_network() -> None:
    torch.manual_seed(0)
    model = ResNet(1, 2, attention="none")
    assert all(isinstance(b.attention, NoAttention) for b in model.blocks)
    assert not any(isinstance(m, ChannelAttentionFusionT) for m in model.modules())


def test_variants_share_backbone_parameter_names() -> None:
    """Paired ablations copy the backbone from the 'none' model: every one of its names must exist."""
    for cls in (FCN, ResNet):
        base = set(cls(1, 2).state_dict())
        for attention in ("se", "caft", "cbam"):
            names = set(cls(1, 2, attention=attention).state_dict())
            assert base <= names
            assert all(".attention." in n for n in names - base)


def test_factory_builds_fcn_and_resnet_for_1d_only() -> None:
    model = build_model(ModelSpec("fcn", 2, 4, dims=1, attention="eca"))
    assert isinstance(model, FCN) and model(torch.randn(3, 2, 30)).shape == (3, 4)
    assert isinstance(build_model(ModelSpec("resnet", 2, 4, dims=1, attention="none")), ResNet)
    with pytest.raises(ModelError, match="1D signals"):
        build_model(ModelSpec("resnet", 1, 4, dims=2))
    with pytest.raises(ModelError, match="'fcn' or 'resnet'"):
        build_model(ModelSpec("lstm", 1, 4, dims=1))


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="unknown attention 'sse'"):
        FCN(1, 2, attention="sse")
    with pytest.raises(TypeError, match="in_channels"):
        ResNet(0.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        FCN(1, 0)


def test_checkpoint_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    model = ResNet(1, 3, attention="caft_sum").eval()
    path = save_model(model, Path(str(tmp_path)) / "m.safetensors")
    loaded, _ = load_model(path)
    x = torch.randn(2, 1, 12)
    torch.testing.assert_close(loaded.eval()(x), model(x))


def test_cafusion_train_runs_fcn_on_1d_data(tmp_path: object) -> None:
    from pathlib import Path

    import numpy as np

    from cafusion.cli.main import main

    root = Path(str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.standard_normal((12, 2, 16)).astype("float32"), y=np.arange(12) % 2)
    argv = ["train", "--data", str(root / "d.npz"), "--model", "fcn", "--attention", "se", "--epochs", "1"]
    assert main([*argv, "--batch-size", "4", "--out", str(root / "run"), "--no-progress"]) == 0
    assert (root / "run" / "latest.json").is_file()
