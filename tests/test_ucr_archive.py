"""ucr:NAME beyond aeon's bundle: a local archive in the UCR 2018 (.tsv) and UEA (.ts) layouts, the offline error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("aeon")

from cafusion.cli.main import main
from cafusion.training.dataset import DataError
from cafusion.training.ucr import _data_dir, load_ucr


def _write_tsv(path: Path, x: np.ndarray, y: np.ndarray, cut: dict[int, int] | None = None) -> None:
    """UCR 2018 layout: label, then the values, tab separated; a shorter series ends in NaNs."""
    lines = []
    for i, (row, label) in enumerate(zip(x[:, 0, :], y, strict=True)):
        values = [repr(float(v)) for v in row]
        if cut and i in cut:
            values = values[: cut[i]] + ["NaN"] * (len(values) - cut[i])
        lines.append("\t".join([str(label), *values]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _raw(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    from aeon.datasets import load_classification

    x, y = load_classification(name, split=split, extract_path=str(_data_dir()))
    return np.asarray(x, dtype=np.float64), np.asarray(y)


def _same(a: object, b: object) -> None:
    for part in ("train", "test"):
        da, db = getattr(a, part), getattr(b, part)
        assert torch.equal(da.x, db.x) and torch.equal(da.y, db.y) and da.classes == db.classes


@pytest.mark.parametrize("norm", ["auto", "none"])
def test_a_ucr_2018_tsv_archive_loads_to_exactly_the_bundled_arrays(tmp_path: Path, norm: str) -> None:
    for split in ("TRAIN", "TEST"):
        x, y = _raw("GunPoint", split.lower())
        _write_tsv(tmp_path / "UCRArchive_2018" / "GunCopy" / f"GunCopy_{split}.tsv", x, y)
    local = load_ucr("guncopy", norm=norm, archive=tmp_path)  # any letter case; one folder level below
    _same(local, load_ucr("GunPoint", norm=norm))
    assert local.name == "GunCopy" and "the archive" in local.describe()


def test_a_uea_ts_archive_with_unequal_lengths_loads_to_exactly_the_bundled_arrays(tmp_path: Path) -> None:
    bundled = _data_dir() / "JapaneseVowels"
    for split in ("TRAIN", "TEST"):
        target = tmp_path / "Vowels" / f"Vowels_{split}.ts"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundled / f"JapaneseVowels_{split}.ts", target)
    local, ref = load_ucr("Vowels", archive=tmp_path), load_ucr("JapaneseVowels")
    _same(local, ref)
    assert local.padded and torch.equal(local.lengths_train, ref.lengths_train)


def test_tsv_variable_lengths_and_missing_values(tmp_path: Path) -> None:
    x, y = _raw("GunPoint", "train")
    _write_tsv(tmp_path / "Var" / "Var_TRAIN.tsv", x, y, cut={0: 100, 3: 40})
    x_test, y_test = _raw("GunPoint", "test")
    x_test[1, 0, 10:13] = np.nan  # three missing values inside a series
    _write_tsv(tmp_path / "Var" / "Var_TEST.tsv", x_test, y_test)
    data = load_ucr("Var", norm="none", archive=tmp_path)
    assert data.padded and data.lengths_train[0] == 100 and data.lengths_train[3] == 40
    assert torch.equal(data.train.x[0, 0, :100], torch.from_numpy(x[0, 0, :100]).float())
    assert bool((data.train.x[0, 0, 100:] == 0).all())  # zero padding after the true length
    filled = data.test.x[1, 0, 9:14].double().numpy()
    np.testing.assert_allclose(filled[1:4], np.linspace(filled[0], filled[4], 5)[1:4], rtol=1e-5)
    assert data.interpolated == 3 and "3 missing values filled" in data.describe()


def test_a_set_with_no_local_copy_offline_is_one_line_naming_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAFUSION_UCR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CAFUSION_UCR_ARCHIVE", raising=False)
    with pytest.raises(DataError) as info:
        load_ucr("Beef", archive=tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message and "'ucr:Beef' is not bundled with aeon" in message
    assert "could not be downloaded" in message and "--archive DIR" in message


def test_compare_archive_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAFUSION_UCR_ARCHIVE", "")  # restored after the test: --archive sets it for job processes
    for split in ("TRAIN", "TEST"):
        x, y = _raw("ItalyPowerDemand", split.lower())
        _write_tsv(tmp_path / "arch" / "Italy" / f"Italy_{split}.tsv", x[:40], y[:40])
    argv = ["compare", "--data", "ucr:Italy", "--archive", str(tmp_path / "arch"), "--attention", "none"]
    argv += ["--seeds", "1", "--epochs", "1", "--no-figures", "--no-progress", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "Italy: 40 train / 40 test series" in capsys.readouterr().out
    assert main([*argv[:4], str(tmp_path / "missing"), *argv[5:]]) == 2
    assert "--archive" in capsys.readouterr().err
