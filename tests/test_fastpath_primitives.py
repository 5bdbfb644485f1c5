"""The PyTorch backend's big-tensor passes (``backends/pytorch/passes.py``) against naive torch."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from cafusion.kernels.backends.pytorch import passes as cpu

LAYOUTS: dict[str, Callable[[Tensor], Tensor]] = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": lambda x: x[..., ::2],  # flatten(2) stays a view, with stride 2 along N
}


def make(layout: str, dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = (3, 5, 6, 4)) -> Tensor:
    x = torch.randn((*shape[:-1], shape[-1] * 2)) if layout == "strided" else torch.randn(shape)
    return LAYOUTS[layout](x.to(dtype)).flatten(2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("need_index", [True, False])
def test_pool_stats(layout: str, dtype: torch.dtype, need_index: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_CHUNK", 50)  # bf16 goes through several float32 chunks even at this size
    x3 = make(layout, dtype)
    x3[0, 0] = 1.0  # a row that is all ties
    x3[1, 1, 2:] = x3[1, 1].max() + 1  # a repeated maximum after position 2
    avg, mx, idx = cpu.pool_stats(x3, need_index)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert avg.dtype == mx.dtype == acc
    torch.testing.assert_close(avg, x3.to(acc).mean(2))
    assert torch.equal(mx, x3.to(acc).amax(2))
    if need_index:
        assert idx is not None and idx.dtype == torch.int64
        first = (x3 == x3.amax(2, keepdim=True)).to(torch.uint8).argmax(2)  # first maximal position
        assert torch.equal(idx, first) and idx[0, 0] == 0 and idx[1, 1] == 2
    else:
        assert idx is None


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scale_keeps_layout(layout: str) -> None:
    x3 = make(layout)
    ca = torch.rand(x3.shape[:2])
    y3 = cpu.scale(x3, ca)
    torch.testing.assert_close(y3, x3 * ca[:, :, None], rtol=0, atol=0)
    if layout == "channels_last":
        assert y3.stride() == x3.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_grad_ca(layout: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_CHUNK", 50)  # several chunks even at this size
    x3, dy3 = make(layout, dtype), make(layout, dtype)
    got = cpu.grad_ca(dy3, x3)
    assert got.dtype == torch.float32
    want = (dy3.float() * x3.float()).sum(2)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_grad_input(layout: str) -> None:
    dy3 = make(layout)
    assert layout != "strided" or dy3.stride(2) == 2
    b, c, n = dy3.shape
    ca, g_avg, g_max = torch.rand(b, c), torch.randn(b, c), torch.randn(b, c)
    idx = torch.randint(0, n, (b, c))
    want = dy3 * ca[:, :, None] + g_avg[:, :, None]
    want = want + torch.nn.functional.one_hot(idx, n) * g_max[:, :, None]
    dx3 = cpu.grad_input(dy3, ca, g_avg, g_max, idx)
    torch.testing.assert_close(dx3, want)
    if layout == "channels_last":
        assert dx3.stride() == dy3.stride()


def test_empty_batch() -> None:
    x3 = torch.randn(0, 4, 9)
    avg, mx, idx = cpu.pool_stats(x3, True)
    assert avg.shape == mx.shape == (0, 4) and idx is not None and idx.shape == (0, 4)
    assert cpu.grad_ca(x3, x3).shape == (0, 4)
    assert cpu.grad_input(x3, avg, avg, mx, idx).shape == (0, 4, 9)
