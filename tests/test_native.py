"""The C++ CPU backend (cafusion/kernels/backends/native): each pass against plain torch (both pooling
variants), the layouts the kernels copy first, the small path with both kinds of product (loops, matmul),
the C++ autograd node, the output-buffer cache, the measured pooling-variant choice, and the fallback when the
kernels are off or cannot be built.

The backend's parity with the reference composite in every configuration, rank, layout and dtype is
tests/test_backends.py's; the block-level suites (test_fastpath, test_golden, ...) run through these
kernels too, since they are the CPU default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor

from cafusion import ChannelAttentionFusionT
from cafusion.kernels.backends import native
from cafusion.kernels.backends.pytorch import passes as torch_passes
from tests import opcall

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def lib() -> ModuleType:
    """The compiled kernels. This machine (and CI) has a compiler: not building is a failure, not a skip."""
    module = native.library()
    assert module is not None, "the native CPU kernels did not build"
    return module


@pytest.fixture(params=[False, True], ids=["rows", "gathers"])
def gathers(request: pytest.FixtureRequest, lib: ModuleType) -> Iterator[bool]:
    """Both pooling variants for short float32 rows (row by row, or 16 rows at a time through gathers):
    a measurement per machine (or CAFUSION_POOL_GATHERS) picks one, so both must give the same, exact results."""
    before, limit = lib.gather_rows(), lib.gather_max_n()
    lib.set_gather_rows(request.param)
    lib.set_gather_max_n(1024)  # every row length the gathers can take
    try:
        yield request.param
    finally:
        lib.set_gather_rows(before)
        lib.set_gather_max_n(limit)


def views(shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Tensor]:
    """(B, C, N) views of a random map in the layouts the kernels take."""
    x = torch.randn(shape).to(dtype)
    out = {"contiguous": x.flatten(2)}
    if x.dim() == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last).flatten(2)
    if x.dim() == 5:
        out["channels_last_3d"] = x.contiguous(memory_format=torch.channels_last_3d).flatten(2)
    out["row_strided"] = torch.randn(shape[0], shape[1] * 2, *shape[2:]).to(dtype)[:, ::2].flatten(2)
    return out


SHAPES = [(2, 5, 7, 7), (3, 17, 1, 1), (1, 1, 40, 30), (2, 300, 4, 5), (2, 3, 4, 5, 6), (4, 6, 33), (5, 9, 10)]


def first_max(x3: Tensor) -> tuple[Tensor, Tensor]:
    """torch's own (max, first argmax) along N, in float64 (exact for every input dtype)."""
    return x3.double().max(dim=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pool_stats(lib: ModuleType, gathers: bool, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert lib.gather_rows() == gathers
    for name, x3 in views(shape, dtype).items():
        avg, mx, idx = lib.pool_stats(x3, True)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert avg.dtype == mx.dtype == acc and idx.dtype == torch.int64
        torch.testing.assert_close(avg.double(), x3.double().mean(2), rtol=1e-6, atol=1e-7, msg=name)
        want_max, want_idx = first_max(x3)
        assert torch.equal(mx.double(), want_max), name
        assert torch.equal(idx, want_idx), name
        avg2, mx2, none = lib.pool_stats(x3, False)
        assert none is None and torch.equal(avg2, avg) and torch.equal(mx2, mx)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_stats_ties_nan_and_infinities(lib: ModuleType, gathers: bool, layout: str) -> None:
    x = torch.zeros(2, 4, 5, 7)
    x[0, 0] = 3.0  # all equal: first position
    x[0, 1, 2, 3] = 5.0
    x[0, 1, 4, 6] = 5.0  # repeated maximum: the earlier one
    x[0, 2] = float("-inf")  # all -inf: position 0
    x[0, 3, 1, 1] = float("nan")
    x[0, 3, 3, 3] = float("nan")  # NaN: max is NaN, index the first NaN
    x[1, 0, 4, 6] = 1.0  # the maximum in the very last position (a tail lane)
    x[1, 1, 0, 0] = float("inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x3 = x.flatten(2)
    _, mx, idx = lib.pool_stats(x3, True)
    want_max, want_idx = first_max(x3)
    assert torch.equal(mx.double().nan_to_num(7.0), want_max.nan_to_num(7.0))
    assert torch.equal(idx, want_idx)
    assert idx[0, 3].item() == 1 * 7 + 1 and idx[0, 1].item() == 2 * 7 + 3 and idx[0, 2].item() == 0


def test_long_rows_keep_float64_like_means(lib: ModuleType) -> None:
    """Float partial sums are flushed into a double: a 1e6-long row with a large offset stays exact-ish."""
    x3 = (torch.rand(2, 3, 1_000_000, dtype=torch.float64) + 1000.0).float()
    avg, _, _ = lib.pool_stats(x3, False)
    truth = x3.double().mean(2)
    assert ((avg.double() - truth).abs() / truth).max() < 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_scale_is_torch_mul_bit_for_bit(lib: ModuleType, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    for name, x3 in views(shape, dtype).items():
        ca = torch.rand(x3.shape[:2])
        y3 = lib.scale(x3, ca)
        assert y3.dtype == dtype and y3.stride() == torch.empty_like(x3).stride(), name
        assert torch.equal(y3, x3 * ca.to(dtype).unsqueeze(2)), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_grad_ca_and_grad_input(lib: ModuleType, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """dy and x in the same layout (the op brings dy to x's layout first: test_backward_takes_dy_in_any_layout)."""
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    for (name, x3), dy3 in zip(views(shape, dtype).items(), views(shape, dtype).values(), strict=True):
        assert dy3.stride() == x3.stride(), name
        got = lib.grad_ca(dy3, x3)
        want = (dy3.double() * x3.double()).sum(2)
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=name)

        acc = got.dtype
        ca, g_avg, g_max = (
            torch.rand(x3.shape[:2]),
            torch.randn(x3.shape[:2], dtype=acc),
            torch.randn(x3.shape[:2], dtype=acc),
        )
        _, _, idx = lib.pool_stats(x3, True)
        dx3 = lib.grad_input(dy3, ca, g_avg, g_max, idx)
        assert dx3.stride() == torch.empty_like(dy3).stride(), name
        want_dx = torch_passes.grad_input(dy3, ca, g_avg, g_max, idx)
        torch.testing.assert_close(dx3, want_dx, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 5, 10, 15, 16])
def test_tiny_rows_give_the_same_bits_as_any_other_row(lib: ModuleType, n: int, dtype: torch.dtype) -> None:
    """Dense rows shorter than 16 run loops of a fixed length (passes.h, with_fixed_n); every other
    row-layout tensor the general ones. The same values through both (a dense map, and the same map as
    every other channel of a wider one) give the same numbers, bit for bit."""
    gen = torch.Generator().manual_seed(n)
    wide = torch.randn(7, 2 * 9, n, generator=gen).to(dtype)
    strided, dense = wide[:, ::2], wide[:, ::2].contiguous()
    wide_dy = torch.randn(wide.shape, generator=gen).to(dtype)
    dy_strided, dy_dense = wide_dy[:, ::2], wide_dy[:, ::2].contiguous()
    ca = torch.rand(7, 9, generator=gen).to(dtype)
    assert torch.equal(lib.scale(dense, ca), lib.scale(strided, ca))
    d_ca = lib.grad_ca(dy_dense, dense)
    assert torch.equal(d_ca, lib.grad_ca(dy_strided, strided))
    _, _, idx = lib.pool_stats(dense, True)
    g_avg, g_max = (torch.randn(7, 9, generator=gen).to(d_ca.dtype) for _ in range(2))
    got = lib.grad_input(dy_dense, ca, g_avg, g_max, idx)
    assert torch.equal(got, lib.grad_input(dy_strided, ca, g_avg, g_max, idx))


PADDED_SHAPES = [(5, 25, 40), (4, 33, 150), (3, 16, 7), (2, 300, 20), (6, 3, 1000)]


def padded_views(shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, Tensor]:
    """(B, C, L) maps contiguous, channels-last ((B, L, C) permuted) and with padding values of +-1e3."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen).to(dtype)
    return {"contiguous": x, "channels_last": x.transpose(1, 2).contiguous().transpose(1, 2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PADDED_SHAPES)
def test_pool_stats_with_lengths(lib: ModuleType, gathers: bool, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Lengths (and the same padding as a mask) pool each row's real prefix only; padding never enters."""
    b, _, n = shape
    lengths = torch.randint(1, n + 1, (b,), generator=torch.Generator().manual_seed(n))
    lengths[0] = n
    mask = torch.arange(n) < lengths[:, None]
    tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-3)
    for name, x3 in padded_views(shape, dtype).items():
        x3 = x3.clone()
        x3.masked_fill_(~mask[:, None, :], 1e3)  # would swamp both the mean and the max
        got = lib.pool_stats(x3, True, lengths)
        assert torch.equal(lib.pool_stats(x3, True, lengths.int())[2], got[2]), name
        for i, stat in enumerate(lib.pool_stats(x3, True, mask)):
            assert torch.equal(stat, got[i]), f"{name}: mask and lengths differ"
        for s in range(b):
            row = x3[s, :, : int(lengths[s])].double()
            torch.testing.assert_close(got[0][s].double(), row.mean(1), rtol=tol, atol=tol, msg=name)
            want_max, want_idx = row.max(dim=1)
            assert torch.equal(got[1][s].double(), want_max), name
            assert torch.equal(got[2][s], want_idx), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", PADDED_SHAPES[:3])
def test_grad_input_with_lengths(lib: ModuleType, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The mean's gradient reaches real positions only, with lengths as with the same padding as a mask."""
    b, _, n = shape
    lengths = torch.randint(1, n + 1, (b,), generator=torch.Generator().manual_seed(n))
    mask = torch.arange(n) < lengths[:, None]
    for name, x3 in padded_views(shape, dtype).items():
        dy3 = torch.empty_like(x3).copy_(torch.randn(x3.shape))  # x's layout (the op brings dy to it)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        ca, g_avg, g_max = torch.rand(shape[:2]), torch.randn(shape[:2], dtype=acc), torch.randn(shape[:2], dtype=acc)
        _, _, idx = lib.pool_stats(x3, True, lengths)
        got = lib.grad_input(dy3, ca, g_avg, g_max, idx, lengths)
        want = torch_passes.grad_input(dy3, ca, g_avg, g_max, idx, mask)
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=name)
        assert torch.equal(lib.grad_input(dy3, ca, g_avg, g_max, idx, mask), got), name


def test_kernel_checks_lengths_before_any_work() -> None:
    """Lengths reach the CPU kernel unchecked in value (a Python check would cost more than a small
    block's forward): the kernel refuses them with the Python side's one-line ValueError."""
    from cafusion.kernels import op

    named = dict(zip(opcall.PARAM_NAMES, block_params(8), strict=True))
    fusion, gate, act = CONFIG

    def call(x: Tensor, valid: Tensor) -> Any:
        args = opcall.ordered(
            op.caft_forward, x=x, valid=valid, **named, fusion=fusion, gate=gate, act=act, need_index=True
        )
        return op.caft_forward(*args)

    for bad in (torch.tensor([3, 7]), torch.tensor([0, 2])):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, 6\] \(the last dim of x\), got"):
            call(torch.randn(2, 8, 6), bad)
    with pytest.raises(ValueError, match=r"lengths need x of shape \(B, C, L\)"):
        call(torch.randn(2, 8, 3, 6), torch.tensor([3, 2]))


def block_params(channels: int, dtype: torch.dtype = torch.float32, **cfg: Any) -> list[Tensor | None]:
    """The nine parameters of the op (``opcall.PARAM_NAMES``) from a fresh block."""
    block = ChannelAttentionFusionT(channels, reduction=2, learnable_temperature=True, dtype=dtype, **cfg)
    return [*(None if t is None else t.detach() for t in block._tensors()), block.get_T().detach()]


CONFIG = ("softmax", "sigmoid", "relu")


def test_backward_takes_dy_in_any_layout(lib: ModuleType) -> None:
    """Autograd may hand over any strides (an expanded scalar for y.sum().backward(), a contiguous dy for
    a channels_last y): dx is the same as for dy in x's layout, bit for bit, and has x's layout."""
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    params = block_params(8)
    _, _, _, avg, mx, idx = lib.forward(*opcall.forward_args(x, params, CONFIG, True))

    def backward(dy: Tensor) -> list[Tensor]:
        return list(lib.backward(*opcall.backward_args(dy, None, None, x, (avg, mx, idx), params, CONFIG, True)))

    dy = torch.randn_like(x)
    assert dy.stride() == x.stride()
    for given, same_values in ((dy.contiguous(), dy), (torch.ones(()).expand(x.shape), torch.ones_like(x))):
        got, want = backward(given), backward(same_values)
        assert got[0].stride() == x.stride()
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert torch.equal(a, b), i


@pytest.mark.parametrize("layout", ["spatial_stride_2", "channels_last_every_other_channel", "transposed_spatial"])
def test_layouts_the_kernels_do_not_take_are_copied_first(lib: ModuleType, layout: str) -> None:
    """A map the passes cannot walk (no unit stride along N, not dense channels_last) is made contiguous
    first: every output and gradient equals the contiguous copy's, bit for bit."""
    big = torch.randn(2, 16, 6, 6)
    x = {
        "spatial_stride_2": big[..., ::2],
        "channels_last_every_other_channel": big.contiguous(memory_format=torch.channels_last)[:, ::2],
        "transposed_spatial": big.transpose(-1, -2).contiguous().transpose(-1, -2),
    }[layout]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    params = block_params(x.shape[1])
    got = lib.forward(*opcall.forward_args(x, params, CONFIG, True))
    want = lib.forward(*opcall.forward_args(x.contiguous(), params, CONFIG, True))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), i
    dy = torch.randn(x.shape)
    stats = tuple(got[3:])
    back = lib.backward(*opcall.backward_args(dy, None, None, x, stats, params, CONFIG, True))
    back_c = lib.backward(*opcall.backward_args(dy, None, None, x.contiguous(), stats, params, CONFIG, True))
    for i, (a, b) in enumerate(zip(back, back_c, strict=True)):
        assert torch.equal(a, b), i


