"""FusionMonitor outputs: summary table, JSON, CSV, TensorBoard events and matplotlib PNGs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cafusion import FusionMonitor
from cafusion.diagnostics import format_table
from cafusion.diagnostics.export import log_tensorboard
from cafusion.diagnostics.plots import plot_class_means, plot_fusion_histograms, plot_training_curves
from cafusion.models import SmallCNN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def monitor() -> FusionMonitor:
    """Three steps of a learnable-T model with labels, so every output has something to show."""
    torch.manual_seed(0)
    model = SmallCNN(1, 3, attention_kwargs={"learnable_temperature": True}, widths=(4, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = FusionMonitor(model, bins=8)
    for _ in range(3):
        x, y = torch.randn(6, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
        with mon.labels(y):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        mon.step()
    return mon


def assert_png(path: Path, min_size: tuple[int, int] = (200, 150)) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        # not a blank canvas: a drawn figure has many distinct colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


def test_summary_table_has_a_row_per_block_with_the_numbers(monitor: FusionMonitor) -> None:
    stats = monitor.summary()
    table = monitor.summary_table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["block", "samples", "w_avg"]
    assert len(lines) == 2 + len(stats)
    for s, line in zip(stats, lines[2:], strict=True):
        assert s.w_avg_mean is not None and s.T is not None
        assert line.split()[0] == s.block and line.split()[1] == "18"
        assert f"{s.w_avg_mean:.3f}" in line and f"{s.T:.4f}" in line
    md = format_table(stats, markdown=True).splitlines()
    assert md[0].startswith("| block |") and md[1].startswith("|---") and len(md) == 2 + len(stats)


def test_json_holds_summary_and_history(monitor: FusionMonitor, tmp_path: Path) -> None:
    data = json.loads(monitor.to_json(tmp_path / "d.json").read_text())
    assert data["steps"] == 3 and data["bins"] == 8
    assert [(h["step"], h["block"]) for h in data["history"]] == [
        (step, block) for step in range(3) for block in ("stages.0.3", "stages.1.3")
    ]
    for s in data["summary"]:
        assert s["samples"] == 18 and sum(s["hist"]) == 18
        assert set(s["class_w_avg"]) == {"0", "1", "2"}
    # the temperature moved under training, and the history shows it
    temps = [h["T"] for h in data["history"] if h["block"] == "stages.1.3"]
    assert len(set(temps)) == 3


def test_csv_has_one_row_per_step_and_block(monitor: FusionMonitor, tmp_path: Path) -> None:
    with monitor.to_csv(tmp_path / "d.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert rows[0]["block"] == "stages.0.3" and rows[0]["step"] == "0"
    assert float(rows[-1]["T"]) == pytest.approx(monitor.history[-1].T)
    assert float(rows[-1]["saturation"]) == pytest.approx(monitor.history[-1].saturation)


def test_tensorboard_events_carry_the_scalars_and_histograms(monitor: FusionMonitor, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(3):
        log_tensorboard([s for s in monitor.history if s.step == step], writer, step)
    monitor.log_tensorboard(writer, step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()
    assert "fusion/stages.1.3/T" in tags["scalars"] and "fusion/stages.0.3/gate_high" in tags["scalars"]
    assert "fusion/stages.0.3/w_avg" in tags["histograms"]
    t_values = [e.value for e in events.Scalars("fusion/stages.1.3/T")]
    expected = [s.T for s in monitor.history if s.block == "stages.1.3"]
    assert t_values == pytest.approx([*expected, expected[-1]])


def test_plots_are_valid_non_empty_pngs(monitor: FusionMonitor, tmp_path: Path) -> None:
    stats = monitor.summary()
    assert_png(plot_fusion_histograms(stats, tmp_path / "h.png", title="t"))
    assert_png(plot_class_means(stats, tmp_path / "c.png"))
    assert_png(plot_training_curves(monitor.history, tmp_path / "t.png"))


def test_save_plots_writes_the_three_figures(monitor: FusionMonitor, tmp_path: Path) -> None:
    paths = monitor.save_plots(tmp_path / "figs", prefix="run1_")
    assert [p.name for p in paths] == ["run1_fusion_hist.png", "run1_class_w_avg.png", "run1_training_curves.png"]
    for path in paths:
        assert_png(path)


def test_plots_explain_when_there_is_nothing_to_draw(tmp_path: Path) -> None:
    model = SmallCNN(1, 2, attention="caft_sum", widths=(4,))
    with FusionMonitor(model) as mon:
        model(torch.randn(2, 1, 4, 4))
    assert_png(plot_fusion_histograms(mon.summary(), tmp_path / "h.png"), min_size=(100, 100))
    assert_png(plot_class_means(mon.summary(), tmp_path / "c.png"), min_size=(100, 100))
    assert_png(plot_training_curves([], tmp_path / "t.png"), min_size=(100, 100))


def test_plotting_does_not_touch_pyplot_state(monitor: FusionMonitor, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_fusion_histograms(monitor.summary(), tmp_path / "h.png")
    assert plt.get_fignums() == before


def test_training_curves_name_the_saturation_limits(monitor: FusionMonitor) -> None:
    from cafusion.diagnostics.plots import training_curves_figure

    fig = training_curves_figure(monitor.history, limits=(0.05, 0.95))
    assert any(ax.get_title() == "share of ca < 0.05 or > 0.95" for ax in fig.axes)
