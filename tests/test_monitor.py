"""FusionMonitor: its statistics equal the ones computed by hand from the block's own outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from cafusion import ChannelAttentionFusionT, ChannelAttentionFusionTLayer, FusionMonitor
from cafusion.models import SmallCNN
from tests.gloo_pair import spawn_pair


def _block(**kw: object) -> ChannelAttentionFusionT:
    torch.manual_seed(0)
    return ChannelAttentionFusionT(8, return_fusion_weights=True, **kw)  # type: ignore[arg-type]


def _expected(ws: list[Tensor], cas: list[Tensor], labels: Tensor, bins: int) -> dict[str, object]:
    w = torch.cat(ws)[:, 0].double()
    ca = torch.cat([c.flatten() for c in cas]).double()
    idx = (w * bins).long().clamp(0, bins - 1)
    return {
        "samples": w.numel(),
        "mean": w.mean().item(),
        "std": w.std(unbiased=False).item(),
        "prefer_max": (w < 0.5).double().mean().item(),
        "hist": torch.bincount(idx, minlength=bins).tolist(),
        "classes": {int(c): w[labels == c].mean().item() for c in labels.unique()},
        "low": (ca < 0.01).double().mean().item(),
        "high": (ca > 0.99).double().mean().item(),
    }


def test_statistics_match_a_hand_computation() -> None:
    block = _block()
    mon = FusionMonitor(block, bins=10)
    ws, cas, ys = [], [], []
    for batch in (5, 7):
        x, y = torch.randn(batch, 8, 4, 4) * 3, torch.randint(0, 4, (batch,))
        with mon.labels(y):
            _, ca, w = block(x)
        ws.append(w)
        cas.append(ca)
        ys.append(y)
    exp = _expected(ws, cas, torch.cat(ys), bins=10)
    (s,) = mon.summary()
    assert s.block == "<root>"
    assert s.samples == exp["samples"]
    assert s.w_avg_mean == pytest.approx(exp["mean"], abs=1e-6)
    assert s.w_avg_std == pytest.approx(exp["std"], abs=1e-6)
    assert s.prefer_max == pytest.approx(exp["prefer_max"])
    assert s.hist == exp["hist"] and sum(s.hist) == 12
    assert s.class_w_avg == pytest.approx(exp["classes"], abs=1e-6)
    assert s.gate_low == pytest.approx(exp["low"]) and s.gate_high == pytest.approx(exp["high"])
    temperature = s.T
    assert temperature == pytest.approx(1.0)


def test_saturated_gate_and_moved_temperature_are_reported() -> None:
    block = _block(learnable_temperature=True)
    with torch.no_grad():
        assert block.fc2.bias is not None
        block.fc2.bias[:4].fill_(50.0)  # half the channels: ca == 1
        block.fc2.bias[4:].fill_(-50.0)  # the other half: ca == 0
        block.t_raw.fill_(0.3)
    with FusionMonitor(block) as mon:
        block(torch.randn(3, 8, 2, 2) * 0.01)
    (s,) = mon.summary()
    assert s.gate_high == pytest.approx(0.5) and s.gate_low == pytest.approx(0.5)
    assert s.saturation == pytest.approx(1.0)
    temperature = s.T
    assert temperature == pytest.approx(float(block.get_T().detach()))
    assert temperature == pytest.approx(math.log1p(math.exp(0.3)) + 1e-6)


def test_sum_fusion_has_gate_and_temperature_but_no_router_stats() -> None:
    block = _block(fusion="sum", temperature=2.5)
    with FusionMonitor(block) as mon:
        block(torch.randn(4, 8, 3))
    (s,) = mon.summary()
    assert s.samples == 4
    assert s.w_avg_mean is None and s.hist is None and s.prefer_max is None
    temperature = s.T
    assert temperature == pytest.approx(2.5)
    assert "-" in mon.summary_table()


def test_forward_outputs_are_unchanged_and_detach_removes_every_hook() -> None:
    model = SmallCNN(1, 3, widths=(4, 8))
    x = torch.randn(2, 1, 6, 6)
    before = model(x)
    mon = FusionMonitor(model)
    assert set(mon.blocks) == {"stages.0.3", "stages.1.3"}
    assert all(len(b._inspectors) == 1 for b in mon.blocks.values())
    assert torch.equal(model(x), before)
    mon.detach()
    assert all(len(b._inspectors) == 0 for b in mon.blocks.values())
    model(x)  # after detach nothing is counted
    assert [s.samples for s in mon.summary()] == [2, 2]
    with mon:
        assert mon.attached
        model(x)
    assert not mon.attached
    assert [s.samples for s in mon.summary()] == [4, 4]


def test_steps_split_the_history_and_summary_covers_all_of_it() -> None:
    model = SmallCNN(1, 3, widths=(4,))
    mon = FusionMonitor(model)
    model.train()
    model(torch.randn(3, 1, 5, 5))
    first = mon.step()
    model.eval()  # eval mode is collected the same way
    with torch.no_grad():
        model(torch.randn(5, 1, 5, 5))
        model(torch.randn(2, 1, 5, 5))
    second = mon.step()
    assert [s.samples for s in first] == [3] and [s.samples for s in second] == [7]
    assert [(s.step, s.samples) for s in mon.history] == [(0, 3), (1, 7)]
    assert mon.summary()[0].samples == 10
    assert mon.step()[0].samples == 0  # an empty step is reported, not skipped
    mon.reset()
    assert mon.history == [] and mon.summary()[0].samples == 0


def test_a_model_without_blocks_gives_an_empty_summary() -> None:
    model = SmallCNN(1, 3, attention="se", widths=(4,))
    with FusionMonitor(model) as mon:
        model(torch.randn(2, 1, 4, 4))
    assert mon.blocks == {} and mon.summary() == []


def test_bad_labels_and_arguments_are_refused() -> None:
    block = _block()
    mon = FusionMonitor(block)
    with pytest.raises(TypeError, match="labels"):
        mon.set_labels(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=">= 0"):
        mon.set_labels(torch.tensor([0, -1]))
    mon.set_labels(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="2 samples"):
        block(torch.randn(2, 8, 3, 3))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        FusionMonitor("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low < high"):
        FusionMonitor(block, low=0.5, high=0.4)
    with pytest.raises(ValueError, match="bins"):
        FusionMonitor(block, bins=0)


# -- torch.distributed ------------------------------------------------------------------------------
def _data() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    # Rank 0 sees labels 0-2 only and rank 1 labels 0-4: the per-class widths differ per rank.
    return [
        (torch.randn(6, 8, 3, 3, generator=g) * 2, torch.tensor([0, 1, 2, 0, 1, 2])),
        (torch.randn(5, 8, 3, 3, generator=g) * 2, torch.tensor([4, 3, 0, 4, 1])),
    ]


def _two_blocks() -> nn.Module:
    """A softmax and a sum block in a row: the reduction must keep every block's counters apart."""
    torch.manual_seed(0)
    return nn.Sequential(ChannelAttentionFusionTLayer(8), ChannelAttentionFusionTLayer(8, fusion="sum"))