def test_empty_batch(lib: ModuleType) -> None:
    x3 = torch.randn(0, 4, 9)
    avg, mx, idx = lib.pool_stats(x3, True)
    assert avg.shape == mx.shape == idx.shape == (0, 4)
    assert lib.scale(x3, torch.rand(0, 4)).shape == (0, 4, 9)


def reference_grads(block: ChannelAttentionFusionT, x: Tensor) -> dict[str, Tensor]:
    """Outputs and gradients of one training step, for the block's current ``impl``."""
    block.zero_grad(set_to_none=True)
    xin = x.detach().clone().requires_grad_(True)
    outputs = block(xin)  # (y, ca, fusion_w), or (y, ca) with sum fusion
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in outputs)
    loss.backward()
    assert xin.grad is not None
    grads = {name: t.detach() for name, t in zip(("y", "ca", "w")[: len(outputs)], outputs, strict=True)}
    grads["x"] = xin.grad
    grads.update({n: p.grad for n, p in block.named_parameters() if p.grad is not None})
    return grads


MATMULS = ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm")


@pytest.mark.parametrize("side", ["loops", "matmul"])
@pytest.mark.parametrize(("batch", "channels", "reduction"), [(2, 32, 4), (8, 256, 2)])
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("fusion", ["sum", "softmax"])
def test_small_path_both_product_kinds_match_the_reference(
    lib: ModuleType, batch: int, channels: int, reduction: int, side: str, act: str, gate: str, fusion: str
) -> None:
    """The small path runs each matrix product as loops up to a size threshold and as ATen's matmul above
    it, and gates and activations as loops below 2048 values and as ATen's vectorised ops from there
    (2x32: 64 gate values; 8x256: 2048). Each product kind, forced here through the threshold, is exact
    (float64, 1e-10) in the forward and every gradient, and what ran is what was expected."""
    block = ChannelAttentionFusionT(
        channels,
        reduction=reduction,
        fusion=fusion,
        act=act,
        gate=gate,
        learnable_temperature=True,
        return_fusion_weights=True,
        dtype=torch.float64,
    )
    x = torch.randn(batch, channels, 3, 3, dtype=torch.float64)
    threshold = lib.loop_macs()
    lib.set_loop_macs(1 << 40 if side == "loops" else 0)
    try:
        with torch.profiler.profile() as prof:
            fast = reference_grads(block, x)
    finally:
        lib.set_loop_macs(threshold)
    seen = {e.name for e in prof.events()}
    assert bool(seen & set(MATMULS)) == (side == "matmul"), seen & set(MATMULS)
    assert ("aten::sigmoid" in seen or "aten::hardsigmoid" in seen) == (batch * channels >= 2048)
    block.impl = "reference"
    ref = reference_grads(block, x)
    assert fast.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-10, msg=name)


