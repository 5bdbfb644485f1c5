"""SmallCNN: a few conv-bn-relu stages, each followed by an attention block chosen by registry name.

It exists so that attention blocks can be compared on equal footing (same stem, same head, same
seed): only the block after each stage changes. ``dims`` picks Conv1d/2d/3d so that the same model
also exercises the block on sequences and volumes.

A 1D model takes ``forward(x, lengths)`` for batches of sequences padded at the end; in eval mode each
sequence then gets the logits it would get alone, unpadded (see ``SmallCNN.forward``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cafusion import _validation as check
from cafusion import masking

_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _attention(name: str, channels: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the block through the registry, imported late so the registry may import the models."""
    from cafusion.layers.registry import create_attention

    return create_attention(name, channels, **dict(kwargs))


class SmallCNN(nn.Module):
    """(B, in_channels, *spatial) -> (B, num_classes) logits; one attention block after every stage.

    Stages after the first halve the spatial size with max pooling (if it is at least 2), so an
    8x8 digit or a 28x28 image both work. ``config`` holds the constructor arguments, which is what a
    checkpoint needs to rebuild the model.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "caft",
        attention_kwargs: Mapping[str, Any] | None = None,
        dims: int = 2,
        widths: Sequence[int] = (32, 64),
    ) -> None:
        super().__init__()
        check.positive_int("in_channels", in_channels)
        check.positive_int("num_classes", num_classes)
        if isinstance(dims, bool) or dims not in _CONV:
            raise ValueError(f"dims must be 1, 2 or 3, got {dims!r}")
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
            raise TypeError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        widths = tuple(check.positive_int(f"widths[{i}]", w) for i, w in enumerate(widths))
        if not isinstance(attention, str):
            raise TypeError(f"attention must be a registry name (str), got {attention!r}")
        if attention_kwargs is not None and not isinstance(attention_kwargs, Mapping):
            raise TypeError(f"attention_kwargs must be a mapping or None, got {type(attention_kwargs).__name__}")
        kwargs = dict(attention_kwargs or {})
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "attention": attention,
            "attention_kwargs": kwargs,
            "dims": dims,
            "widths": list(widths),
        }
        self.dims = dims
        self.stages = nn.ModuleList()
        prev = in_channels
        for width in widths:
            self.stages.append(
                nn.Sequential(
                    _CONV[dims](prev, width, kernel_size=3, padding=1, bias=False),
                    _BN[dims](width),
                    nn.ReLU(inplace=True),
                    _attention(attention, width, kwargs),
                )
            )
            prev = width
        self.pool = _POOL[dims](2)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``lengths`` (B,) (1D models only): real steps of each sequence of a batch padded at the end.

        Each stage's convolution sees zeros past a sequence's end (as its own zero padding gives a
        lone sequence), the attention block squeezes over real steps (``masking.padding``), max
        pooling never takes a padded step (so a sequence keeps floor(len / 2) steps, at least 1), and
        the head averages real steps only. Batch norm in training mode still counts the padding.
        """
        if lengths is not None:
            return self._forward_padded(x, lengths)
        for i, stage in enumerate(self.stages):
            if i > 0 and min(x.shape[2:]) >= 2:
                x = self.pool(x)
            x = stage(x)
        logits: Tensor = self.head(torch.flatten(x.mean(dim=tuple(range(2, x.dim()))), 1))
        return logits

    def _forward_padded(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.dims != 1:
            raise ValueError(f"lengths is for 1D models (sequences), this SmallCNN has dims={self.dims}")
        valid = masking.valid_mask(x, lengths)  # one-line errors before any work
        for i, stage in enumerate(self.stages):
            assert valid is not None
            keep = valid.unsqueeze(1)
            if i > 0 and x.shape[-1] >= 2:
                x = self.pool(torch.where(keep, x, torch.full((), float("-inf"), dtype=x.dtype, device=x.device)))
                lengths = torch.div(lengths, 2, rounding_mode="floor").clamp(min=1)
                valid = masking.valid_mask(x, lengths)
                assert valid is not None
                keep = valid.unsqueeze(1)
            with masking.padding(lengths):
                x = stage(torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)))
        assert valid is not None
        logits: Tensor = self.head(masking.masked_mean(x, valid, x.dtype))
        return logits
