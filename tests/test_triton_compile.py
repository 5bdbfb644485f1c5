"""The Triton kernels compile for Hopper (sm_90) with Triton's real compiler, without a GPU.

The interpreter tests check the math; this checks what only the GPU compiler sees: that every
kernel variant the launch plan picks at the benchmark shapes lowers to PTX and machine code,
without register spills, and that loads and stores along the unit-stride dim are vectorized
(128-bit), which is what lets a memory-bound kernel stream HBM. A stand-in driver reports an
sm_90 target, and launches are turned into Triton's ``warmup`` (compile only), so the kernels are
specialised exactly as a real launch would specialise them (alignment, divisibility by 16).
"""

from __future__ import annotations

import collections
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from cafusion.kernels.backends.triton import passes as triton_ops
from cafusion.kernels.backends.triton import passes_kernels as triton_kernels
from cafusion.kernels.backends.triton import small as triton_small
from cafusion.kernels.backends.triton import small_kernels as triton_small_kernels
from cafusion.kernels.contract import Options, Weights

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
H200_SMS = 132


class _Sm90Driver:
    """Just enough of a Triton driver to compile for an sm_90 device that is not there."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Launches compile (for sm_90) instead of running; yields the (kernel name, compiled) list."""
    kernels: list[tuple[str, Any]] = []

    def launch(self: JITFunction, grid: Any) -> Callable[..., None]:
        def go(*args: Any, **kwargs: Any) -> None:
            kernels.append((self.__name__, self.run(*args, grid=grid, warmup=True, **kwargs)))

        return go

    jit_fns = [
        f for mod in (triton_kernels, triton_small_kernels) for f in vars(mod).values() if isinstance(f, JITFunction)
    ]
    monkeypatch.setattr(JITFunction, "__getitem__", launch)
    monkeypatch.setattr(triton_ops, "_num_sms", lambda device: H200_SMS)
    monkeypatch.setattr(driver, "_active", _Sm90Driver())  # restored (to none) afterwards
    try:
        yield kernels
    finally:
        for fn in jit_fns:  # drop what was compiled for the stand-in device 0
            fn.device_caches.clear()


def _machine_info(kernel: Any) -> tuple[int, int, collections.Counter[str]]:
    """(registers, spill-store bytes, global load/store instructions by width) of a compiled kernel."""
    ptx = kernel.asm["ptx"]
    proc = subprocess.run(
        [str(PTXAS), "-v", "--gpu-name", "sm_90a", "-", "-o", "/dev/null"],
        input=ptx,
        capture_output=True,
        text=True,
        check=True,
    )
    regs = re.search(r"Used (\d+) registers", proc.stderr)
    spills = re.search(r"(\d+) bytes spill stores", proc.stderr)
    assert regs and spills, proc.stderr
    return int(regs.group(1)), int(spills.group(1)), collections.Counter(re.findall(r"(?:ld|st)\.global\S*", ptx))


