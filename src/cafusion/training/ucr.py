"""UCR/UEA time-series classification data sets from the copies bundled inside the ``aeon`` package.

``ucr:NAME`` reads ``NAME`` with aeon's own loader from aeon's bundled data folder, so nothing is
ever downloaded: a name aeon does not ship is refused with the list of those it does. The published
train/test split is kept.

Normalisation (``norm``) follows Fawaz et al. 2019 by default (``"auto"``): their code
(github.com/hfawaz/dl-4-tsc, ``utils/utils.py``) z-normalises each univariate series
(``read_dataset``/``read_all_datasets``, the UCR 2018 branch) but feeds the multivariate archive as
stored (the ``mts_archive`` branch loads the arrays ``transform_mts_to_ucr_format`` wrote, which
only resamples every series to the longest length). So ``"auto"`` z-normalises univariate sets per
series and keeps a multivariate set's values; ``"series"`` z-normalises every series per channel
over time (a constant channel becomes zeros) and ``"none"`` keeps the archive's values everywhere.

Unequal-length sets (JapaneseVowels) are zero-padded at the end to the longest series, after each
series is normalised over its own valid length. ``UCRData.lengths_*`` keep the true lengths and
``padded`` says that padding happened; the ``Dataset``s then carry the lengths too, so ``cafusion
train`` cuts each batch to its longest series and gives the model the lengths (masked pooling).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cafusion.training.data import DataError, Dataset

PREFIX = "ucr:"
# "auto": as Fawaz et al. 2019 (univariate: per series; multivariate: the archive's values).
NORMS = ("auto", "series", "none")


@dataclass(frozen=True)
class UCRData:
    """A data set's published split as two in-memory ``Dataset``s, with the true series lengths."""

    name: str
    train: Dataset
    test: Dataset
    lengths_train: Tensor
    lengths_test: Tensor
    padded: bool
    norm: str = "series"  # what was applied: "series" (z-normalised per series and channel) or "none"

    @property
    def znorm(self) -> bool:
        return self.norm == "series"

    def describe(self) -> str:
        x = self.train.x
        kind = "multivariate" if x.shape[1] > 1 else "univariate"
        text = (
            f"{self.name}: {len(self.train)} train / {len(self.test)} test series, {kind} ({x.shape[1]} channel(s)), "
            f"length {x.shape[2]}, {self.train.num_classes} classes"
        )
        if self.znorm:
            text += "; z-normalised per series"
        else:
            text += "; values as stored in the archive (not z-normalised)"
        if self.padded:
            lo = int(min(self.lengths_train.min(), self.lengths_test.min()))
            text += f"; unequal lengths {lo}..{x.shape[2]} zero-padded at the end to {x.shape[2]}"
        return text


def _data_dir() -> Path:
    try:
        import aeon.datasets
    except ImportError as exc:
        raise DataError(f"ucr: data needs the aeon package: pip install 'cafusion[timeseries]' ({exc})") from None
    return Path(aeon.datasets.__file__).parent / "data"


def bundled_datasets() -> list[str]:
    """Names of the classification sets that aeon ships with both a TRAIN and a TEST file."""
    root = _data_dir()
    names = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        train, test = folder / f"{folder.name}_TRAIN.ts", folder / f"{folder.name}_TEST.ts"
        if train.is_file() and test.is_file() and _is_classification(train):
            names.append(folder.name)
    return names


def _is_classification(path: Path) -> bool:
    """A .ts header says ``@classLabel true`` for classification, ``@targetLabel true`` for regression."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip().lower()
            if text.startswith("@classlabel"):
                return text.split()[1:2] == ["true"]
            if text.startswith("@data"):
                break
    return False


def check_norm(norm: object, flag: str = "norm") -> str:
    """``norm`` if it is one of :data:`NORMS`, else a one-line ValueError naming ``flag``."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"{flag} must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def resolve_norm(norm: str, channels: int) -> str:
    """The normalisation ``norm`` means for a set of ``channels`` channels: ``"series"`` or ``"none"``."""
    if check_norm(norm) == "auto":
        return "series" if channels == 1 else "none"
    return norm


