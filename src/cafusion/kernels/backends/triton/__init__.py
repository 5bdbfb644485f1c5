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

import torch
from torch import Tensor

from cafusion import masking
from cafusion._dtypes import compute_dtype
from cafusion._validation import checks_run
from cafusion.kernels.backends import pytorch
from cafusion.kernels.backends.pytorch import Gradients, Outputs
from cafusion.kernels.backends.pytorch import small as pytorch_small
from cafusion.kernels.backends.pytorch.small import Params
from cafusion.kernels.backends.triton import passes
from cafusion.kernels.backends.triton import small as triton_small

# The fused small-path kernels run one program per sample, which streams the whole weight matrices.
# H200 (docs/gpu.md, second and third runs): alone they win up to C = 512 (fwd+bwd 46 vs 157 µs at
# (16, 256)), tie at C = 1024 (171 vs 168 µs; in the bf16 block they win, 175 vs 224 µs, as the
# PyTorch path converts bf16 weights op by op), and lose at C = 2048 (block 425 vs 226 µs).
SMALL_MAX_C = 1024


def is_available(x: Tensor) -> bool:
    """Whether the Triton passes run on x (a CUDA float tensor, or any CPU one under TRITON_INTERPRET=1)."""
    return passes.is_available(x)


def _small_path(x: Tensor, p: Params) -> ModuleType:
    """The fused Triton small path for float32 statistics up to SMALL_MAX_C channels, else PyTorch's.

    (A package's submodule import rebinds its name in the package: hence ``pytorch_small``/``triton_small``.)
    """
    stats = x.new_empty((0, x.shape[1]), dtype=compute_dtype(x.dtype, p.fc1_w.dtype))
    if x.shape[1] <= SMALL_MAX_C and triton_small.is_available(stats):
        return triton_small
    return pytorch_small


def _passes(x: Tensor) -> ModuleType:
    """Triton's passes where they run (float16/bfloat16/float32), PyTorch's otherwise (float64)."""
    return passes if passes.is_available(x) else pytorch.passes


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _padding(valid: Tensor, x: Tensor, *, check: bool) -> Tensor:
    """The padding as the Triton passes take it: lengths (B,) of a (B, C, L) x as they are, range-checked
    (``check``; a backward's forward checked them, and the check syncs the GPU), else the (B, N) mask."""
    if valid.dtype == torch.bool or x.dim() != 3:
        mask = masking.as_mask(valid, x, check=check)
        assert mask is not None
        return mask
    size = x.shape[2]
    if check and checks_run() and valid.numel() and not bool(((valid >= 1) & (valid <= size)).all()):
        bad = valid[(valid < 1) | (valid > size)][0].item()
        raise ValueError(f"lengths must lie in [1, {size}] (the last dim of x), got {bad}")
    return valid


def forward(
    x: Tensor, p: Params, fusion: str, gate: str, act: str, need_index: bool, valid: Tensor | None = None
) -> Outputs:
    """The op's forward with Triton kernels: statistics, the small path on (B, C), scaling (y = x * ca
    at every position, padding included)."""
    ops, small_path = _passes(x), _small_path(x, p)
    if valid is None or ops is not passes:
        return pytorch.compose_forward(ops, small_path, x, p, fusion, gate, act, need_index, valid)
    valid = _padding(valid, x, check=True)
    x3 = x.flatten(2)
    avg, mx, idx = passes.pool_stats(x3, need_index, valid)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    fw = small_path.forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    ca = _cast(fw.ca, x.dtype)
    y = pytorch.unflat(passes.scale(x3, ca), x)
    w = fw.w if fw.w is not None else avg.new_empty((x.shape[0], 0), dtype=dtype)
    return y, ca, w, avg, mx, idx if idx is not None else pytorch.empty(avg, torch.int64)


def backward(
    dy: Tensor,
    g_ca: Tensor | None,
    g_w: Tensor | None,
    x: Tensor,
    avg: Tensor,
    mx: Tensor,
    idx: Tensor,
    p: Params,
    fusion: str,
    gate: str,
    act: str,
    need_x: bool,
    valid: Tensor | None = None,
) -> Gradients:
    """The op's hand-written backward with Triton kernels: d(ca) from one pass over dy and x, the small
    path's backward, one pass writing dx (with padding: the mean's gradient at real positions only)."""
    ops, small_path = _passes(x), _small_path(x, p)
    if valid is None or ops is not passes:
        return pytorch.compose_backward(
            ops, small_path, dy, g_ca, g_w, x, avg, mx, idx, p, fusion, gate, act, need_x, valid
        )
    valid = _padding(valid, x, check=False)
    x3, dy3 = x.flatten(2), dy.flatten(2)
    dtype = compute_dtype(avg.dtype, p.fc1_w.dtype)
    fw = small_path.forward(_cast(avg, dtype), _cast(mx, dtype), p, fusion, gate, act)
    d_ca = _cast(passes.grad_ca(dy3, x3), dtype)
    if g_ca is not None:
        d_ca = d_ca + _cast(g_ca.reshape(d_ca.shape), dtype)
    g = small_path.backward(fw, p, d_ca, g_w if fusion == "softmax" else None, fusion, gate, act)
    dx = pytorch.empty(x)
    if need_x:
        g_avg = _cast(g.avg / passes.count(valid, g.avg.dtype), avg.dtype)
        dx3 = passes.grad_input(dy3, _cast(fw.ca, x.dtype), g_avg, _cast(g.mx, avg.dtype), idx, valid)
        dx = pytorch.unflat(dx3, x)
    params = (g.fc1_w, g.fc1_b, g.fc2_w, g.fc2_b, g.r1_w, g.r1_b, g.r2_w, g.r2_b, g.temperature)
    return (dx, *(pytorch.empty(x) if t is None else t for t in params))


__all__ = ["SMALL_MAX_C", "backward", "forward", "is_available"]
