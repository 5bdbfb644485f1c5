# mypy: ignore-errors
# Triton kernels are written in Triton's DSL (untyped tensors, constexpr parameters); mypy cannot
# type them. The typed Python entry points live in ``triton_ops``.
"""Triton kernels for the four big-tensor passes of the fast path.

Every kernel works on a (B, C, N) tensor with arbitrary strides, one (BLOCK_C, BLOCK_N) tile at a
time. ``UNIT`` (a constexpr) names the dim whose stride is 1 (1: N as in contiguous maps, 2: C as
in channels_last, 0: none), so that Triton sees the contiguous axis at compile time and coalesces
the loads along it; the tile shape chosen by ``triton_ops`` follows the same axis.

Reductions keep per-lane accumulators (sum, max, first index of the max) and reduce across lanes
once at the end, so the inner loop is a load, an add and a compare-select. A program reduces a
chunk of N for BLOCK_C channels; when (B, C) alone gives too few programs to fill the GPU, N is
split across programs and ``combine_kernel`` merges the partial results.

Padded batches (``MASK``, a constexpr): 1 reads each sample's length from ``len_ptr`` and touches only
the prefix [0, length) of its rows; 2 reads a (B, N) mask of real positions (uint8) from ``valid_ptr``.
The reductions then see real positions only, and ``grad_input_kernel`` adds the mean's gradient there.
"""

import triton
import triton.language as tl

# Larger than any position (N < 2**31 is checked on the Python side).
BIG_INDEX = tl.constexpr(2147483647)
NO_MASK = tl.constexpr(0)
LENGTHS = tl.constexpr(1)
MASK_ROWS = tl.constexpr(2)


@triton.jit
def _real(valid_ptr, svb, bi, n, n_ok):
    """Which of the positions n (inside the row: n_ok) are real, from the (B, N) uint8 mask."""
    return tl.load(valid_ptr + bi * svb + n, mask=n_ok, other=0) != 0


@triton.jit
def _offsets(c, n, sc, sn, UNIT: tl.constexpr, VEC: tl.constexpr):
    """Element offsets of a (BLOCK_C, BLOCK_N) tile; the unit-stride dim is spelled as literal 1.

    The other strides arrive divided by VEC (a power of two dividing them), and are multiplied back
    here, so the compiler can prove alignment (e.g. rows of 14x14 = 196 floats are 16-byte aligned,
    which Triton's own divisible-by-16 specialisation cannot tell) and use wide loads.
    """
    if UNIT == 1:
        off = c[:, None] * (sc * VEC) + n[None, :]
    elif UNIT == 2:
        off = c[:, None] + n[None, :] * (sn * VEC)
    else:
        off = c[:, None] * (sc * VEC) + n[None, :] * (sn * VEC)
    return off


@triton.jit
def _row_max(acc_max, acc_idx, BIG: tl.constexpr):
    """Row max and the smallest index holding it; a NaN anywhere in a row wins (max is NaN)."""
    nan_lane = acc_max != acc_max
    any_nan = tl.max(nan_lane.to(tl.int32), axis=1) > 0
    clean = tl.where(nan_lane, float("-inf"), acc_max)
    row_max = tl.max(clean, axis=1)
    hit = tl.where(any_nan[:, None], nan_lane, clean == row_max[:, None])
    row_idx = tl.min(tl.where(hit, acc_idx, BIG), axis=1)
    row_max = tl.where(any_nan, float("nan"), row_max)
    return row_max, row_idx


