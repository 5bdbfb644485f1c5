# mypy: ignore-errors
# Triton kernels are written in Triton's DSL (untyped tensors, constexpr parameters); mypy cannot
# type them. The typed Python entry points live in ``triton_small``.
"""Triton kernels for the block's small (B, C) path: one launch forward, two backward.

The small path is a few thousand FLOPs per sample spread over ~15 PyTorch ops forward and ~35
backward; on a GPU each op costs a launch and a round trip through memory, which is what made it as
slow as the big-tensor passes. Here one program per sample runs the whole chain (router, MLP, fusion,
temperature, gate) with the weights streamed from L2, and the backward's per-sample vectors go to
(B, *) scratch for a second kernel that sums the weight gradients over the batch in a fixed order
(no atomics, so results are deterministic).

Every dimension (C, hidden H, router hidden R) is looped over in tiles, so any size works. A program
that re-reads a vector it stored itself (hid, g_pre, g_q) calls ``tl.debug_barrier`` first: a
CTA barrier also orders the block's global memory accesses.

NaN handling follows ATen: relu(NaN) = NaN (``where(v < 0, 0, v)``), relu backward lets NaN through
(``where(pre <= 0, 0, d)``), hardsigmoid propagates NaN. Divisions that torch performs (z / T, the
softmax normalisation, hardsigmoid's / 6) are IEEE round-to-nearest (``div_rn``), not Triton's
default approximate division.
"""

import triton
import triton.language as tl


@triton.jit
def _relu(v):
    return tl.where(v < 0, 0.0, v)  # NaN stays NaN, as torch's relu


@triton.jit
def _sigmoid(v):
    return tl.math.div_rn(tl.full(v.shape, 1.0, tl.float32), 1.0 + tl.exp(-v))


@triton.jit
def _act(pre, SILU: tl.constexpr):
    out = pre * _sigmoid(pre) if SILU else _relu(pre)
    return out


@triton.jit
def _act_backward(pre, d, SILU: tl.constexpr):
    if SILU:
        sig = _sigmoid(pre)
        out = d * sig * (1.0 + pre * (1.0 - sig))
    else:
        out = tl.where(pre <= 0, 0.0, d)  # NaN passes, as in aten's threshold_backward
    return out


@triton.jit
def _gate(u, HARD: tl.constexpr):
    if HARD:  # relu6(u + 3) / 6 with NaN propagating (a comparison with NaN is false)
        v = u + 3.0
        v = tl.where(v < 0, 0.0, tl.where(v > 6, 6.0, v))
        out = tl.math.div_rn(v, tl.full(v.shape, 6.0, tl.float32))
    else:
        out = _sigmoid(u)
    return out


@triton.jit
def _gate_backward(g, ca, u, HARD: tl.constexpr, ONE_SIXTH: tl.constexpr):
    # hardsigmoid: slope 1/6 strictly inside (-3, 3), as torch's hardsigmoid_backward
    return tl.where((u > -3.0) & (u < 3.0), g * ONE_SIXTH, 0.0) if HARD else g * ca * (1.0 - ca)


