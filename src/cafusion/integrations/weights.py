"""Save and load a model's weights: safetensors (``.safetensors``) or torch's format (anything else).

Both paths end in ``model.load_state_dict(..., strict=strict)``, so a checkpoint saved with another
block configuration (other fusion, channels, temperature mode, bias) fails with the block's own
explanation of what differs, not only torch's list of raw keys. torch files are read with
``weights_only=True``: a weights file never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cafusion import __version__

SAFETENSORS_SUFFIX = ".safetensors"


def _is_safetensors(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix == SAFETENSORS_SUFFIX


def _unshared(state: dict[str, Any]) -> dict[str, Tensor]:
    """Contiguous tensors with no two sharing memory: safetensors refuses shared or strided storage.

    Tied weights are written twice (and both keys load back); 0-d tensors such as the temperature
    ``T`` / ``t_raw`` are stored as scalars, which safetensors supports.
    """
    seen: set[tuple[int, int]] = set()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(storage)
        out[key] = tensor
    return out


def save_weights(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path``: safetensors for ``.safetensors``, else ``torch.save``.

    ``metadata`` (str -> str) goes into the safetensors header (with ``cafusion_version``); a torch
    file stores the plain state_dict. Returns the path written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if _is_safetensors(target):
        from safetensors.torch import save_file

        header = {"format": "pt", "cafusion_version": __version__, **(metadata or {})}
        save_file(_unshared(state), str(target), metadata=header)
    else:
        if metadata is not None:
            raise ValueError("metadata is only stored in .safetensors files")
        torch.save(state, target)
    return target


def read_weights(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The state_dict stored at ``path`` (either format), without a model."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no weights file at {str(source)!r}")
    if _is_safetensors(source):
        from safetensors.torch import load_file

        return load_file(str(source), device=str(map_location))
    state = torch.load(source, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{str(source)!r} holds a {type(state).__name__}, not a state_dict")
    return state


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (in place) and return it.

    With ``strict`` (default) any difference in keys or shapes raises RuntimeError; the message
    starts with what differs in each block's configuration when a block can tell.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model.load_state_dict(read_weights(path, map_location), strict=strict)
    return model
