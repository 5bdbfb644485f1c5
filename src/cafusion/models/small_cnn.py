"""SmallCNN: a few conv-bn-relu stages, each followed by an attention block chosen by registry name.

It exists so that attention blocks can be compared on equal footing (same stem, same head, same
seed): only the block after each stage changes. ``dims`` picks Conv1d/2d/3d so that the same model
also exercises the block on sequences and volumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cafusion import _validation as check

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

    def forward(self, x: Tensor) -> Tensor:
        for i, stage in enumerate(self.stages):
            if i > 0 and min(x.shape[2:]) >= 2:
                x = self.pool(x)
            x = stage(x)
        logits: Tensor = self.head(torch.flatten(x.mean(dim=tuple(range(2, x.dim()))), 1))
        return logits
