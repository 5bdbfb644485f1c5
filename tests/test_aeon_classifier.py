"""The aeon / scikit-learn FCN and ResNet classifiers: both libraries' estimator checks, unequal lengths,
pickling, determinism, the ``cafusion compare`` recipe, and one-line errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("aeon", reason="the aeon classifiers need the timeseries extra (aeon)")
from aeon.testing.estimator_checking import check_estimator as aeon_check_estimator
from sklearn.utils.estimator_checks import check_estimator as sklearn_check_estimator

from cafusion.integrations import aeon as ca

TINY: dict[str, Any] = {"n_epochs": 2, "filters": (4, 8, 4), "random_state": 0}
# scikit-learn's checks fit many 300-sample sets: one epoch in few batches keeps them to seconds
SKLEARN_TINY: dict[str, Any] = {"n_epochs": 1, "batch_size": 64, "filters": (4, 8, 4), "random_state": 0}
SKLEARN_EXPECTED_FAILURES = {
    "check_classifiers_train": "asks for > 0.83 training accuracy; one epoch of the tiny test network does not "
    "learn that much (learning is tested in test_learns_a_separable_problem)",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Hundreds of tiny fits: one thread each, since a second only waits on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 2, 20)).astype(np.float32), np.array(["a", "b"] * 6)


@pytest.mark.parametrize("name", ["FCNClassifier", "ResNetClassifier"])
def test_aeon_estimator_checks(name: str) -> None:
    results = aeon_check_estimator(getattr(ca, name))
    failed = {k: v for k, v in results.items() if v != "PASSED" and not v.startswith("SKIPPED")}
    assert results and not failed, failed


@pytest.mark.parametrize("name", ["SklearnFCNClassifier", "SklearnResNetClassifier"])
def test_sklearn_estimator_checks(name: str) -> None:
    rows = sklearn_check_estimator(
        getattr(ca, name)(**SKLEARN_TINY), expected_failed_checks=SKLEARN_EXPECTED_FAILURES, on_fail=None
    )
    failed = [(r["check_name"], str(r["exception"])) for r in rows if r["status"] == "failed"]
    assert rows and not failed, failed


@pytest.mark.parametrize("name", ["FCNClassifier", "ResNetClassifier"])
def test_unequal_list_equals_padded_lengths(name: str) -> None:
    x, y = _data()
    lengths = [20, 15, 12, 20, 18, 9, 20, 11, 14, 20, 16, 10]
    series = [x[i, :, :n] for i, n in enumerate(lengths)]
    clf = getattr(ca, name)(**TINY).fit(series, y)
    proba = clf.predict_proba(series)
    for i, n in enumerate(lengths[:3]):  # each series alone, unpadded, gets the same probabilities
        alone = clf.predict_proba(x[i : i + 1, :, :n])
        np.testing.assert_allclose(proba[i : i + 1], alone, atol=1e-5)
    assert set(clf.predict(series)) <= {"a", "b"}


def test_pickle_round_trip_and_determinism() -> None:
    x, y = _data()
    torch.manual_seed(123)
    before = torch.rand(3)
    clf = ca.FCNClassifier(**TINY).fit(x, y)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), before)  # fit leaves the caller's torch RNG alone
    again = ca.FCNClassifier(**TINY).fit(x, y)
    np.testing.assert_array_equal(clf.predict_proba(x), again.predict_proba(x))
    other = ca.FCNClassifier(**{**TINY, "random_state": 1}).fit(x, y)
    assert not np.array_equal(other.predict_proba(x), clf.predict_proba(x))
    copy = pickle.loads(pickle.dumps(clf))
    assert type(copy) is ca.FCNClassifier
    np.testing.assert_array_equal(copy.predict_proba(x), clf.predict_proba(x))


def test_same_recipe_and_backbone_as_compare() -> None:
    """The estimator trains as ``cafusion compare`` does for the same seed: the same loss every epoch."""
    from cafusion.compare.config import CompareConfig, parse_variant
    from cafusion.compare.plan import RunSpec
    from cafusion.compare.runner import train_run
    from cafusion.compare.sources import load_split

    config = CompareConfig(data=["ucr:UnitTest"], model="fcn", epochs=2).validate()
    result = train_run(RunSpec("ucr:UnitTest", parse_variant("caft"), 3, config))
    split = load_split("ucr:UnitTest", 3, 0.2)
    clf = ca.FCNClassifier(attention="caft", n_epochs=2, random_state=3)
    clf.fit(split.train.x.numpy(), split.train.y.numpy())
    assert clf.core_.train_loss == [h["train_loss"] for h in result["history"]]
    accuracy = float((clf.predict(split.test.x.numpy()) == split.test.y.numpy()).mean())
    assert accuracy == pytest.approx(result["test_acc"])


def test_learns_a_separable_problem() -> None:
    """A sine and a square wave of random phase: a few epochs of the tiny network tell them apart."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 4 * np.pi, 32)
    phase = rng.uniform(0, 2 * np.pi, (48, 1))
    y = np.arange(48) % 2
    x = np.where(y[:, None] == 0, np.sin(t + phase), np.sign(np.sin(t + phase))) + 0.1 * rng.standard_normal((48, 32))
    clf = ca.SklearnFCNClassifier(n_epochs=15, batch_size=8, filters=(8, 16, 8), random_state=0).fit(x, y)
    assert clf.score(x, y) >= 0.9


def test_sklearn_fallback_cross_val_and_3d() -> None:
    from sklearn.model_selection import cross_val_score

    x, y = _data()
    scores = cross_val_score(ca.SklearnFCNClassifier(**TINY), x, y, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    clf = ca.SklearnResNetClassifier(**TINY).fit(x, y)
    assert clf.n_features_in_ == 2 and clf.predict_proba(x).shape == (12, 2)
    with pytest.raises(ValueError, match="X has 3 features"):
        clf.predict(np.zeros((2, 3, 20), dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_epochs": 0}, ValueError, "n_epochs"),
        ({"n_epochs": 1.5}, TypeError, "n_epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"attention": "nope"}, ValueError, "unknown attention 'nope'"),
        ({"attention": 3}, TypeError, "attention must be"),
        ({"attention_kwargs": [1]}, TypeError, "attention_kwargs"),
        ({"random_state": -1}, ValueError, "random_state"),
        ({"filters": (4, 8)}, ValueError, "filters must hold 3"),
        ({"filters": (4, 0, 4)}, ValueError, "filters"),
        ({"filters": 4}, TypeError, "filters"),
    ],
)
def test_bad_argument_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    x, y = _data()
    for cls in (ca.FCNClassifier, ca.SklearnFCNClassifier):
        with pytest.raises(error, match=match) as info:
            cls(**kwargs).fit(x, y)
        assert "\n" not in str(info.value)


def test_bad_series() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="same C"):
        ca.SklearnFCNClassifier(**TINY).fit([x[0], x[1, :1]], y[:2])
    with pytest.raises(ValueError, match="1 feature"):
        ca.FCNClassifier(**TINY).fit(x[:, :, :1], y)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ca.Nope  # noqa: B018


def test_import_stays_light() -> None:
    code = "import sys, cafusion.integrations.aeon; print('aeon' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
