"""The small (B, C) path as fused Triton kernels: ``small.forward``/``small.backward`` in 1 + 2 launches.

The same contract as the PyTorch backend's ``small.py`` (``forward`` gives the gate and the fusion
weights, ``backward`` the ``contract.SmallGrads``), for float32 compute on a CUDA device; the Triton
backend picks it up to ``SMALL_MAX_C`` channels, the PyTorch small path runs everywhere else (CPU,
float64). In PyTorch the small path is ~15 launches forward and ~35 backward, each tiny, which
on a GPU cost as much as the four big-tensor passes together. Triton is imported lazily, as in
``passes.py``.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from cafusion.kernels.backends.triton import passes as triton_ops
from cafusion.kernels.contract import Options, SmallGrads, Weights


class Forward(NamedTuple):
    """The forward's intermediates, which the backward kernels read: all (B, *) matrices in float32."""

    s: Tensor  # (2B, C): avg rows, then max rows
    pre: Tensor  # (2B, H): fc1 output before the activation
    hid: Tensor  # (2B, H): after the activation
    out: Tensor  # (2B, C): fc2 output, rows a then m
    cat: Tensor | None  # (B, 2C): router input
    q: Tensor | None  # (B, R): router hidden before ReLU
    w: Tensor | None  # (B, 2): fusion weights
    t: Tensor  # () temperature
    u: Tensor  # (B, C): z / T
    ca: Tensor  # (B, C): gate(u)


# torch's hardsigmoid_backward multiplies by 1/6 rounded to float32 even for float64 tensors: the same here.
ONE_SIXTH = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))

_TILE = 4096  # elements of a weight tile per loop step (32 registers per thread at 4 warps)
_NUM_WARPS = 4


@functools.cache
def _kernels() -> ModuleType | None:
    """The kernel module, or None when triton is missing or broken (the caller then falls back)."""
    return triton_ops.import_kernels("small_kernels")


def is_available(avg: Tensor) -> bool:
    """Whether these kernels can run the small path for ``avg`` (the (B, C) statistics in the compute
    dtype): float32 on a CUDA device (or on the CPU under TRITON_INTERPRET=1) with triton importable."""
    if avg.dtype != torch.float32:
        return False
    if not (avg.is_cuda or (triton_ops._INTERPRET and avg.device.type == "cpu")):
        return False
    return _kernels() is not None


def _k() -> ModuleType:
    mod = _kernels()
    if mod is None:
        raise RuntimeError("triton is not available; check triton_small.is_available(avg) before calling")
    return mod


def _pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _blocks(c: int, h: int, r: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_H, BLOCK_R): weight tiles of about ``_TILE`` elements, at least 16 wide along C."""
    block_h = min(_pow2(h), 64)
    block_r = min(_pow2(r), 64)
    block_c = min(_pow2(c), max(16, _TILE // max(block_h, block_r)))
    return block_c, block_h, block_r


def _mat(weight: Tensor) -> Tensor:
    """A (rows, cols) row-major view of a weight (conv-shaped (C, H, 1, 1) included), in its own dtype."""
    return weight.flatten(1).contiguous()


def _vec(t: Tensor | None, like: Tensor) -> Tensor:
    """A bias, or a stand-in pointer for an absent one (the kernel never reads it)."""
    return like if t is None else t.contiguous()


def _check(avg: Tensor, mx: Tensor, p: Weights) -> tuple[int, int, int, int]:
    b, c = avg.shape
    if mx.shape != avg.shape:
        raise ValueError(f"avg and mx must have the same shape, got {tuple(avg.shape)} and {tuple(mx.shape)}")
    h = p.fc1_w.shape[0]
    if p.fc1_w.numel() != h * c or p.fc2_w.shape[0] != c or p.fc2_w.numel() != c * h:
        raise ValueError(f"fc1_w {tuple(p.fc1_w.shape)} / fc2_w {tuple(p.fc2_w.shape)} do not fit C={c}, H={h}")
    r = 1 if p.r1_w is None else p.r1_w.shape[0]
    return b, c, h, r


def forward(avg: Tensor, mx: Tensor, p: Weights, opts: Options) -> Forward:
    """The small path's forward in one launch: avg, mx (B, C) float32 -> ca, w and every intermediate."""
    b, c, h, r = _check(avg, mx, p)
    fusion, gate, act = opts
    softmax = fusion == "softmax"
    new = functools.partial(torch.empty, device=avg.device, dtype=torch.float32)
    s, pre, hid, out = new(2 * b, c), new(2 * b, h), new(2 * b, h), new(2 * b, c)
    cat, q, w = (new(b, 2 * c), new(b, r), new(b, 2)) if softmax else (None, None, None)
    t, u, ca = new(()), new(b, c), new(b, c)
    fw = Forward(s, pre, hid, out, cat, q, w, t, u, ca)
    if b == 0:
        t.copy_(p.temperature.reshape(()))
        return fw
    if softmax:
        assert p.r1_w is not None and p.r2_w is not None
    avg, mx = avg.contiguous(), mx.contiguous()
    r1_w = _mat(p.r1_w) if p.r1_w is not None else avg
    r2_w = _mat(p.r2_w) if p.r2_w is not None else avg
    block_c, block_h, block_r = _blocks(c, h, r)
    with triton_ops._device_guard(avg):
        _k().small_forward_kernel[(b,)](
            avg,
            mx,
            _mat(p.fc1_w),
            _vec(p.fc1_b, avg),
            _mat(p.fc2_w),
            _vec(p.fc2_b, avg),
            r1_w,
            _vec(p.r1_b, avg),
            r2_w,
            _vec(p.r2_b, avg),
            p.temperature,
            s,
            pre,
            hid,
            out,
            s if cat is None else cat,
            s if q is None else q,
            s if w is None else w,
            t,
            u,
            ca,
            b,
            c,
            h,
            r,
            SOFTMAX=softmax,
            HARD=gate == "hardsigmoid",
            SILU=act == "silu",
            HAS_B1=p.fc1_b is not None,
            HAS_B2=p.fc2_b is not None,
            HAS_RB1=softmax and p.r1_b is not None,
            HAS_RB2=softmax and p.r2_b is not None,
            BLOCK_C=block_c,
            BLOCK_H=block_h,
            BLOCK_R=block_r,
            num_warps=_NUM_WARPS,
        )
    return fw


