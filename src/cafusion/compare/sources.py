"""Data sources for ``cafusion compare``: a train and a test set per (source, seed).

``ucr:NAME`` and ``digits`` have a fixed split (the published one; the demo's stratified 80/20),
the same for every seed. A path (image folder, .npz/.pt) is read by the trainer's own loader and
split with its seeded splitter, so each seed gets its own split, shared by every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from torch import Tensor

from cafusion.training.data import load_dataset, split_dataset
from cafusion.training.dataset import DataError, Dataset


@dataclass(frozen=True)
class Split:
    train: Dataset
    test: Dataset
    description: str
    lengths_train: Tensor | None = None  # true lengths of padded series (ucr: unequal-length sets)
    lengths_test: Tensor | None = None
    published_split: bool = True
    norm: str | None = None  # ucr: the normalisation applied ("series" or "none"); None for other sources


def applied_norm(source: str, norm: str) -> str | None:
    """What ``--norm`` means for ``source``: "series" or "none" for ``ucr:`` sets, None for the others."""
    if not source.startswith("ucr:"):
        return None
    return _load_fixed(source, norm).norm


def dataset_name(source: str) -> str:
    """A short name for reports and file names: ``ucr:GunPoint`` -> ``GunPoint``."""
    if source.startswith("ucr:"):
        return source[4:]
    if source == "digits":
        return "digits"
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


@lru_cache(maxsize=8)
def _load_fixed(source: str, norm: str = "auto") -> Split:
    if source.startswith("ucr:"):
        from cafusion.training.ucr import load_ucr

        data = load_ucr(source[4:], norm=norm)
        return Split(data.train, data.test, data.describe(), data.lengths_train, data.lengths_test, norm=data.norm)
    try:
        from cafusion.training.demo import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the dev environment
        raise DataError(f"--data digits needs scikit-learn: pip install 'cafusion[demo]' ({exc})") from None
    d = load_digits()
    classes = tuple(str(i) for i in range(10))
    return Split(
        Dataset(d.x_train, d.y_train, classes),
        Dataset(d.x_test, d.y_test, classes),
        f"digits: {len(d.y_train)} train / {len(d.y_test)} test 8x8 images (scikit-learn, stratified 80/20, "
        "random_state=0), 10 classes",
    )


@lru_cache(maxsize=4)
def _load_file(source: str) -> Dataset:
    return load_dataset(source)


def load_split(source: str, seed: int, test_fraction: float, norm: str = "auto") -> Split:
    """The (train, test) sets of ``source`` for ``seed``; ``norm`` (auto, series, none) applies to ``ucr:``."""
    if source.startswith("ucr:") or source == "digits":
        return _load_fixed(source, norm if source.startswith("ucr:") else "auto")
    data = _load_file(source)
    train, test = split_dataset(data, test_fraction, seed)
    if test is None:
        raise DataError(f"--test-fraction {test_fraction} leaves no test samples out of {len(data)} in {source!r}")
    return Split(
        train,
        test,
        f"{source}: {len(train)} train / {len(test)} test (seeded {test_fraction:g} split, seed {seed})",
        published_split=False,
    )
