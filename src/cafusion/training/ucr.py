"""UCR/UEA time-series classification data sets: bundled with aeon, from a local archive, or downloaded.

``ucr:NAME`` resolves, in this order, to: the copy bundled inside the ``aeon`` package; the archive
folder ``--archive DIR`` (or ``$CAFUSION_UCR_ARCHIVE``), which may hold the UCR 2018 layout
(``NAME/NAME_TRAIN.tsv``, label first, tab separated) or the UEA layout (``NAME/NAME_TRAIN.ts``),
read with aeon's loaders; a copy downloaded earlier into ``$CAFUSION_UCR_CACHE`` (default
``~/.cache/cafusion/ucr``); and last aeon's own download (Zenodo's tsml records) into that cache.
Offline, with no local copy, the error says so in one line and names ``--archive``. The published
train/test split is kept.

Missing values: a UCR 2018 ``.tsv`` row of a variable-length set ends in NaNs; those are cut off and
the series keeps its true length (lengths and masked pooling, as for the unequal-length UEA sets).
A NaN inside a series (a missing value) is filled by linear interpolation between its neighbours
(the end values carried outward), as the archive's own "adjusted" copies do; the loaded data's
``describe()`` says when that happened.

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

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cafusion.training.dataset import DataError, Dataset

ARCHIVE_ENV = "CAFUSION_UCR_ARCHIVE"
CACHE_ENV = "CAFUSION_UCR_CACHE"
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
    source: str = "aeon's bundled copy"
    interpolated: int = 0  # missing values filled by interpolation

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
        if self.interpolated:
            text += f"; {self.interpolated} missing values filled by linear interpolation"
        return f"{text} (from {self.source})"


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


def load_ucr(name: str, norm: str = "auto", archive: str | Path | None = None) -> UCRData:
    """Load the set ``name`` (any letter case) from the first place that has it (module docstring).

    ``archive``: a local archive folder (default ``$CAFUSION_UCR_ARCHIVE``).
    ``norm``: ``"auto"`` (as Fawaz et al. 2019: univariate sets z-normalised per series, multivariate
    ones as stored), ``"series"`` (every set z-normalised per series and channel) or ``"none"`` (the
    values as the archive stores them: the univariate UCR files are already z-normalised; the
    multivariate UEA ones are not, and their channel levels can carry the class).
    """
    check_norm(norm)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise DataError(f"ucr: wants a data set name such as ucr:GunPoint, got {name!r}")
    match, source, (raw_train, y_train), (raw_test, y_test) = _read(name, archive)
    series_train, filled_train = _complete(_as_series(raw_train))
    series_test, filled_test = _complete(_as_series(raw_test))
    classes = _class_order(y_train)
    unseen = sorted(set(map(str, y_test)) - set(classes))
    if unseen:
        raise DataError(f"'ucr:{match}': test labels {unseen} do not occur in the training split")
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
        source=source,
        interpolated=filled_train + filled_test,
    )


Split = tuple[Any, Any]  # (X, y) as aeon's loaders return them


def _read(name: str, archive: str | Path | None) -> tuple[str, str, Split, Split]:
    """(the set's spelling, where it came from, train, test) from the first place that has ``name``."""
    from aeon.datasets import load_classification

    bundled = {n.lower(): n for n in bundled_datasets()}.get(name.lower())
    if bundled is not None:
        root = str(_data_dir())
        train, test = (_aeon(load_classification, bundled, split, root) for split in SPLITS)
        return bundled, "aeon's bundled copy", train, test
    folder = archive if archive is not None else os.environ.get(ARCHIVE_ENV) or None
    cache = cache_dir()
    places = [(f"the archive {str(folder)!r}", Path(folder))] if folder is not None else []
    for where, place in [*places, (f"the download cache {str(cache)!r}", cache)]:
        found = find_in_archive(place, name)
        if found is not None:
            spelling, (train_file, test_file) = found
            return spelling, where, _read_file(train_file), _read_file(test_file)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        train, test = (_download(load_classification, name, split, str(cache)) for split in SPLITS)
    except Exception as exc:  # urllib/zenodo/zip errors of many kinds: all mean "not available here"
        where = f"not in the archive {str(folder)!r}, " if folder is not None else ""
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"'ucr:{name}' is not bundled with aeon, {where}and could not be downloaded ({reason}); offline, "
            f"pass --archive DIR (or set {ARCHIVE_ENV}) with the UCR 2018 NAME/NAME_TRAIN.tsv or UEA "
            "NAME/NAME_TRAIN.ts files"
        ) from None
    return name, f"a download into {str(cache)!r}", train, test