def load_ucr(name: str, norm: str = "auto") -> UCRData:
    """Load the bundled set ``name`` (case as aeon spells it; other cases are matched too).

    ``norm``: ``"auto"`` (as Fawaz et al. 2019: univariate sets z-normalised per series, multivariate
    ones as stored), ``"series"`` (every set z-normalised per series and channel) or ``"none"`` (the
    values as the archive stores them: the univariate UCR files are already z-normalised; the
    multivariate UEA ones are not, and their channel levels can carry the class).
    """
    check_norm(norm)
    known = bundled_datasets()
    match = {n.lower(): n for n in known}.get(name.lower())
    if match is None:
        raise DataError(f"unknown dataset 'ucr:{name}': aeon bundles only {known} (nothing is downloaded at run time)")
    from aeon.datasets import load_classification

    root = str(_data_dir())
    try:
        raw_train, y_train = load_classification(match, split="train", extract_path=root)
        raw_test, y_test = load_classification(match, split="test", extract_path=root)
    except Exception as exc:  # aeon raises several kinds on a malformed file
        raise DataError(f"aeon cannot read 'ucr:{match}': {exc}".splitlines()[0]) from None
    classes = _class_order(y_train)
    unseen = sorted(set(map(str, y_test)) - set(classes))
    if unseen:
        raise DataError(f"'ucr:{match}': test labels {unseen} do not occur in the training split")
    series_train, series_test = _as_series(raw_train), _as_series(raw_test)
    length = max(s.shape[1] for s in series_train + series_test)
    applied = resolve_norm(norm, series_train[0].shape[0])
    x_train, len_train = _stack(series_train, length, applied == "series")
    x_test, len_test = _stack(series_test, length, applied == "series")
    padded = bool((len_train != length).any() or (len_test != length).any())
    index = {c: i for i, c in enumerate(classes)}
    return UCRData(
        name=match,
        train=Dataset(x_train, _labels(y_train, index), classes, len_train if padded else None),
        test=Dataset(x_test, _labels(y_test, index), classes, len_test if padded else None),
        lengths_train=len_train,
        lengths_test=len_test,
        padded=padded,
        norm=applied,
    )


def _class_order(labels: Any) -> tuple[str, ...]:
    """Sorted class names; numerically when every label is a number ('2' after '1', '10' after '9')."""
    names = sorted({str(v) for v in labels})
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(names)


def _labels(labels: Any, index: dict[str, int]) -> Tensor:
    return torch.tensor([index[str(v)] for v in labels], dtype=torch.int64)


def _as_series(raw: Any) -> list[np.ndarray]:
    """aeon gives an (N, C, L) array, or a list of (C, L_i) arrays for unequal lengths."""
    return [np.asarray(s, dtype=np.float64) for s in raw]


def _stack(series: list[np.ndarray], length: int, znorm: bool = True) -> tuple[Tensor, Tensor]:
    """Z-normalise each series per channel over its own length, then zero-pad the end to ``length``."""
    out = np.zeros((len(series), series[0].shape[0], length), dtype=np.float32)
    lengths = np.zeros(len(series), dtype=np.int64)
    for i, s in enumerate(series):
        if not np.isfinite(s).all():
            raise DataError("series with missing values are not supported (aeon marks them as NaN)")
        out[i, :, : s.shape[1]] = znormalise(s) if znorm else s
        lengths[i] = s.shape[1]
    return torch.from_numpy(out), torch.from_numpy(lengths)


def znormalise(series: np.ndarray) -> np.ndarray:
    """(C, L) -> each channel minus its mean, over its standard deviation (a flat channel -> zeros)."""
    mean = series.mean(axis=1, keepdims=True)
    std = series.std(axis=1, keepdims=True)
    result: np.ndarray = (series - mean) / np.where(std > 1e-8, std, 1.0)
    return result
