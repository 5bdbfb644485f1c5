"""The Triton backend (CUDA): the op's forward and backward with Triton passes and small path.

The composition is the PyTorch backend's (``compose_forward``/``compose_backward``) with the Triton
big-tensor passes (``passes``) and, for float32 statistics up to ``SMALL_MAX_C`` channels, the fused
Triton small path (``small``); larger or float64 small paths use PyTorch's matmuls. A padded batch
(``valid``: lengths or a mask) runs the same steps, written out here since the PyTorch composition
would pool through its own masked passes: the padding goes to the Triton passes, which pool real
positions only (lengths: each row's prefix, without a mask) and give the mean's gradient to real
positions only. Triton is
imported lazily: ``import cafusion`` never needs it, and under ``TRITON_INTERPRET=1`` the same
kernels run on the CPU for tests.
"""

from __future__ import annotations

from types import ModuleType

from torch import Tensor

from cafusion._dtypes import compute_dtype
from cafusion.kernels.backends import pytorch
from cafusion.kernels.backends.pytorch import small as pytorch_small
from cafusion.kernels.backends.triton import passes
from cafusion.kernels.backends.triton import small as triton_small
from cafusion.kernels.contract import Gradients, Options, Outputs, Saved, Weights

# The fused small-path kernels run one program per sample, which streams the whole weight matrices.
# H200 (docs/gpu.md, second and third runs): alone they win up to C = 512 (fwd+bwd 46 vs 157 µs at
# (16, 256)), tie at C = 1024 (171 vs 168 µs; in the bf16 block they win, 175 vs 224 µs, as the
# PyTorch path converts bf16 weights op by op), and lose at C = 2048 (block 425 vs 226 µs).
SMALL_MAX_C = 1024


def is_available(x: Tensor) -> bool:
    """Whether the Triton passes run on x (a CUDA float tensor, or any CPU one under TRITON_INTERPRET=1)."""
    return passes.is_available(x)


def _small_path(x: Tensor, w: Weights) -> ModuleType:
    """The fused Triton small path for float32 statistics up to SMALL_MAX_C channels, else PyTorch's.

    (A package's submodule import rebinds its name in the package: hence ``pytorch_small``/``triton_small``.)
    """
    stats = x.new_empty((0, x.shape[1]), dtype=compute_dtype(x.dtype, w.fc1_w.dtype))
    if x.shape[1] <= SMALL_MAX_C and triton_small.is_available(stats):
        return triton_small
    return pytorch_small


def _passes(x: Tensor) -> ModuleType:
    """Triton's passes where they run (float16/bfloat16/float32), PyTorch's otherwise (float64)."""
    return passes if passes.is_available(x) else pytorch.passes


def forward(x: Tensor, w: Weights, opts: Options, need_index: bool, valid: Tensor | None = None) -> Outputs:
    """The op's forward with Triton kernels: statistics, the small path on (B, C), scaling (y = x * ca
    at every position, padding included)."""
    return pytorch.compose_forward(_passes(x), _small_path(x, w), x, w, opts, need_index, valid)


def backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    saved: Saved,
    w: Weights,
    opts: Options,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """The op's backward with Triton kernels: d(ca) from one pass over dy and x, the small path's
    backward, one pass writing dx (with padding: the mean's gradient at real positions only)."""
    return pytorch.compose_backward(_passes(x), _small_path(x, w), dy, g_ca, g_w, x, saved, w, opts, need_x, valid)


__all__ = ["SMALL_MAX_C", "backward", "forward", "is_available"]