@triton.jit
def reduce_kernel(
    a_ptr,
    b_ptr,
    sum_ptr,
    max_ptr,
    idx_ptr,
    C,
    N,
    rows,
    chunk,
    splits,
    n_cblk,
    sab,
    sac,
    san,
    sbb,
    sbc,
    sbn,
    sum_scale,
    len_ptr,
    valid_ptr,
    svb,
    UNIT_A: tl.constexpr,
    UNIT_B: tl.constexpr,
    VEC_A: tl.constexpr,
    VEC_B: tl.constexpr,
    VEC_N: tl.constexpr,
    PRODUCT: tl.constexpr,
    NEED_MAX: tl.constexpr,
    NEED_IDX: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PLAIN_MAX: tl.constexpr = False,
    MASK: tl.constexpr = 0,
):
    """Per (b, c): sum over a chunk of N of a (or a*b when PRODUCT), and max/first argmax of a.

    PLAIN_MAX (without NEED_IDX): the running max is one NaN-propagating maximum per element instead
    of the compare-and-select that also serves the argmax; the results are the same.

    Results go to (splits, rows) buffers at [split, b*C + c]; the sum is multiplied by sum_scale
    (1/N when there is a single split, so that the buffer is already the mean).

    With MASK, only real positions enter, and the max starts at the first real one (lanes that saw none
    keep BIG_INDEX), so the argmax is the first maximal real position even in an all -inf row.
    """
    pid = tl.program_id(0)
    s = pid % splits
    t = pid // splits
    cb = t % n_cblk
    bi = (t // n_cblk).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    c64 = c.to(tl.int64)
    lane = tl.arange(0, BLOCK_N)
    n_lo = s * chunk
    n_hi = tl.minimum(n_lo + chunk, N * VEC_N)  # N arrives divided by VEC_N: masks stay provably aligned
    if MASK == LENGTHS:
        # The row's real prefix ends at the sample's length: loads stop there, rounded up to VEC_N (a
        # bound the compiler can prove aligned, so that they stay 128-bit; the rest of the padding is
        # never read).
        length = tl.load(len_ptr + bi).to(tl.int32)
        n_hi = tl.minimum(n_hi, tl.cdiv(length, VEC_N) * VEC_N)

    acc_sum = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    acc_max = tl.full((BLOCK_C, BLOCK_N), float("-inf"), dtype=tl.float32)
    if MASK == NO_MASK:
        # Lanes start at their own first position, so an all -inf row still reports its first index.
        acc_idx = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.int32) + (n_lo + lane)[None, :]
    else:
        acc_idx = tl.full((BLOCK_C, BLOCK_N), BIG_INDEX, dtype=tl.int32)
    a_base = a_ptr + bi * (sab * VEC_A)
    b_base = b_ptr + bi * (sbb * VEC_B)
    for start in range(n_lo, n_hi, BLOCK_N):
        n = start + lane
        m = c_ok[:, None] & (n < n_hi)[None, :]
        v = tl.load(a_base + _offsets(c64, n, sac, san, UNIT_A, VEC_A), mask=m, other=0.0).to(tl.float32)
        # Real positions are selected after the load, whose mask then stays uniform per vector.
        if MASK == LENGTHS:
            m = m & (n < length)[None, :]
        if MASK == MASK_ROWS:
            m = m & _real(valid_ptr, svb, bi, n, n < n_hi)[None, :]
        if MASK != NO_MASK:
            v = tl.where(m, v, 0.0)
        if PRODUCT:
            w = tl.load(b_base + _offsets(c64, n, sbc, sbn, UNIT_B, VEC_B), mask=m, other=0.0).to(tl.float32)
            acc_sum += v * w
        else:
            acc_sum += v
        if NEED_MAX:
            key = tl.where(m, v, float("-inf"))
            if PLAIN_MAX and not NEED_IDX:
                acc_max = tl.maximum(acc_max, key, propagate_nan=tl.PropagateNan.ALL)
            else:
                # Strictly greater keeps the first maximal position; a NaN takes the lane and stays.
                upd = ((key > acc_max) | (key != key)) & (acc_max == acc_max)
                if MASK != NO_MASK:  # a lane's first real position starts its max (also at -inf)
                    upd = upd | (m & (acc_idx == BIG_INDEX))
                acc_max = tl.where(upd, key, acc_max)
                if NEED_IDX:
                    acc_idx = tl.where(upd, n[None, :], acc_idx)

    out = s.to(tl.int64) * rows + bi * C + c64
    tl.store(sum_ptr + out, tl.sum(acc_sum, axis=1) * sum_scale, mask=c_ok)
    if NEED_MAX:
        row_max, row_idx = _row_max(acc_max, acc_idx, BIG_INDEX)
        tl.store(max_ptr + out, row_max, mask=c_ok)
        if NEED_IDX:
            tl.store(idx_ptr + out, row_idx.to(tl.int64), mask=c_ok)


