"""Published baselines as package data: every bundled archive set has its published FCN and ResNet means."""

from __future__ import annotations

from importlib import resources

import pytest

from cafusion.compare.published import published, published_accuracy

pytest.importorskip("aeon")


def test_every_bundled_classification_set_of_the_archives_has_fcn_and_resnet() -> None:
    from cafusion.training.ucr import bundled_datasets

    # aeon's bundle also holds a regression set (Covid3Month) and a toy subset (UnitTest): not in the archives
    archive_sets = [n for n in bundled_datasets() if n not in ("Covid3Month_disc", "UnitTest")]
    assert len(archive_sets) >= 8
    for name in archive_sets:
        for model in ("fcn", "resnet"):
            if (name, model) == ("BasicMotions", "fcn"):
                continue  # BasicMotions is in neither of Fawaz et al.'s archives; tsml-eval gives ResNet only
            value = published_accuracy(name, model)
            assert value is not None and 0 < value <= 100, (name, model, value)


def test_values_are_the_means_of_the_source_rows() -> None:
    """Spot checks against the source CSVs: means over 5 UCR iterations, 10 MTS ones, InceptionTime's single run."""
    assert published_accuracy("GunPoint", "fcn") == 100.0
    assert published_accuracy("ItalyPowerDemand", "resnet") == 96.15
    assert published_accuracy("JapaneseVowels", "fcn") == 99.30  # mts_archive
    assert published_accuracy("OSULeaf", "inception") == 94.21
    assert published_accuracy("NoSuchSet", "fcn") is None and published_accuracy("GunPoint", "lstm") is None
    models = {m for _, m in published()}
    assert models == {"fcn", "resnet", "inception"}
    assert sum(m == "inception" for _, m in published()) == 128  # the whole UCR 2018 archive


def test_the_csv_names_its_sources_and_ships_with_the_package() -> None:
    text = resources.files("cafusion.compare").joinpath("data/published.csv").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("Fawaz et al. 2019" in line for line in header)
    assert any("InceptionTime" in line for line in header)


def test_the_report_uses_them_only_for_the_archive_split() -> None:
    from cafusion.compare import report

    settings = {"model": "fcn", "variant": "none", "seed": 0, "attention": "none", "attention_kwargs": {}, "epochs": 1}
    run = {"dataset": "GunPoint", "data": "ucr:GunPoint", "published_split": True, "batch_size": 16, "params": 10}
    runs = [{**run, "seconds_per_epoch": 1.0, "test_acc": 0.9, "settings": settings}]
    table = report._group("GunPoint", "fcn", runs, ("none",))
    assert table["published_acc"] == 100.0
    runs[0]["published_split"] = False
    assert report._group("GunPoint", "fcn", runs, ("none",))["published_acc"] is None
