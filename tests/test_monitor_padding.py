"""FusionMonitor on padded batches: the statistics of a padded batch are those of its samples alone.

The monitor sees per-sample ``ca`` and fusion weights through the block's inspector; with lengths,
the block computes them from real positions only, so nothing per position reaches the monitor and
the padding (+1e3) cannot move w_avg, its histogram, the per-class means or the gate shares.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cafusion import ChannelAttentionFusionTLayer, masking
from cafusion.diagnostics import FusionMonitor

LENGTHS = [9, 2, 5, 7, 1, 9]
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def model() -> nn.Module:
    torch.manual_seed(0)
    layer = ChannelAttentionFusionTLayer(8, reduction=2, impl="reference", temperature=0.7)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return nn.Sequential(nn.Conv1d(3, 8, 1), layer).double().eval()


def assert_same_stats(got: FusionMonitor, want: FusionMonitor) -> None:
    a, b = got.summary()[0].as_dict(), want.summary()[0].as_dict()
    a.pop("T"), b.pop("T")  # where T is now: the same module either way
    assert a.keys() == b.keys()
    for key, value in b.items():
        if isinstance(value, (float, dict)):
            assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert a[key] == value, key


def test_padded_batch_gives_the_statistics_of_the_samples_alone() -> None:
    m = model()
    torch.manual_seed(1)
    samples = [torch.randn(3, n, dtype=torch.float64) for n in LENGTHS]
    x = torch.full((len(LENGTHS), 3, max(LENGTHS)), 1e3, dtype=torch.float64)
    for i, s in enumerate(samples):
        x[i, :, : s.shape[1]] = s
    lengths = torch.tensor(LENGTHS)

    padded = FusionMonitor(m, bins=10, num_classes=3)
    with padded.labels(LABELS), masking.padding(lengths):
        m(x)
    padded.detach()

    alone = FusionMonitor(m, bins=10, num_classes=3)
    for i, s in enumerate(samples):
        with alone.labels(LABELS[i : i + 1]):
            m(s[None])
    alone.detach()

    stats = padded.summary()[0]
    assert stats.samples == len(LENGTHS) and stats.class_w_avg.keys() == {0, 1, 2}
    assert_same_stats(padded, alone)

    leaky = FusionMonitor(m, bins=10, num_classes=3)  # control: without lengths the padding moves them
    with leaky.labels(LABELS):
        m(x)
    leaky.detach()
    assert leaky.summary()[0].w_avg_mean != pytest.approx(stats.w_avg_mean, rel=1e-6)
