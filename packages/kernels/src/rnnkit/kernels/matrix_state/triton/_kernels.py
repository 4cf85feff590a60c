"""Triton kernels of the matrix-state form's chunked forward and backward (imported only where
triton is).

The algebra is the ``chunked`` backend's (``matrix_state/chunked.py``). The forward is three
launches (the backward's, below the forward's kernels, are described there):

- :func:`_intra_kernel`, one program per (chunk, batch x head): the chunk's decay partial sums
  and segments (resets), the unit-lower-triangular inverse ``M`` in registers (delta rule;
  the inverses of diagonal blocks of size 1, 2, 4, ... merged by ``tl.dot``, the block form of
  forward substitution), ``W = M diag(beta gamma) K`` (rows after the chunk's first reset
  zeroed), ``U = M diag(beta) V`` (``diag(beta) V`` for the linear rule), the keys as they reach
  the chunk's end ``K~ = diag(D[C-1, :]) K`` and the factor of the entering memory at the end;
- :func:`_state_kernel`, one program per (batch x head, block of value rows): the only
  sequential part. It carries its rows of ``S`` across the chunks in registers, stores the
  memory entering every chunk, replaces ``U`` by the pseudo-values ``U~ = U - W S^T`` in place
  and writes the final memory (the rows of ``S`` evolve independently: each reads all of ``W``
  and ``K~`` but only its own rows of ``S`` and ``U``);
- :func:`_out_kernel`, one program per (chunk, batch x head, block of value columns):
  ``O = diag(gamma first) Q S_0^T + causal(D * Q K^T) U~``.

Shapes (all contiguous, ``BH = batch * heads``, ``NC`` chunks of ``C`` tokens, ``TP = NC * C``):
``q, k: (BH, T, DK)``, ``v: (BH, T, DV)``, ``beta, log_alpha: (BH, T)``, resets ``(batch, T)``
(int8), ``S0, S: (BH, DV, DK)``; the workspaces ``W, K~: (BH, TP, DK)``, ``U: (BH, TP, DV)``,
the end factors ``(BH, NC)``, the entering memories ``(BH, NC, DV, DK)``; ``o: (BH, T, DV)``.
Tokens past ``T`` in the last chunk are read as ``k = v = beta = log_alpha = 0`` (they write
nothing and decay nothing). ``C``, ``BK >= DK`` and ``BV >= DV`` are powers of two of at least
16 (``tl.dot``'s smallest tile on a GPU); the masked lanes hold zeros.

Decays: every entry of ``D[i, j] = alpha_{j+1} ... alpha_i`` and ``gamma_i = alpha_0 ...
alpha_i`` is the exponential of a sum of ``log alpha`` accumulated on its own, one token at a
time (a cumulative sum down the columns of a masked copy, :func:`_chunk_sums`, as the
``chunked`` backend does), never a difference of two prefix sums or a ratio: a tiny ``alpha``
cannot cancel against another, and ``log alpha = -inf`` (``alpha = 0``) adds to ``-inf``
(never ``-inf - -inf``), whose exponential is an exact 0.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk_sums(
    la_ptr, r_ptr, bh, b, t, tm, T,
    HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr, C: tl.constexpr, DT: tl.constexpr,
):  # fmt: skip
    """One chunk's log-decay sums and segments (tokens ``t``, valid where ``tm``):
    ``P[i, j] = sum_{j < s <= i} log alpha_s``, ``G[i] = sum_{s <= i} log alpha_s``,
    ``E[j] = sum_{j < s < C} log alpha_s`` (to the chunk's end), ``seg[i]`` = resets in the
    chunk up to and including token ``i``, ``nres`` = resets in the chunk (zeros where the
    flags are off). ``P`` is a cumulative sum down the columns of a masked copy of
    ``log alpha``: each entry sums its own terms (a ``tl.where``, never a product with a 0/1
    mask, which would turn ``-inf`` into NaN)."""
    rows = tl.arange(0, C)
    below = rows[:, None] > rows[None, :]
    P = tl.zeros([C, C], dtype=DT)
    G = tl.zeros([C], dtype=DT)
    E = tl.zeros([C], dtype=DT)
    if HAS_DECAY:
        la = tl.load(la_ptr + bh * T + t, mask=tm, other=0.0).to(DT)
        X = tl.where(below, la[:, None], 0.0).to(DT)
        P = tl.cumsum(X, 0)
        G = tl.cumsum(la, 0)
        E = tl.sum(X, 0)
    seg = tl.zeros([C], dtype=tl.int32)
    if HAS_RESETS:
        seg = tl.cumsum(tl.load(r_ptr + b * T + t, mask=tm, other=0).to(tl.int32), 0)
    nres = tl.max(seg, 0)
    return P, G, E, seg, nres


@triton.jit
def _unit_lower_inverse(A, C: tl.constexpr, LOG_C: tl.constexpr, PREC: tl.constexpr):
    """``M = (I + A)^{-1}`` of a strictly lower ``(C, C)`` block ``A`` (``C = 2^LOG_C``), by
    blocks that double: ``M`` starts as the inverse of the 1 x 1 diagonal blocks (``I``); with
    ``M`` the inverse of the diagonal blocks of size ``b``, the block of size ``2b`` is
    ``[[M11, 0], [-M22 A21 M11, M22]]``, i.e. ``M - M A_off M`` with ``A_off`` the ``A21``
    parts (rows in the lower half of a ``2b``-block, columns in its upper half)."""
    DT = A.dtype
    rows = tl.arange(0, C)
    M = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0).to(DT)
    # (i, j) with i > j lies in one 2b-block, i in its lower half and j in its upper, exactly
    # when i ^ j is in [b, 2b): the two share every bit above b and differ in b's
    A = tl.where(rows[:, None] > rows[None, :], A, 0.0).to(DT)
    x = rows[:, None] ^ rows[None, :]
    for lvl in tl.static_range(LOG_C):
        off = (x >= (1 << lvl)) & (x < (2 << lvl))
        MA = tl.dot(M, tl.where(off, A, 0.0).to(DT), input_precision=PREC)
        M = M - tl.dot(MA, M, input_precision=PREC)
    return M


@triton.jit
def _intra_kernel(
    k_ptr, v_ptr, beta_ptr, la_ptr, r_ptr,
    w_ptr, u_ptr, kt_ptr, sd_ptr,
    T, H, DK, DV, NC,
    DELTA: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr,
    C: tl.constexpr, LOG_C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: no int32 overflow on large inputs
    b = bh // H
    t0 = c * C
    rows = tl.arange(0, C)
    t = t0 + rows
    tm = t < T
    kk = tl.arange(0, BK)
    vv = tl.arange(0, BV)
    km = kk < DK
    vm = vv < DV
    K = tl.load(
        k_ptr + (bh * T + t[:, None]) * DK + kk[None, :], mask=tm[:, None] & km[None, :], other=0.0
    )
    V = tl.load(
        v_ptr + (bh * T + t[:, None]) * DV + vv[None, :], mask=tm[:, None] & vm[None, :], other=0.0
    )
    beta = tl.load(beta_ptr + bh * T + t, mask=tm, other=0.0)
    DT = K.dtype
    P, G, E, seg, nres = _chunk_sums(la_ptr, r_ptr, bh, b, t, tm, T, HAS_DECAY, HAS_RESETS, C, DT)
    same = seg[:, None] == seg[None, :]
    ws = bh * NC * C + t  # workspace row of each token
    wk = ws[:, None] * DK + kk[None, :]
    wv = ws[:, None] * DV + vv[None, :]
    full_k = (rows[:, None] >= 0) & km[None, :]
    full_v = (rows[:, None] >= 0) & vm[None, :]
    Vb = V * beta[:, None]
    if DELTA:
        Kb = K * beta[:, None]
        strict = (rows[:, None] > rows[None, :]) & same
        A = tl.dot(Kb, tl.trans(K), input_precision=PREC)
        if HAS_DECAY:
            A = A * tl.exp(P)
        A = tl.where(strict, A, 0.0).to(DT)
        M = _unit_lower_inverse(A, C, LOG_C, PREC)
        if HAS_DECAY:
            Kb = Kb * tl.exp(G)[:, None]
        W = tl.dot(M, Kb, input_precision=PREC)
        if HAS_RESETS:
            W = tl.where((seg == 0)[:, None], W, 0.0).to(DT)
        tl.store(w_ptr + wk, W, mask=full_k)
        Vb = tl.dot(M, Vb, input_precision=PREC)
    tl.store(u_ptr + wv, Vb, mask=full_v)
    # K~: the keys scaled by what of their write reaches the chunk's end (0 before a reset)
    tail = tl.where(seg == nres, 1.0, 0.0).to(DT)
    if HAS_DECAY:
        tail = tail * tl.exp(E)
    tl.store(kt_ptr + wk, K * tail[:, None], mask=full_k)
    if HAS_DECAY or HAS_RESETS:
        # the factor of the entering memory at the chunk's end: gamma_{C-1}, 0 after a reset
        keep = tl.where(nres == 0, 1.0, 0.0).to(DT)
        if HAS_DECAY:
            keep = keep * tl.exp(tl.sum(tl.where(rows == C - 1, G, 0.0).to(DT), 0))
        tl.store(sd_ptr + bh * NC + c, keep)


@triton.jit
def _state_kernel(
    w_ptr, u_ptr, kt_ptr, sd_ptr, s0_ptr, sin_ptr, sl_ptr,
    DK, DV, NC,
    DELTA: tl.constexpr, HAS_SD: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BVS: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    vv = tl.program_id(1) * BVS + tl.arange(0, BVS)
    rows = tl.arange(0, C)
    kk = tl.arange(0, BK)
    vm = vv < DV
    km = kk < DK
    sm = vm[:, None] & km[None, :]
    so = vv[:, None] * DK + kk[None, :]
    full_k = (rows[:, None] >= 0) & km[None, :]
    full_v = (rows[:, None] >= 0) & vm[None, :]
    S = tl.load(s0_ptr + bh * DV * DK + so, mask=sm, other=0.0)
    for c in range(NC):
        tl.store(sin_ptr + (bh * NC + c) * DV * DK + so, S, mask=sm)
        ws = bh * NC * C + c * C + rows
        wv = ws[:, None] * DV + vv[None, :]
        wk = ws[:, None] * DK + kk[None, :]
        U = tl.load(u_ptr + wv, mask=full_v, other=0.0)
        if DELTA:
            W = tl.load(w_ptr + wk, mask=full_k, other=0.0)
            U = U - tl.dot(W, tl.trans(S), input_precision=PREC)
            tl.store(u_ptr + wv, U, mask=full_v)
        Kt = tl.load(kt_ptr + wk, mask=full_k, other=0.0)
        write = tl.dot(tl.trans(U), Kt, input_precision=PREC)
        if HAS_SD:
            S = tl.load(sd_ptr + bh * NC + c) * S
        S = S + write
    tl.store(sl_ptr + bh * DV * DK + so, S, mask=sm)


@triton.jit
def _out_kernel(
    q_ptr, k_ptr, la_ptr, r_ptr, u_ptr, sin_ptr, o_ptr,
    T, H, DK, DV, NC,
    HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BVO: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    vv = tl.program_id(2) * BVO + tl.arange(0, BVO)
    b = bh // H
    t0 = c * C
    rows = tl.arange(0, C)
    t = t0 + rows
    tm = t < T
    kk = tl.arange(0, BK)
    km = kk < DK
    vm = vv < DV
    qk = (bh * T + t[:, None]) * DK + kk[None, :]
    Q = tl.load(q_ptr + qk, mask=tm[:, None] & km[None, :], other=0.0)
    K = tl.load(k_ptr + qk, mask=tm[:, None] & km[None, :], other=0.0)
    DT = Q.dtype
    P, G, _, seg, _ = _chunk_sums(la_ptr, r_ptr, bh, b, t, tm, T, HAS_DECAY, HAS_RESETS, C, DT)
    causal = (rows[:, None] >= rows[None, :]) & (seg[:, None] == seg[None, :])
    attn = tl.dot(Q, tl.trans(K), input_precision=PREC)
    if HAS_DECAY:
        attn = attn * tl.exp(P)
        Q = Q * tl.exp(G)[:, None]
    attn = tl.where(causal, attn, 0.0).to(DT)
    if HAS_RESETS:
        Q = tl.where((seg == 0)[:, None], Q, 0.0).to(DT)
    Sin = tl.load(
        sin_ptr + (bh * NC + c) * DV * DK + vv[:, None] * DK + kk[None, :],
        mask=vm[:, None] & km[None, :],
        other=0.0,
    )
    ws = bh * NC * C + t
    Ut = tl.load(
        u_ptr + ws[:, None] * DV + vv[None, :], mask=(rows[:, None] >= 0) & vm[None, :], other=0.0
    )
    out = tl.dot(Q, tl.trans(Sin), input_precision=PREC) + tl.dot(attn, Ut, input_precision=PREC)
    tl.store(o_ptr + (bh * T + t[:, None]) * DV + vv[None, :], out, mask=tm[:, None] & vm[None, :])


# --- the backward -------------------------------------------------------------------------
#
# From the inputs, the memories entering each chunk ``S_0`` (saved by the forward) and the
# intra-chunk pieces recomputed by :func:`_intra_kernel` (``W``, ``U``, ``K~``, the end
# factors ``s``), the ``chunked`` backend's written backward in three launches:
#
# - :func:`_bwd_prep_kernel`, one program per (chunk, batch x head, block of value columns):
#   the pseudo-values ``U~ = U - W S_0^T`` (in place of ``U``), ``P^T dO`` with ``P =
#   causal(D * Q K^T)`` and ``dO^T Q_in``, the parts of the sequential step that need no
#   memory gradient;
# - :func:`_bwd_state_kernel`, one program per (batch x head, block of value rows): the
#   reverse pass over the chunks, ``dU~ = P^T dO + K~ dS_C^T`` and ``dS_0 = dO^T Q_in +
#   s dS_C - dU~^T W`` (rows of ``dS`` evolve independently, as the forward's rows of ``S``),
#   storing ``dU~`` (in place of ``P^T dO``) and each chunk's outgoing ``dS_C`` (in place of
#   ``dO^T Q_in``), and the gradient of the memory entering the sequence;
# - :func:`_bwd_grad_kernel`, one program per (chunk, batch x head): the gradients of ``q, k,
#   v, beta, log alpha`` of the chunk, the solve's adjoint included, looping over blocks of
#   value columns for the sums over ``d_v``.
#
# The decays and their elementwise products with the chunk's blocks are formed in float64,
# as in the ``chunked`` backend (the gradient of one ``log alpha`` sums ``O(C^2)`` products
# of both signs); the matrix products stay in the inputs' dtype.


@triton.jit
def _decay_blocks(
    la_ptr, r_ptr, bh, b, t, tm, T,
    HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr, C: tl.constexpr,
):  # fmt: skip
    """A chunk's masks and decays for the backward: ``causal, strict`` (same segment),
    ``first`` (the token still sees the entering memory, 0/1), ``keep`` (the entering memory
    survives the chunk, 0/1), ``D`` (``(C, C)``, 0 off ``causal``), ``gam`` (``(C,)``) and
    ``tail = D[C-1, :]`` (``(C,)``; ``causal[C-1, :]`` without a decay), all float64 (``D`` and
    ``gam`` are 1 without a decay)."""
    P, G, E, seg, nres = _chunk_sums(
        la_ptr, r_ptr, bh, b, t, tm, T, HAS_DECAY, HAS_RESETS, C, tl.float64
    )
    rows = tl.arange(0, C)
    same = seg[:, None] == seg[None, :]
    causal = (rows[:, None] >= rows[None, :]) & same
    strict = (rows[:, None] > rows[None, :]) & same
    first = tl.where(seg == 0, 1.0, 0.0).to(tl.float64)
    keep = tl.where(nres == 0, 1.0, 0.0).to(tl.float64)
    tail = tl.where(seg == nres, 1.0, 0.0).to(tl.float64)
    D = tl.where(causal, 1.0, 0.0).to(tl.float64)
    gam = tl.full([C], 1.0, tl.float64)
    if HAS_DECAY:
        D = tl.where(causal, tl.exp(P), 0.0).to(tl.float64)
        gam = tl.exp(G)
        tail = tail * tl.exp(E)
    return causal, strict, first, keep, D, gam, tail


@triton.jit
def _bwd_prep_kernel(
    q_ptr, k_ptr, la_ptr, r_ptr, do_ptr, w_ptr, u_ptr, sin_ptr, ptdo_ptr, doq_ptr,
    T, H, DK, DV, NC,
    DELTA: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BVO: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    vv = tl.program_id(2) * BVO + tl.arange(0, BVO)
    b = bh // H
    rows = tl.arange(0, C)
    t = c * C + rows
    tm = t < T
    kk = tl.arange(0, BK)
    km = kk < DK
    vm = vv < DV
    qk = (bh * T + t[:, None]) * DK + kk[None, :]
    Q = tl.load(q_ptr + qk, mask=tm[:, None] & km[None, :], other=0.0)
    K = tl.load(k_ptr + qk, mask=tm[:, None] & km[None, :], other=0.0)
    DT = Q.dtype
    causal, _, first, _, D, gam, _ = _decay_blocks(
        la_ptr, r_ptr, bh, b, t, tm, T, HAS_DECAY, HAS_RESETS, C
    )
    attn = tl.where(causal, tl.dot(Q, tl.trans(K), input_precision=PREC), 0.0).to(DT)
    q_in = Q
    if HAS_DECAY:
        attn = (attn.to(tl.float64) * D).to(DT)
        q_in = (Q.to(tl.float64) * gam[:, None]).to(DT)
    if HAS_RESETS:
        q_in = tl.where((first > 0)[:, None], q_in, 0.0).to(DT)
    dO = tl.load(
        do_ptr + (bh * T + t[:, None]) * DV + vv[None, :], mask=tm[:, None] & vm[None, :], other=0.0
    )
    so = (bh * NC + c) * DV * DK + vv[:, None] * DK + kk[None, :]
    sm = vm[:, None] & km[None, :]
    ws = bh * NC * C + t
    wv = ws[:, None] * DV + vv[None, :]
    full_v = (rows[:, None] >= 0) & vm[None, :]
    if DELTA:
        Sin = tl.load(sin_ptr + so, mask=sm, other=0.0)
        W = tl.load(
            w_ptr + ws[:, None] * DK + kk[None, :], mask=(rows[:, None] >= 0) & km[None, :],
            other=0.0,
        )  # fmt: skip
        U = tl.load(u_ptr + wv, mask=full_v, other=0.0)
        tl.store(u_ptr + wv, U - tl.dot(W, tl.trans(Sin), input_precision=PREC), mask=full_v)
    tl.store(ptdo_ptr + wv, tl.dot(tl.trans(attn), dO, input_precision=PREC), mask=full_v)
    tl.store(doq_ptr + so, tl.dot(tl.trans(dO), q_in, input_precision=PREC), mask=sm)


@triton.jit
def _bwd_state_kernel(
    w_ptr, kt_ptr, sd_ptr, du_ptr, dso_ptr, ds_ptr, ds0_ptr,
    DK, DV, NC,
    DELTA: tl.constexpr, HAS_SD: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BVS: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    vv = tl.program_id(1) * BVS + tl.arange(0, BVS)
    rows = tl.arange(0, C)
    kk = tl.arange(0, BK)
    vm = vv < DV
    km = kk < DK
    sm = vm[:, None] & km[None, :]
    so = vv[:, None] * DK + kk[None, :]
    full_k = (rows[:, None] >= 0) & km[None, :]
    full_v = (rows[:, None] >= 0) & vm[None, :]
    dS = tl.load(ds_ptr + bh * DV * DK + so, mask=sm, other=0.0)
    for i in range(NC):
        c = NC - 1 - i
        ws = bh * NC * C + c * C + rows
        wv = ws[:, None] * DV + vv[None, :]
        wk = ws[:, None] * DK + kk[None, :]
        sc = (bh * NC + c) * DV * DK + so
        Kt = tl.load(kt_ptr + wk, mask=full_k, other=0.0)
        dU = tl.load(du_ptr + wv, mask=full_v, other=0.0)
        dU = dU + tl.dot(Kt, tl.trans(dS), input_precision=PREC)
        tl.store(du_ptr + wv, dU, mask=full_v)
        doq = tl.load(dso_ptr + sc, mask=sm, other=0.0)
        tl.store(dso_ptr + sc, dS, mask=sm)
        if HAS_SD:
            dS = tl.load(sd_ptr + bh * NC + c) * dS
        dS = dS + doq
        if DELTA:
            W = tl.load(w_ptr + wk, mask=full_k, other=0.0)
            dS = dS - tl.dot(tl.trans(dU), W, input_precision=PREC)
    tl.store(ds0_ptr + bh * DV * DK + so, dS, mask=sm)


@triton.jit
def _bwd_grad_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, la_ptr, r_ptr, do_ptr, u_ptr, du_ptr, sin_ptr, dso_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dla_ptr,
    T, H, DK, DV, NC,
    DELTA: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_RESETS: tl.constexpr,
    C: tl.constexpr, LOG_C: tl.constexpr, BK: tl.constexpr, BVB: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    rows = tl.arange(0, C)
    t = c * C + rows
    tm = t < T
    kk = tl.arange(0, BK)
    km = kk < DK
    qk_off = (bh * T + t[:, None]) * DK + kk[None, :]
    qk_m = tm[:, None] & km[None, :]
    Q = tl.load(q_ptr + qk_off, mask=qk_m, other=0.0)
    K = tl.load(k_ptr + qk_off, mask=qk_m, other=0.0)
    beta = tl.load(beta_ptr + bh * T + t, mask=tm, other=0.0)
    DT = Q.dtype
    causal, strict, first, keep, D, gam, tail = _decay_blocks(
        la_ptr, r_ptr, bh, b, t, tm, T, HAS_DECAY, HAS_RESETS, C
    )
    qk = tl.where(causal, tl.dot(Q, tl.trans(K), input_precision=PREC), 0.0).to(DT)
    # the delta rule's solve, recomputed: M = (I + D * strict(diag(beta) K K^T))^{-1},
    # W = M diag(beta gamma) K (not masked by the first reset: the solve's adjoint needs it)
    Kb = K * beta[:, None]
    kbk = tl.zeros([C, C], dtype=DT)
    M = tl.zeros([C, C], dtype=DT)
    Wf = tl.zeros([C, BK], dtype=DT)
    if DELTA:
        kbk = tl.where(strict, tl.dot(Kb, tl.trans(K), input_precision=PREC), 0.0).to(DT)
        A = kbk
        kw = Kb
        if HAS_DECAY:
            A = (kbk.to(tl.float64) * D).to(DT)
            kw = (Kb.to(tl.float64) * gam[:, None]).to(DT)
        M = _unit_lower_inverse(A, C, LOG_C, PREC)
        Wf = tl.dot(M, kw, input_precision=PREC)
    # sums over d_v, a block of value columns at a time
    dP = tl.zeros([C, C], dtype=DT)  # dO U~^T
    dL = tl.zeros([C, C], dtype=DT)  # dR_u U^T (delta rule)
    dko = tl.zeros([C, BK], dtype=DT)  # U~ dS_C: the gradient of K~
    dqi = tl.zeros([C, BK], dtype=DT)  # dO S_0: the gradient of Q_in
    dWa = tl.zeros([C, BK], dtype=DT)  # dU~ S_0 = -dW (delta rule)
    dbeta = tl.zeros([C], dtype=DT)
    ds = tl.zeros([BK], dtype=DT)  # <dS_C, S_0>, column sums
    for v0 in range(0, DV, BVB):
        vv = v0 + tl.arange(0, BVB)
        vm = vv < DV
        io = (bh * T + t[:, None]) * DV + vv[None, :]
        io_m = tm[:, None] & vm[None, :]
        wv = (bh * NC * C + t)[:, None] * DV + vv[None, :]
        full_v = (rows[:, None] >= 0) & vm[None, :]
        so = (bh * NC + c) * DV * DK + vv[:, None] * DK + kk[None, :]
        sm = vm[:, None] & km[None, :]
        dO = tl.load(do_ptr + io, mask=io_m, other=0.0)
        V = tl.load(v_ptr + io, mask=io_m, other=0.0)
        Ut = tl.load(u_ptr + wv, mask=full_v, other=0.0)
        dUt = tl.load(du_ptr + wv, mask=full_v, other=0.0)
        Sin = tl.load(sin_ptr + so, mask=sm, other=0.0)
        dSo = tl.load(dso_ptr + so, mask=sm, other=0.0)
        dP += tl.dot(dO, tl.trans(Ut), input_precision=PREC)
        dko += tl.dot(Ut, dSo, input_precision=PREC)
        dqi += tl.dot(dO, Sin, input_precision=PREC)
        ds += tl.sum(dSo * Sin, 0)
        Vb = V * beta[:, None]
        dvb = dUt
        if DELTA:
            dWa += tl.dot(dUt, Sin, input_precision=PREC)
            # [dR_w, dR_u] = M^T [dW, dU~]; here dR_u, with U = M diag(beta) V
            dvb = tl.dot(tl.trans(M), dUt, input_precision=PREC)
            dL += tl.dot(dvb, tl.trans(tl.dot(M, Vb, input_precision=PREC)), input_precision=PREC)
        dbeta += tl.sum(dvb * V, 1)
        tl.store(dv_ptr + io, dvb * beta[:, None], mask=io_m)
    if HAS_RESETS:
        dqi = tl.where((first > 0)[:, None], dqi, 0.0).to(DT)
    dqk = tl.where(causal, dP, 0.0).to(DT)
    dq_in = dqi  # the gradient of Q through Q_in = diag(gamma first) Q
    dk_out = dko  # the gradient of K through K~ = diag(tail) K
    if HAS_DECAY:
        dqk = (dqk.to(tl.float64) * D).to(DT)
        dq_in = (dqi.to(tl.float64) * gam[:, None]).to(DT)
    if HAS_DECAY or HAS_RESETS:
        dk_out = (dko.to(tl.float64) * tail[:, None]).to(DT)
    dq = tl.dot(dqk, K, input_precision=PREC) + dq_in
    dk = tl.dot(tl.trans(dqk), Q, input_precision=PREC) + dk_out
    if HAS_DECAY:
        # the decays' gradients (float64): dD[t, s] and dgamma[t]
        dD = dP.to(tl.float64) * qk.to(tl.float64)
        dgam = tl.sum(dqi.to(tl.float64) * Q.to(tl.float64), 1)
        # the tail is D[C-1, :]; the entering memory's end factor is gamma_{C-1} keep
        last = rows[:, None] == C - 1
        dD += tl.where(last, tl.sum(dko.to(tl.float64) * K.to(tl.float64), 1)[None, :], 0.0)
        dgam += tl.where(rows == C - 1, tl.sum(ds, 0).to(tl.float64) * keep, 0.0)
    if DELTA:
        dW = -dWa  # W = diag(first) W_full
        if HAS_RESETS:
            dW = tl.where((first > 0)[:, None], dW, 0.0).to(DT)
        dRw = tl.dot(tl.trans(M), dW, input_precision=PREC)
        dL = tl.where(strict, -(tl.dot(dRw, tl.trans(Wf), input_precision=PREC) + dL), 0.0)
        dL = dL.to(DT)
        dkbk = dL
        dkw = dRw  # the gradient of diag(beta) K through diag(gamma) diag(beta) K
        if HAS_DECAY:
            dkbk = (dL.to(tl.float64) * D).to(DT)
            dkw = (dRw.to(tl.float64) * gam[:, None]).to(DT)
        dkb = tl.dot(dkbk, K, input_precision=PREC) + dkw
        dk += tl.dot(tl.trans(dkbk), Kb, input_precision=PREC) + dkb * beta[:, None]
        dbeta += tl.sum(dkb * K, 1)
        if HAS_DECAY:
            dD += dL.to(tl.float64) * kbk.to(tl.float64)
            dgam += tl.sum(dRw.to(tl.float64) * Kb.to(tl.float64), 1)
    tl.store(dq_ptr + qk_off, dq, mask=qk_m)
    tl.store(dk_ptr + qk_off, dk, mask=qk_m)
    tl.store(dbeta_ptr + bh * T + t, dbeta, mask=tm)
    if HAS_DECAY:
        # D[t, s] holds log alpha_r for s < r <= t, gamma_t for r <= t:
        # dlog alpha_r = sum_{t >= r, s < r} dD[t, s] D[t, s] + sum_{t >= r} dgamma_t gamma_t
        # summed as sum_{s < r} (sum_{t >= r} g[t, s]), inclusive sums only: an exclusive
        # cumulative sum by subtraction (sum_{s <= r} - g[t, r]) would cancel the large
        # near-diagonal terms against the tiny far ones when an alpha is tiny
        g = dD * D
        from_r = tl.cumsum(g, 0, reverse=True)  # from_r[r, s] = sum_{t >= r} g[t, s]
        dla = tl.sum(tl.where(rows[None, :] < rows[:, None], from_r, 0.0), 1)
        dla += tl.cumsum(dgam * gam, 0, reverse=True)
        tl.store(dla_ptr + bh * T + t, dla.to(DT), mask=tm)
