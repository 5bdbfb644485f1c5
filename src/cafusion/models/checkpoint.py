"""Model checkpoints: weights in a safetensors file, the model's constructor config in a JSON sidecar.

``model.safetensors`` + ``model.json`` (same stem). The sidecar holds ``{"model": {"name":
"SmallCNN", "kwargs": {...}}}`` so a checkpoint rebuilds its own architecture; a training run may
put the same ``"model"`` entry inside its ``"config"`` and ``load_model`` finds it there too.
Every failure (missing, corrupt, other architecture) is a ``ModelCheckpointError`` with one-line text.
The weights themselves are read and written by ``cafusion.integrations.weights``, like every weights file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from cafusion._files import atomic_write_text
from cafusion.integrations.weights import WeightsError, read_safetensors, write_safetensors
from cafusion.models.small_cnn import SmallCNN
from cafusion.models.timeseries import FCN, ResNet

FORMAT_VERSION = 1
LOOKS_LIKE = (
    "a cafusion checkpoint is a .safetensors file with a .json sidecar of the same name "
    "(cafusion demo, save_model), or a 'cafusion train' run folder"
)
MODELS: dict[str, type[nn.Module]] = {"SmallCNN": SmallCNN, "FCN": FCN, "ResNet": ResNet}


class ModelCheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model its sidecar names."""


class NoModelSpecError(ModelCheckpointError):
    """The sidecar does not describe the model (e.g. a ``cafusion train`` checkpoint, whose state does)."""


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"name", "kwargs"}`` that rebuilds ``model``; only models with a ``config`` dict qualify."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if name not in MODELS or not isinstance(config, dict):
        raise TypeError(f"cannot describe a {name} for a checkpoint; supported models: {sorted(MODELS)}")
    return {"name": name, "kwargs": json.loads(json.dumps(config))}


def build_model(spec: Any) -> nn.Module:
    """The model a ``model_spec`` describes, freshly initialised."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs"), dict):
        raise ModelCheckpointError(f"model spec must be {{'name': str, 'kwargs': dict}}, got {spec!r}")
    if spec["name"] not in MODELS:
        raise ModelCheckpointError(f"unknown model {spec['name']!r}; known: {sorted(MODELS)}")
    try:
        return MODELS[spec["name"]](**spec["kwargs"])
    except (TypeError, ValueError) as exc:
        raise ModelCheckpointError(f"cannot build {spec['name']} from {spec['kwargs']}: {exc}") from None


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_model(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and its sidecar; ``extra`` is stored alongside (e.g. metrics)."""
    weights = Path(path)
    if weights.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {str(weights)!r}")
    spec = model_spec(model)
    write_safetensors(model.state_dict(), weights)
    sidecar = {"format_version": FORMAT_VERSION, "model": spec, "extra": extra or {}}
    atomic_write_text(sidecar_path(weights), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return weights


def _find_spec(sidecar: Any) -> Any:
    """The ``{"name", "kwargs"}`` entry at the top level or inside ``config``; None if there is none."""
    if isinstance(sidecar, dict):
        for holder in (sidecar, sidecar.get("config")):
            if isinstance(holder, dict) and isinstance(holder.get("model"), dict):
                return holder["model"]
    return None


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the sidecar and load the weights strictly; returns (model, sidecar)."""
    weights = Path(path)
    if weights.is_dir():  # a training run folder: follow its latest.json pointer
        pointer = weights / "latest.json"
        try:
            weights = weights / str(json.loads(pointer.read_text(encoding="utf-8"))["weights"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelCheckpointError(
                f"{str(path)!r} is a folder without a readable latest.json, so not a run folder; {LOOKS_LIKE}"
            ) from None
    if not weights.is_file():
        raise ModelCheckpointError(f"checkpoint {str(weights)!r} does not exist")
    if weights.suffix != ".safetensors":
        raise ModelCheckpointError(f"{str(weights)!r} is not a cafusion checkpoint; {LOOKS_LIKE}")
    meta = sidecar_path(weights)
    if not meta.is_file():
        raise ModelCheckpointError(
            f"{str(weights)!r} is not a cafusion checkpoint: its sidecar {meta.name!r} is missing; {LOOKS_LIKE}"
        )
    try:
        sidecar = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelCheckpointError(f"checkpoint sidecar {str(meta)!r} is not valid JSON: {exc}") from None
    spec = _find_spec(sidecar)
    if spec is None:
        raise NoModelSpecError(f"checkpoint sidecar {str(meta)!r} has no 'model' entry")
    model = build_model(spec)
    try:
        state = read_safetensors(weights)
    except WeightsError as exc:
        raise ModelCheckpointError(f"checkpoint {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelCheckpointError(
            f"checkpoint {str(weights)!r} does not fit {spec['name']}({spec['kwargs']}): {_first_problem(str(exc))}"
        ) from None
    return model, sidecar


def _first_problem(message: str) -> str:
    """torch lists every key over many lines; keep the block's own explanation if there is one."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    explained = [line for line in lines if "checkpoint has" in line or "was saved with" in line]
    return " ".join(explained[:1] or lines[1:3] or lines)[:400]
