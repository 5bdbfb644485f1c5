"""Which kernels the op's CUDA key runs (Triton or the PyTorch backend), and that a missing Triton falls
back to the PyTorch backend cleanly.

There is no GPU in CI, so a stand-in object with ``is_cuda=True`` plays the CUDA tensor: the choosers
only look at ``is_cuda``, ``device``, ``dtype``, ``shape`` and ``new_empty``. The op's CUDA kernel itself
is called directly on CPU tensors, with ``triton.is_available`` answered by the test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

import cafusion.kernels.backends.triton as triton_backend
from cafusion.kernels import op
from cafusion.kernels.backends import pytorch
from cafusion.kernels.backends.pytorch import small as pytorch_small
from cafusion.kernels.backends.triton import passes
from cafusion.kernels.backends.triton import small as triton_small
from cafusion.kernels.contract import Weights
from tests import opcall


def _fake_cuda(dtype: torch.dtype, channels: int = 3) -> Tensor:
    """A (2, C, 4) tensor on a CUDA device this machine does not have, as far as the choosers can tell."""

    def new_empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return _fake_cuda_shaped(shape, dtype)

    fake = _fake_cuda_shaped((2, channels, 4), dtype)
    fake.new_empty = new_empty  # type: ignore[method-assign]
    return fake


def _fake_cuda_shaped(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    device = torch.device("cuda", 0)
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=device, shape=shape)  # type: ignore[return-value]


def _params(channels: int, dtype: torch.dtype = torch.float32) -> Weights:
    h = max(1, channels // 16)
    fc1_w, fc2_w = torch.empty(h, channels, 1, 1, dtype=dtype), torch.empty(channels, h, 1, 1, dtype=dtype)
    return Weights(fc1_w, None, fc2_w, None, None, None, None, None, torch.tensor(1.0, dtype=dtype))


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Both Triton modules cache the triton import; clear them around a test that changes what imports."""
    passes._kernels.cache_clear()
    triton_small._kernels.cache_clear()
    yield
    passes._kernels.cache_clear()
    triton_small._kernels.cache_clear()


@pytest.mark.usefixtures("fresh_caches")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_float_tensors_go_to_triton(dtype: torch.dtype) -> None:
    x = _fake_cuda(dtype)
    assert triton_backend.is_available(x)
    assert triton_backend._passes(x) is passes


@pytest.mark.usefixtures("fresh_caches")
def test_small_path_chooser() -> None:
    """The fused Triton small path for float32 statistics up to SMALL_MAX_C channels on CUDA; the PyTorch
    one for wider layers (one program per sample streams all the weights: matmuls win there, H200), for
    float64 compute (float64 x or weights), and for CPU tensors without the interpreter."""
    assert triton_backend.SMALL_MAX_C == 1024
    assert triton_backend._small_path(_fake_cuda(torch.float32, 64), _params(64)) is triton_small
    assert triton_backend._small_path(_fake_cuda(torch.bfloat16, 64), _params(64)) is triton_small  # float32 stats
    assert triton_backend._small_path(_fake_cuda(torch.float32, 1024), _params(1024)) is triton_small
    assert triton_backend._small_path(_fake_cuda(torch.float32, 2048), _params(2048)) is pytorch_small
    assert triton_backend._small_path(_fake_cuda(torch.float32, 64), _params(64, torch.float64)) is pytorch_small
    assert triton_backend._small_path(_fake_cuda(torch.float64, 64), _params(64, torch.float64)) is pytorch_small
    if not passes._INTERPRET:
        assert triton_backend._small_path(torch.zeros(2, 64, 3), _params(64)) is pytorch_small


@pytest.mark.usefixtures("fresh_caches")
def test_float64_and_cpu_tensors_stay_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passes, "_INTERPRET", False)
    assert not triton_backend.is_available(_fake_cuda(torch.float64))
    assert triton_backend._passes(_fake_cuda(torch.float64)) is pytorch.passes
    assert not triton_backend.is_available(torch.zeros(2, 3, 4))  # CPU without the interpreter
    assert not triton_small.is_available(torch.zeros(2, 3))
    monkeypatch.setattr(passes, "_INTERPRET", True)
    assert triton_backend.is_available(torch.zeros(2, 3, 4))  # the interpreter runs kernels on the CPU
    assert triton_small.is_available(torch.zeros(2, 3))
    assert not triton_backend.is_available(torch.zeros(2, 3, 4, dtype=torch.float64))
    assert not triton_small.is_available(torch.zeros(2, 3, dtype=torch.float64))