def _like(param: Tensor | None) -> Tensor | None:
    return None if param is None else torch.empty(param.shape, device=param.device, dtype=param.dtype)


def backward(fw: Forward, p: Weights, g_ca: Tensor, g_w: Tensor | None, opts: Options) -> SmallGrads:
    """The small path's backward in two launches: per-sample vectors (grid B), then batch sums (grid over C tiles)."""
    fusion, gate, act = opts
    b, c = fw.u.shape
    h = fw.pre.shape[1]
    softmax = fusion == "softmax"
    r = fw.q.shape[1] if softmax and fw.q is not None else 1
    dev = fw.u.device
    new = functools.partial(torch.empty, device=dev, dtype=torch.float32)
    g_avg, g_mx = new(b, c), new(b, c)
    weights = Weights(
        torch.empty(p.fc1_w.shape, device=dev, dtype=p.fc1_w.dtype),
        _like(p.fc1_b),
        torch.empty(p.fc2_w.shape, device=dev, dtype=p.fc2_w.dtype),
        _like(p.fc2_b),
        _like(p.r1_w) if softmax else None,
        _like(p.r1_b) if softmax else None,
        _like(p.r2_w) if softmax else None,
        _like(p.r2_b) if softmax else None,
        torch.empty(p.temperature.shape, device=dev, dtype=p.temperature.dtype),
    )
    grads = SmallGrads(g_avg, g_mx, weights)
    if b == 0:  # no rows: every sum over the batch is zero
        for g in weights:
            if g is not None:
                g.zero_()
        return grads
    if softmax:
        assert fw.w is not None and fw.q is not None and p.r1_w is not None and p.r2_w is not None
    gz, glog, gq, gpre = new(b, c), new(b, 2), new(b, r), new(2 * b, h)
    gtp = torch.empty(b, device=dev, dtype=torch.float64)  # the temperature's partial sums: they cancel
    block_c, block_h, block_r = _blocks(c, h, r)
    k = _k()
    anyf = fw.u  # a float32 stand-in pointer for absent tensors (never read or written)
    mat = [_mat(w) for w in (p.fc1_w, p.fc2_w)] + [anyf if w is None else _mat(w) for w in (p.r1_w, p.r2_w)]
    w_fusion = anyf if fw.w is None else fw.w.contiguous()
    q = anyf if fw.q is None else fw.q.contiguous()
    config = {"SOFTMAX": softmax, "BLOCK_H": block_h, "BLOCK_R": block_r, "num_warps": _NUM_WARPS}
    with triton_ops._device_guard(anyf):
        k.small_backward_rows_kernel[(b,)](
            g_ca.contiguous(),
            anyf if g_w is None else g_w.contiguous(),
            fw.ca.contiguous(),
            fw.u.contiguous(),
            fw.out.contiguous(),
            w_fusion,
            q,
            fw.pre.contiguous(),
            *mat,
            p.temperature,
            gz,
            gtp,
            glog,
            gq,
            gpre,
            g_avg,
            g_mx,
            b,
            c,
            h,
            r,
            HARD=gate == "hardsigmoid",
            SILU=act == "silu",
            HAS_GW=softmax and g_w is not None,
            ONE_SIXTH=ONE_SIXTH,
            BLOCK_C=block_c,
            **config,
        )
        block_cw = min(_pow2(c), 64)  # more programs for the batch sums: each owns 64 columns
        n_cblk = -(-c // block_cw)
        stand_in = anyf
        k.small_backward_weights_kernel[(n_cblk + 1,)](
            gz,
            gtp,
            glog,
            gq,
            gpre,
            w_fusion,
            fw.s.contiguous(),
            fw.hid.contiguous(),
            q,
            p.temperature,
            *(stand_in if g is None else g for g in weights),
            b,
            c,
            h,
            r,
            n_cblk,
            HAS_B1=p.fc1_b is not None,
            HAS_B2=p.fc2_b is not None,
            HAS_RB1=softmax and p.r1_b is not None,
            HAS_RB2=softmax and p.r2_b is not None,
            BLOCK_C=block_cw,
            BLOCK_B=min(_pow2(b), 1024),
            **config,
        )
    return grads
