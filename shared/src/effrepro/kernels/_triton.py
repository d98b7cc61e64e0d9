"""Triton kernels of :mod:`effrepro.kernels` (imported only when a Triton backend runs).

The kernels are plain functions (no decorator) so that :func:`effrepro.kernels._dispatch.compile_kernel` can
JIT-compile them for CUDA tensors or run them through Triton's interpreter for CPU tensors.
"""

import triton.language as tl


def lowbit_mm_kernel(a_ptr, w_ptr, s_ptr, bias_ptr, y_ptr, M, N, K, sam, sak, swn, swk, sym, syn,
                     DELTA: tl.constexpr, TIE: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
                     INT_A: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr):
    """``y[m, n] = sum_k a[m, k] * shift(q[n, k])`` (int32 when ``INT_A``; else FP32, times ``s[n]``, plus bias).

    Written as a plain function and compiled by :func:`effrepro.kernels._dispatch.compile_kernel`; every
    argument after ``syn`` is a compile-time constant. The stored codes are read once per tile as int8 and
    shifted in registers; no float weight exists outside the tile.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    if INT_A:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a_mask = (rm[:, None] < M) & (kk[None, :] < K)
        w_mask = (kk[:, None] < K) & (rn[None, :] < N)
        a = tl.load(a_ptr + rm[:, None] * sam + kk[None, :] * sak, mask=a_mask, other=0)
        q = tl.load(w_ptr + kk[:, None] * swk + rn[None, :] * swn, mask=w_mask, other=0).to(tl.int32)
        if DELTA > 0:
            if TIE == 0:
                q = q >> DELTA
            elif TIE == 1:
                q = (q + (1 << (DELTA - 1))) >> DELTA
            else:
                down = q >> DELTA
                rem = q - (down << DELTA)
                up = (rem > (1 << (DELTA - 1))) | ((rem == (1 << (DELTA - 1))) & ((down & 1) == 1))
                q = down + up.to(tl.int32)
            q = tl.minimum(tl.maximum(q, LO), HI)
        if INT_A:
            acc += tl.dot(a.to(tl.int8), q.to(tl.int8), out_dtype=tl.int32)
        else:
            acc += tl.dot(a.to(tl.float32), q.to(tl.float32), input_precision="ieee")
    y_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if INT_A:
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, acc, mask=y_mask)
    else:
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        out = acc * s[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :] * syn, out, mask=y_mask)


def multi_momentum_kernel(p_ptr, g0_ptr, g1_ptr, g2_ptr, b0_ptr, b1_ptr, b2_ptr, n, mu0, mu1, mu2, neg_lr, wd, keep,
                          NUM: tl.constexpr, DECAY: tl.constexpr, BLOCK: tl.constexpr):
    """Up to three momentum buffers and the parameter in one pass: for k in order (products and sums as fused
    multiply-adds, as torch computes ``add(..., alpha=...)``),
    ``d = g_k (+ wd * p if k == DECAY)``, ``b_k = b_k * mu_k + keep * d``, ``p = p + neg_lr * b_k``.

    The same float operations, in the same order, as the reference step (``keep = 1 - dampening``). On a GPU
    ``tl.fma`` is a true fused multiply-add; Triton's interpreter rounds the product first, so on CPU tensors
    the result can differ from torch by about one ulp per step.
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    # tl.fma does not broadcast scalars: splat them to the block (adding 0.0 is exact)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    wd = zero + wd
    keep = zero + keep
    neg_lr = zero + neg_lr
    g = tl.load(g0_ptr + offs, mask=mask, other=0.0)
    if DECAY == 0:
        g = tl.fma(p, wd, g)
    b = tl.load(b0_ptr + offs, mask=mask, other=0.0) * mu0
    b = tl.fma(g, keep, b)
    tl.store(b0_ptr + offs, b, mask=mask)
    p = tl.fma(b, neg_lr, p)
    if NUM > 1:
        g = tl.load(g1_ptr + offs, mask=mask, other=0.0)
        if DECAY == 1:
            g = tl.fma(p, wd, g)
        b = tl.load(b1_ptr + offs, mask=mask, other=0.0) * mu1
        b = tl.fma(g, keep, b)
        tl.store(b1_ptr + offs, b, mask=mask)
        p = tl.fma(b, neg_lr, p)
    if NUM > 2:
        g = tl.load(g2_ptr + offs, mask=mask, other=0.0)
        if DECAY == 2:
            g = tl.fma(p, wd, g)
        b = tl.load(b2_ptr + offs, mask=mask, other=0.0) * mu2
        b = tl.fma(g, keep, b)
        tl.store(b2_ptr + offs, b, mask=mask)
        p = tl.fma(b, neg_lr, p)
    tl.store(p_ptr + offs, p, mask=mask)