STEP = """
import sys, torch
from cafusion import ChannelAttentionFusionT
torch.manual_seed(0)
block = ChannelAttentionFusionT(16, reduction=4, return_fusion_weights=True, dtype=torch.float64, impl="fast")
x = torch.randn(3, 16, 5, 5, dtype=torch.float64, requires_grad=True)
y, ca, w = block(x)
gen = torch.Generator().manual_seed(3)
sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (y, ca, w)).backward()
out = {"y": y, "ca": ca, "w": w, "x": x.grad, **{n: p.grad for n, p in block.named_parameters()}}
torch.save({k: v.detach() for k, v in out.items()}, sys.argv[1])
print(type(y.grad_fn).__name__, y.grad_fn.name())
"""


def test_cpu_autograd_node_is_the_cpp_one_and_without_the_kernels_the_python_one(tmp_path: Path) -> None:
    """With the kernels built the op's CPU autograd is the C++ node (no Python per step); with
    CAFUSION_NATIVE=0 it is the Python formula over the PyTorch backend, and the results agree (1e-10)."""
    results, nodes = {}, {}
    for flag in ("1", "0"):
        out = tmp_path / f"native{flag}.pt"
        nodes[flag] = run_python(STEP, str(out), CAFUSION_NATIVE=flag)
        results[flag] = torch.load(out)
    assert nodes["1"] == "CppFunction torch::autograd::CppNode<cafusion::CaftFunction>", nodes["1"]
    kind, name = nodes["0"].split()
    assert kind == name and name.startswith("GeneratedBackwardFor_cafusion_caft_forward"), nodes["0"]
    assert results["1"].keys() == results["0"].keys() and len(results["1"]) == 4 + 8
    for key, value in results["1"].items():
        torch.testing.assert_close(value, results["0"][key], rtol=1e-10, atol=1e-10, msg=key)


