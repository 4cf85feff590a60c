# mypy: disable-error-code="no-untyped-def"
"""Triton programs of the fused gated-cell backend (imported only where triton is installed).

One program owns one head ``n`` and one block of ``BB`` sequences and walks the whole sequence
in time. The head's recurrent blocks ``R[g, n]`` (``G`` tiles of ``D x D``) are loaded from
global memory once, before the time loop, and stay on-chip (Triton keeps them in shared memory
and feeds the tensor cores from there every step). Each step does the ``G`` recurrent products
with ``tl.dot`` (``BB >= 16`` rows, because ``tl.dot`` needs every dimension >= 16; rows past
the batch and columns past ``D`` are masked), adds the precomputed input projection, applies the
cell's pointwise function in fp32 and carries the state in fp32.

Latency, not bandwidth, bounds a step: the chain ``state -> dot -> pointwise -> state`` is
serial. So every global load a step needs (its input projection, resets, cotangents, cached
states) is issued one step ahead and carried in registers: its memory latency then overlaps the
previous step's products instead of adding to every step.

Token addressing: every per-step tensor is flattened to ``(tokens, width)``; the row of
sequence ``b`` at step ``t`` is ``start[b] + t`` with ``start[b] = b * T`` for a padded batch
(``VARLEN=False``) or ``cu_seqlens[b]`` for packed variable-length input (``VARLEN=True``,
where step ``t >= len[b]`` leaves that sequence's state untouched).

Cell codes (``CELL``): 0 Elman, 1 LSTM, 2 GRU, 3 sLSTM. Per cell, ``G`` gates, ``S`` state
fields (stacked ``(S, NB, H)`` in fp32) and ``K`` fields cached per step for the backward
(``SC``): Elman (1, 1, 0), LSTM (4, 2, 1: c), GRU (3, 1, 2: h and ``R_n h_{t-1} + b_hn``),
sLSTM (4, 4, 3: c, n, m). The forward also caches the gate pre-activations (``PC``, fp32;
for the GRU's ``n`` gate ``a_n + r (R_n h_{t-1} + b_hn)``), so the backward recomputes the
pointwise function without reading ``px`` or doing another product.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _tanh(x):
    # tl has no tanh; this form is accurate to a few ulp away from 0 and never overflows.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _w_tile(R, g, n, N, D, rd, md, UPCAST: tl.constexpr):
    """``W[e, d] = R[g, n, e, d]`` as a ``(DP, DP)`` tile, zero outside ``D x D``."""
    base = R + (g * N + n).to(tl.int64) * D * D
    w = tl.load(base + rd[:, None] * D + rd[None, :], mask=md[:, None] & md[None, :], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@triton.jit
def _operand(x, R, UPCAST: tl.constexpr):
    """``x`` rounded to the weights' dtype for ``tl.dot`` (fp32 again under ``UPCAST``)."""
    x = x.to(R.dtype.element_ty)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_f32(ptr, mask):
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _f32(x):
    return x.to(tl.float32)


@triton.jit
def _active(mb, t, T, length, VARLEN: tl.constexpr):
    """Which rows of the block have a step ``t`` (``(BB,)`` bool)."""
    if VARLEN:  # noqa: SIM108 (a static branch: Triton compiles only the taken one)
        act = mb & (t < length)
    else:
        act = mb & (t < T)
    return act


