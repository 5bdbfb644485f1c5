"""Padded batches through the baselines (SE, ECA, CBAM): each sample as if it were alone, unpadded.

The property that matters (issue 12): a sample padded inside a batch with others of different
lengths gets the same y on its real part and the same gradients (x and parameters) as the same
sample alone, in float64 at 1e-10, whatever the padding holds (+1e3 / -1e3 must not leak).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import cafusion
from cafusion import masking

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

BASELINES = ["se", "eca", "cbam"]
TOL = {"rtol": 1e-10, "atol": 1e-10}


def make(name: str, channels: int) -> nn.Module:
    kwargs = {} if name == "eca" else {"reduction": 2}
    layer = cafusion.create_attention(name, channels, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def pad(samples: list[Tensor], value: float) -> tuple[Tensor, Tensor]:
    """(C, L_i) samples -> (B, C, max L_i) filled with ``value`` past each end, and the lengths."""
    lengths = torch.tensor([s.shape[-1] for s in samples])
    x = torch.full((len(samples), samples[0].shape[0], int(lengths.max())), value, dtype=torch.float64)
    for i, s in enumerate(samples):
        x[i, :, : s.shape[-1]] = s
    return x, lengths


def grads(layer: nn.Module, x: Tensor, upstream: Tensor, **kw: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """y, dL/dx and dL/dparams for L = sum(y * upstream)."""
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = layer(x, **kw)
    (y * upstream).sum().backward()
    assert x.grad is not None
    return y.detach(), x.grad, [p.grad.clone() for p in layer.parameters() if p.grad is not None]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(BASELINES),
    lengths=st.lists(st.integers(1, 12), min_size=2, max_size=4),
    channels=st.integers(2, 12),
    fill=st.sampled_from([1e3, -1e3]),
    seed=st.integers(0, 2**16),
)
def test_padded_sample_equals_the_sample_alone(
    name: str, lengths: list[int], channels: int, fill: float, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = make(name, channels)
    samples = [torch.randn(channels, n, dtype=torch.float64) for n in lengths]
    upstream = [torch.randn(channels, n, dtype=torch.float64) for n in lengths]
    x, lens = pad(samples, fill)
    up, _ = pad(upstream, 0.0)  # the loss reads the real part of y only
    y, gx, gparams = grads(layer, x, up, lengths=lens)
    total = [torch.zeros_like(g) for g in gparams]
    for i, n in enumerate(lengths):
        y_alone, gx_alone, gp_alone = grads(layer, samples[i][None], upstream[i][None])
        torch.testing.assert_close(y[i, :, :n], y_alone[0], **TOL)
        torch.testing.assert_close(gx[i, :, :n], gx_alone[0], **TOL)
        assert bool((gx[i, :, n:] == 0).all()), "the padding got a gradient: it entered the statistics"
        total = [t + g for t, g in zip(total, gp_alone, strict=True)]
    for g, t in zip(gparams, total, strict=True):
        torch.testing.assert_close(g, t, **TOL)


@pytest.mark.parametrize("name", BASELINES)
def test_mask_on_a_2d_map_uses_the_real_positions_only(name: str) -> None:
    """A mask anywhere in a 2D map: the gate is that of the real positions alone (the squeeze ignores order)."""
    layer = make(name, 6)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    mask = torch.rand(2, 4, 5) > 0.4
    mask[:, 0, 0] = True
    y = layer(x.masked_fill(~mask[:, None], 1e3), mask=mask)
    for b in range(2):
        real = x[b][:, mask[b]][None]  # (1, C, n): the real positions as a sequence
        torch.testing.assert_close(y[b][:, mask[b]], layer(real)[0], **TOL)


@pytest.mark.parametrize("name", BASELINES)
def test_full_lengths_and_no_lengths_agree(name: str) -> None:
    layer = make(name, 8)
    x = torch.randn(3, 8, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x, lengths=torch.full((3,), 7)), layer(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer(x, mask=torch.ones(3, 7, dtype=torch.bool)), layer(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", BASELINES)
def test_padding_context_reaches_layers_inside_sequential(name: str) -> None:
    """nn.Sequential passes one tensor; ``masking.padding`` gives the layers inside the lengths."""
    layer = make(name, 4)
    model = nn.Sequential(nn.Identity(), layer)
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 5])
    with masking.padding(lengths):
        inside = model(x)
    torch.testing.assert_close(inside, layer(x, lengths=lengths), rtol=0, atol=0)
    assert not torch.allclose(model(x), inside)  # outside the block: no padding


@pytest.mark.parametrize("name", BASELINES)
def test_torchscript_takes_lengths_and_mask(name: str) -> None:
    layer = make(name, 5).eval()
    scripted = torch.jit.script(layer)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 4])
    mask = torch.rand(3, 4, 6) > 0.3
    mask[:, 0, 0] = True
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, lengths), layer(x, lengths=lengths), rtol=0, atol=0)
        torch.testing.assert_close(scripted(x, None, mask), layer(x, mask=mask), rtol=0, atol=0)
        torch.testing.assert_close(scripted(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", BASELINES)
def test_bad_padding_arguments_get_one_line_errors(name: str) -> None:
    layer = make(name, 4)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"lengths": torch.tensor([0.5, 1.0])}, TypeError, r"integer \(absolute\) lengths.*\(rel \* L\)"),
        ({"lengths": torch.tensor([5, 6])}, ValueError, r"lengths must lie in \[1, 5\].*got 6"),
        ({"lengths": torch.tensor([0, 5])}, ValueError, r"lengths must lie in \[1, 5\].*got 0"),
        ({"lengths": torch.tensor([5, 5, 5])}, ValueError, r"lengths must have shape \(2,\)"),
        ({"lengths": [5, 5]}, TypeError, "lengths must be an integer torch.Tensor"),
        ({"mask": torch.ones(2, 5)}, TypeError, "mask must have dtype torch.bool"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, r"mask must have shape \(2, 5\)"),
        ({"mask": torch.tensor([[True] * 5, [False] * 5])}, ValueError, "mask has no True position for sample 1"),
        (
            {"lengths": torch.tensor([5, 5]), "mask": torch.ones(2, 5, dtype=torch.bool)},
            ValueError,
            "not both",
        ),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match) as info:
            layer(x, **kwargs)
        assert "\n" not in str(info.value)
