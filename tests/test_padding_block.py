"""Padded batches through the block: a padded sample behaves exactly as the same sample alone.

The property that matters (issue "Variable-length sequences"): for every implementation, a sample
padded inside a batch with others of different lengths gets the same y on its real part, the same ca
and fusion_w, and the same gradients (x and every parameter) as the sample alone without padding;
float64 at 1e-10, with padding values of +1e3 / -1e3 that must not leak. Lengths are drawn by
hypothesis. The implementations: the composite (impl="reference"), the op through the dispatcher (the
native CPU kernels and their C++ autograd where built), and the PyTorch backend's forward/backward.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from cafusion import ChannelAttentionFusionT, ChannelAttentionFusionTLayer, masking
from cafusion.functional import channel_attention_fusion

L = 12
PATHS = ("reference", "fast")


def _block(fusion: str, learnable: bool, impl: str) -> ChannelAttentionFusionT:
    torch.manual_seed(3)
    block = ChannelAttentionFusionT(
        8,
        reduction=2,
        fusion=fusion,
        learnable_temperature=learnable,
        temperature=0.8,
        return_fusion_weights=True,
        impl=impl,
        dtype=torch.float64,
    )
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def _run(
    block: ChannelAttentionFusionT, x: Tensor, sample: int, lengths: Tensor | None, seed: int
) -> dict[str, Tensor]:
    """Forward, then a loss on one sample's real part only; returns its outputs and every gradient."""
    block.zero_grad()
    xs = x.clone().requires_grad_(True)
    out = block(xs, lengths) if lengths is not None else block(xs)
    y, ca, *rest = out
    n = int(lengths[sample]) if lengths is not None else x.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y[sample, ..., :n].shape, generator=gen, dtype=torch.float64)
    gca = torch.randn(ca[sample].shape, generator=gen, dtype=torch.float64)
    loss = (y[sample, ..., :n] * gy).sum() + (ca[sample] * gca).sum()
    if rest:
        loss = loss + (rest[0][sample] * torch.tensor([0.7, -0.4], dtype=torch.float64)).sum()
    loss.backward()
    assert xs.grad is not None
    result = {"y": y[sample, ..., :n].detach(), "ca": ca[sample].detach(), "dx": xs.grad[sample, ..., :n]}
    if rest:
        result["fusion_w"] = rest[0][sample].detach()
    for name, p in block.named_parameters():
        result["d_" + name] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    if lengths is not None:  # the loss does not see the padding, so its gradient there is exactly zero
        assert torch.count_nonzero(xs.grad[sample, ..., n:]) == 0
    return result


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
@pytest.mark.parametrize("spatial", [(L,), (5, L)], ids=["1d", "2d"])
@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(1, L), min_size=3, max_size=3), sample=st.integers(0, 2))
def test_padded_sample_equals_sample_alone(
    impl: str, fusion: str, spatial: tuple[int, ...], lengths: list[int], sample: int
) -> None:
    block = _block(fusion, learnable=True, impl=impl)
    gen = torch.Generator().manual_seed(sum(lengths) + sample)
    x = torch.randn((3, 8, *spatial), generator=gen, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[b, ..., n:] = 1e3 if b % 2 else -1e3  # padding that would swamp the mean and the max
    lens = torch.tensor(lengths)
    padded = _run(block, x, sample, lens, seed=sample)
    alone = _run(block, x[sample : sample + 1, ..., : lengths[sample]].clone(), 0, None, seed=sample)
    assert padded.keys() == alone.keys()
    for name in padded:
        torch.testing.assert_close(padded[name], alone[name], rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", PATHS)
def test_full_lengths_and_all_true_mask_change_nothing(impl: str) -> None:
    block = _block("softmax", learnable=False, impl=impl)
    x = torch.randn(4, 8, 3, L, dtype=torch.float64)
    plain = block(x)
    full = block(x, torch.full((4,), L))
    everywhere = block(x, mask=torch.ones(4, 3, L, dtype=torch.bool))
    for a, b, c in zip(plain, full, everywhere, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_mask_and_lengths_agree_and_the_fast_path_matches_the_composite() -> None:
    x = torch.randn(3, 8, 4, L, dtype=torch.float64)
    lengths = torch.tensor([L, 5, 1])
    mask = torch.arange(L).expand(3, 4, L) < lengths.view(3, 1, 1)
    ref, fast = _block("softmax", True, "reference"), _block("softmax", True, "fast")
    a, b = ref(x, lengths), fast(x, mask=mask)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


def test_general_mask_ignores_masked_nan_and_inf() -> None:
    """Masked positions may hold anything, NaN included: the statistics never read them."""
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    mask = torch.rand(2, 3, 4) < 0.5
    mask[:, 0, 0] = True
    dirty = x.clone()
    dirty.masked_fill_(~mask.unsqueeze(1), float("nan"))
    for impl in PATHS:
        block = _block("softmax", False, impl)
        _, ca_clean, w_clean = block(x, mask=mask)
        _, ca_dirty, w_dirty = block(dirty, mask=mask)
        torch.testing.assert_close(ca_clean, ca_dirty, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w_clean, w_dirty, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lengths": torch.tensor([3.0, 2.0])}, "lengths must hold integer"),
        ({"lengths": torch.tensor([3, 0])}, r"lengths must lie in \[1, 6\]"),
        ({"lengths": torch.tensor([3, 7])}, r"lengths must lie in \[1, 6\]"),
        ({"lengths": torch.tensor([3])}, r"lengths must have shape \(2,\)"),
        ({"mask": torch.ones(2, 6)}, "mask must have dtype torch.bool"),
        ({"mask": torch.ones(2, 5, dtype=torch.bool)}, r"mask must have shape \(2, 6\)"),
        ({"mask": torch.tensor([[True] * 6, [False] * 6])}, "mask has no True position for sample 1"),
        ({"lengths": torch.tensor([3, 2]), "mask": torch.ones(2, 6, dtype=torch.bool)}, "either lengths"),
    ],
)
def test_bad_padding_arguments_are_refused_up_front(kwargs: dict[str, Any], message: str) -> None:
    block = ChannelAttentionFusionT(8)
    with pytest.raises((ValueError, TypeError), match=message):
        block(torch.randn(2, 8, 6), **kwargs)


def test_functional_form_takes_lengths() -> None:
    block = _block("sum", False, "auto")
    x = torch.randn(2, 8, L, dtype=torch.float64)
    w = [t for t in block._tensors()]
    y, ca, fw = channel_attention_fusion(
        x, *w[:4], fusion="sum", temperature=block.get_T(), lengths=torch.tensor([L, 3])
    )
    y2, ca2 = block(x, torch.tensor([L, 3]))
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(ca, ca2)
    assert fw is None and y.shape == x.shape


def test_drop_in_layer_reads_lengths_from_the_padding_context() -> None:
    """nn.Sequential passes one tensor: masking.padding(...) carries the lengths, scaled through a stride."""
    torch.manual_seed(0)
    layer = ChannelAttentionFusionTLayer(8, keep_last=True)
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 8, 3, stride=2, padding=1), layer)
    x = torch.randn(2, 1, 20)
    lengths = torch.tensor([20, 9])
    with masking.padding(lengths, length=20):
        model(x)
    inside = layer.last_ca
    feats = model[0](x)  # length 10: lengths scale to ceil(len * 10 / 20) = [10, 5]
    _, direct = ChannelAttentionFusionT.forward(layer, feats, torch.tensor([10, 5]))
    torch.testing.assert_close(inside, direct)
    model(x)  # outside the context: no padding
    assert not torch.equal(layer.last_ca, inside)


