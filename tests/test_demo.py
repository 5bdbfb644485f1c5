"""The demo's pieces that the end-to-end run cannot pin down: verdicts, statistics, data split."""

from __future__ import annotations

import math

import pytest

from cafusion.cli.demo_report import answers, comparison_rows
from cafusion.diagnostics import BlockStats, FusionMonitor
from cafusion.diagnostics.plots import training_curves_figure
from cafusion.models import SmallCNN
from cafusion.training.demo import load_digits, mean_std


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
    assert "of ca < 0.01" in gate and "> 0.99)" in gate  # the limits themselves, not "low"/"high"


def test_gate_line_says_the_monitor_limits() -> None:
    (_, gate, _) = answers([_stats(0.5, 0.1, 0.2)], [], 1.0, low=0.05, high=0.9)
    assert gate == "gate b: partly saturated (10.00% of ca < 0.05, 20.00% > 0.9)"


def test_sum_blocks_get_gate_and_temperature_lines_only() -> None:
    lines = answers([_stats(None, t=2.0)], [], 2.0)
    assert [line.split()[0] for line in lines] == ["gate", "temperature"]


def test_temperature_line_follows_the_history() -> None:
    history = [BlockStats("b", i, 1, 0.5, 0.0, 0.0, [1], T=1.0 - 0.1 * i) for i in range(3)]
    line = answers([_stats(0.5, t=0.75)], history, 1.0)[-1]
    assert line == (
        "temperature b: 1.000 at init -> 0.7500 after training (after each of the 3 epochs: 1.000 -> 0.900 -> 0.800)"
    )


def test_temperature_line_lists_every_epoch_not_a_sample() -> None:
    history = [BlockStats("b", i, 1, 0.5, 0.0, 0.0, [1], T=1.0 + 0.01 * i) for i in range(12)]
    line = answers([_stats(0.5, t=1.11)], history, 1.0)[-1]
    assert "after each of the 12 epochs" in line and line.count("->") == 12  # init -> final, then 11 between 12


def _report(accuracies: list[float]) -> dict[str, object]:
    variant = {"name": "se", "params": 10, "accuracy": accuracies, "description": "d"}
    variant["accuracy_mean"], variant["accuracy_std"] = mean_std(accuracies)
    return {"variants": [variant], "timing": {"se": {"epoch_seconds_mean": 0.1}}, "config": {"seeds": len(accuracies)}}


def test_one_seed_shows_no_spread() -> None:
    one = comparison_rows(_report([0.9]), markdown=False)
    assert "±" not in one and "90.00%" in one and "test acc (1 seed)" in one
    three = comparison_rows(_report([0.9, 0.8, 0.7]), markdown=True)
    assert "80.00% ± 10.00" in three and "mean ± std" in three


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


def test_training_curves_count_epochs_from_one() -> None:
    history = [BlockStats("b", i, 1, 0.5, 0.0, 0.0, [1], T=1.0) for i in range(3)]
    fig = training_curves_figure(history)
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch"
        assert list(ax.lines[0].get_xdata()) == [1, 2, 3]


def test_summary_table_names_the_gate_limits() -> None:
    import torch

    model = SmallCNN(1, 2, attention_kwargs={"learnable_temperature": True}, widths=(4,))
    with FusionMonitor(model, low=0.05, high=0.9) as mon, torch.no_grad():
        model(torch.randn(2, 1, 6, 6))
    header = mon.summary_table().splitlines()[0].split()
    assert "gate<0.05" in header and "gate>0.9" in header
