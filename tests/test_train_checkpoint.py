"""Checkpoints: safetensors weights + sidecars, atomic replacement, the latest pointer, resume checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cafusion._files import atomic_write, atomic_write_text
from cafusion.training.config import TrainConfig, check_resume_compatible
from cafusion.training.run_checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model.state_dict(), {"optimizer": opt.state_dict(), "rng_cpu": [torch.get_rng_state()], "history": [1.5]}


def test_round_trip_and_latest_pointer(tmp_path: Path) -> None:
    config = TrainConfig(data="d.npz").as_dict()
    w1, s1 = _state(1)
    save_checkpoint(tmp_path, 1, w1, s1, config)
    w2, s2 = _state(2)
    path = save_checkpoint(tmp_path, 2, w2, s2, config)
    assert path == tmp_path / "checkpoints" / "epoch-0002.safetensors"
    # only the newest set is kept, and no temporary file is left behind
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-0002.json",
        "epoch-0002.safetensors",
        "epoch-0002.state.pt",
    ]
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 2
    for source in (tmp_path, path):
        ckpt = load_checkpoint(source)
        assert ckpt.epoch == 2 and ckpt.config == config and ckpt.path == path
        assert ckpt.weights.keys() == w2.keys()
        assert all(torch.equal(ckpt.weights[k], w2[k]) for k in w2)
        assert torch.equal(ckpt.state["rng_cpu"][0], s2["rng_cpu"][0])  # type: ignore[index]
        assert ckpt.state["optimizer"]["state"][0]["step"] == 1


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_text(target, "old")

    def explode(f: object) -> None:
        getattr(f, "write")(b"half")  # noqa: B009
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_missing_or_damaged_parts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path)
    w, s = _state(0)
    path = save_checkpoint(tmp_path, 1, w, s, {})
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint weights"):
        load_checkpoint(tmp_path)
    path.with_name("epoch-0001.state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"epoch-0001\.state\.pt' is missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"run folder or a \.safetensors"):
        load_checkpoint(tmp_path / "latest.json")


def test_truncated_state_names_the_file_and_the_previous_checkpoint(tmp_path: Path) -> None:
    w, s = _state(0)
    save_checkpoint(tmp_path / "old", 1, w, s, {})
    path = save_checkpoint(tmp_path, 2, w, s, {}, model_spec={"name": "small_cnn"})
    for part in (tmp_path / "old" / "checkpoints").iterdir():  # a kept earlier set, e.g. a user's copy
        (path.parent / part.name).write_bytes(part.read_bytes())
    state = path.with_name("epoch-0002.state.pt")
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"epoch-0002\.state\.pt' is corrupt or truncated") as info:
        load_checkpoint(tmp_path)
    assert "the previous checkpoint is" in str(info.value) and "epoch-0001.safetensors" in str(info.value)
    light = load_checkpoint(tmp_path, with_state=False)  # weights and sidecar only
    assert light.state == {} and light.model_spec == {"name": "small_cnn"} and light.epoch == 2


def test_resume_compatibility() -> None:
    stored = TrainConfig(data="a", attention="caft", lr=0.01).validate().as_dict()
    check_resume_compatible(TrainConfig(data="a", lr=0.01, epochs=50, out="elsewhere").validate(), stored, "c")
    with pytest.raises(ValueError, match="from another model: its attention is 'caft', this run has 'se'"):
        check_resume_compatible(TrainConfig(data="a", attention="se", lr=0.01).validate(), stored, "c")
    with pytest.raises(ValueError, match="from another model: its widths"):
        check_resume_compatible(TrainConfig(data="a", lr=0.01, widths=(8,)).validate(), stored, "c")
    with pytest.raises(ValueError, match=r"trained with --lr 0\.01, this run has 0\.02"):
        check_resume_compatible(TrainConfig(data="a", lr=0.02).validate(), stored, "c")
