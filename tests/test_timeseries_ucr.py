"""ucr:NAME data: aeon's bundled UCR/UEA sets, published split, normalised as Fawaz et al., padded unequal lengths."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("aeon", reason="ucr: data needs the timeseries extra (aeon); the dev environment has it")

from cafusion.training.data import load_dataset
from cafusion.training.ucr import bundled_datasets, load_ucr, znormalise

PUBLISHED_SIZES = {  # (train, test, channels, length, classes) of the UCR/UEA archive releases
    "GunPoint": (50, 150, 1, 150, 2),
    "ArrowHead": (36, 175, 1, 251, 3),
    "ItalyPowerDemand": (67, 1029, 1, 24, 2),
    "BasicMotions": (40, 40, 6, 100, 4),
    "JapaneseVowels": (270, 370, 12, 29, 9),
}


def test_the_issue_data_sets_are_bundled() -> None:
    assert set(PUBLISHED_SIZES) <= set(bundled_datasets())
    assert "Airline" not in bundled_datasets()  # a forecasting series, not a classification set


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES))
def test_published_split_shapes_and_labels(name: str) -> None:
    data = load_ucr(name)
    n_train, n_test, channels, length, classes = PUBLISHED_SIZES[name]
    assert tuple(data.train.x.shape) == (n_train, channels, length)
    assert tuple(data.test.x.shape) == (n_test, channels, length)
    assert data.train.num_classes == data.test.num_classes == classes
    assert set(data.train.y.tolist()) == set(range(classes))
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64


def test_each_series_is_z_normalised_per_channel() -> None:
    x = load_ucr("BasicMotions", norm="series").train.x.double()
    torch.testing.assert_close(x.mean(2), torch.zeros(x.shape[:2], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.std(2, unbiased=False), torch.ones(x.shape[:2], dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_znormalise_flat_channel_is_zeros() -> None:
    import numpy as np

    out = znormalise(np.array([[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]]))
    assert (out[0] == 0).all()
    np.testing.assert_allclose(out[1], [-1.224744871, 0.0, 1.224744871])


def test_unequal_lengths_are_padded_with_lengths_kept() -> None:
    data = load_ucr("JapaneseVowels", norm="series")
    assert data.padded and "zero-padded" in data.describe()
    lengths = data.lengths_train
    assert int(lengths.min()) < 29 == int(max(lengths.max(), data.lengths_test.max()))
    short = int(torch.argmin(lengths))
    n = int(lengths[short])
    series = data.train.x[short]
    assert (series[:, n:] == 0).all()
    # normalised over its own valid length, not over the padding
    torch.testing.assert_close(series[:, :n].mean(1), torch.zeros(12), atol=1e-5, rtol=0)
    assert not load_ucr("GunPoint").padded


def test_names_are_case_insensitive_and_train_accepts_ucr() -> None:
    assert load_ucr("gunpoint").name == "GunPoint"
    train = load_dataset("ucr:ItalyPowerDemand")
    assert len(train) == 67 and train.classes == ("1", "2")


def _archive(name: str, split: str = "train") -> Any:
    from aeon.datasets import load_classification

    from cafusion.training.ucr import _data_dir

    return load_classification(name, split=split, extract_path=str(_data_dir()))[0]


def test_norm_none_keeps_the_archive_values() -> None:
    data = load_ucr("BasicMotions", norm="none")
    torch.testing.assert_close(data.train.x, torch.from_numpy(_archive("BasicMotions")).float())
    assert data.norm == "none" and "not z-normalised" in data.describe()


def test_auto_norm_is_fawaz_et_al_per_series_univariate_archive_values_multivariate() -> None:
    """Their code z-normalises univariate series and feeds the multivariate archive as stored."""
    gun = load_ucr("GunPoint")  # "auto" is the default
    assert gun.norm == "series" and "z-normalised per series" in gun.describe()
    torch.testing.assert_close(gun.train.x, load_ucr("GunPoint", norm="series").train.x, atol=0, rtol=0)
    motions = load_ucr("BasicMotions")
    assert motions.norm == "none"
    torch.testing.assert_close(motions.test.x, torch.from_numpy(_archive("BasicMotions", "test")).float())
    vowels = load_ucr("JapaneseVowels")  # unequal lengths: the raw values, zero-padded at the end
    assert vowels.norm == "none" and vowels.padded
    raw = _archive("JapaneseVowels")
    short = int(torch.argmin(vowels.lengths_train))
    n = int(vowels.lengths_train[short])
    torch.testing.assert_close(vowels.train.x[short, :, :n], torch.from_numpy(raw[short]).float())
    assert (vowels.train.x[short, :, n:] == 0).all()
    torch.testing.assert_close(load_dataset("ucr:BasicMotions").x, motions.train.x)  # so does cafusion train


def test_bad_norm_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^norm must be one of auto, series, none, got 'zscore'$"):
        load_ucr("GunPoint", norm="zscore")
