"""Run the op's Triton kernels on CPU tensors (under ``TRITON_INTERPRET=1``): for the interpreter tests
that drive the whole block through the op, as a GPU would run it.

The op's CPU key normally runs the native or the PyTorch backend; ``route_cpu_to_triton`` registers the
op's CUDA kernels (``op._forward_cuda``/``_backward_cuda``, which run the Triton backend wherever
``triton.is_available(x)``) for the CPU key instead, for as long as the returned library is kept alive.
"""

from __future__ import annotations

import torch

from cafusion.kernels import op
from cafusion.kernels.backends import native
from cafusion.kernels.backends.triton import passes


def route_cpu_to_triton() -> torch.library.Library:
    """Register the op's CUDA kernels for the CPU key; keep the result alive while they are needed."""
    if not passes._INTERPRET:
        raise RuntimeError("set TRITON_INTERPRET=1 before importing cafusion: the Triton kernels need it on the CPU")
    native.library()  # load the native kernels first (if built): loaded later, they would take the CPU key back
    lib = torch.library.Library("cafusion", "IMPL")  # type: ignore[no-untyped-call]
    lib.impl("caft_forward", op._forward_cuda, "CPU")
    lib.impl("caft_backward", op._backward_cuda, "CPU")
    return lib