def test_output_buffers_are_reused_and_the_cache_is_bounded(lib: ModuleType) -> None:
    x3 = torch.randn(4, 64, 32, 32).flatten(2)  # 1 MiB: just big enough for the cache
    ca = torch.rand(4, 64)
    lib.cache_set_limit(1 << 30)
    first = lib.scale(x3, ca)
    address = first.data_ptr()
    del first
    assert lib.cache_held() >= x3.numel() * 4
    again = lib.scale(x3, ca)
    assert again.data_ptr() == address  # the freed buffer came back, pages already mapped
    assert torch.equal(again, x3 * ca.unsqueeze(2))
    again += 1.0  # an ordinary tensor: in-place use is fine
    del again
    assert native.set_cache_limit(0) == 0  # turning it off frees everything held
    lib.scale(x3, ca)
    assert native.cache_held() == 0
    native.set_cache_limit(1 << 30)
    with native.cache_disabled():
        assert lib.cache_limit() == 0
        lib.scale(x3, ca)
        assert native.cache_held() == 0
    assert lib.cache_limit() == 1 << 30


def test_outputs_from_the_cache_are_ordinary_tensors(lib: ModuleType, tmp_path: Path) -> None:
    """Resizable (``out=`` arguments resize), savable, shareable between processes."""
    x3 = torch.randn(4, 64, 32, 32).flatten(2)
    y = lib.scale(x3, torch.rand(4, 64))
    want = y.clone()
    torch.save(y, tmp_path / "y.pt")
    assert torch.equal(torch.load(tmp_path / "y.pt"), want)
    y.share_memory_()
    assert y.is_shared() and torch.equal(y, want)
    z = lib.scale(x3, torch.rand(4, 64))
    z.resize_(z.numel() + 7)  # a bigger block from the same allocator
    z[-1] = 1.0
    assert z.shape == (x3.numel() + 7,)