def _run(block: nn.Module, mon: FusionMonitor, parts: list[tuple[Tensor, Tensor]]) -> dict[str, object]:
    for x, y in parts:
        with mon.labels(y):
            block(x)
    step = [s.as_dict() for s in mon.step()]
    return {"step": step, "summary": [s.as_dict() for s in mon.summary()]}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = _two_blocks()
        result = _run(model, FusionMonitor(model), [_data()[rank]])
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_distributed_totals_equal_the_single_process_totals(tmp_path: Path) -> None:
    out = tmp_path / "rank0.json"
    spawn_pair(_worker, tmp_path, str(out))
    reduced = json.loads(out.read_text())
    model = _two_blocks()
    single = json.loads(json.dumps(_run(model, FusionMonitor(model), _data())))
    for key in ("step", "summary"):
        (got, got_sum), (want, want_sum) = reduced[key], single[key]
        assert got["samples"] == want["samples"] == got_sum["samples"] == 11
        assert got["hist"] == want["hist"]
        assert sorted(got["class_w_avg"]) == sorted(want["class_w_avg"]) == ["0", "1", "2", "3", "4"]
        for field in ("w_avg_mean", "w_avg_std", "prefer_max", "gate_low", "gate_high", "T"):
            assert got[field] == pytest.approx(want[field], abs=1e-6), field
        assert got["class_w_avg"] == pytest.approx(want["class_w_avg"], abs=1e-6)
        assert got_sum["hist"] is None and got_sum["class_w_avg"] == {}
        assert got_sum["gate_high"] == pytest.approx(want_sum["gate_high"], abs=1e-9)