@triton.jit
def combine_kernel(
    psum_ptr,
    pmax_ptr,
    pidx_ptr,
    sum_ptr,
    max_ptr,
    idx_ptr,
    rows,
    splits,
    sum_scale,
    NEED_MAX: tl.constexpr,
    NEED_IDX: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Merge (splits, rows) partials: sum (times sum_scale), max, and the first index of the max."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    sp = tl.arange(0, BLOCK_S)
    r_ok = r < rows
    m = r_ok[:, None] & (sp < splits)[None, :]
    off = sp[None, :].to(tl.int64) * rows + r[:, None]
    total = tl.sum(tl.load(psum_ptr + off, mask=m, other=0.0), axis=1)
    tl.store(sum_ptr + r, total * sum_scale, mask=r_ok)
    if NEED_MAX:
        pm = tl.load(pmax_ptr + off, mask=m, other=float("-inf"))
        if NEED_IDX:
            pi = tl.load(pidx_ptr + off, mask=m, other=BIG_INDEX)
        else:
            pi = tl.zeros((BLOCK_R, BLOCK_S), dtype=tl.int64)
        row_max, row_idx = _row_max(pm, pi, BIG_INDEX)
        tl.store(max_ptr + r, row_max, mask=r_ok)
        if NEED_IDX:
            tl.store(idx_ptr + r, row_idx, mask=r_ok)


@triton.jit
def scale_kernel(
    x_ptr,
    ca_ptr,
    y_ptr,
    C,
    N,
    n_cblk,
    n_nblk,
    sxb,
    sxc,
    sxn,
    syb,
    syc,
    syn,
    UNIT_X: tl.constexpr,
    UNIT_Y: tl.constexpr,
    VEC_X: tl.constexpr,
    VEC_Y: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """y[b, c, n] = x[b, c, n] * ca[b, c], multiplied in float32 and rounded once."""
    pid = tl.program_id(0)
    nb = pid % n_nblk
    t = pid // n_nblk
    cb = t % n_cblk
    bi = (t // n_cblk).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    m = c_ok[:, None] & (n < N)[None, :]
    c64 = c.to(tl.int64)
    g = tl.load(ca_ptr + bi * C + c64, mask=c_ok, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + bi * (sxb * VEC_X) + _offsets(c64, n, sxc, sxn, UNIT_X, VEC_X), mask=m, other=0.0).to(
        tl.float32
    )
    out = (v * g[:, None]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + bi * (syb * VEC_Y) + _offsets(c64, n, syc, syn, UNIT_Y, VEC_Y), out, mask=m)


@triton.jit
def grad_input_kernel(
    dy_ptr,
    ca_ptr,
    gavg_ptr,
    gmax_ptr,
    idx_ptr,
    dx_ptr,
    C,
    N,
    n_cblk,
    n_nblk,
    sdb,
    sdc,
    sdn,
    sxb,
    sxc,
    sxn,
    len_ptr,
    valid_ptr,
    svb,
    UNIT_D: tl.constexpr,
    UNIT_X: tl.constexpr,
    VEC_D: tl.constexpr,
    VEC_X: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK: tl.constexpr = 0,
):
    """dx = dy * ca + g_avg + (n == idx) * g_max, all per (b, c), in float32, rounded once.

    With MASK, g_avg (already divided by the sample's count of real positions) reaches real positions
    only: padding gets dy * ca.
    """
    pid = tl.program_id(0)
    nb = pid % n_nblk
    t = pid // n_nblk
    cb = t % n_cblk
    bi = (t // n_cblk).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = c < C
    m = c_ok[:, None] & (n < N)[None, :]
    c64 = c.to(tl.int64)
    row = bi * C + c64
    g = tl.load(ca_ptr + row, mask=c_ok, other=0.0).to(tl.float32)
    ga = tl.load(gavg_ptr + row, mask=c_ok, other=0.0).to(tl.float32)
    gm = tl.load(gmax_ptr + row, mask=c_ok, other=0.0).to(tl.float32)
    ix = tl.load(idx_ptr + row, mask=c_ok, other=-1).to(tl.int32)
    d = tl.load(dy_ptr + bi * (sdb * VEC_D) + _offsets(c64, n, sdc, sdn, UNIT_D, VEC_D), mask=m, other=0.0).to(
        tl.float32
    )
    mean_part = ga[:, None]
    if MASK == LENGTHS:
        mean_part = tl.where((n < tl.load(len_ptr + bi).to(tl.int32))[None, :], mean_part, 0.0)
    elif MASK == MASK_ROWS:
        mean_part = tl.where(_real(valid_ptr, svb, bi, n, n < N)[None, :], mean_part, 0.0)
    dx = d * g[:, None] + mean_part + tl.where(n[None, :] == ix[:, None], gm[:, None], 0.0)
    tl.store(
        dx_ptr + bi * (sxb * VEC_X) + _offsets(c64, n, sxc, sxn, UNIT_X, VEC_X), dx.to(dx_ptr.dtype.element_ty), mask=m
    )


# Flat variants for contiguous (B, C, N) tensors whose rows are not 16-element aligned (N = 7x7,
# 14x14, ...): the 2-D tile cannot prove alignment there and falls back to scalar loads, while a
# flat block of the whole tensor is aligned and loads 128 bits at a time. N is a constexpr so that
# "which row is this element in" is a multiply-shift, not a division.


@triton.jit
def _flat_rows(e0, N: tl.constexpr, BLOCK: tl.constexpr):
    """For the BLOCK elements from flat offset e0: each one's row (b * C + c) and column (n)."""
    r0 = e0 // N
    i = (e0 - r0 * N).to(tl.int32) + tl.arange(0, BLOCK)
    q = i // N
    return r0 + q, i - q * N


@triton.jit
def scale_flat_kernel(x_ptr, ca_ptr, y_ptr, total, N: tl.constexpr, BLOCK: tl.constexpr):
    """y = x * ca[row] on a contiguous tensor seen as one flat array."""
    e0 = tl.program_id(0).to(tl.int64) * BLOCK
    offs = e0 + tl.arange(0, BLOCK)
    m = offs < total
    row, _ = _flat_rows(e0, N, BLOCK)
    g = tl.load(ca_ptr + row, mask=m, other=0.0).to(tl.float32)
    v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (v * g).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def grad_input_flat_kernel(
    dy_ptr, ca_ptr, gavg_ptr, gmax_ptr, idx_ptr, dx_ptr, total, N: tl.constexpr, BLOCK: tl.constexpr
):
    """dx = dy * ca + g_avg + (n == idx) * g_max on a contiguous tensor seen as one flat array."""
    e0 = tl.program_id(0).to(tl.int64) * BLOCK
    offs = e0 + tl.arange(0, BLOCK)
    m = offs < total
    row, col = _flat_rows(e0, N, BLOCK)
    g = tl.load(ca_ptr + row, mask=m, other=0.0).to(tl.float32)
    ga = tl.load(gavg_ptr + row, mask=m, other=0.0).to(tl.float32)
    gm = tl.load(gmax_ptr + row, mask=m, other=0.0).to(tl.float32)
    ix = tl.load(idx_ptr + row, mask=m, other=-1).to(tl.int32)
    d = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    dx = d * g + ga + tl.where(col == ix, gm, 0.0)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)