def test_cache_limit_from_the_environment() -> None:
    code = "from cafusion.kernels.backends import native; print(native.library().cache_limit())"
    assert run_python(code, CAFUSION_CPU_CACHE_MB="3") == str(3 * 2**20)


FAILED_BUILD = """
import warnings, torch
from cafusion import ChannelAttentionFusionT
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    block = ChannelAttentionFusionT(8, reduction=2)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    for _ in range(2):
        y, _ = block(x)
        y.sum().backward()
    fast, _ = ChannelAttentionFusionT(8, reduction=2, impl="fast")(x)
failed = [w for w in caught if issubclass(w.category, RuntimeWarning) and "could not be built" in str(w.message)]
print(len(failed), failed[0].filename, list(y.shape), x.grad is not None, y.grad_fn.name(), fast.grad_fn.name())
"""


def test_a_failed_build_warns_once_and_the_fast_path_still_runs(tmp_path: Path) -> None:
    """A compiler that fails: one warning, pointing at the user's line; the default path then runs the
    composite (faster there than the op's PyTorch backend), and impl="fast" the op on the PyTorch backend
    with the Python autograd formula, forward and backward."""
    out = run_python(FAILED_BUILD, CAFUSION_NATIVE_DIR=str(tmp_path), CXX="false")
    count, filename, shape, has_grad, node, fast_node = out.splitlines()[-1].replace(", ", ",").split(" ")
    assert (count, filename, has_grad) == ("1", "<string>", "True"), out
    assert shape == "[2,8,3,3]" and node == "MulBackward0", out  # y = x * ca of the composite
    assert fast_node.startswith("GeneratedBackwardFor_cafusion"), out


