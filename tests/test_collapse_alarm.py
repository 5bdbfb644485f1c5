"""Router-collapse alarm: FusionMonitor warns once per block when a router stops routing."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cafusion import ChannelAttentionFusionT, ChannelAttentionFusionTLayer, FusionMonitor
from cafusion.diagnostics.monitor import RouterCollapseWarning


def _model(bias: tuple[float, float] | None) -> nn.Module:
    """Two blocks; ``bias`` sets the first block's router output bias (None: zero router -> w = 0.5)."""
    torch.manual_seed(0)
    model = nn.Sequential(ChannelAttentionFusionTLayer(8), ChannelAttentionFusionTLayer(8))
    for block in model:
        assert isinstance(block, ChannelAttentionFusionT) and block.fusion_router is not None
        last = block.fusion_router[2]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            if bias is None:
                last.weight.zero_()
                last.bias.zero_()
    if bias is not None:
        last0 = model[0].fusion_router[2]  # type: ignore[index]
        with torch.no_grad():
            last0.bias.copy_(torch.tensor(bias))
    return model


def _epochs(monitor: FusionMonitor, model: nn.Module, n: int) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n):
            with torch.no_grad():
                model(torch.randn(16, 8, 5, 5))
            monitor.step()
    return [w for w in caught if issubclass(w.category, RouterCollapseWarning)]


@pytest.mark.parametrize(("bias", "side"), [((50.0, 0.0), "avg"), ((0.0, 50.0), "max")])
def test_forced_collapse_warns_exactly_once(bias: tuple[float, float], side: str) -> None:
    model = _model(bias)
    monitor = FusionMonitor(model, collapse_epochs=3)
    assert not _epochs(monitor, model, 2)  # two collapsed epochs: not yet
    caught = _epochs(monitor, model, 4)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "'0'" in text and f"collapsed onto {side}" in text and "since epoch 1" in text
    assert "fusion='sum'" in text and "docs/router.md" in text
    assert text.startswith("cafusion: ")  # the CLI prints such warnings as one 'cafusion: warning:' line
    assert monitor.collapsed == {"0": (side, 0)}
    last = monitor.history[-2]
    assert last.block == "0" and (last.w_avg_high if side == "avg" else last.w_avg_low) == 1.0


def test_mixed_router_does_not_warn() -> None:
    model = _model(None)
    monitor = FusionMonitor(model, collapse_epochs=1)
    assert not _epochs(monitor, model, 4)
    assert monitor.collapsed == {}
    s = monitor.history[-1]
    assert s.w_avg_mean == pytest.approx(0.5) and s.w_avg_low == 0.0 and s.w_avg_high == 0.0


def test_switched_off_never_warns() -> None:
    model = _model((50.0, 0.0))
    monitor = FusionMonitor(model, collapse_alarm=False, collapse_epochs=1)
    assert not _epochs(monitor, model, 4)
    assert monitor.collapsed == {}


def test_a_broken_run_starts_counting_again() -> None:
    model = _model((50.0, 0.0))
    monitor = FusionMonitor(model, collapse_epochs=3)
    assert not _epochs(monitor, model, 2)
    last0 = model[0].fusion_router[2]  # type: ignore[index]
    with torch.no_grad():
        last0.bias.zero_()
        last0.weight.zero_()
    assert not _epochs(monitor, model, 1)  # w = 0.5: the run ends
    with torch.no_grad():
        last0.bias.copy_(torch.tensor([50.0, 0.0]))
    assert not _epochs(monitor, model, 2)
    caught = _epochs(monitor, model, 1)
    assert len(caught) == 1 and "since epoch 4" in str(caught[0].message)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"collapse_epochs": 0}, "collapse_epochs"),
        ({"collapse_share": 1.0}, "collapse_share"),
        ({"collapse_share": 0.0}, "collapse_share"),
        ({"collapse_alarm": 1}, "collapse_alarm"),
    ],
)
def test_bad_alarm_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises((TypeError, ValueError), match=name):
        FusionMonitor(nn.Sequential(ChannelAttentionFusionT(8)), **kwargs)  # type: ignore[arg-type]
