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

Cell codes (``CELL``): ``ELMAN``, ``LSTM``, ``GRU``, ``SLSTM`` below, mirrors of
:class:`~rnnkit.kernels.gated.triton.ops.CellCode`. Per cell, ``G`` gates, ``S`` state fields
(stacked ``(S, NB, H)`` in fp32) and ``K`` fields cached per step for the backward (``SC``):
Elman (1, 1, 0), LSTM (4, 2, 1: c), GRU (3, 1, 2: h and ``R_n h_{t-1} + b_hn``), sLSTM (4, 4, 3:
c, n, m). The forward also caches the gate pre-activations (``PC``, fp32;
for the GRU's ``n`` gate ``a_n + r (R_n h_{t-1} + b_hn)``), so the backward recomputes the
pointwise function without reading ``px`` or doing another product.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rnnkit.kernels.gated.triton.ops import CellCode

# A jitted function may read only those module globals that are ``tl.constexpr`` values, so the
# launcher's enum is mirrored here, value for value; a branch on them is resolved at compile time.
ELMAN = tl.constexpr(int(CellCode.ELMAN))
LSTM = tl.constexpr(int(CellCode.LSTM))
GRU = tl.constexpr(int(CellCode.GRU))
SLSTM = tl.constexpr(int(CellCode.SLSTM))

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
def _w_tile(R, g, n, N, D, rd, md, UPCAST: tl.constexpr, TRANS: tl.constexpr):
    """``W[e, d] = R[g, n, e, d]`` as a ``(DP, DP)`` tile (``W^T`` under ``TRANS``), zero outside
    ``D x D``."""
    base = R + (g * N + n).to(tl.int64) * D * D
    w = tl.load(base + rd[:, None] * D + rd[None, :], mask=md[:, None] & md[None, :], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    if TRANS:
        w = tl.trans(w)
    return w


@triton.jit
def _w_tiles(R, n, N, D, rd, md, UPCAST: tl.constexpr, TRANS: tl.constexpr, G: tl.constexpr):
    """The head's ``G`` recurrent tiles (see :func:`_w_tile`); unused slots repeat slot 0.

    The caller keeps them in registers/shared memory for the whole time loop."""
    w0 = _w_tile(R, 0, n, N, D, rd, md, UPCAST, TRANS)
    w1 = w0
    w2 = w0
    w3 = w0
    if G > 1:
        w1 = _w_tile(R, 1, n, N, D, rd, md, UPCAST, TRANS)
        w2 = _w_tile(R, 2, n, N, D, rd, md, UPCAST, TRANS)
    if G > 3:
        w3 = _w_tile(R, 3, n, N, D, rd, md, UPCAST, TRANS)
    return w0, w1, w2, w3


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
def _f32x4(x0, x1, x2, x3):
    """The four gate slices of :func:`_load4`, converted to fp32 only when the step uses them."""
    return _f32(x0), _f32(x1), _f32(x2), _f32(x3)


@triton.jit
def _program_rows(
    STARTS,
    LENS,
    NB,
    T,
    H,
    D,
    G: tl.constexpr,
    VARLEN: tl.constexpr,
    BB: tl.constexpr,
    DP: tl.constexpr,
):
    """Where this program works: head ``n`` = ``program_id(0)``, ``BB`` sequences from
    ``program_id(1) * BB``.

    Returns ``(n, rd, mb, md, m2, col, GH, start, length, soff, sstride)``: ``rd`` the
    ``(DP,)`` columns of the head, ``mb``/``md``/``m2`` the masks of real rows/columns/both,
    ``col`` the units ``n * D + rd``, ``GH`` the width of a token's gate row, ``start``/``length``
    each row's first token and step count, ``soff`` the ``(BB, DP)`` offsets of field 0 in a
    stacked ``(S, NB, H)`` state and ``sstride`` the distance between its fields.
    """
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
    return n, rd, mb, md, m2, col, GH, start, length, soff, sstride


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
# state carried across time steps
#
# Both directions carry ``S`` fp32 fields from step to step (the forward the state
# ``h, c, n, m``; the backward their cotangents), held as four values of which only the first
# ``S`` are real (``S`` is 1, 2 or 4; the others are placeholders that these helpers pass
# through untouched and the compiler drops). They are loaded from and stored to a stacked
# ``(S, NB, H)`` fp32 tensor at the offsets of :func:`_program_rows`.
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_state(ptr, soff, sstride, mask, S: tl.constexpr):
    """The ``S`` fields of a stacked state (absent fields repeat field 0)."""
    f0 = _load_f32(ptr + soff, mask)
    f1 = f0
    f2 = f0
    f3 = f0
    if S > 1:
        f1 = _load_f32(ptr + sstride + soff, mask)
    if S > 2:
        f2 = _load_f32(ptr + 2 * sstride + soff, mask)
        f3 = _load_f32(ptr + 3 * sstride + soff, mask)
    return f0, f1, f2, f3


@triton.jit
def _store_state(ptr, soff, sstride, mask, f0, f1, f2, f3, S: tl.constexpr):
    """Store the ``S`` fields into a stacked state."""
    tl.store(ptr + soff, f0, mask=mask)
    if S > 1:
        tl.store(ptr + sstride + soff, f1, mask=mask)
    if S > 2:
        tl.store(ptr + 2 * sstride + soff, f2, mask=mask)
        tl.store(ptr + 3 * sstride + soff, f3, mask=mask)


@triton.jit
def _select_state(mask, a0, a1, a2, a3, f0, f1, f2, f3, S: tl.constexpr):
    """``where(mask, a, f)`` field by field; with ``a = 0.0`` it applies resets."""
    f0 = tl.where(mask, a0, f0)
    if S > 1:
        f1 = tl.where(mask, a1, f1)
    if S > 2:
        f2 = tl.where(mask, a2, f2)
        f3 = tl.where(mask, a3, f3)
    return f0, f1, f2, f3


@triton.jit
def _carry_state(live, f0, f1, f2, f3, n0, n1, n2, n3, S: tl.constexpr, VARLEN: tl.constexpr):
    """The fields leaving a step: the new ones ``n``, except where a sequence has already ended
    (``VARLEN``, ``live`` false), which keeps its final ``f``."""
    if VARLEN:
        f0, f1, f2, f3 = _select_state(live, n0, n1, n2, n3, f0, f1, f2, f3, S)
    else:
        f0 = n0
        if S > 1:
            f1 = n1
        if S > 2:
            f2 = n2
            f3 = n3
    return f0, f1, f2, f3


@triton.jit
def _slstm_gates(p0, p1, nrm, m):
    """The sLSTM's stabilised exponential gates, shared by both directions so that the backward
    differentiates exactly what the forward computed.

    From the pre-activations ``p0`` (input) and ``p1`` (forget) and the normaliser ``nrm`` and
    stabiliser ``m`` entering the step: ``(fresh, am, m_new, ig, fg)``, where ``fresh`` marks the
    rows that have accumulated nothing yet and ``am = log f + m``.
    """
    lf = _logsigmoid(p1)
    fresh = nrm == 0.0
    am = lf + m
    m_new = tl.where(fresh, p0, tl.maximum(p0, am))
    ig = tl.exp(p0 - m_new)
    # Where nothing was accumulated f' is irrelevant; 0 keeps an arbitrary m finite.
    fg = tl.where(fresh, 0.0, tl.exp(am - m_new))
    return fresh, am, m_new, ig, fg


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
    S: tl.constexpr,
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
    n, rd, mb, md, m2, col, GH, start, length, soff, sstride = _program_rows(
        STARTS, LENS, NB, T, H, D, G, VARLEN, BB, DP
    )
    # The state (h, c, n, m; the first S are real), carried in fp32.
    h, c, nrm, m = _load_state(S0, soff, sstride, m2, S)
    if HAS_BHN:
        bhn = tl.load(BHN + col, mask=md, other=0.0).to(tl.float32)[None, :]
    # The head's recurrent weights, transposed for h @ W^T: loaded once, on-chip for all T.
    w0, w1, w2, w3 = _w_tiles(R, n, N, D, rd, md, UPCAST, True, G)
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
        a0, a1, a2, a3 = _f32x4(x0, x1, x2, x3)
        if HAS_RESETS:
            rs = (xr != 0)[:, None]
        act_n = _active(mb, t + 1, T, length, VARLEN)
        live_n = act_n[:, None] & md[None, :]
        x0, x1, x2, x3 = _load4(PX + (tok + 1)[:, None] * GH + col[None, :], H, live_n, G)
        if HAS_RESETS:
            xr = tl.load(RST + tok + 1, mask=act_n, other=0)
            h, c, nrm, m = _select_state(rs, 0.0, 0.0, 0.0, 0.0, h, c, nrm, m, S)
        # Padding rows/columns are forced to zero so they never reach a real unit.
        hb = _operand(tl.where(m2, h, 0.0), R, UPCAST)
        p0 = a0 + tl.dot(hb, w0, input_precision=PREC, out_dtype=tl.float32)
        if G > 1:
            q1 = tl.dot(hb, w1, input_precision=PREC, out_dtype=tl.float32)
            q2 = tl.dot(hb, w2, input_precision=PREC, out_dtype=tl.float32)
        if G > 3:
            q3 = tl.dot(hb, w3, input_precision=PREC, out_dtype=tl.float32)
        # The fields a cell does not have stay placeholders (see _carry_state).
        c_new = c
        n_new = nrm
        m_new = m
        if CELL == ELMAN:
            if RELU:  # noqa: SIM108
                h_new = tl.maximum(p0, 0.0)
            else:
                h_new = _tanh(p0)
        elif CELL == LSTM:
            p1 = a1 + q1
            p2 = a2 + q2
            p3 = a3 + q3
            ig = _sigmoid(p0)
            fg = _sigmoid(p1)
            c_new = fg * c + ig * _tanh(p2)
            h_new = _sigmoid(p3) * _tanh(c_new)
        elif CELL == GRU:
            p1 = a1 + q1
            if HAS_BHN:
                q2 = q2 + bhn
            r = _sigmoid(p0)
            z = _sigmoid(p1)
            p2 = a2 + r * q2
            nn = _tanh(p2)
            h_new = nn + z * (h - nn)
        else:
            tl.static_assert(CELL == SLSTM)
            p1 = a1 + q1
            p2 = a2 + q2
            p3 = a3 + q3
            _fresh, _am, m_new, ig, fg = _slstm_gates(p0, p1, nrm, m)
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
                if CELL == LSTM:
                    tl.store(srow, c_new, mask=live)
                elif CELL == GRU:
                    tl.store(srow, h_new, mask=live)
                    tl.store(srow + H, q2, mask=live)
                elif CELL == SLSTM:
                    tl.store(srow, c_new, mask=live)
                    tl.store(srow + H, n_new, mask=live)
                    tl.store(srow + 2 * H, m_new, mask=live)
        # Sequences that already ended (VARLEN) keep their final state.
        h, c, nrm, m = _carry_state(live, h, c, nrm, m, h_new, c_new, n_new, m_new, S, VARLEN)
    _store_state(SF, soff, sstride, m2, h, c, nrm, m, S)


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
    if CELL == GRU:
        # GRU: slot 1 is this step's R_n h_{t-1} + b_hn.
        s1 = tl.load(SC + tok[:, None] * KH + H + col[None, :], mask=live, other=0.0)
    if CELL == SLSTM:
        s1 = tl.load(prev + H, mask=pm, other=0.0)
        s2 = tl.load(prev + 2 * H, mask=pm, other=0.0)
    rs = act
    if HAS_RESETS:
        rs = tl.load(RST + tok, mask=act, other=0) != 0
    return p0, p1, p2, p3, dy, s0, s1, s2, rs


@triton.jit
def _state_in(first, i0, i1, i2, i3, xs0, xs1, xs2, CELL: tl.constexpr):
    """The state ``(h, c, n, m)`` entering a backward step, as far as the cell's backward needs
    it: the fields the forward cached at the step before (``SC``: LSTM c; GRU h; sLSTM c, n, m),
    or at the first step (``first``) the initial state ``i``. Fields not needed are
    placeholders."""
    hp = i0
    cp = i1
    np_ = i2
    mp = i3
    if CELL == LSTM:
        cp = tl.where(first, i1, xs0)
    if CELL == GRU:
        hp = tl.where(first, i0, xs0)
    if CELL == SLSTM:
        cp = tl.where(first, i1, xs0)
        np_ = tl.where(first, i2, xs1)
        mp = tl.where(first, i3, xs2)
    return hp, cp, np_, mp


@triton.jit
def _dot_acc(dq, w, acc, live, R, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + dq @ w`` in fp32 (``acc`` may be ``None``), with ``dq`` zeroed outside ``live``
    so that a NaN in the padding cannot leak into real units."""
    return tl.dot(
        _operand(tl.where(live, dq, 0.0), R, UPCAST),
        w,
        acc=acc,
        input_precision=PREC,
        out_dtype=tl.float32,
    )


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
    S: tl.constexpr,
    K: tl.constexpr,
    RELU: tl.constexpr,
    HAS_RESETS: tl.constexpr,
    VARLEN: tl.constexpr,
    PREC: tl.constexpr,
    UPCAST: tl.constexpr,
    BB: tl.constexpr,
    DP: tl.constexpr,
):
    n, rd, mb, md, m2, col, GH, start, length, soff, sstride = _program_rows(
        STARTS, LENS, NB, T, H, D, G, VARLEN, BB, DP
    )
    # Cotangents of the state leaving the current step, starting from the final state's.
    dh, dc, dn, dm = _load_state(DSF, soff, sstride, m2, S)
    # The initial state: what enters step 0 (the later steps' come from the forward's cache).
    i0, i1, i2, i3 = _load_state(S0, soff, sstride, m2, S)
    # W[e, d] untransposed, on-chip for all T: dh_{t-1} = dgates @ W.
    w0, w1, w2, w3 = _w_tiles(R, n, N, D, rd, md, UPCAST, False, G)
    x0, x1, x2, x3, xdy, xs0, xs1, xs2, xrs = _bwd_loads(
        PC, SC, DY, RST, start, T - 1, T, length, mb, md, col, H, CELL, G, K, HAS_RESETS, VARLEN
    )
    for tt in range(T):
        t = T - 1 - tt
        act = _active(mb, t, T, length, VARLEN)
        live = act[:, None] & md[None, :]
        tok = start + t
        p0, p1, p2, p3 = _f32x4(x0, x1, x2, x3)
        dht = dh + _f32(xdy)
        hp, cp, np_, mp = _state_in(t == 0, i0, i1, i2, i3, xs0, xs1, xs2, CELL)
        q_n = xs1  # GRU: this step's R_n h_{t-1} + b_hn
        if HAS_RESETS:
            rs = xrs[:, None]
            hp, cp, np_, mp = _select_state(rs, 0.0, 0.0, 0.0, 0.0, hp, cp, np_, mp, S)
        # Issue step t-1's loads now; they land while this step computes.
        x0, x1, x2, x3, xdy, xs0, xs1, xs2, xrs = _bwd_loads(
            PC, SC, DY, RST, start, t - 1, T, length, mb, md, col, H, CELL, G, K, HAS_RESETS, VARLEN
        )
        # The fields a cell does not have stay placeholders (see _carry_state).
        dcp = dc
        dnp_ = dn
        dmp = dm
        if CELL == ELMAN:
            if RELU:
                d0 = tl.where(p0 > 0.0, dht, 0.0)
            else:
                hh = _tanh(p0)
                d0 = dht * (1.0 - hh * hh)
            dq0 = d0
        elif CELL == LSTM:
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
        elif CELL == GRU:
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
            tl.static_assert(CELL == SLSTM)
            # Recompute the step, then differentiate it exactly as autograd does the
            # reference (m is differentiated too: the final m is an output).
            fresh, am, _m_new, ig, fg = _slstm_gates(p0, p1, np_, mp)
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
        dhp = _dot_acc(dq0, w0, None, live, R, PREC, UPCAST)
        if G > 1:
            dhp = _dot_acc(dq1, w1, dhp, live, R, PREC, UPCAST)
            dhp = _dot_acc(dq2, w2, dhp, live, R, PREC, UPCAST)
        if G > 3:
            dhp = _dot_acc(dq3, w3, dhp, live, R, PREC, UPCAST)
        drow = DPX + tok[:, None] * GH + col[None, :]
        tl.store(drow, d0.to(DPX.dtype.element_ty), mask=live)
        if G > 1:
            tl.store(drow + H, d1.to(DPX.dtype.element_ty), mask=live)
            tl.store(drow + 2 * H, d2.to(DPX.dtype.element_ty), mask=live)
        if G > 3:
            tl.store(drow + 3 * H, d3.to(DPX.dtype.element_ty), mask=live)
        if CELL == GRU:
            tl.store(DQN + tok[:, None] * H + col[None, :], dq2.to(DQN.dtype.element_ty), mask=live)
            dhp = dhp + dhd
        # The state entering a reset step was replaced by a constant: no gradient flows on.
        if HAS_RESETS:
            dhp, dcp, dnp_, dmp = _select_state(rs, 0.0, 0.0, 0.0, 0.0, dhp, dcp, dnp_, dmp, S)
        dh, dc, dn, dm = _carry_state(live, dh, dc, dn, dm, dhp, dcp, dnp_, dmp, S, VARLEN)
    _store_state(DS0, soff, sstride, m2, dh, dc, dn, dm, S)