def test_the_warning_names_the_compiler_error_not_the_build_log(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(verbose: bool = False) -> ModuleType:
        raise RuntimeError(
            "Error building extension:\nFAILED: caft_cpu.o\nc++ -O3 ...\ncaft_cpu.cpp:1: error: no compiler"
        )

    monkeypatch.setattr(native, "build", broken)
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"could not be built \(caft_cpu.cpp:1: error: no compiler\)"):
            assert native.library() is None
    finally:
        native.library.cache_clear()


def run_python(code: str, *argv: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_environment_switch_turns_the_kernels_off() -> None:
    code = "from cafusion.kernels.backends import native; print(native.enabled(), native.library())"
    assert run_python(code, CAFUSION_NATIVE="0") == "False None"


def test_pooling_variant_from_the_environment() -> None:
    code = (
        "from cafusion.kernels.backends import native; lib = native.library(); "
        "print(lib.gather_rows(), lib.gather_max_n())"
    )
    assert run_python(code, CAFUSION_POOL_GATHERS="1") == "True 1024"
    assert run_python(code, CAFUSION_POOL_GATHERS="0") == "False 0"


def test_pooling_variant_is_measured_once_and_remembered(
    lib: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(native.DIR_ENV, str(tmp_path))
    monkeypatch.delenv(native.GATHER_ENV, raising=False)
    native.build_dir().mkdir(parents=True)
    record = native.build_dir() / native.POOL_RECORD
    before, limit = lib.gather_rows(), lib.gather_max_n()
    try:
        on = native.choose_pool_variant(lib)
        saved = json.loads(record.read_text())
        assert saved["gathers"] is on and saved["gather_max_n"] == lib.gather_max_n()
        assert saved["gather_max_n"] in (0, 16, 49, 196, 784)
        assert set(saved["seconds"]["16"]) == {"rows", "gathers"}  # the first length is always compared
        # a later load reads the record instead of timing again
        record.write_text(json.dumps({"gathers": True, "gather_max_n": 196}))
        assert native.choose_pool_variant(lib) is True and lib.gather_max_n() == 196
        record.write_text(json.dumps({"gathers": False, "gather_max_n": 0}))
        assert native.choose_pool_variant(lib) is False and lib.gather_max_n() == 0
        monkeypatch.setenv(native.GATHER_ENV, "1")  # the environment overrides the record
        assert native.choose_pool_variant(lib) is True and lib.gather_max_n() == 1024
    finally:
        lib.set_gather_rows(before)
        lib.set_gather_max_n(limit)


def test_build_name_changes_with_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    before = native.build_name()
    monkeypatch.setattr(native, "_cpu_id", lambda: "another cpu")
    assert native.build_name() != before
    assert native.build_name().startswith("cafusion_cpu_")


def test_build_native_command(tmp_path: Path) -> None:
    """``cafusion build-native`` reports the cached build; a broken compiler is one line and exit 1."""
    ok = subprocess.run([sys.executable, "-m", "cafusion", "build-native"], capture_output=True, text=True)
    assert ok.returncode == 0 and "native CPU kernels ready" in ok.stdout, ok.stderr
    env = {**os.environ, "CAFUSION_NATIVE_DIR": str(tmp_path), "CXX": "false"}
    bad = subprocess.run([sys.executable, "-m", "cafusion", "build-native"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    notice, error = bad.stderr.strip().splitlines()  # the one-line progress notice, then the one-line error
    assert notice.startswith("cafusion: compiling the C++ CPU kernels for this machine"), bad.stderr
    assert "build-native" not in notice  # no advice to run the command being run
    assert error.startswith("cafusion: error: could not build the native CPU kernels"), bad.stderr
    off = subprocess.run(
        [sys.executable, "-m", "cafusion", "build-native"],
        capture_output=True,
        text=True,
        env={**os.environ, "CAFUSION_NATIVE": "0"},
    )
    assert off.returncode == 1 and "switched off" in off.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 3, 1), (5, 16, 17), (100, 3, 40), (4, 64, 196), (2, 1, 1000), (3, 16, 1024)])
def test_pool_variants_give_the_same_bits(shape: tuple[int, int, int], dtype: torch.dtype, lib: ModuleType) -> None:
    """AVX-512 gathers and row kernels add each row in the same order: outputs and gradients are equal."""
    before, limit = lib.gather_rows(), lib.gather_max_n()
    lib.set_gather_max_n(1024)
    x = torch.randn(*shape).to(dtype)
    block = ChannelAttentionFusionT(shape[1], reduction=1, fusion="softmax", return_fusion_weights=True)
    results = []
    for rows in (False, True):
        lib.set_gather_rows(rows)
        xg = x.clone().requires_grad_(True)
        y, ca, w = block(xg)
        (y.float().square().sum() + ca.float().sum()).backward()
        results.append([y, ca, w, xg.grad] + [p.grad.clone() for p in block.parameters() if p.grad is not None])
        block.zero_grad(set_to_none=True)
    lib.set_gather_rows(before)
    lib.set_gather_max_n(limit)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
