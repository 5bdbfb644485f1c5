"""The demo's pieces that the end-to-end run cannot pin down: verdicts, statistics, data split."""

from __future__ import annotations

import math

import pytest

from cafusion.cli.demo import load_digits, mean_std
from cafusion.cli.demo_report import _thin, answers
from cafusion.diagnostics import BlockStats


def _stats(prefer_max: float | None, low: float = 0.0, high: float = 0.0, t: float = 1.0) -> BlockStats:
    routed = prefer_max is not None
    return BlockStats(
        block="b",
        step=None,
        samples=10,
        w_avg_mean=0.4 if routed else None,
        w_avg_std=0.1 if routed else None,
        prefer_max=prefer_max,
        hist=[10] if routed else None,
        gate_low=low,
        gate_high=high,
        T=t,
    )


@pytest.mark.parametrize(
    ("prefer_max", "verdict"),
    [(0.0, "always prefers avg"), (0.04, "always prefers avg"), (0.5, "varies"), (0.96, "always prefers max")],
)
def test_router_verdicts(prefer_max: float, verdict: str) -> None:
    (router, *_) = answers([_stats(prefer_max)], [], 1.0)
    assert router.startswith("router b: " + verdict)
    assert f"{100 * prefer_max:.1f}% of test samples prefer max" in router


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [(0.0, 0.01, "not saturating"), (0.02, 0.2, "partly saturated"), (0.3, 0.3, "saturated")],
)
def test_gate_verdicts(low: float, high: float, verdict: str) -> None:
    gate = next(line for line in answers([_stats(0.5, low, high)], [], 1.0) if line.startswith("gate"))
    assert gate.startswith(f"gate b: {verdict} (")


def test_sum_blocks_get_gate_and_temperature_lines_only() -> None:
    lines = answers([_stats(None, t=2.0)], [], 2.0)
    assert [line.split()[0] for line in lines] == ["gate", "temperature"]


def test_temperature_line_follows_the_history() -> None:
    history = [BlockStats("b", i, 1, 0.5, 0.0, 0.0, [1], T=1.0 - 0.1 * i) for i in range(3)]
    line = answers([_stats(0.5, t=0.75)], history, 1.0)[-1]
    assert line == "temperature b: 1.000 at init -> 0.7500 after training (by epoch: 1.000 -> 0.900 -> 0.800)"


def test_thin_keeps_first_and_last() -> None:
    assert _thin(list(range(12))) == [0, 2, 4, 6, 8, 10, 11]
    assert _thin([3.0]) == [3.0]
    assert _thin(list(range(5))) == list(range(5))


def test_mean_std_is_the_sample_std() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(std, 1.0)


def test_digits_split_is_fixed_and_stratified() -> None:
    a, b = load_digits(), load_digits()
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.y_test.equal(b.y_test) and a.x_train.equal(b.x_train)
    assert float(a.x_train.min()) >= 0.0 and float(a.x_train.max()) <= 1.0
    counts = a.y_test.bincount(minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # 10 classes, ~36 each
    assert load_digits(limit=100).x_train.shape[0] == 100