def _spy(calls: list[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("available", [True, False])
def test_the_op_cuda_kernel_runs_triton_where_available_else_pytorch(
    available: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op's CUDA kernels (forward and backward) ask ``triton.is_available(x)`` and run that backend."""
    calls: list[str] = []
    for name, backend in (("triton", triton_backend), ("pytorch", pytorch)):
        for what in ("forward", "backward"):  # both delegate to the PyTorch backend: only the choice matters here
            monkeypatch.setattr(backend, what, _spy(calls, f"{name}.{what}", getattr(pytorch, what)))
    monkeypatch.setattr(triton_backend, "is_available", lambda x: available)
    x = torch.randn(2, 8, 3, 3)
    p = [torch.randn(2, 8, 1, 1), torch.randn(2), torch.randn(8, 2, 1, 1), torch.randn(8), *[None] * 4]
    params = [*p, torch.tensor(0.7)]
    config = ("sum", "sigmoid", "relu")
    y, ca, w, avg, mx, idx = op._forward_cuda(*opcall.forward_args(x, params, config, True))
    back = opcall.backward_args(torch.randn_like(y), None, None, x, (avg, mx, idx), params, config, True)
    dx, *grads = op._backward_cuda(*back)
    chosen = "triton" if available else "pytorch"
    assert calls == [f"{chosen}.forward", f"{chosen}.backward"], calls
    assert y.shape == dx.shape == x.shape and ca.shape == (2, 8, 1, 1) and w.shape == (2, 0)
    assert [g.shape for g in grads[:4]] == [t.shape for t in p[:4]]


@pytest.mark.usefixtures("fresh_caches")
def test_missing_triton_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    for module in ("passes_kernels", "small_kernels"):
        monkeypatch.delitem(sys.modules, f"cafusion.kernels.backends.triton.{module}", raising=False)
        monkeypatch.delattr(triton_backend, module, raising=False)  # `from pkg import mod` reads this first
    x = _fake_cuda(torch.float32, 64)
    assert not triton_backend.is_available(x)
    assert triton_backend._passes(x) is pytorch.passes
    assert triton_backend._small_path(x, _params(64)) is pytorch_small
    with pytest.raises(RuntimeError, match="triton is not available"):
        passes.pool_stats(torch.zeros(1, 2, 3), True)
    with pytest.raises(RuntimeError, match="triton is not available"):
        triton_small._k()


def test_block_runs_without_triton_installed() -> None:
    """`import cafusion` and a fast-path training step never import triton on the CPU."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, cafusion\n"
        "m = cafusion.ChannelAttentionFusionT(8, impl='fast')\n"
        "x = torch.randn(2, 8, 5, 5, requires_grad=True)\n"
        "m(x)[0].sum().backward()\n"
        "kernels = [k for k in sys.modules if k.endswith(('passes_kernels', 'small_kernels'))]\n"
        "assert x.grad is not None and 'cafusion.kernels.backends.triton' in sys.modules and not kernels, kernels\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.usefixtures("fresh_caches")
def test_broken_triton_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed triton whose import fails is not silent: one RuntimeWarning names the error."""
    real = importlib.import_module

    def broken(name: str, package: str | None = None) -> object:
        if name.endswith(("passes_kernels", "small_kernels")):
            raise OSError("libcuda.so: cannot open shared object file")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.warns(RuntimeWarning, match="triton is installed but fails to import .*libcuda") as record:
        assert passes._kernels() is None
    assert len(record) == 1
    x = _fake_cuda(torch.float32, 64)
    with pytest.warns(RuntimeWarning):
        assert triton_small._kernels() is None
    assert not triton_backend.is_available(x)
