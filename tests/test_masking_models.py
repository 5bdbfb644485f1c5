"""Padded batches through the models: SmallCNN (1D), FCN and ResNet with ``forward(x, lengths)``.

In eval mode each series of a padded batch gets the logits and gradients it gets alone, unpadded,
for every attention block, whatever the padding holds (float64 at 1e-10, +1e3 / -1e3 padding).
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from cafusion.models import SmallCNN
from cafusion.models.timeseries import FCN, ResNet

TOL = {"rtol": 1e-10, "atol": 1e-10}
MODELS = ["small_cnn", "fcn", "resnet"]
ATTENTIONS = ["se", "eca", "cbam", "caft", "none"]


@functools.cache
def model(name: str, attention: str) -> nn.Module:
    """Eval mode (batch norm per sample), non-trivial running statistics, float64."""
    torch.manual_seed(0)
    m: nn.Module
    if name == "small_cnn":
        m = SmallCNN(2, 3, attention=attention, dims=1, widths=(6, 8, 8))
    else:
        m = (FCN if name == "fcn" else ResNet)(2, 3, attention=attention)
    with torch.no_grad():
        for module in m.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return m.double().eval()


def grads(
    m: nn.Module, x: Tensor, upstream: Tensor, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor, list[Tensor]]:
    m.zero_grad()
    x = x.clone().requires_grad_(True)
    logits = m(x) if lengths is None else m(x, lengths)
    (logits * upstream).sum().backward()
    assert x.grad is not None
    return logits.detach(), x.grad, [p.grad.clone() for p in m.parameters() if p.grad is not None]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(MODELS),
    attention=st.sampled_from(ATTENTIONS),
    lengths=st.lists(st.integers(1, 11), min_size=2, max_size=3),
    fill=st.sampled_from([1e3, -1e3]),
    seed=st.integers(0, 2**16),
)
def test_padded_series_equals_the_series_alone(
    name: str, attention: str, lengths: list[int], fill: float, seed: int
) -> None:
    m = model(name, attention)
    torch.manual_seed(seed)
    longest = max(lengths)
    x = torch.full((len(lengths), 2, longest), fill, dtype=torch.float64)
    for i, n in enumerate(lengths):
        x[i, :, :n] = torch.randn(2, n, dtype=torch.float64)
    upstream = torch.randn(len(lengths), 3, dtype=torch.float64)
    logits, gx, gparams = grads(m, x, upstream, torch.tensor(lengths))
    total = [torch.zeros_like(g) for g in gparams]
    for i, n in enumerate(lengths):
        alone, gx_alone, gp_alone = grads(m, x[i : i + 1, :, :n], upstream[i : i + 1])
        torch.testing.assert_close(logits[i : i + 1], alone, **TOL)
        torch.testing.assert_close(gx[i, :, :n], gx_alone[0], **TOL)
        assert bool((gx[i, :, n:] == 0).all()), "the padding reached the logits"
        total = [t + g for t, g in zip(total, gp_alone, strict=True)]
    for g, t in zip(gparams, total, strict=True):
        torch.testing.assert_close(g, t, **TOL)


@pytest.mark.parametrize("name", MODELS)
def test_full_lengths_give_todays_logits(name: str) -> None:
    m = model(name, "cbam")
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x, torch.full((3,), 9)), m(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_bad_lengths_get_one_line_errors(name: str) -> None:
    m = model(name, "se")
    x = torch.randn(2, 2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\].*got 7"):
        m(x, torch.tensor([7, 2]))
    with pytest.raises(TypeError, match="integer"):
        m(x, torch.tensor([0.5, 1.0]))


def test_small_cnn_takes_lengths_for_sequences_only() -> None:
    m = SmallCNN(1, 2, attention="se", dims=2)
    with pytest.raises(ValueError, match="lengths is for 1D models"):
        m(torch.randn(2, 1, 4, 4), torch.tensor([4, 2]))
