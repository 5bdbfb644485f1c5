"""The four big-tensor passes of the fast path as Triton kernels, for CUDA tensors.

Same names and signatures as the PyTorch backend's passes (``backends/pytorch/passes.py``); every function takes the
(B, C, N) view ``x3 = x.flatten(2)`` with any strides. Triton is imported lazily (only when a CUDA
tensor asks, or when ``TRITON_INTERPRET=1`` runs the kernels on the CPU for tests), so ``import
cafusion`` never needs it. Low-precision inputs are read as-is and accumulated in float32.

Padded batches: ``pool_stats`` and ``grad_input`` also take ``valid``, either the (B,) integer lengths
of each sample's real prefix along N (only positions < length are read) or a (B, N) boolean mask of
real positions; ``scale`` and ``grad_ca`` run over every position, as the block's math does.

Launch plan: the tile follows the unit-stride dim (wide along N for contiguous maps, wide along C
for channels_last) so loads coalesce; reductions split N across programs when B * C alone would
leave the GPU mostly idle (e.g. channels_last (16, 256, 56x56), or B = 1), then merge the partials.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

from cafusion import masking
from cafusion._validation import checks_run

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Tile sizes, from a sweep on an H200 (docs/gpu.md): elementwise passes stream best with 8 KiB of x
# per tile (2048 float32 / 4096 bf16 elements); reductions with 2048 elements whatever the dtype
# (a 16-bit reduction with 8 KiB tiles ran up to 1.5x slower, mostly for channels_last).
_TILE_BYTES = 8192
_REDUCE_TILE = 2048
_MAX_SPLITS = 64
_PROGRAMS_PER_SM = 4  # reductions split N until about this many programs per SM run
_FLAT_MAX_N = 1 << 16
# pool_stats without the index: a plain NaN-propagating running max (fewer instructions per element)
# instead of the argmax bookkeeping; False selects the previous variant (scripts/gpu_check.py times both).
_PLAIN_MAX = True
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def import_kernels(name: str) -> ModuleType | None:
    """``cafusion.kernels.backends.triton.<name>``, or None when triton cannot be imported.

    Without triton (not installed) the PyTorch backend runs instead, silently: that is the documented
    fallback. A triton that is installed but fails to import (a broken or mismatched install) falls back
    too, with one warning that names the error, since the user expects the GPU kernels there.
    """
    try:
        return importlib.import_module(f"cafusion.kernels.backends.triton.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != "triton" and not (exc.name or "").startswith("triton."):
            raise
        return None
    except Exception as exc:  # triton's import raises many kinds (driver, compiler, version checks)
        warnings.warn(
            f"cafusion: triton is installed but fails to import ({type(exc).__name__}: {exc}); "
            "CUDA tensors run the PyTorch backend instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


@functools.cache
def _kernels() -> ModuleType | None:
    """The kernel module, or None when triton is missing or broken (the caller then falls back)."""
    return import_kernels("passes_kernels")


def is_available(x: Tensor) -> bool:
    """Whether these kernels can run on x: a CUDA (or, under TRITON_INTERPRET=1, CPU) float tensor."""
    if x.dtype not in _DTYPES:
        return False
    if not (x.is_cuda or (_INTERPRET and x.device.type == "cpu")):
        return False
    return _kernels() is not None


def _k() -> ModuleType:
    mod = _kernels()
    if mod is None:
        raise RuntimeError("triton is not available; check triton_ops.is_available(x) before calling")
    return mod


def _unit(t: Tensor) -> int:
    """Which dim of a (B, C, N) tensor has stride 1: 1 for N, 2 for C, 0 for neither."""
    _, c, n = t.shape
    sc, sn = t.stride(1), t.stride(2)
    if n == 1:
        return 2 if sc == 1 or c == 1 else 0
    if sn == 1:
        return 1
    if sc == 1 or c == 1:
        return 2
    return 0


def _strides(t: Tensor, unit: int) -> tuple[int, int, int, int]:
    """(batch, C, N strides divided by vec, vec): vec is the largest power of two <= 16 dividing the
    strides that are not 1, so that the kernel can multiply it back in as a compile-time constant."""
    sb, sc, sn = t.stride()
    used = [sb] + ([sc] if unit != 2 else []) + ([sn] if unit != 1 else [])
    vec = min(_pow2_divisor(s) for s in used)
    return sb // vec, sc // vec if unit != 2 else sc, sn // vec if unit != 1 else sn, vec


def _pow2_divisor(v: int, limit: int = 16) -> int:
    """The largest power of two <= limit that divides v."""
    return min(v & -v, limit) if v else limit


def _pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _tile(unit: int, c: int, n: int, itemsize: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_N, num_warps): about ``tile`` elements, wide along the unit-stride dim.

    16 elements per thread: 4 warps for 2048 elements, 8 for 4096.
    """
    if unit == 2:
        block_c = min(_pow2(c), 512 // itemsize)  # 512 contiguous bytes per row of the tile
        block_n = min(_pow2(n), max(1, tile // block_c))
    else:
        block_n = min(_pow2(n), 2048 // itemsize)
        block_c = min(_pow2(c), max(1, tile // block_n))
    return block_c, block_n, max(1, min(tile // 512, block_c * block_n // 256))


def _flat(t: Tensor) -> bool:
    """Use the flat elementwise kernels: contiguous, with rows the 2-D tile cannot load 128 bits at a time.

    N is compiled in, so only for moderate N (a network has a handful of spatial sizes).
    """
    n = t.shape[2]
    return 1 < n <= _FLAT_MAX_N and n % 16 != 0 and t.is_contiguous()


def _flat_block(itemsize: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the flat kernels: _TILE_BYTES per program, 16 elements per thread."""
    block = _TILE_BYTES // itemsize
    return block, block // 512


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 4  # interpreter: small, so that tests reach the split path at small shapes


def _splits(device: torch.device, programs: int, n: int, block_n: int) -> tuple[int, int]:
    """(splits, chunk): split N so that about 4 programs per SM run; each chunk whole tiles."""
    tiles = -(-n // block_n)
    target = _PROGRAMS_PER_SM * _num_sms(device)
    want = 1 if programs >= target else min(tiles, -(-target // programs), _MAX_SPLITS)
    chunk = -(-tiles // want) * block_n
    return -(-n // chunk), chunk


def _check(x3: Tensor, name: str) -> None:
    if x3.dim() != 3:
        raise ValueError(f"{name} must be a (B, C, N) tensor, got shape {tuple(x3.shape)}")
    if x3.shape[2] >= 2**31 - _TILE_BYTES:
        raise ValueError(f"{name} has N={x3.shape[2]} spatial positions; these kernels index N in int32")


def _device_guard(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Launch on t's GPU (triton uses the current device); a no-op for the CPU interpreter."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _padding(valid: Tensor | None, like: Tensor) -> tuple[int, Tensor, Tensor, int]:
    """(MASK, lengths, mask as uint8, the mask's row stride) for the kernels; unused ones are ``like``.

    MASK is 0 without padding, 1 for (B,) integer lengths, 2 for a (B, N) boolean mask.
    """
    bsz, _, n = like.shape
    if valid is None:
        return 0, like, like, 0
    if valid.device != like.device:
        raise ValueError(f"valid must be on the device of the data ({like.device}), got {valid.device}")
    if valid.dtype == torch.bool:
        if tuple(valid.shape) != (bsz, n):
            raise ValueError(f"valid must be a (B, N) = {(bsz, n)} mask, got shape {tuple(valid.shape)}")
        mask = valid.contiguous().view(torch.uint8)
        return 2, like, mask, mask.stride(0)
    if valid.dtype.is_floating_point or valid.is_complex() or tuple(valid.shape) != (bsz,):
        got = f"{valid.dtype} {tuple(valid.shape)}"
        raise ValueError(f"valid must be a bool {(bsz, n)} mask or integer ({bsz},) lengths, got {got}")
    return 1, valid.contiguous(), like, 0


def _reduce(
    a: Tensor,
    b: Tensor | None,
    *,
    need_max: bool,
    need_index: bool,
    mean: bool,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Sum over N of a (or a*b), optionally max and first argmax of a; (B, C) results.

    With ``valid`` (see ``_padding``) over real positions only; the sum is then not scaled (the caller
    divides by each sample's count).
    """
    k = _k()
    mode, lengths, mask, s_mask = _padding(valid, a)
    bsz, c, n = a.shape
    rows = bsz * c
    sum_out = torch.empty(bsz, c, device=a.device, dtype=torch.float32)
    max_out = torch.empty_like(sum_out) if need_max else None
    idx_out = torch.empty(bsz, c, device=a.device, dtype=torch.int64) if need_index else None
    if rows == 0:
        return sum_out, max_out, idx_out
    unit = _unit(a)
    block_c, block_n, warps = _tile(unit, c, n, a.element_size(), _REDUCE_TILE)
    n_cblk = -(-c // block_c)
    splits, chunk = _splits(a.device, bsz * n_cblk, n, block_n)
    scale = 1.0 / n if mean and mode == 0 else 1.0
    if splits == 1:
        psum, pmax, pidx = sum_out, max_out, idx_out
    else:
        psum = torch.empty(splits, rows, device=a.device, dtype=torch.float32)
        pmax = torch.empty_like(psum) if need_max else None
        pidx = torch.empty(splits, rows, device=a.device, dtype=torch.int64) if need_index else None
    bb = a if b is None else b
    unit_b = _unit(bb)
    sa, sb = _strides(a, unit), _strides(bb, unit_b)
    vec_n = _pow2_divisor(n)
    with _device_guard(a):
        k.reduce_kernel[(bsz * n_cblk * splits,)](
            a,
            bb,
            psum,
            psum if pmax is None else pmax,
            psum if pidx is None else pidx,
            c,
            n // vec_n,
            rows,
            chunk,
            splits,
            n_cblk,
            *sa[:3],
            *sb[:3],
            scale if splits == 1 else 1.0,
            lengths,
            mask,
            s_mask,
            UNIT_A=unit,
            UNIT_B=unit_b,
            VEC_A=sa[3],
            VEC_B=sb[3],
            VEC_N=vec_n,
            PRODUCT=b is not None,
            NEED_MAX=need_max,
            NEED_IDX=need_index,
            BLOCK_C=block_c,
            BLOCK_N=block_n,
            PLAIN_MAX=_PLAIN_MAX,
            MASK=mode,
            num_warps=warps,
        )
        if splits > 1:
            block_r = 64
            k.combine_kernel[(-(-rows // block_r),)](
                psum,
                psum if pmax is None else pmax,
                psum if pidx is None else pidx,
                sum_out,
                sum_out if max_out is None else max_out,
                sum_out if idx_out is None else idx_out,
                rows,
                splits,
                scale,
                NEED_MAX=need_max,
                NEED_IDX=need_index,
                BLOCK_R=block_r,
                BLOCK_S=_pow2(splits),
                num_warps=4,
            )
    return sum_out, max_out, idx_out


def pool_stats(x3: Tensor, need_index: bool, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One pass over x: per-(b, c) mean and max in float32, and the first argmax when asked.

    A NaN in a row makes its max NaN (its index then points at a NaN). With ``valid`` (lengths (B,),
    each in [1, N], or a (B, N) mask with a real position per sample) only real positions count: padding,
    even NaN, never enters, and the argmax is the first maximal real position.
    """
    _check(x3, "x3")
    if x3.shape[2] == 0:
        raise ValueError("x3 has no spatial positions (N = 0): mean and max are undefined")
    total, mx, idx = _reduce(x3, None, need_max=True, need_index=need_index, mean=True, valid=valid)
    assert mx is not None
    if valid is None:
        return total, mx, idx
    return total / count(valid, torch.float32), mx, idx


def padding(valid: Tensor, x: Tensor, *, check: bool) -> Tensor:
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


def count(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Real positions per sample, (B, 1) in ``dtype``: the lengths themselves, or the mask's row sums."""
    if valid.dtype == torch.bool:
        return valid.sum(dim=1, keepdim=True, dtype=dtype)
    return valid.to(dtype).unsqueeze(1)


def scale(x3: Tensor, ca: Tensor) -> Tensor:
    """y = x * ca[:, :, None] in one pass; y has x's dtype and (for dense x) x's strides."""
    _check(x3, "x3")
    k = _k()
    y3 = torch.empty_like(x3)
    bsz, c, n = x3.shape
    if x3.numel() == 0:
        return y3
    ca = ca.reshape(bsz, c).contiguous()
    if _flat(x3):
        block, warps = _flat_block(x3.element_size())
        with _device_guard(x3):
            k.scale_flat_kernel[(-(-x3.numel() // block),)](x3, ca, y3, x3.numel(), N=n, BLOCK=block, num_warps=warps)
        return y3
    unit = _unit(x3)
    block_c, block_n, warps = _tile(unit, c, n, x3.element_size(), _TILE_BYTES // x3.element_size())
    n_cblk, n_nblk = -(-c // block_c), -(-n // block_n)
    unit_y = _unit(y3)
    sx, sy = _strides(x3, unit), _strides(y3, unit_y)
    with _device_guard(x3):
        k.scale_kernel[(bsz * n_cblk * n_nblk,)](
            x3,
            ca,
            y3,
            c,
            n,
            n_cblk,
            n_nblk,
            *sx[:3],
            *sy[:3],
            UNIT_X=unit,
            UNIT_Y=unit_y,
            VEC_X=sx[3],
            VEC_Y=sy[3],
            BLOCK_C=block_c,
            BLOCK_N=block_n,
            num_warps=warps,
        )
    return y3


def grad_ca(dy3: Tensor, x3: Tensor) -> Tensor:
    """sum over N of dy * x, (B, C) float32, in one pass reading dy and x."""
    _check(dy3, "dy3")
    if dy3.shape != x3.shape:
        raise ValueError(f"dy3 and x3 must have the same shape, got {tuple(dy3.shape)} and {tuple(x3.shape)}")
    if dy3.shape[2] == 0:
        return torch.zeros(dy3.shape[:2], device=dy3.device, dtype=torch.float32)
    total, _, _ = _reduce(dy3, x3, need_max=False, need_index=False, mean=False)
    return total


def grad_input(
    dy3: Tensor, ca: Tensor, g_avg: Tensor, g_max: Tensor, idx: Tensor, valid: Tensor | None = None
) -> Tensor:
    """dx = dy * ca + g_avg + g_max at idx, in one pass; g_avg is already divided by N (by each sample's
    count of real positions with ``valid``, lengths or mask as in ``pool_stats``, and then reaches real
    positions only: padding gets dy * ca).

    dx has dy's dtype and (for dense dy) dy's strides.
    """
    _check(dy3, "dy3")
    k = _k()
    dx3 = torch.empty_like(dy3)
    bsz, c, n = dy3.shape
    if dy3.numel() == 0:
        return dx3
    mode, lengths, mask, s_mask = _padding(valid, dy3)
    small = [t.reshape(bsz, c).contiguous() for t in (ca, g_avg, g_max, idx)]
    if mode == 0 and _flat(dy3):  # the flat kernels know no padding
        block, warps = _flat_block(dy3.element_size())
        with _device_guard(dy3):
            k.grad_input_flat_kernel[(-(-dy3.numel() // block),)](
                dy3, *small, dx3, dy3.numel(), N=n, BLOCK=block, num_warps=warps
            )
        return dx3
    unit = _unit(dy3)
    block_c, block_n, warps = _tile(unit, c, n, dy3.element_size(), _TILE_BYTES // dy3.element_size())
    n_cblk, n_nblk = -(-c // block_c), -(-n // block_n)
    unit_x = _unit(dx3)
    sd, sx = _strides(dy3, unit), _strides(dx3, unit_x)
    with _device_guard(dy3):
        k.grad_input_kernel[(bsz * n_cblk * n_nblk,)](
            dy3,
            *small,
            dx3,
            c,
            n,
            n_cblk,
            n_nblk,
            *sd[:3],
            *sx[:3],
            lengths,
            mask,
            s_mask,
            UNIT_D=unit,
            UNIT_X=unit_x,
            VEC_D=sd[3],
            VEC_X=sx[3],
            BLOCK_C=block_c,
            BLOCK_N=block_n,
            MASK=mode,
            num_warps=warps,
        )
    return dx3
