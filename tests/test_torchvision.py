"""insert_attention on torchvision ResNets (SE-ResNet position) and on any model through a predicate."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet50

import cafusion
from cafusion.integrations.torchvision import insert_attention


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name.endswith(".attention")}


@pytest.mark.parametrize(
    ("build", "last_bn", "n_blocks"),
    [(resnet18, "bn2", 8), (resnet50, "bn3", 16)],
    ids=["resnet18", "resnet50"],
)
@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_resnet_forward_backward_and_state_dict_round_trip(
    build: type[nn.Module], last_bn: str, n_blocks: int, impl: str
) -> None:
    torch.manual_seed(0)
    plain = build(num_classes=10)
    plain_keys = set(plain.state_dict())
    model = insert_attention(plain, "caft", impl=impl)
    assert model is plain
    blocks = attention_blocks(model)
    assert len(blocks) == n_blocks
    assert all(name.endswith(f".{last_bn}.attention") for name in blocks)
    for name, block in blocks.items():
        assert isinstance(block, cafusion.ChannelAttentionFusionTLayer)
        assert block.channels == model.get_submodule(name.rsplit(".", 1)[0]).num_features

    calls: list[str] = []
    for name, block in blocks.items():
        block.register_inspector(lambda m, ca, w, t, name=name: calls.append(name))
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert calls == list(blocks)  # each block ran once, in network order
    for name, block in blocks.items():
        assert block.fc1.weight.grad is not None and float(block.fc2.bias.grad.abs().sum()) > 0, name

    # The original keys are untouched (torchvision checkpoints still load); new ones sit under .attention.
    keys = set(model.state_dict())
    assert plain_keys <= keys
    assert all(".attention." in k for k in keys - plain_keys)
    fresh = insert_attention(build(num_classes=10), "caft", impl=impl)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_deepcopy_keeps_the_inserted_blocks_working() -> None:
    """EMA / SWA wrappers deep-copy the model: the copy must apply its own blocks."""
    model = insert_attention(resnet18(num_classes=10), "se").eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.layer1[0].bn2.attention.fc2.bias.fill_(-100.0)  # closes the gate in the copy only
        x = torch.randn(1, 3, 32, 32)
        assert not torch.allclose(clone(x), model(x))
        torch.testing.assert_close(copy.deepcopy(model)(x), model(x))


def test_a_plain_torchvision_checkpoint_loads_except_the_new_block() -> None:
    checkpoint = resnet18(num_classes=10).state_dict()
    model = insert_attention(resnet18(num_classes=10), "se")
    result = model.load_state_dict(checkpoint, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".attention." in k for k in result.missing_keys)


def test_registry_name_and_options_reach_every_block() -> None:
    model = insert_attention(resnet18(num_classes=10), "caft_sum", gate="hardsigmoid", reduction=8)
    blocks = list(attention_blocks(model).values())
    assert all(b.fusion == "sum" and b.gate == "hardsigmoid" and b.reduction == 8 for b in blocks)
    model.double()
    assert all(p.dtype == torch.float64 for b in blocks for p in b.parameters())
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_predicate_inserts_after_any_module_1d() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 16, 3), nn.GroupNorm(4, 16))
    insert_attention(model, "eca", predicate=lambda name, m: isinstance(m, (nn.BatchNorm1d, nn.GroupNorm)))
    assert set(attention_blocks(model)) == {"1.attention", "4.attention"}
    assert model[1].attention.channels == 8 and model[4].attention.channels == 16
    x = torch.randn(3, 2, 20)
    # ``.forward`` bypasses hooks: the expected value is built by hand, the block applied explicitly.
    h = model[2](model[1].attention(model[1].forward(model[0](x))))
    expected = model[4].attention(model[4].forward(model[3](h)))
    torch.testing.assert_close(model(x), expected)


def test_predicate_with_explicit_channels() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    model = nn.Sequential(nn.Conv2d(3, 8, 1), Scale())
    with pytest.raises(ValueError, match="cannot tell the output channels of Scale"):
        insert_attention(model, "se", predicate=lambda name, m: isinstance(m, Scale))
    insert_attention(model, "se", predicate=lambda name, m: isinstance(m, Scale), channels=lambda m: 8)
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 8, 4, 4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="no torchvision ResNet blocks"):
        insert_attention(nn.Sequential(nn.Conv2d(3, 8, 1)))
    model = insert_attention(resnet18(num_classes=10), "se")
    with pytest.raises(ValueError, match="already has an 'attention'"):
        insert_attention(model, "se")
    with pytest.raises(ValueError, match="unknown attention 'sse'"):
        insert_attention(resnet18(num_classes=10), "sse")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        insert_attention("resnet18")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="predicate"):
        insert_attention(resnet18(num_classes=10), predicate=3)  # type: ignore[arg-type]
