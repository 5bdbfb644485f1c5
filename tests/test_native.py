"""The C++ CPU kernels (cafusion/kernels/native): each pass against plain torch, the small path on
both of its sides (loops and ATen), the output-buffer cache, and the fallback when they are off.

The whole-block parity suites (test_fastpath, test_parity, test_golden, ...) run through these
kernels too, since they are the CPU default; here each piece is pinned down on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor

from cafusion import ChannelAttentionFusionT
from cafusion.kernels import cpu, native

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def lib() -> ModuleType:
    """The compiled kernels. This machine (and CI) has a compiler: not building is a failure, not a skip."""
    module = native.library()
    assert module is not None, "the native CPU kernels did not build"
    return module


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


SHAPES = [(2, 5, 7, 7), (3, 17, 1, 1), (1, 1, 40, 30), (2, 300, 4, 5), (2, 3, 4, 5, 6), (4, 6, 33)]


def first_max(x3: Tensor) -> tuple[Tensor, Tensor]:
    """torch's own (max, first argmax) along N, in float64 (exact for every input dtype)."""
    return x3.double().max(dim=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pool_stats(lib: ModuleType, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    for name, x3 in views(shape, dtype).items():
        assert native.layout_ok(x3), name
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
def test_pool_stats_ties_nan_and_infinities(lib: ModuleType, layout: str) -> None:
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
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    for name, x3 in views(shape, dtype).items():
        dy3 = native.like(torch.randn(x3.shape).to(dtype), x3)
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
        torch.testing.assert_close(dx3, cpu.grad_input(dy3, ca, g_avg, g_max, idx), rtol=tol, atol=tol, msg=name)


def test_gradient_of_another_layout_is_brought_to_x_layout() -> None:
    x3 = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).flatten(2)
    for dy3 in (torch.randn(2, 8, 16), torch.ones(()).expand(2, 8, 16)):
        got = native.like(dy3, x3)
        assert got.stride() == x3.stride() and torch.equal(got, dy3)
    same = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).flatten(2)
    assert native.like(same, x3) is same


def test_layouts_the_kernels_do_not_take_fall_back() -> None:
    x = torch.randn(2, 8, 6, 6)
    assert not native.layout_ok(x[..., ::2].flatten(2))  # spatial stride 2
    channels_last_every_other_channel = x.contiguous(memory_format=torch.channels_last)[:, ::2].flatten(2)
    assert not native.layout_ok(channels_last_every_other_channel)
    assert native.for_tensor(x.flatten(2).to(torch.int32)) is None


def test_empty_batch(lib: ModuleType) -> None:
    x3 = torch.randn(0, 4, 9)
    avg, mx, idx = lib.pool_stats(x3, True)
    assert avg.shape == mx.shape == idx.shape == (0, 4)
    assert lib.scale(x3, torch.rand(0, 4)).shape == (0, 4, 9)


def reference_grads(block: ChannelAttentionFusionT, x: Tensor) -> dict[str, Tensor]:
    """Outputs and gradients of one training step, for the block's current ``impl``."""
    block.zero_grad(set_to_none=True)
    xin = x.detach().clone().requires_grad_(True)
    y, ca, w = block(xin)
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (y, ca, w))
    loss.backward()
    assert xin.grad is not None
    grads = {"y": y.detach(), "ca": ca.detach(), "w": w.detach(), "x": xin.grad}
    grads.update({n: p.grad for n, p in block.named_parameters() if p.grad is not None})
    return grads


@pytest.mark.parametrize(
    ("batch", "channels", "reduction", "side"),
    [(2, 32, 4, "loops"), (8, 256, 2, "aten")],  # B*C*H = 512 vs 131072 multiply-adds per layer
)
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_small_path_both_sides_match_the_reference(
    batch: int, channels: int, reduction: int, side: str, act: str, gate: str
) -> None:
    """The small path runs as loops below native's threshold and as ATen calls above; both are exact."""
    block = ChannelAttentionFusionT(
        channels,
        reduction=reduction,
        act=act,
        gate=gate,
        learnable_temperature=True,
        return_fusion_weights=True,
        dtype=torch.float64,
    )
    x = torch.randn(batch, channels, 3, 3, dtype=torch.float64)
    hidden = block.hidden
    assert (batch * channels * max(hidden, 16) <= 1 << 16) == (side == "loops")
    fast = reference_grads(block, x)
    block.impl = "reference"
    ref = reference_grads(block, x)
    assert fast.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=1e-10, msg=name)


def test_block_without_the_kernels_gives_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    block = ChannelAttentionFusionT(16, reduction=4, return_fusion_weights=True, dtype=torch.float64)
    x = torch.randn(3, 16, 5, 5, dtype=torch.float64)
    with_kernels = reference_grads(block, x)
    monkeypatch.setattr(native, "library", lambda: None)
    assert native.for_tensor(x.flatten(2)) is None
    without = reference_grads(block, x)
    for name in with_kernels:
        torch.testing.assert_close(with_kernels[name], without[name], rtol=1e-10, atol=1e-10, msg=name)


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
    code = "from cafusion.kernels import native; print(native.library().cache_limit())"
    assert run_python(code, CAFUSION_CPU_CACHE_MB="3") == str(3 * 2**20)


def test_a_failed_build_warns_once_and_the_fast_path_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(verbose: bool = False) -> ModuleType:
        raise RuntimeError("Error building extension: no compiler")

    monkeypatch.setattr(native, "build", broken)
    native.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built .*no compiler"):
            assert native.library() is None
        block = ChannelAttentionFusionT(8, reduction=2)
        y, _ = block(torch.randn(2, 8, 3, 3))
        assert y.shape == (2, 8, 3, 3)
    finally:
        native.library.cache_clear()


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=True
    )
    return result.stdout.strip()


def test_environment_switch_turns_the_kernels_off() -> None:
    code = "from cafusion.kernels import native; print(native.enabled(), native.library())"
    assert run_python(code, CAFUSION_NATIVE="0") == "False None"


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
    assert bad.stderr.strip().startswith("cafusion: error: could not build the native CPU kernels")
    assert len(bad.stderr.strip().splitlines()) == 1
    off = subprocess.run(
        [sys.executable, "-m", "cafusion", "build-native"],
        capture_output=True,
        text=True,
        env={**os.environ, "CAFUSION_NATIVE": "0"},
    )
    assert off.returncode == 1 and "switched off" in off.stderr
