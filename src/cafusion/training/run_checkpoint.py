"""Crash-safe checkpoints: weights in safetensors, training state and config in sidecars.

A checkpoint for epoch E is three files in ``<run>/checkpoints/``: ``epoch-E.safetensors`` (model
weights), ``epoch-E.state.pt`` (optimizer, grad scaler, RNG states, counters; read back with
``weights_only=True``) and ``epoch-E.json`` (the run config). Each is written to a temporary file in
the same folder and renamed into place, and only then is the small pointer ``<run>/latest.json``
replaced. A crash or SIGKILL at any moment therefore leaves ``latest.json`` naming a complete,
consistent set; the older set is deleted only after the pointer has moved. The weights file is
written and read by ``cafusion.integrations.weights``, the one module for weights files.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cafusion._files import atomic_write, atomic_write_text
from cafusion.integrations.weights import WeightsError, read_safetensors, safetensors_bytes

POINTER = "latest.json"
CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not belong to this run."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns: everything needed to continue a run exactly."""

    weights: dict[str, Tensor]
    state: dict[str, Any]
    config: dict[str, Any]
    epoch: int
    path: Path
    model_spec: dict[str, Any] | None = None


def save_checkpoint(
    run_dir: str | Path,
    epoch: int,
    weights: dict[str, Tensor],
    state: dict[str, Any],
    config: dict[str, Any],
    model_spec: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint for ``epoch`` (number of finished epochs) and point ``latest.json`` at it.

    ``model_spec`` (how to rebuild the model) goes into the JSON sidecar, so that reading the model
    back needs neither the optimizer state nor unpickling.
    """
    run = Path(run_dir)
    stem = f"epoch-{epoch:04d}"
    folder = run / CHECKPOINT_DIR
    blob = safetensors_bytes(weights, metadata={"epoch": str(epoch)})
    paths = {
        "weights": folder / f"{stem}.safetensors",
        "state": folder / f"{stem}.state.pt",
        "config": folder / f"{stem}.json",
    }
    atomic_write(paths["weights"], lambda f: f.write(blob))
    atomic_write(paths["state"], lambda f: torch.save(state, f))
    sidecar: dict[str, Any] = {"format_version": FORMAT_VERSION, "epoch": epoch, "config": config}
    if model_spec is not None:
        sidecar["model_spec"] = model_spec
    atomic_write_text(paths["config"], json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    pointer = {"epoch": epoch, **{k: str(p.relative_to(run)) for k, p in paths.items()}}
    atomic_write_text(run / POINTER, json.dumps(pointer, indent=2) + "\n")
    for old in folder.glob("epoch-*"):
        if not old.name.startswith(stem + "."):
            old.unlink(missing_ok=True)
    return paths["weights"]


def resolve_checkpoint(path: str | Path) -> Path:
    """Map a run folder (through its ``latest.json``) or a ``.safetensors`` file to the weights file."""
    p = Path(path)
    if p.is_dir():
        pointer = p / POINTER
        if not pointer.is_file():
            raise CheckpointError(f"no checkpoint to resume from in {str(p)!r} (no {POINTER})")
        try:
            info = json.loads(pointer.read_text(encoding="utf-8"))
            return p / str(info["weights"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{str(pointer)!r} is not a checkpoint pointer: {exc!r}") from None
    if p.suffix == ".safetensors":
        return p
    raise CheckpointError(f"--resume wants a run folder or a .safetensors checkpoint, got {str(p)!r}")


def load_checkpoint(path: str | Path, *, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint (run folder or weights file); any missing or damaged part is a CheckpointError.

    ``with_state=False`` reads only the weights and the sidecar (``state`` is then empty), for
    readers such as ``cafusion inspect`` that need no optimizer.
    """
    weights_path = resolve_checkpoint(path)
    base = str(weights_path)[: -len(".safetensors")]
    state_path, config_path = Path(base + ".state.pt"), Path(base + ".json")
    for part in (weights_path, config_path, *([state_path] if with_state else [])):
        if not part.is_file():
            raise CheckpointError(f"checkpoint part {str(part)!r} is missing")
    try:
        weights = read_safetensors(weights_path)
    except WeightsError as exc:
        raise CheckpointError(f"cannot read checkpoint weights: {exc}") from None
    try:
        sidecar = json.loads(config_path.read_text(encoding="utf-8"))
        config, epoch = dict(sidecar["config"]), int(sidecar["epoch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read checkpoint config {str(config_path)!r}: {exc!r}") from None
    spec = sidecar.get("model_spec")
    state = _load_state(state_path) if with_state else {}
    if spec is None:  # checkpoints written before the sidecar carried it
        spec = state.get("model_spec")
    return Checkpoint(
        weights=weights,
        state=state,
        config=config,
        epoch=epoch,
        path=weights_path,
        model_spec=dict(spec) if isinstance(spec, dict) else None,
    )


def _load_state(state_path: Path) -> dict[str, Any]:
    """The training state; a truncated or corrupt file names itself and what is left to resume from."""
    damaged = f"checkpoint state {str(state_path)!r} is corrupt or truncated"
    if state_path.stat().st_size == 0:
        raise CheckpointError(f"{damaged} (0 bytes); {_fallback(state_path)}")
    if not zipfile.is_zipfile(state_path):  # torch.save writes a zip archive; a cut one has no directory
        raise CheckpointError(f"{damaged} (not a complete torch file); {_fallback(state_path)}")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (zip, pickle, unpickling policy)
        raise CheckpointError(f"{damaged}: {_first_line(exc)}; {_fallback(state_path)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state {str(state_path)!r} is not a dict")
    return state


def _fallback(state_path: Path) -> str:
    """Where else to resume from: another complete checkpoint in the folder, if one is kept."""
    stem = state_path.name[: -len(".state.pt")]
    others = sorted(
        p.with_name(p.name[: -len(".state.pt")] + ".safetensors")
        for p in state_path.parent.glob("epoch-*.state.pt")
        if not p.name.startswith(stem + ".") and zipfile.is_zipfile(p)
    )
    others = [p for p in others if p.is_file() and p.with_suffix(".json").is_file()]
    if others:
        return f"the previous checkpoint is {str(others[-1])!r}: resume from it with --resume {str(others[-1])!r}"
    return "no earlier checkpoint is kept in that folder: start the run again without --resume"


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text, or its type when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
