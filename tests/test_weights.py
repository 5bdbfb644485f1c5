"""Weights to and from safetensors and torch files; configuration mismatches explained on load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from cafusion import ChannelAttentionFusionT, ChannelAttentionFusionTLayer
from cafusion.integrations.torchvision import insert_attention
from cafusion.integrations.weights import load_weights, read_weights, save_weights

FORMATS = ["w.safetensors", "w.pt"]


def perturbed(module: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
        for b in module.buffers():
            if b.is_floating_point():
                b.mul_(1.7)
    return module


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.parametrize("learnable", [False, True])
def test_round_trip_restores_every_tensor_including_the_0d_temperature(
    tmp_path: Path, filename: str, learnable: bool
) -> None:
    source = perturbed(ChannelAttentionFusionTLayer(16, learnable_temperature=learnable, temperature=2.0))
    path = save_weights(source, tmp_path / "sub" / filename)
    target = ChannelAttentionFusionTLayer(16, learnable_temperature=learnable, temperature=2.0)
    assert load_weights(target, path) is target
    for (k, a), (k2, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert target.get_T().dim() == 0
    torch.testing.assert_close(target.get_T(), source.get_T())
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("filename", FORMATS)
def test_resnet_round_trip(tmp_path: Path, filename: str) -> None:
    def build() -> nn.Module:
        return insert_attention(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), "caft")

    source = perturbed(build()).eval()
    path = save_weights(source, tmp_path / filename)
    target = load_weights(build(), path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_safetensors_handles_tied_and_strided_tensors(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight  # tied
    model.register_buffer("strided", torch.arange(12.0).view(3, 4).t())
    path = save_weights(model, tmp_path / "tied.safetensors", metadata={"note": "tied"})
    state = read_weights(path)
    torch.testing.assert_close(state["0.weight"], state["1.weight"])
    torch.testing.assert_close(state["strided"], model.strided)
    with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
        meta = f.metadata()
    assert meta["note"] == "tied" and "cafusion_version" in meta


class Payload:
    """An arbitrary object: unpickling it would run code, so weights_only must refuse it."""


def test_torch_files_are_read_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(Exception, match="weights_only"):
        read_weights(path)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        read_weights(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        read_weights(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="metadata"):
        save_weights(nn.Linear(2, 2), tmp_path / "m.pt", metadata={"a": "b"})


MISMATCHES = [
    pytest.param(
        dict(fusion="softmax"),
        dict(fusion="sum"),
        "checkpoint was saved with fusion='softmax' but this block has fusion='sum'",
        id="softmax-into-sum",
    ),
    pytest.param(
        dict(fusion="sum"),
        dict(fusion="softmax"),
        "checkpoint was saved with fusion='sum' but this block has fusion='softmax'",
        id="sum-into-softmax",
    ),
    pytest.param(
        dict(reduction=4),
        dict(reduction=4, channels=32),
        "checkpoint has channels=16, hidden=4 but this block has channels=32, hidden=8",
        id="channels",
    ),
    pytest.param(
        dict(learnable_temperature=False),
        dict(learnable_temperature=True),
        "checkpoint has a fixed (buffer T) temperature but this block's is learnable (t_raw)",
        id="fixed-into-learnable",
    ),
    pytest.param(
        dict(learnable_temperature=True),
        dict(learnable_temperature=False),
        "checkpoint has a learnable (t_raw) temperature but this block's is fixed (buffer T)",
        id="learnable-into-fixed",
    ),
]


def block(cls: type[ChannelAttentionFusionT], kw: dict[str, object]) -> ChannelAttentionFusionT:
    kw = dict(kw)
    return cls(kw.pop("channels", 16), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.parametrize(("saved", "loading", "message"), MISMATCHES)
@pytest.mark.parametrize("cls", [ChannelAttentionFusionTLayer, ChannelAttentionFusionT])
def test_config_mismatch_says_what_differs(
    tmp_path: Path,
    filename: str,
    saved: dict[str, object],
    loading: dict[str, object],
    message: str,
    cls: type[ChannelAttentionFusionT],
) -> None:
    path = save_weights(block(cls, saved), tmp_path / filename)
    target = block(cls, loading)
    with pytest.raises(RuntimeError) as err:
        load_weights(target, path)
    assert message in str(err.value)
    assert f"{cls.__name__} at '<root>'" in str(err.value)


@pytest.mark.parametrize("filename", FORMATS)
def test_mismatch_inside_a_model_names_the_block(tmp_path: Path, filename: str) -> None:
    path = save_weights(insert_attention(ResNet(BasicBlock, [1, 1, 1, 1]), "caft"), tmp_path / filename)
    target = insert_attention(ResNet(BasicBlock, [1, 1, 1, 1]), "caft_sum")
    with pytest.raises(
        RuntimeError, match=r"at 'layer1\.0\.bn2\.attention': checkpoint was saved with fusion='softmax'"
    ):
        load_weights(target, path)


@pytest.mark.parametrize("filename", FORMATS)
def test_backbone_checkpoint_without_the_blocks(tmp_path: Path, filename: str) -> None:
    """Pretrained weights of the plain network: strict lists only the new keys, non-strict loads the rest."""
    torch.manual_seed(0)
    backbone = perturbed(ResNet(BasicBlock, [1, 1, 1, 1]))
    path = save_weights(backbone, tmp_path / filename)
    target = insert_attention(ResNet(BasicBlock, [1, 1, 1, 1]), "caft")
    with pytest.raises(RuntimeError, match="Missing key") as err:
        load_weights(target, path)
    assert "checkpoint was saved" not in str(err.value)  # no made-up configuration for absent blocks
    load_weights(target, path, strict=False)
    torch.testing.assert_close(target.conv1.weight, backbone.conv1.weight, rtol=0, atol=0)


def test_safetensors_bytes_are_the_same_in_every_process() -> None:
    """safetensors writes metadata in hash-map order (random per process); ours sorts it, and the file stays valid."""
    from safetensors.torch import load

    code = (
        "import sys, torch\n"
        "from cafusion.integrations.weights import safetensors_bytes\n"
        "meta = {k: k * 2 for k in 'qwertyuiop'}\n"
        "sys.stdout.buffer.write(safetensors_bytes({'w': torch.arange(6.0).view(2, 3)}, meta))\n"
    )
    blobs = {subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout for _ in range(3)}
    assert len(blobs) == 1
    (blob,) = blobs
    assert torch.equal(load(blob)["w"], torch.arange(6.0).view(2, 3))
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
