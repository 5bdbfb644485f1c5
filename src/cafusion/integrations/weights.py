"""The one module that reads and writes weights files: safetensors (``.safetensors``) or torch's format.

Everything that stores a state_dict goes through here: the public :func:`save_weights` /
:func:`load_weights`, the demo's and ``inspect``'s model checkpoints (``cafusion.models.checkpoint``)
and the trainer's checkpoints (``cafusion.training.run_checkpoint``). So there is one rule for what is
written (detached, contiguous CPU tensors that share no memory, which safetensors requires) and one
error for a file that cannot be read (:class:`WeightsError`, one line naming the file). torch files
are read with ``weights_only=True``: a weights file never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cafusion import __version__
from cafusion._files import atomic_write, atomic_write_bytes

SAFETENSORS_SUFFIX = ".safetensors"


class WeightsError(ValueError):
    """A weights file that exists but cannot be read (damaged, truncated, or not a weights file)."""


def _is_safetensors(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix == SAFETENSORS_SUFFIX


def storable(state: dict[str, Any]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors with no two sharing memory: what safetensors accepts.

    Tied weights are written twice (and both keys load back); 0-d tensors such as the temperature
    ``T`` / ``t_raw`` are stored as scalars, which safetensors supports.
    """
    seen: set[tuple[int, int]] = set()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().cpu()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(storage)
        out[key] = tensor
    return out


def _header(metadata: dict[str, str] | None) -> dict[str, str]:
    return {"format": "pt", "cafusion_version": __version__, **(metadata or {})}


def safetensors_bytes(state: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file for ``state`` as bytes (for callers that write atomically themselves)."""
    from safetensors.torch import save

    return _sorted_metadata(bytes(save(storable(state), metadata=_header(metadata))))


def _sorted_metadata(blob: bytes) -> bytes:
    """The same file with its ``__metadata__`` keys sorted: safetensors writes them in hash-map order,
    which changes from process to process, and a checkpoint must be bit-identical for the same run."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" not in header:
        return blob
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def write_safetensors(
    state: dict[str, Any], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` to ``path`` in safetensors format; ``metadata`` (str -> str) goes into the header."""
    target = Path(path)
    atomic_write_bytes(target, safetensors_bytes(state, metadata))
    return target


def read_safetensors(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file; a damaged or foreign file is a one-line :class:`WeightsError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"{str(path)!r} is not a readable safetensors file: {reason}") from None


def save_weights(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path``: safetensors for ``.safetensors``, else ``torch.save``.

    ``metadata`` (str -> str) goes into the safetensors header (with ``cafusion_version``); a torch
    file stores the plain state_dict. Returns the path written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    target = Path(path)
    if _is_safetensors(target):
        return write_safetensors(model.state_dict(), target, metadata)
    if metadata is not None:
        raise ValueError("metadata is only stored in .safetensors files")
    state = model.state_dict()
    atomic_write(target, lambda f: torch.save(state, f))
    return target


def read_weights(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The state_dict stored at ``path`` (either format), without a model."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no weights file at {str(source)!r}")
    if _is_safetensors(source):
        return read_safetensors(source, map_location)
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