SPLITS = ("train", "test")


def _aeon(load: Any, name: str, split: str, root: str) -> Split:
    try:
        x, y = load(name, split=split, extract_path=root)
    except Exception as exc:  # aeon raises several kinds on a malformed file
        raise DataError(f"aeon cannot read 'ucr:{name}': {exc}".splitlines()[0]) from None
    return x, y


def _download(load: Any, name: str, split: str, root: str) -> Split:
    """aeon's download; a network that drops packets fails after DOWNLOAD_TIMEOUT s instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        x, y = load(name, split=split, extract_path=root)
    finally:
        socket.setdefaulttimeout(previous)
    return x, y


DOWNLOAD_TIMEOUT = 60.0


def cache_dir() -> Path:
    """Where downloaded sets are kept: ``$CAFUSION_UCR_CACHE``, else ``~/.cache/cafusion/ucr``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cafusion" / "ucr")


def find_in_archive(folder: Path, name: str) -> tuple[str, tuple[Path, Path]] | None:
    """The set's (spelling, (train, test) files) under ``folder`` in the UCR 2018 (.tsv) or UEA (.ts)
    layout, the set's folder directly inside ``folder`` or one level below (e.g. UCRArchive_2018/)."""
    if not folder.is_dir():
        return None
    parents = [folder, *(p for p in sorted(folder.iterdir()) if p.is_dir())]
    for parent in parents:
        for sub in sorted(parent.iterdir()) if parent.is_dir() else []:
            if not sub.is_dir() or sub.name.lower() != name.lower():
                continue
            for suffix in (".ts", ".tsv"):
                train, test = sub / f"{sub.name}_TRAIN{suffix}", sub / f"{sub.name}_TEST{suffix}"
                if train.is_file() and test.is_file():
                    return sub.name, (train, test)
    return None


def _read_file(path: Path) -> Split:
    """One split file with aeon's loaders; a .tsv row's trailing NaNs (variable length) are cut off."""
    from aeon.datasets import load_from_ts_file, load_from_tsv_file

    try:
        if path.suffix == ".ts":
            x, y = load_from_ts_file(str(path))
            return x, y
        x, y = load_from_tsv_file(str(path))
    except Exception as exc:  # pandas and aeon raise several kinds on a malformed file
        raise DataError(f"cannot read {str(path)!r}: {exc}".splitlines()[0]) from None
    series = [_cut_trailing_nan(np.asarray(row, dtype=np.float64)) for row in x]
    if len({s.shape[1] for s in series}) == 1:
        return np.stack(series), y
    return series, y


def _cut_trailing_nan(series: np.ndarray) -> np.ndarray:
    """(C, L) without the trailing positions where every channel is NaN (a shorter series, padded)."""
    real = ~np.isnan(series).all(axis=0)
    if not real.any():
        raise DataError("a series of the .tsv file has no values (every position is NaN)")
    return series[:, : int(np.nonzero(real)[0][-1]) + 1]


def _complete(series: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Fill NaNs inside each channel by linear interpolation (ends carried outward); returns the count."""
    filled = 0
    out = []
    for s in series:
        missing = np.isnan(s)
        if missing.any():
            s = s.copy()
            positions = np.arange(s.shape[1])
            for c in range(s.shape[0]):
                gap = missing[c]
                if gap.all():
                    raise DataError("a channel of a series has no values (every position is NaN)")
                if gap.any():
                    s[c, gap] = np.interp(positions[gap], positions[~gap], s[c, ~gap])
            filled += int(missing.sum())
        out.append(s)
    return out, filled


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
            raise DataError("a series holds an infinite value")
        out[i, :, : s.shape[1]] = znormalise(s) if znorm else s
        lengths[i] = s.shape[1]
    return torch.from_numpy(out), torch.from_numpy(lengths)


def znormalise(series: np.ndarray) -> np.ndarray:
    """(C, L) -> each channel minus its mean, over its standard deviation (a flat channel -> zeros)."""
    mean = series.mean(axis=1, keepdims=True)
    std = series.std(axis=1, keepdims=True)
    result: np.ndarray = (series - mean) / np.where(std > 1e-8, std, 1.0)
    return result