@triton.jit
def _load4(ptr, stride, live, G: tl.constexpr):
    """The ``G`` gate slices ``ptr + g * stride`` (raw dtype); unused slots repeat slot 0."""
    x0 = tl.load(ptr, mask=live, other=0.0)
    x1 = x0
    x2 = x0
    x3 = x0
    if G > 1:
        x1 = tl.load(ptr + stride, mask=live, other=0.0)
        x2 = tl.load(ptr + 2 * stride, mask=live, other=0.0)
    if G > 3:
        x3 = tl.load(ptr + 3 * stride, mask=live, other=0.0)
    return x0, x1, x2, x3


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@triton.jit
def gated_fwd_kernel(
    PX,  # (tokens, G*H) input projection, compute dtype
    R,  # (G, N, D, D) recurrent blocks, compute dtype
    BHN,  # (H,) GRU b_hn (HAS_BHN)
    S0,  # (S, NB, H) fp32 initial state
    RST,  # (tokens,) int8 resets (HAS_RESETS)
    STARTS,  # (NB,) int64 first token of each sequence (VARLEN)
    LENS,  # (NB,) int32 length of each sequence (VARLEN)
    Y,  # (tokens, H) output h, compute dtype
    SF,  # (S, NB, H) fp32 final state
    PC,  # (tokens, G*H) fp32 cache of gate pre-activations (SAVE)
    SC,  # (tokens, K*H) fp32 cache of state fields (SAVE and K > 0)
    NB,
    T,
    N,
    H,
    D,
    CELL: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    RELU: tl.constexpr,
    HAS_BHN: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    VARLEN: tl.constexpr,
    SAVE: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    BB: tl.constexpr,
    DP: tl.constexpr,
):
    n = tl.program_id(0)
    rb = tl.program_id(1) * BB + tl.arange(0, BB)
    rd = tl.arange(0, DP)
    mb = rb < NB
    md = rd < D
    m2 = mb[:, None] & md[None, :]
    col = n * D + rd  # unit index in [0, H)
    GH = G * H
    length = T
    if VARLEN:
        start = tl.load(STARTS + rb, mask=mb, other=0).to(tl.int64)
        length = tl.load(LENS + rb, mask=mb, other=0)
    else:
        start = rb.to(tl.int64) * T
    soff = rb.to(tl.int64)[:, None] * H + col[None, :]
    sstride = NB * H
    h = _load_f32(S0 + soff, m2)
    if CELL == 1:
        c = _load_f32(S0 + sstride + soff, m2)
    if CELL == 3:
        c = _load_f32(S0 + sstride + soff, m2)
        nrm = _load_f32(S0 + 2 * sstride + soff, m2)
        m = _load_f32(S0 + 3 * sstride + soff, m2)
    if HAS_BHN:
        bhn = tl.load(BHN + col, mask=md, other=0.0).to(tl.float32)[None, :]
    # The head's recurrent weights, transposed for h @ W^T: loaded once, on-chip for all T.
    w0 = tl.trans(_w_tile(R, 0, n, N, D, rd, md, UPCAST))
    if G > 1:
        w1 = tl.trans(_w_tile(R, 1, n, N, D, rd, md, UPCAST))
        w2 = tl.trans(_w_tile(R, 2, n, N, D, rd, md, UPCAST))
    if G > 3:
        w3 = tl.trans(_w_tile(R, 3, n, N, D, rd, md, UPCAST))
    # Loads of step 0; inside the loop, step t+1's are issued while step t computes.
    act = _active(mb, 0, T, length, VARLEN)
    live = act[:, None] & md[None, :]
    x0, x1, x2, x3 = _load4(PX + start[:, None] * GH + col[None, :], H, live, G)
    if HAS_RESETS:
        xr = tl.load(RST + start, mask=act, other=0)
    for t in range(T):
        act = _active(mb, t, T, length, VARLEN)
        live = act[:, None] & md[None, :]
        tok = start + t
        a0 = _f32(x0)
        a1 = _f32(x1)
        a2 = _f32(x2)
        a3 = _f32(x3)
        if HAS_RESETS:
            rs = (xr != 0)[:, None]
        act_n = _active(mb, t + 1, T, length, VARLEN)
        live_n = act_n[:, None] & md[None, :]
        x0, x1, x2, x3 = _load4(PX + (tok + 1)[:, None] * GH + col[None, :], H, live_n, G)
        if HAS_RESETS:
            xr = tl.load(RST + tok + 1, mask=act_n, other=0)
            h = tl.where(rs, 0.0, h)
            if CELL == 1:
                c = tl.where(rs, 0.0, c)
            if CELL == 3:
                c = tl.where(rs, 0.0, c)
                nrm = tl.where(rs, 0.0, nrm)
                m = tl.where(rs, 0.0, m)
        # Padding rows/columns are forced to zero so they never reach a real unit.
        hb = _operand(tl.where(m2, h, 0.0), R, UPCAST)
        p0 = a0 + tl.dot(hb, w0, input_precision=PREC, out_dtype=tl.float32)
        if G > 1:
            q1 = tl.dot(hb, w1, input_precision=PREC, out_dtype=tl.float32)
            q2 = tl.dot(hb, w2, input_precision=PREC, out_dtype=tl.float32)
        if G > 3:
            q3 = tl.dot(hb, w3, input_precision=PREC, out_dtype=tl.float32)
        if CELL == 0:
            if RELU:  # noqa: SIM108
                h_new = tl.maximum(p0, 0.0)
            else:
                h_new = _tanh(p0)
        elif CELL == 1:
            p1 = a1 + q1
            p2 = a2 + q2
            p3 = a3 + q3
            ig = _sigmoid(p0)
            fg = _sigmoid(p1)
            c_new = fg * c + ig * _tanh(p2)
            h_new = _sigmoid(p3) * _tanh(c_new)
        elif CELL == 2:
            p1 = a1 + q1
            if HAS_BHN:
                q2 = q2 + bhn
            r = _sigmoid(p0)
            z = _sigmoid(p1)
            p2 = a2 + r * q2
            nn = _tanh(p2)
            h_new = nn + z * (h - nn)
        else:
            p1 = a1 + q1
            p2 = a2 + q2
            p3 = a3 + q3
            lf = _logsigmoid(p1)
            fresh = nrm == 0.0
            am = lf + m
            m_new = tl.where(fresh, p0, tl.maximum(p0, am))
            ig = tl.exp(p0 - m_new)
            # Where nothing was accumulated f' is irrelevant; 0 keeps an arbitrary m finite.
            fg = tl.where(fresh, 0.0, tl.exp(am - m_new))
            c_new = fg * c + ig * _tanh(p2)
            n_new = fg * nrm + ig
            h_new = _sigmoid(p3) * c_new / n_new
        yrow = Y + tok[:, None] * H + col[None, :]
        tl.store(yrow, h_new.to(Y.dtype.element_ty), mask=live)
        if SAVE:
            prow = PC + tok[:, None] * GH + col[None, :]
            tl.store(prow, p0, mask=live)
            if G > 1:
                tl.store(prow + H, p1, mask=live)
                tl.store(prow + 2 * H, p2, mask=live)
            if G > 3:
                tl.store(prow + 3 * H, p3, mask=live)
            if K > 0:
                srow = SC + tok[:, None] * (K * H) + col[None, :]
                if CELL == 1:
                    tl.store(srow, c_new, mask=live)
                elif CELL == 2:
                    tl.store(srow, h_new, mask=live)
                    tl.store(srow + H, q2, mask=live)
                elif CELL == 3:
                    tl.store(srow, c_new, mask=live)
                    tl.store(srow + H, n_new, mask=live)
                    tl.store(srow + 2 * H, m_new, mask=live)
        # Sequences that already ended (VARLEN) keep their final state.
        if VARLEN:
            h = tl.where(live, h_new, h)
            if CELL == 1:
                c = tl.where(live, c_new, c)
            if CELL == 3:
                c = tl.where(live, c_new, c)
                nrm = tl.where(live, n_new, nrm)
                m = tl.where(live, m_new, m)
        else:
            h = h_new
            if CELL == 1:
                c = c_new
            if CELL == 3:
                c = c_new
                nrm = n_new
                m = m_new
    tl.store(SF + soff, h, mask=m2)
    if CELL == 1:
        tl.store(SF + sstride + soff, c, mask=m2)
    if CELL == 3:
        tl.store(SF + sstride + soff, c, mask=m2)
        tl.store(SF + 2 * sstride + soff, nrm, mask=m2)
        tl.store(SF + 3 * sstride + soff, m, mask=m2)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _bwd_loads(
    PC,
    SC,
    DY,
    RST,
    start,
    t,
    T,
    length,
    mb,
    md,
    col,
    H,
    CELL: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """Everything step ``t`` of the backward reads from memory (``t`` may be -1: all masked)."""
    act = _active(mb, t, T, length, VARLEN) & (t >= 0)
    live = act[:, None] & md[None, :]
    tok = start + t
    GH = G * H
    KH = K * H
    p0, p1, p2, p3 = _load4(PC + tok[:, None] * GH + col[None, :], H, live, G)
    dy = tl.load(DY + tok[:, None] * H + col[None, :], mask=live, other=0.0)
    # The state entering step t is the cached state of step t-1 (the initial one at t = 0,
    # substituted by the caller).
    pm = live & (t > 0)
    prev = SC + (tok - 1)[:, None] * KH + col[None, :]
    s0 = dy
    s1 = dy
    s2 = dy
    if K > 0:
        s0 = tl.load(prev, mask=pm, other=0.0)
    if CELL == 2:
        # GRU: slot 1 is this step's R_n h_{t-1} + b_hn.
        s1 = tl.load(SC + tok[:, None] * KH + H + col[None, :], mask=live, other=0.0)
    if CELL == 3:
        s1 = tl.load(prev + H, mask=pm, other=0.0)
        s2 = tl.load(prev + 2 * H, mask=pm, other=0.0)
    rs = act
    if HAS_RESETS:
        rs = tl.load(RST + tok, mask=act, other=0) != 0
    return p0, p1, p2, p3, dy, s0, s1, s2, rs


@triton.jit
def gated_bwd_kernel(
    R,  # (G, N, D, D)
    S0,  # (S, NB, H) fp32 initial state
    RST,  # (tokens,) int8 (HAS_RESETS)
    STARTS,  # (NB,) int64 (VARLEN)
    LENS,  # (NB,) int32 (VARLEN)
    PC,  # (tokens, G*H) fp32 forward cache of gate pre-activations
    SC,  # (tokens, K*H) fp32 forward cache of state fields
    DY,  # (tokens, H) cotangent of y
    DSF,  # (S, NB, H) fp32 cotangent of the final state
    DPX,  # (tokens, G*H) out: gradient of px (gate pre-activations)
    DQN,  # (tokens, H) out (GRU): gradient of R_n h + b_hn
    DS0,  # (S, NB, H) fp32 out: gradient of the initial state
    NB,
    T,
    N,
    H,
    D,
    CELL: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    RELU: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    VARLEN: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    BB: tl.constexpr,
    DP: tl.constexpr,
):
    n = tl.program_id(0)
    rb = tl.program_id(1) * BB + tl.arange(0, BB)
    rd = tl.arange(0, DP)
    mb = rb < NB
    md = rd < D
    m2 = mb[:, None] & md[None, :]
    col = n * D + rd
    GH = G * H
    length = T
    if VARLEN:
        start = tl.load(STARTS + rb, mask=mb, other=0).to(tl.int64)
        length = tl.load(LENS + rb, mask=mb, other=0)
    else:
        start = rb.to(tl.int64) * T
    soff = rb.to(tl.int64)[:, None] * H + col[None, :]
    sstride = NB * H
    # Cotangents of the state leaving the current step, starting from the final state's.
    dh = _load_f32(DSF + soff, m2)
    if CELL == 1:
        dc = _load_f32(DSF + sstride + soff, m2)
        init0 = _load_f32(S0 + sstride + soff, m2)
    if CELL == 2:
        init0 = _load_f32(S0 + soff, m2)
    if CELL == 3:
        dc = _load_f32(DSF + sstride + soff, m2)
        dn = _load_f32(DSF + 2 * sstride + soff, m2)
        dm = _load_f32(DSF + 3 * sstride + soff, m2)
        init0 = _load_f32(S0 + sstride + soff, m2)
        init1 = _load_f32(S0 + 2 * sstride + soff, m2)
        init2 = _load_f32(S0 + 3 * sstride + soff, m2)
    # W[e, d] untransposed, on-chip for all T: dh_{t-1} = dgates @ W.
    w0 = _w_tile(R, 0, n, N, D, rd, md, UPCAST)
    if G > 1:
        w1 = _w_tile(R, 1, n, N, D, rd, md, UPCAST)
        w2 = _w_tile(R, 2, n, N, D, rd, md, UPCAST)
    if G > 3:
        w3 = _w_tile(R, 3, n, N, D, rd, md, UPCAST)
    x0, x1, x2, x3, xdy, xs0, xs1, xs2, xrs = _bwd_loads(
        PC, SC, DY, RST, start, T - 1, T, length, mb, md, col, H, CELL, G, K, HAS_RESETS, VARLEN
    )
    for tt in range(T):
        t = T - 1 - tt
        act = _active(mb, t, T, length, VARLEN)
        live = act[:, None] & md[None, :]
        tok = start + t
        p0 = _f32(x0)
        p1 = _f32(x1)
        p2 = _f32(x2)
        p3 = _f32(x3)
        dht = dh + _f32(xdy)
        first = t == 0
        if CELL == 1:
            cp = tl.where(first, init0, xs0)
        if CELL == 2:
            hp = tl.where(first, init0, xs0)
            q_n = xs1
        if CELL == 3:
            cp = tl.where(first, init0, xs0)
            np_ = tl.where(first, init1, xs1)
            mp = tl.where(first, init2, xs2)
        if HAS_RESETS:
            rs = xrs[:, None]
            if CELL == 1:
                cp = tl.where(rs, 0.0, cp)
            if CELL == 2:
                hp = tl.where(rs, 0.0, hp)
            if CELL == 3:
                cp = tl.where(rs, 0.0, cp)
                np_ = tl.where(rs, 0.0, np_)
                mp = tl.where(rs, 0.0, mp)
        # Issue step t-1's loads now; they land while this step computes.
        x0, x1, x2, x3, xdy, xs0, xs1, xs2, xrs = _bwd_loads(
            PC, SC, DY, RST, start, t - 1, T, length, mb, md, col, H, CELL, G, K, HAS_RESETS, VARLEN
        )
        if CELL == 0:
            if RELU:
                d0 = tl.where(p0 > 0.0, dht, 0.0)
            else:
                hh = _tanh(p0)
                d0 = dht * (1.0 - hh * hh)
            dq0 = d0
        elif CELL == 1:
            ig = _sigmoid(p0)
            fg = _sigmoid(p1)
            zg = _tanh(p2)
            og = _sigmoid(p3)
            tc = _tanh(fg * cp + ig * zg)
            dct = dc + dht * og * (1.0 - tc * tc)
            d0 = dct * zg * ig * (1.0 - ig)
            d1 = dct * cp * fg * (1.0 - fg)
            d2 = dct * ig * (1.0 - zg * zg)
            d3 = dht * tc * og * (1.0 - og)
            dcp = dct * fg
            dq0 = d0
            dq1 = d1
            dq2 = d2
            dq3 = d3
        elif CELL == 2:
            r = _sigmoid(p0)
            z = _sigmoid(p1)
            nn = _tanh(p2)
            dnp = dht * (1.0 - z) * (1.0 - nn * nn)
            d0 = dnp * q_n * r * (1.0 - r)
            d1 = dht * (hp - nn) * z * (1.0 - z)
            d2 = dnp
            dq0 = d0
            dq1 = d1
            dq2 = dnp * r
            dhd = dht * z
        else:
            # Recompute the step, then differentiate it exactly as autograd does the
            # reference (m is differentiated too: the final m is an output).
            lf = _logsigmoid(p1)
            fresh = np_ == 0.0
            am = lf + mp
            m_new = tl.where(fresh, p0, tl.maximum(p0, am))
            ig = tl.exp(p0 - m_new)
            fg = tl.where(fresh, 0.0, tl.exp(am - m_new))
            tz = _tanh(p2)
            so = _sigmoid(p3)
            c_new = fg * cp + ig * tz
            n_new = fg * np_ + ig
            h_new = so * c_new / n_new
            dct = dc + dht * so / n_new
            dnt = dn - dht * h_new / n_new
            d3 = dht * c_new / n_new * so * (1.0 - so)
            d2 = dct * ig * (1.0 - tz * tz)
            dfe = tl.where(fresh, 0.0, (dct * cp + dnt * np_) * fg)  # d/d(am - m_new)
            dia = (dct * tz + dnt) * ig  # d/d(p0 - m_new)
            dmt = dm - dia - dfe
            # torch.maximum splits the gradient evenly on ties.
            wi = tl.where(fresh | (p0 > am), 1.0, tl.where(p0 == am, 0.5, 0.0))
            d0 = dia + dmt * wi
            da = dfe + dmt * (1.0 - wi)  # d/d(am) = d/d(lf) = d/d(m_{t-1})
            d1 = da * (1.0 - _sigmoid(p1))
            dcp = dct * fg
            dnp_ = dnt * fg
            dmp = da
            dq0 = d0
            dq1 = d1
            dq2 = d2
            dq3 = d3
        # dh_{t-1} = sum_g dq_g @ W_g first: it is the serial chain; the stores can trail.
        # Padding is zeroed so that a NaN there cannot leak into real units.
        dhp = tl.dot(
            _operand(tl.where(live, dq0, 0.0), R, UPCAST),
            w0,
            input_precision=PREC,
            out_dtype=tl.float32,
        )
        if G > 1:
            dhp = tl.dot(
                _operand(tl.where(live, dq1, 0.0), R, UPCAST),
                w1,
                acc=dhp,
                input_precision=PREC,
                out_dtype=tl.float32,
            )
            dhp = tl.dot(
                _operand(tl.where(live, dq2, 0.0), R, UPCAST),
                w2,
                acc=dhp,
                input_precision=PREC,
                out_dtype=tl.float32,
            )
        if G > 3:
            dhp = tl.dot(
                _operand(tl.where(live, dq3, 0.0), R, UPCAST),
                w3,
                acc=dhp,
                input_precision=PREC,
                out_dtype=tl.float32,
            )
        drow = DPX + tok[:, None] * GH + col[None, :]
        tl.store(drow, d0.to(DPX.dtype.element_ty), mask=live)
        if G > 1:
            tl.store(drow + H, d1.to(DPX.dtype.element_ty), mask=live)
            tl.store(drow + 2 * H, d2.to(DPX.dtype.element_ty), mask=live)
        if G > 3:
            tl.store(drow + 3 * H, d3.to(DPX.dtype.element_ty), mask=live)
        if CELL == 2:
            tl.store(DQN + tok[:, None] * H + col[None, :], dq2.to(DQN.dtype.element_ty), mask=live)
            dhp = dhp + dhd
        # The state entering a reset step was replaced by a constant: no gradient flows on.
        if HAS_RESETS:
            dhp = tl.where(rs, 0.0, dhp)
            if CELL == 1:
                dcp = tl.where(rs, 0.0, dcp)
            if CELL == 3:
                dcp = tl.where(rs, 0.0, dcp)
                dnp_ = tl.where(rs, 0.0, dnp_)
                dmp = tl.where(rs, 0.0, dmp)
        if VARLEN:
            dh = tl.where(live, dhp, dh)
            if CELL == 1:
                dc = tl.where(live, dcp, dc)
            if CELL == 3:
                dc = tl.where(live, dcp, dc)
                dn = tl.where(live, dnp_, dn)
                dm = tl.where(live, dmp, dm)
        else:
            dh = dhp
            if CELL == 1:
                dc = dcp
            if CELL == 3:
                dc = dcp
                dn = dnp_
                dm = dmp
    tl.store(DS0 + soff, dh, mask=m2)
    if CELL == 1:
        tl.store(DS0 + sstride + soff, dc, mask=m2)
    if CELL == 3:
        tl.store(DS0 + sstride + soff, dc, mask=m2)
        tl.store(DS0 + 2 * sstride + soff, dn, mask=m2)
        tl.store(DS0 + 3 * sstride + soff, dm, mask=m2)