@triton.jit
def small_forward_kernel(
    avg_ptr,
    mx_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    r1w_ptr,
    r1b_ptr,
    r2w_ptr,
    r2b_ptr,
    temp_ptr,
    s_ptr,
    pre_ptr,
    hid_ptr,
    out_ptr,
    cat_ptr,
    q_ptr,
    w_ptr,
    t_ptr,
    u_ptr,
    ca_ptr,
    B,
    C,
    H,
    R,
    SOFTMAX: tl.constexpr,
    HARD: tl.constexpr,
    SILU: tl.constexpr,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    HAS_RB1: tl.constexpr,
    HAS_RB2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One program per sample b: every field of ``small.Forward`` for row b (rows b and B + b of s/pre/hid/out)."""
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(temp_ptr).to(tl.float32)
    tl.store(t_ptr, t, mask=b == 0)
    row_a = b * C
    row_m = (B + b) * C

    # s = cat([avg, mx], 0) and the router input cat([avg, mx], 1): copies of the statistics.
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        va = tl.load(avg_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
        vm = tl.load(mx_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
        tl.store(s_ptr + row_a + c, va, mask=cm)
        tl.store(s_ptr + row_m + c, vm, mask=cm)
        if SOFTMAX:
            tl.store(cat_ptr + 2 * row_a + c, va, mask=cm)
            tl.store(cat_ptr + 2 * row_a + C + c, vm, mask=cm)

    # Router: q = r1(cat), logits = r2(relu(q)), w = softmax(logits) (minus the row max, as torch).
    if SOFTMAX:
        l0 = 0.0
        l1 = 0.0
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            rm = r < R
            acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                cm = c < C
                m2 = rm[:, None] & cm[None, :]
                va = tl.load(avg_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
                vm = tl.load(mx_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
                wa = tl.load(r1w_ptr + r[:, None] * (2 * C) + c[None, :], mask=m2, other=0.0).to(tl.float32)
                wm = tl.load(r1w_ptr + r[:, None] * (2 * C) + C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                acc += tl.sum(wa * va[None, :] + wm * vm[None, :], axis=1)
            if HAS_RB1:
                acc += tl.load(r1b_ptr + r, mask=rm, other=0.0).to(tl.float32)
            tl.store(q_ptr + b * R + r, acc, mask=rm)
            hr = tl.where(rm, _relu(acc), 0.0)
            l0 += tl.sum(tl.load(r2w_ptr + r, mask=rm, other=0.0).to(tl.float32) * hr)
            l1 += tl.sum(tl.load(r2w_ptr + R + r, mask=rm, other=0.0).to(tl.float32) * hr)
        if HAS_RB2:
            l0 += tl.load(r2b_ptr).to(tl.float32)
            l1 += tl.load(r2b_ptr + 1).to(tl.float32)
        top = tl.where(l0 > l1, l0, l1)
        e0 = tl.exp(l0 - top)
        e1 = tl.exp(l1 - top)
        fw0 = tl.math.div_rn(e0, e0 + e1)
        fw1 = tl.math.div_rn(e1, e0 + e1)
        tl.store(w_ptr + 2 * b, fw0)
        tl.store(w_ptr + 2 * b + 1, fw1)

    # MLP layer 1 on both rows: pre = s @ W1^T + b1, hid = act(pre).
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        hm = h < H
        acc_a = tl.zeros((BLOCK_H,), dtype=tl.float32)
        acc_m = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            wt = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=hm[:, None] & cm[None, :], other=0.0)
            wt = wt.to(tl.float32)
            va = tl.load(avg_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
            vm = tl.load(mx_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
            acc_a += tl.sum(wt * va[None, :], axis=1)
            acc_m += tl.sum(wt * vm[None, :], axis=1)
        if HAS_B1:
            bias = tl.load(b1_ptr + h, mask=hm, other=0.0).to(tl.float32)
            acc_a += bias
            acc_m += bias
        tl.store(pre_ptr + b * H + h, acc_a, mask=hm)
        tl.store(pre_ptr + (B + b) * H + h, acc_m, mask=hm)
        tl.store(hid_ptr + b * H + h, _act(acc_a, SILU), mask=hm)
        tl.store(hid_ptr + (B + b) * H + h, _act(acc_m, SILU), mask=hm)
    tl.debug_barrier()  # hid, written by other threads of this program, is read back below

    # MLP layer 2 (out = hid @ W2^T + b2), fusion, temperature and gate, one C tile at a time.
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        acc_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
        acc_m = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            hm = h < H
            wt = tl.load(w2_ptr + c[:, None] * H + h[None, :], mask=cm[:, None] & hm[None, :], other=0.0)
            wt = wt.to(tl.float32)
            ha = tl.load(hid_ptr + b * H + h, mask=hm, other=0.0)
            hx = tl.load(hid_ptr + (B + b) * H + h, mask=hm, other=0.0)
            acc_a += tl.sum(wt * ha[None, :], axis=1)
            acc_m += tl.sum(wt * hx[None, :], axis=1)
        if HAS_B2:
            bias = tl.load(b2_ptr + c, mask=cm, other=0.0).to(tl.float32)
            acc_a += bias
            acc_m += bias
        tl.store(out_ptr + row_a + c, acc_a, mask=cm)
        tl.store(out_ptr + row_m + c, acc_m, mask=cm)
        z = fw0 * acc_a + fw1 * acc_m if SOFTMAX else acc_a + acc_m
        u = tl.math.div_rn(z, tl.zeros_like(z) + t)
        tl.store(u_ptr + row_a + c, u, mask=cm)
        tl.store(ca_ptr + row_a + c, _gate(u, HARD), mask=cm)


@triton.jit
def small_backward_rows_kernel(
    gca_ptr,
    gw_ptr,
    ca_ptr,
    u_ptr,
    out_ptr,
    w_ptr,
    q_ptr,
    pre_ptr,
    w1_ptr,
    w2_ptr,
    r1w_ptr,
    r2w_ptr,
    temp_ptr,
    gz_ptr,
    gtp_ptr,
    glog_ptr,
    gq_ptr,
    gpre_ptr,
    gavg_ptr,
    gmx_ptr,
    B,
    C,
    H,
    R,
    SOFTMAX: tl.constexpr,
    HARD: tl.constexpr,
    SILU: tl.constexpr,
    HAS_GW: tl.constexpr,
    ONE_SIXTH: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """One program per sample b: the per-sample gradient vectors.

    Writes g_z (B, C), the sample's share of the temperature gradient sum(g_u * u) (B,) in float64, g_logits (B, 2),
    g_q (B, R), g_pre (2B, H) (scratch for the weight gradients) and the gradients of avg and max (B, C).
    """
    b = tl.program_id(0).to(tl.int64)
    t = tl.load(temp_ptr).to(tl.float32)
    row_a = b * C
    row_m = (B + b) * C

    # Gate and temperature: g_u = gate'(u) * g_ca, g_z = g_u / T; dot products for the fusion weights.
    # The temperature gradient is one sum over all B * C terms, which cancel: accumulate it in float64.
    gt = tl.sum(tl.zeros((BLOCK_C,), dtype=tl.float64), axis=0)
    ga = 0.0
    gm = 0.0
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        g = tl.load(gca_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
        cav = tl.load(ca_ptr + row_a + c, mask=cm, other=0.0)
        u = tl.load(u_ptr + row_a + c, mask=cm, other=0.0)
        gu = _gate_backward(g, cav, u, HARD, ONE_SIXTH)
        gz = tl.math.div_rn(gu, tl.zeros_like(gu) + t)
        tl.store(gz_ptr + row_a + c, gz, mask=cm)
        gt += tl.sum((gu * u).to(tl.float64))
        if SOFTMAX:
            ga += tl.sum(gz * tl.load(out_ptr + row_a + c, mask=cm, other=0.0))
            gm += tl.sum(gz * tl.load(out_ptr + row_m + c, mask=cm, other=0.0))
    tl.store(gtp_ptr + b, gt)

    # Router backward: softmax, second linear, relu.
    if SOFTMAX:
        fw0 = tl.load(w_ptr + 2 * b)
        fw1 = tl.load(w_ptr + 2 * b + 1)
        if HAS_GW:
            ga += tl.load(gw_ptr + 2 * b).to(tl.float32)
            gm += tl.load(gw_ptr + 2 * b + 1).to(tl.float32)
        dot = ga * fw0 + gm * fw1
        gl0 = fw0 * (ga - dot)
        gl1 = fw1 * (gm - dot)
        tl.store(glog_ptr + 2 * b, gl0)
        tl.store(glog_ptr + 2 * b + 1, gl1)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            rm = r < R
            d_r = gl0 * tl.load(r2w_ptr + r, mask=rm, other=0.0).to(tl.float32)
            d_r += gl1 * tl.load(r2w_ptr + R + r, mask=rm, other=0.0).to(tl.float32)
            qv = tl.load(q_ptr + b * R + r, mask=rm, other=0.0)
            tl.store(gq_ptr + b * R + r, tl.where(qv <= 0, 0.0, d_r), mask=rm)  # NaN passes, as in aten

    # MLP layer 2 backward (d_hid = g_out @ W2) and the activation: g_pre for rows b and B + b.
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        hm = h < H
        acc_a = tl.zeros((BLOCK_H,), dtype=tl.float32)
        acc_m = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            # g_z again from its inputs (cheaper than a barrier and a re-read).
            g = tl.load(gca_ptr + row_a + c, mask=cm, other=0.0).to(tl.float32)
            cav = tl.load(ca_ptr + row_a + c, mask=cm, other=0.0)
            u = tl.load(u_ptr + row_a + c, mask=cm, other=0.0)
            gz = tl.math.div_rn(_gate_backward(g, cav, u, HARD, ONE_SIXTH), tl.zeros_like(u) + t)
            if SOFTMAX:
                go_a = gz * fw0
                go_m = gz * fw1
            else:
                go_a = gz
                go_m = gz
            wt = tl.load(w2_ptr + c[:, None] * H + h[None, :], mask=cm[:, None] & hm[None, :], other=0.0)
            wt = wt.to(tl.float32)
            acc_a += tl.sum(wt * go_a[:, None], axis=0)
            acc_m += tl.sum(wt * go_m[:, None], axis=0)
        pa = tl.load(pre_ptr + b * H + h, mask=hm, other=0.0)
        px = tl.load(pre_ptr + (B + b) * H + h, mask=hm, other=0.0)
        tl.store(gpre_ptr + b * H + h, _act_backward(pa, acc_a, SILU), mask=hm)
        tl.store(gpre_ptr + (B + b) * H + h, _act_backward(px, acc_m, SILU), mask=hm)
    tl.debug_barrier()  # g_pre and g_q, written by other threads of this program, are read back below

    # MLP layer 1 and router layer 1 backward: the gradients of avg and max.
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cm = c < C
        acc_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
        acc_m = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            hm = h < H
            wt = tl.load(w1_ptr + h[:, None] * C + c[None, :], mask=hm[:, None] & cm[None, :], other=0.0)
            wt = wt.to(tl.float32)
            acc_a += tl.sum(wt * tl.load(gpre_ptr + b * H + h, mask=hm, other=0.0)[:, None], axis=0)
            acc_m += tl.sum(wt * tl.load(gpre_ptr + (B + b) * H + h, mask=hm, other=0.0)[:, None], axis=0)
        if SOFTMAX:
            cat_a = tl.zeros((BLOCK_C,), dtype=tl.float32)
            cat_m = tl.zeros((BLOCK_C,), dtype=tl.float32)
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                rm = r < R
                m2 = rm[:, None] & cm[None, :]
                gq = tl.load(gq_ptr + b * R + r, mask=rm, other=0.0)[:, None]
                wa = tl.load(r1w_ptr + r[:, None] * (2 * C) + c[None, :], mask=m2, other=0.0).to(tl.float32)
                wm = tl.load(r1w_ptr + r[:, None] * (2 * C) + C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                cat_a += tl.sum(wa * gq, axis=0)
                cat_m += tl.sum(wm * gq, axis=0)
            acc_a += cat_a
            acc_m += cat_m
        tl.store(gavg_ptr + row_a + c, acc_a, mask=cm)
        tl.store(gmx_ptr + row_a + c, acc_m, mask=cm)


@triton.jit
def small_backward_weights_kernel(
    gz_ptr,
    gtp_ptr,
    glog_ptr,
    gq_ptr,
    gpre_ptr,
    w_ptr,
    s_ptr,
    hid_ptr,
    q_ptr,
    temp_ptr,
    dw1_ptr,
    db1_ptr,
    dw2_ptr,
    db2_ptr,
    dr1w_ptr,
    dr1b_ptr,
    dr2w_ptr,
    dr2b_ptr,
    dt_ptr,
    B,
    C,
    H,
    R,
    n_cblk,
    SOFTMAX: tl.constexpr,
    HAS_B1: tl.constexpr,
    HAS_B2: tl.constexpr,
    HAS_RB1: tl.constexpr,
    HAS_RB2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Weight and bias gradients as sums over the batch rows, each in a fixed order (deterministic).

    Programs 0 .. n_cblk-1 own a tile of C: the matching columns of dW1, rows of dW2, db2 and both
    halves of dR1. Program n_cblk does the short vectors: db1, dR1 bias, dR2, its bias, and T.
    """
    pid = tl.program_id(0)
    if pid < n_cblk:
        c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        # dW2[c, h] = sum over samples of g_out[a rows, c] hid[a rows, h] + g_out[m rows, c] hid[m rows, h].
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            hm = h < H
            acc = tl.zeros((BLOCK_C, BLOCK_H), dtype=tl.float32)
            bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
            for b in range(B):
                gz = tl.load(gz_ptr + b * C + c, mask=cm, other=0.0)
                if SOFTMAX:
                    go_a = gz * tl.load(w_ptr + 2 * b)
                    go_m = gz * tl.load(w_ptr + 2 * b + 1)
                else:
                    go_a = gz
                    go_m = gz
                ha = tl.load(hid_ptr + b * H + h, mask=hm, other=0.0)
                hx = tl.load(hid_ptr + (B + b) * H + h, mask=hm, other=0.0)
                acc += go_a[:, None] * ha[None, :] + go_m[:, None] * hx[None, :]
                bias += go_a + go_m
            tl.store(
                dw2_ptr + c[:, None] * H + h[None, :], acc.to(dw2_ptr.dtype.element_ty), mask=cm[:, None] & hm[None, :]
            )
            if HAS_B2:
                tl.store(db2_ptr + c, bias.to(db2_ptr.dtype.element_ty), mask=cm & (h0 == 0))
        # dW1[h, c] = sum over the 2B rows of g_pre[row, h] s[row, c].
        for h0 in range(0, H, BLOCK_H):
            h = h0 + tl.arange(0, BLOCK_H)
            hm = h < H
            acc = tl.zeros((BLOCK_H, BLOCK_C), dtype=tl.float32)
            for row in range(2 * B):
                gp = tl.load(gpre_ptr + row * H + h, mask=hm, other=0.0)
                sv = tl.load(s_ptr + row * C + c, mask=cm, other=0.0)
                acc += gp[:, None] * sv[None, :]
            tl.store(
                dw1_ptr + h[:, None] * C + c[None, :], acc.to(dw1_ptr.dtype.element_ty), mask=hm[:, None] & cm[None, :]
            )
        # dR1[r, k] = sum over samples of g_q[b, r] cat[b, k], for k in this tile of avg and of max.
        if SOFTMAX:
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                rm = r < R
                acc_a = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
                acc_m = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
                for b in range(B):
                    gq = tl.load(gq_ptr + b * R + r, mask=rm, other=0.0)[:, None]
                    acc_a += gq * tl.load(s_ptr + b * C + c, mask=cm, other=0.0)[None, :]
                    acc_m += gq * tl.load(s_ptr + (B + b) * C + c, mask=cm, other=0.0)[None, :]
                m2 = rm[:, None] & cm[None, :]
                off = r[:, None] * (2 * C) + c[None, :]
                tl.store(dr1w_ptr + off, acc_a.to(dr1w_ptr.dtype.element_ty), mask=m2)
                tl.store(dr1w_ptr + off + C, acc_m.to(dr1w_ptr.dtype.element_ty), mask=m2)
    else:
        t = tl.load(temp_ptr).to(tl.float32)  # rounded as small.py rounds T to the compute dtype
        gt = tl.sum(tl.zeros((BLOCK_B,), dtype=tl.float64), axis=0)
        for b0 in range(0, B, BLOCK_B):
            bb = b0 + tl.arange(0, BLOCK_B)
            gt += tl.sum(tl.load(gtp_ptr + bb, mask=bb < B, other=0.0))
        tl.store(dt_ptr, (-gt / t.to(tl.float64)).to(dt_ptr.dtype.element_ty))
        if HAS_B1:
            for h0 in range(0, H, BLOCK_H):
                h = h0 + tl.arange(0, BLOCK_H)
                hm = h < H
                acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
                for row in range(2 * B):
                    acc += tl.load(gpre_ptr + row * H + h, mask=hm, other=0.0)
                tl.store(db1_ptr + h, acc.to(db1_ptr.dtype.element_ty), mask=hm)
        if SOFTMAX:
            l0 = 0.0
            l1 = 0.0
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                rm = r < R
                acc_b = tl.zeros((BLOCK_R,), dtype=tl.float32)
                acc_0 = tl.zeros((BLOCK_R,), dtype=tl.float32)
                acc_1 = tl.zeros((BLOCK_R,), dtype=tl.float32)
                for b in range(B):
                    acc_b += tl.load(gq_ptr + b * R + r, mask=rm, other=0.0)
                    hr = _relu(tl.load(q_ptr + b * R + r, mask=rm, other=0.0))
                    acc_0 += tl.load(glog_ptr + 2 * b) * hr
                    acc_1 += tl.load(glog_ptr + 2 * b + 1) * hr
                if HAS_RB1:
                    tl.store(dr1b_ptr + r, acc_b.to(dr1b_ptr.dtype.element_ty), mask=rm)
                tl.store(dr2w_ptr + r, acc_0.to(dr2w_ptr.dtype.element_ty), mask=rm)
                tl.store(dr2w_ptr + R + r, acc_1.to(dr2w_ptr.dtype.element_ty), mask=rm)
            if HAS_RB2:
                for b0 in range(0, B, BLOCK_B):
                    bb = b0 + tl.arange(0, BLOCK_B)
                    l0 += tl.sum(tl.load(glog_ptr + 2 * bb, mask=bb < B, other=0.0))
                    l1 += tl.sum(tl.load(glog_ptr + 2 * bb + 1, mask=bb < B, other=0.0))
                tl.store(dr2b_ptr, l0.to(dr2b_ptr.dtype.element_ty))
                tl.store(dr2b_ptr + 1, l1.to(dr2b_ptr.dtype.element_ty))