def _run_all(x: torch.Tensor) -> None:
    x3 = x.flatten(2)
    b, c, _ = x3.shape
    ca = torch.empty(b, c, dtype=x.dtype)
    triton_ops.pool_stats(x3, True)
    triton_ops.pool_stats(x3, False)
    triton_ops.scale(x3, ca)
    triton_ops.grad_ca(x3, x3)
    g = torch.empty(b, c)
    triton_ops.grad_input(x3, ca, g, g, torch.zeros(b, c, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_benchmark_shape_compiles_vectorized(
    compiled: list[tuple[str, Any]], dtype: torch.dtype, channels_last: bool
) -> None:
    x = torch.empty(16, 256, 56, 56, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    _run_all(x)
    names = {name for name, _ in compiled}
    assert {"reduce_kernel", "scale_kernel", "grad_input_kernel"} <= names
    if channels_last:  # (16, 256) alone gives 32 programs: the reductions must split N and merge
        assert "combine_kernel" in names
    for name, kernel in compiled:
        regs, spills, insts = _machine_info(kernel)
        assert spills == 0, f"{name} spills {spills} bytes ({regs} registers)"
        if name == "combine_kernel":
            continue
        wide_loads = sum(n for inst, n in insts.items() if inst.startswith("ld.global.v4"))
        assert wide_loads > 0, f"{name} has no 128-bit loads: {dict(insts)}"
        if name in ("scale_kernel", "grad_input_kernel"):
            assert all(inst.startswith("st.global.v4") for inst in insts if inst.startswith("st.")), (
                f"{name} stores are not 128-bit: {dict(insts)}"
            )


def _wide(insts: collections.Counter[str], prefix: str) -> int:
    return sum(n for inst, n in insts.items() if inst.startswith(prefix))


def test_unaligned_rows_still_vectorize(compiled: list[tuple[str, Any]]) -> None:
    """Rows of 14x14 = 196 floats: 16-byte aligned, which the kernels must prove to the compiler;
    rows of 7x7 = 49: only the flat elementwise kernels can use 128-bit accesses."""
    _run_all(torch.empty(16, 1024, 14, 14))
    for name, kernel in compiled:
        assert _wide(_machine_info(kernel)[2], "ld.global.v4") > 0, f"{name} at 14x14 has no 128-bit loads"
    compiled.clear()
    _run_all(torch.empty(16, 2048, 7, 7, dtype=torch.bfloat16))
    flat = {name: _machine_info(kernel)[2] for name, kernel in compiled if "flat" in name}
    assert set(flat) == {"scale_flat_kernel", "grad_input_flat_kernel"}, set(flat)
    for name, insts in flat.items():
        assert _wide(insts, "st.global.v4") == _wide(insts, "st.global"), f"{name}: {dict(insts)}"


def test_odd_shapes_and_layouts_compile(compiled: list[tuple[str, Any]]) -> None:
    """Unaligned rows, N = 1, a view without any unit stride, float16, B = 1 with a split."""
    wide = torch.empty(2, 7, 10, dtype=torch.float16)
    for x in (
        torch.empty(3, 5, 1, 1).to(memory_format=torch.channels_last),
        wide.transpose(1, 2)[:, ::2, :],
        torch.empty(1, 3, 70_000, dtype=torch.float16),
        torch.empty(2, 6, 3, 3),
    ):
        _run_all(x)
    assert len(compiled) >= 16
    for name, kernel in compiled:
        _, spills, _ = _machine_info(kernel)
        assert spills == 0, f"{name} spills {spills} bytes"


@pytest.mark.parametrize(
    "fusion, gate, act, bias", [("softmax", "sigmoid", "relu", True), ("sum", "hardsigmoid", "silu", False)]
)
def test_small_path_compiles_without_spills(
    compiled: list[tuple[str, Any]], fusion: str, gate: str, act: str, bias: bool
) -> None:
    """The fused small path (1 forward + 2 backward kernels) at the benchmark widths and an odd one."""
    for c, h in ((256, 16), (2048, 128), (196, 13)):
        b, r = 16, 16
        ws = [torch.empty(h, c, 1, 1), torch.empty(h), torch.empty(c, h, 1, 1), torch.empty(c)]
        ws += [torch.empty(r, 2 * c), torch.empty(r), torch.empty(2, r), torch.empty(2)]
        if not bias:
            ws[1::2] = [None] * 4
        p = Weights(*ws, torch.tensor(1.0))
        stats = torch.empty(b, c)
        fw = triton_small.forward(stats, stats, p, Options(fusion, gate, act))
        triton_small.backward(fw, p, stats, torch.empty(b, 2), Options(fusion, gate, act))
    names = [name for name, _ in compiled]
    assert names.count("small_forward_kernel") == 3 and names.count("small_backward_weights_kernel") == 3, names
    for name, kernel in compiled:
        regs, spills, _ = _machine_info(kernel)
        assert spills == 0, f"{name} spills {spills} bytes ({regs} registers)"


def test_pool_stats_without_index_uses_a_nan_propagating_max(compiled: list[tuple[str, Any]]) -> None:
    """The plain variant's running max must keep NaN on the GPU (max.NaN); the interpreter cannot tell."""
    triton_ops.pool_stats(torch.empty(16, 256, 56, 56).flatten(2), False)
    ptx = [kernel.asm["ptx"] for name, kernel in compiled if name == "reduce_kernel"]
    assert len(ptx) == 1 and "max.NaN.f32" in ptx[0], "no NaN-propagating max in the no-index reduction"
    assert _machine_info(compiled[0][1])[1] == 0, "spills"
