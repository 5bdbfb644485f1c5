"""SmallCNN and the model checkpoint format (safetensors + JSON sidecar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cafusion import ChannelAttentionFusionT, list_attentions
from cafusion.models import SmallCNN
from cafusion.models.checkpoint import (
    ModelCheckpointError,
    NoModelSpecError,
    load_model,
    model_spec,
    save_model,
    sidecar_path,
)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_small_cnn_runs_on_every_rank(dims: int) -> None:
    model = SmallCNN(2, 5, dims=dims, widths=(4, 8, 8))
    out = model(torch.randn(3, 2, *([6] * dims)))
    assert out.shape == (3, 5)
    blocks = [m for m in model.modules() if isinstance(m, ChannelAttentionFusionT)]
    assert [b.channels for b in blocks] == [4, 8, 8]


@pytest.mark.parametrize("name", list_attentions())
def test_small_cnn_takes_every_registry_block(name: str) -> None:
    model = SmallCNN(1, 3, attention=name, widths=(8,))
    assert model(torch.randn(2, 1, 5, 5)).shape == (2, 3)
    assert model.config["attention"] == name


def test_small_cnn_passes_attention_kwargs_to_the_block() -> None:
    model = SmallCNN(1, 3, attention="caft", attention_kwargs={"learnable_temperature": True, "temperature": 2.0})
    blocks = [m for m in model.modules() if isinstance(m, ChannelAttentionFusionT)]
    assert all(b.learnable_temperature for b in blocks)
    assert all(torch.allclose(b.get_T(), torch.tensor(2.0)) for b in blocks)


def test_small_cnn_backward_reaches_the_router_and_temperature() -> None:
    model = SmallCNN(1, 3, attention_kwargs={"learnable_temperature": True}, widths=(8,))
    model(torch.randn(4, 1, 6, 6)).sum().backward()
    block = next(m for m in model.modules() if isinstance(m, ChannelAttentionFusionT))
    assert block.t_raw.grad is not None and block.t_raw.grad != 0
    assert block.fusion_router is not None
    assert block.fusion_router[2].bias.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dims": 4}, ValueError, "dims must be 1, 2 or 3"),
        ({"dims": True}, ValueError, "dims"),
        ({"widths": ()}, TypeError, "widths"),
        ({"widths": (8, 0)}, ValueError, r"widths\[1\]"),
        ({"attention": "nope"}, ValueError, "nope"),
        ({"attention": 3}, TypeError, "attention"),
        ({"attention_kwargs": [1]}, TypeError, "attention_kwargs"),
        ({"in_channels": 0}, ValueError, "in_channels"),
    ],
)
def test_small_cnn_rejects_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {"in_channels": 1, "num_classes": 2, **kwargs}
    with pytest.raises(error, match=match):
        SmallCNN(**args)  # type: ignore[arg-type]


def _trained_like(model: nn.Module) -> nn.Module:
    """Move every parameter and buffer off its init so a round trip cannot pass by re-initialising."""
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
    return model


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = _trained_like(SmallCNN(1, 4, attention_kwargs={"learnable_temperature": True}, widths=(8, 8))).eval()
    path = save_model(model, tmp_path / "m.safetensors", extra={"note": "x"})
    loaded, sidecar = load_model(path)
    assert sidecar["model"] == model_spec(model)
    assert sidecar["extra"] == {"note": "x"}
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(loaded.eval()(x), model(x))


def test_checkpoint_errors_are_one_line_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelCheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    path = save_model(SmallCNN(1, 4, widths=(8,)), tmp_path / "m.safetensors")

    spec = json.loads(sidecar_path(path).read_text())
    spec["model"]["kwargs"]["widths"] = [16]
    sidecar_path(path).write_text(json.dumps(spec))
    with pytest.raises(ModelCheckpointError, match="does not fit SmallCNN") as info:
        load_model(path)
    assert "\n" not in str(info.value)

    spec["model"]["kwargs"]["widths"] = [8]
    spec["model"]["kwargs"]["attention_kwargs"] = {"fusion": "sum"}
    sidecar_path(path).write_text(json.dumps(spec))
    with pytest.raises(ModelCheckpointError, match="fusion='softmax'"):  # the block's own explanation
        load_model(path)

    sidecar_path(path).write_text("{not json")
    with pytest.raises(ModelCheckpointError, match="not valid JSON"):
        load_model(path)
    sidecar_path(path).write_text(json.dumps({"config": {"model": "small_cnn"}}))
    with pytest.raises(NoModelSpecError):
        load_model(path)

    spec["model"]["kwargs"]["attention_kwargs"] = {}
    sidecar_path(path).write_text(json.dumps(spec))
    path.write_bytes(b"\x00garbage" * 8)
    with pytest.raises(ModelCheckpointError, match="not a readable safetensors"):
        load_model(path)
    sidecar_path(path).unlink()
    with pytest.raises(ModelCheckpointError, match="sidecar"):
        load_model(path)


def test_model_spec_refuses_models_it_cannot_rebuild(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Linear"):
        save_model(nn.Linear(2, 2), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_model(SmallCNN(1, 2, widths=(4,)), tmp_path / "m.pt")