def test_torch_compile_fullgraph_with_lengths() -> None:
    block = _block("softmax", True, "fast").float()
    x = torch.randn(3, 8, L, requires_grad=True)
    lengths = torch.tensor([L, 4, 7])
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x, lengths)
    want = block(x, lengths)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    got[0].sum().backward()


def test_inductor_inference_with_lengths_matches_eager() -> None:
    """No gradient needed: the op's real outputs must have the fake kernel's shapes (inductor checks them)."""
    layer = ChannelAttentionFusionTLayer(8, reduction=2)
    x, lengths = torch.randn(3, 8, L), torch.tensor([L, 5, 3])
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(x, lengths), layer(x, lengths))


def test_torch_export_with_lengths() -> None:
    block = _block("softmax", False, "fast").float()
    x, lengths = torch.randn(3, 8, L), torch.tensor([L, 4, 7])
    program = torch.export.export(block, (x, lengths))
    torch.testing.assert_close(program.module()(x, lengths)[1], block(x, lengths)[1])


def test_cpu_kernels_serve_padded_batches_in_ci() -> None:
    """The native kernels take masks (not a silent fallback): the op's CPU kernel is the C++ one."""
    code = (
        "import torch; from cafusion.kernels.backends import native; lib = native.library(); "
        "x = torch.randn(2, 3, 5); v = torch.tensor([[1,1,1,0,0],[1,1,1,1,1]], dtype=torch.bool); "
        "avg, mx, idx = lib.pool_stats(x, True, v); "
        "assert torch.allclose(avg[0], x[0, :, :3].mean(1)) and torch.equal(idx[0], x[0, :, :3].argmax(1)); print('ok')"
    )
    if not os.environ.get("CI"):
        from cafusion.kernels.backends import native

        if native.library() is None:
            pytest.skip("native kernels not buildable here (required in CI)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("padding", ["lengths", "mask"])
def test_double_backward_with_padding_matches_the_composite(padding: str) -> None:
    """A gradient penalty on a padded batch: the op's differentiable backward (the composite re-run on
    the saved inputs) gets the lengths as the op got them, (B,) for 1D, and must turn them into the mask."""
    x = torch.randn(3, 8, L, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([L, 5, 2])
    kwargs: dict[str, Any] = (
        {"lengths": lengths} if padding == "lengths" else {"mask": torch.arange(L) < lengths[:, None]}
    )
    results = {}
    for impl in PATHS:
        block = _block("softmax", True, impl)
        out = block(x, **kwargs)
        loss = out[0].square().sum() + out[1].sum() + out[2][:, 0].sum()
        grads = torch.autograd.grad(loss, [x, *block.parameters()], create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results[impl] = torch.autograd.grad(penalty, [x, *block.parameters()])
    for ref, fast in zip(results["reference"], results["fast"], strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
