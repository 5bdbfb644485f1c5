"""Published per-set test accuracies, read from the package's ``data/published.csv``.

The CSV (its header names the sources) carries Fawaz et al. 2019's FCN and ResNet means over their
iterations (UCR 2018, 128 sets; their 12-set MTS archive) and InceptionTime's (Ismail Fawaz et al.
2020) for the 128 UCR sets. A name in both archives (Wafer) takes the UCR 2018 value, the archive
``ucr:NAME`` reads first. BasicMotions is not in either; its ResNet value comes from tsml-eval.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

# Not in the CSV's archives: BasicMotions ResNet as reported by tsml-eval (test accuracy in %).
EXTRA = {("BasicMotions", "resnet"): 100.0}


@lru_cache(maxsize=1)
def published() -> dict[tuple[str, str], float]:
    """(dataset, model) -> published mean test accuracy in %; models: fcn, resnet, inception."""
    text = resources.files("cafusion.compare").joinpath("data/published.csv").read_text(encoding="utf-8")
    table: dict[tuple[str, str], float] = {}
    for row in csv.DictReader(line for line in text.splitlines() if not line.startswith("#")):
        table.setdefault((row["dataset"], row["model"]), float(row["accuracy"]))
    for key, value in EXTRA.items():
        table.setdefault(key, value)
    return table


def published_accuracy(dataset: str, model: str) -> float | None:
    """The published accuracy for ``dataset`` and ``model``, or None where none was published."""
    return published().get((dataset, model))
