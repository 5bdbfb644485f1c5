"""InceptionTime (Ismail Fawaz et al. 2020): shapes, the published architecture and parameter count,
masked padding, every registered attention block, its recipe batch and ``cafusion compare --model inception``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cafusion.layers.registry import NoAttention, list_attentions
from cafusion.models.recipe import recipe_batch_size
from cafusion.models.timeseries import InceptionModule, InceptionTime, SameConv1d, same_max_pool
from cafusion.training import ModelError, ModelSpec, build_model

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 2), (3, 5)])
def test_output_shape_univariate_and_multivariate(in_channels: int, num_classes: int) -> None:
    model = InceptionTime(in_channels, num_classes)
    for length in (1, 24, 37):  # any length, odd or even, down to 1
        assert model(torch.randn(2, in_channels, length)).shape == (2, num_classes)


def test_parameter_count_matches_the_reference_keras_model() -> None:
    """420,450 trainable parameters for 1 input channel and 2 classes, as Keras counts the reference model.

    Every convolution is bias-free. Module 1 sees 1 channel, so no bottleneck: branches
    1*32*(40+20+10) = 2,240, the pool's 1x1 conv 1*32 = 32, BN over 4*32 = 128 channels 2*128 = 256;
    2,528. Modules 2-6 see 128 channels: bottleneck 128*32 = 4,096, branches 32*32*70 = 71,680, pool
    1x1 128*32 = 4,096, BN 256; 80,128 each, 400,640 for five. Shortcuts (1x1 conv + BN): 1*128 + 256
    = 384 and 128*128 + 256 = 16,640. Head 128*2 + 2 = 258. Total 2,528 + 400,640 + 384 + 16,640 + 258
    = 420,450 (Keras' 422,498 "total" adds the 8 BNs' 2*128 moving statistics, buffers here).
    """
    model = InceptionTime(1, 2)
    assert _params(model) == 2_528 + 5 * 80_128 + 384 + 16_640 + 258 == 420_450
    buffers = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert _params(model) + buffers == 422_498


def test_architecture_as_published() -> None:
    model = InceptionTime(3, 4)
    modules = [m for m in model.modules() if isinstance(m, InceptionModule)]
    assert len(modules) == 6 and len(model.blocks) == 2  # depth 6, a shortcut every 3 modules
    for i, module in enumerate(modules):
        assert [b.kernel_size[0] for b in module.branches] == [40, 20, 10]
        assert all(b.out_channels == 32 for b in module.branches) and module.pool_conv.out_channels == 32
        assert isinstance(module.bottleneck, nn.Conv1d) and module.bottleneck.out_channels == 32
        assert module.bn.num_features == 128
        assert module.bottleneck.in_channels == (3 if i == 0 else 128)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert convs and all(c.bias is None for c in convs)
    for block, in_channels in zip(model.blocks, (3, 128), strict=True):
        conv, bn = block.shortcut
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (in_channels, 128, (1,))
        assert isinstance(bn, nn.BatchNorm1d)
    # a univariate input skips the bottleneck of the first module only
    uni = [m for m in InceptionTime(1, 2).modules() if isinstance(m, InceptionModule)]
    assert isinstance(uni[0].bottleneck, nn.Identity) and isinstance(uni[1].bottleneck, nn.Conv1d)


def test_module_is_concat_bn_relu_then_attention() -> None:
    module = InceptionTime(2, 3, attention="caft").eval().blocks[0].inception[0]
    seen: list[Tensor] = []
    module.attention.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(2, 2, 30)
    out = module(x)
    inner = module.bottleneck(x)
    pooled = nn.functional.max_pool1d(x, 3, 1, 1)  # -inf padding: Keras' 'same' max pool
    cat = torch.cat([*(b(inner) for b in module.branches), module.pool_conv(pooled)], dim=1)
    torch.testing.assert_close(seen[0], torch.relu(module.bn(cat)))
    torch.testing.assert_close(out, module.attention(seen[0]))


def test_block_adds_the_shortcut_then_relu() -> None:
    block = InceptionTime(1, 2).eval().blocks[1]
    x = torch.randn(2, 128, 17)
    torch.testing.assert_close(block(x), torch.relu(block.inception(x) + block.shortcut(x)))


def test_same_conv_without_bias_keeps_keras_padding() -> None:
    conv = SameConv1d(2, 3, 40, bias=False)
    assert conv.bias is None
    x = torch.randn(1, 2, 11)
    ref = nn.functional.conv1d(nn.functional.pad(x, (19, 20)), conv.weight)
    torch.testing.assert_close(conv(x), ref)


def test_same_max_pool_ignores_the_padding() -> None:
    x = torch.tensor([[[-3.0, -1.0, -2.0, 5.0]]])
    assert same_max_pool(x).tolist() == [[[-1.0, -1.0, 5.0, 5.0]]]  # the edges never see a zero
    from cafusion import masking

    with masking.padding(torch.tensor([3]), length=4):  # the 5.0 is padding now
        assert same_max_pool(x).tolist() == [[[-1.0, -1.0, -1.0, 0.0]]]
    with pytest.raises(ValueError, match="kernel must be an odd int"):
        same_max_pool(x, 2)


def _eval_model(attention: str) -> nn.Module:
    torch.manual_seed(0)
    m = InceptionTime(2, 3, attention=attention)
    with torch.no_grad():
        for module in m.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return m.double().eval()


def _grads(m: nn.Module, x: Tensor, upstream: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    m.zero_grad()
    x = x.clone().requires_grad_(True)
    logits = m(x) if lengths is None else m(x, lengths)
    (logits * upstream).sum().backward()
    assert x.grad is not None
    return logits.detach(), x.grad


@pytest.mark.parametrize(("attention", "fill"), [("none", 1e3), ("caft", -1e3), ("se", -1e3), ("cbam", 1e3)])
def test_padded_series_equals_the_series_alone(attention: str, fill: float) -> None:
    m = _eval_model(attention)
    lengths = [3, 11, 7]
    x = torch.full((3, 2, 11), fill, dtype=torch.float64)
    for i, n in enumerate(lengths):
        x[i, :, :n] = torch.randn(2, n, dtype=torch.float64)
    upstream = torch.randn(3, 3, dtype=torch.float64)
    logits, gx = _grads(m, x, upstream, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, gx_alone = _grads(m, x[i : i + 1, :, :n], upstream[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], alone, **TOL)
        torch.testing.assert_close(gx[i, :, :n], gx_alone[0], **TOL)
        assert bool((gx[i, :, n:] == 0).all()), "the padding reached the logits"


def test_full_lengths_give_the_unmasked_logits() -> None:
    m = _eval_model("eca")
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x, torch.full((3,), 9)), m(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 9\].*got 10"):
        m(x, torch.tensor([10, 2, 3]))


@pytest.mark.parametrize("attention", list_attentions())
def test_every_registered_attention_plugs_in(attention: str) -> None:
    torch.manual_seed(0)
    model = InceptionTime(2, 3, attention=attention)
    blocks = [m.attention for m in model.modules() if isinstance(m, InceptionModule)]
    assert len(blocks) == 6
    assert all(isinstance(b, NoAttention) for b in blocks) == (attention == "none")
    assert model(torch.randn(4, 2, 20)).shape == (4, 3)
    base = set(InceptionTime(2, 3).state_dict())  # paired runs copy the backbone from the 'none' model
    names = set(model.state_dict())
    assert base <= names and all(".attention." in n for n in names - base)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="unknown attention 'sse'"):
        InceptionTime(1, 2, attention="sse")
    with pytest.raises(TypeError, match="in_channels"):
        InceptionTime(0.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        InceptionTime(1, 0)


def test_factory_and_recipe_batch() -> None:
    model = build_model(ModelSpec("inception", 2, 4, dims=1, attention="se"))
    assert isinstance(model, InceptionTime) and model(torch.randn(3, 2, 30)).shape == (3, 4)
    with pytest.raises(ModelError, match="1D signals"):
        build_model(ModelSpec("inception", 1, 4, dims=2))
    # the reference trains with batch_size=64 (Keras: one short batch when N < 64)
    assert [recipe_batch_size("inception", n) for n in (1, 36, 64, 67, 1000)] == [1, 36, 64, 64, 64]


def test_compare_runs_inception_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("aeon", reason="ucr: data needs the timeseries extra (aeon); the dev environment has it")
    from cafusion.cli.main import main

    argv = ["compare", "--data", "ucr:UnitTest", "--model", "inception", "--attention", "none,caft"]
    argv += ["--seeds", "1", "--epochs", "1", "--threads", "1", "--no-figures", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    runs = {
        r["settings"]["variant"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json"))
    }
    assert set(runs) == {"none", "caft"}
    none, caft = runs["none"], runs["caft"]
    assert none["settings"]["model"] == "inception"
    assert none["params"] == 420_450  # UnitTest: univariate, 2 classes
    assert none["batch_size"] == caft["batch_size"] == 20  # its 20 training series: min(N, 64)
    assert caft["shared_tensors_copied"] == len(InceptionTime(1, 2).state_dict())  # the whole backbone
    assert caft["params"] > none["params"] and len(none["history"]) == 1
    assert "inception" in (tmp_path / "report.md").read_text()
