"""When the Triton kernels are used, and that a missing Triton falls back to the torch path cleanly.

There is no GPU in CI, so a stand-in object with ``is_cuda=True`` plays the CUDA tensor: the
dispatcher and ``is_available`` only look at ``is_cuda``, ``device`` and ``dtype``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

import cafusion.kernels
from cafusion.kernels import cpu, dispatch, triton_ops


def _fake_cuda(dtype: torch.dtype) -> torch.Tensor:
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cuda", 0))  # type: ignore[return-value]


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Both modules cache the triton import; clear them around a test that changes what imports."""
    triton_ops._kernels.cache_clear()
    dispatch._triton_ops.cache_clear()
    yield
    triton_ops._kernels.cache_clear()
    dispatch._triton_ops.cache_clear()


@pytest.mark.usefixtures("fresh_caches")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_float_tensors_go_to_triton(dtype: torch.dtype) -> None:
    x = _fake_cuda(dtype)
    assert triton_ops.is_available(x)
    assert dispatch.backend(x) is triton_ops


@pytest.mark.usefixtures("fresh_caches")
def test_float64_and_cpu_tensors_stay_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_ops, "_INTERPRET", False)
    assert not triton_ops.is_available(_fake_cuda(torch.float64))
    assert dispatch.backend(_fake_cuda(torch.float64)) is cpu
    assert not triton_ops.is_available(torch.zeros(2, 3, 4))  # CPU without the interpreter
    assert dispatch.backend(torch.zeros(2, 3, 4)) is cpu
    monkeypatch.setattr(triton_ops, "_INTERPRET", True)
    assert triton_ops.is_available(torch.zeros(2, 3, 4))  # the interpreter runs kernels on the CPU
    assert not triton_ops.is_available(torch.zeros(2, 3, 4, dtype=torch.float64))


@pytest.mark.usefixtures("fresh_caches")
def test_missing_triton_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.delitem(sys.modules, "cafusion.kernels.triton_kernels", raising=False)
    monkeypatch.delattr(cafusion.kernels, "triton_kernels", raising=False)  # `from pkg import mod` reads this first
    x = _fake_cuda(torch.float32)
    assert not triton_ops.is_available(x)
    assert dispatch.backend(x) is cpu
    with pytest.raises(RuntimeError, match="triton is not available"):
        triton_ops.pool_stats(torch.zeros(1, 2, 3), True)


def test_block_runs_without_triton_installed() -> None:
    """`import cafusion` and a fast-path training step never import triton on the CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, cafusion\n"
        "m = cafusion.ChannelAttentionFusionT(8, impl='fast')\n"
        "x = torch.randn(2, 8, 5, 5, requires_grad=True)\n"
        "m(x)[0].sum().backward()\n"
        "assert x.grad is not None and 'cafusion.kernels.triton_kernels' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
