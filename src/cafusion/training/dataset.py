"""The in-memory data set every loader returns (``Dataset``) and the one error they raise.

A leaf: the loaders (``data.py`` for files and folders, ``ucr.py`` for the UCR/UEA archives) both
build these, and neither needs the other to do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


class DataError(ValueError):
    """A data path or file that cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class Dataset:
    """Samples ``x`` (N, C, *spatial) float32 and labels ``y`` (N,) int64 in 0..num_classes-1.

    ``lengths`` (N,) int64, for series of unequal lengths: x is zero-padded at the end to the longest.
    """

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    lengths: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def spatial_dims(self) -> int:
        return self.x.dim() - 2

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Tensor) -> Dataset:
        return Dataset(
            self.x[index], self.y[index], self.classes, None if self.lengths is None else self.lengths[index]
        )

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x, y, lengths) of the samples ``index``; padded series are cut to the batch's longest."""
        if self.lengths is None:
            return self.x[index], self.y[index], None
        lengths = self.lengths[index]
        longest = int(lengths.max()) if lengths.numel() else self.x.shape[-1]
        return self.x[index, ..., :longest], self.y[index], lengths
