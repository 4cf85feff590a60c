"""Triton kernels for ``h_t = a_t * h_{t-1} + b_t`` (real dtypes). Imported only when triton is.

Two families, both one program per (batch row, block of ``BD`` channels), loading in the
tensors' dtype and accumulating in fp32 (fp64 for float64 inputs):

* ``_seq_fwd_kernel`` / ``_seq_bwd_kernel``: a step loop over ``T`` (the FLA
  ``fused_recurrent`` design). Minimal memory traffic, but each step waits on the previous one,
  so it needs many ``(B, D)`` lanes to hide latency.
* ``_chunk_reduce_kernel`` / ``_chunk_apply_kernel``: one program per chunk of ``BL`` steps as
  well, so ``T`` is parallel too. ``reduce`` scans each chunk from a zero state with
  ``tl.associative_scan`` and keeps its product of gates and end state; the driver scans those
  chunk states (recursively); ``apply`` rescans each chunk and adds ``prod(a) * carry``.
* ``_stream_kernel``: a single pass. Each program walks ``T`` in tiles of ``BL`` steps: loads a
  ``(BL, BD)`` tile of ``a`` and ``b`` once, scans it with ``tl.associative_scan``, adds the
  state carried from the previous tile (``h = prod(a) * carry + scan(b)``), stores ``h`` and
  carries its last row. Reads ``a`` and ``b`` once (the chunked scan reads them twice), but
  ``T`` is not parallel, so it needs ``B * D / BD`` programs to fill the GPU.

Offsets are 64-bit (int64 batch and time indices, or 64-bit pointer arithmetic ``ptr +=
stride``) so they never overflow int32 on large tensors. ``REVERSE`` runs time backwards (for
the gradient scan).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _up(x, F64: tl.constexpr):
    # One variable set in both arms of the constexpr branch, one return: two returns of
    # different types ("return fp64" / "return fp32") do not compile ("Inconsistent return
    # types"), although the interpreter runs them.
    if F64:  # noqa: SIM108 (a constexpr branch: a ternary would compile the same, kept explicit)
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _combine(a1, x1, a2, x2):
    # (a1, x1) is the earlier segment: applying it then (a2, x2) maps h to a2 (a1 h + x1) + x2.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _seq_fwd_kernel(
    A, X, H0, H, T, D,
    sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, s0_b, s0_d, sh_b, sh_t,
    BD: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    m = d < D
    h = _up(tl.load(H0 + pid_b * s0_b + d * s0_d, mask=m, other=0.0), F64)
    pa = A + pid_b * sa_b + d * sa_d
    px = X + pid_b * sx_b + d * sx_d
    ph = H + pid_b * sh_b + d
    for _ in range(T):
        a = _up(tl.load(pa, mask=m, other=0.0), F64)
        x = _up(tl.load(px, mask=m, other=0.0), F64)
        h = a * h + x
        tl.store(ph, h.to(H.dtype.element_ty), mask=m)
        pa += sa_t
        px += sx_t
        ph += sh_t


@triton.jit
def _seq_bwd_kernel(
    A, H, H0, DH, DHL, DA, DB, DH0, T, D,
    sa_b, sa_t, sa_d, sh_b, sh_t, s0_b, s0_d, sg_b, sg_t, sg_d, sl_b, sl_d, so_b, so_t,
    BD: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # g_t = dh_t + a_{t+1} g_{t+1} (g_T = dh_last, a_T = 1); da_t = g_t h_{t-1}; db_t = g_t.
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    m = d < D
    g = _up(tl.load(DHL + pid_b * sl_b + d * sl_d, mask=m, other=0.0), F64)
    h0 = _up(tl.load(H0 + pid_b * s0_b + d * s0_d, mask=m, other=0.0), F64)
    a_next = g * 0.0 + 1.0
    last = T - 1
    pa = A + pid_b * sa_b + d * sa_d + last * sa_t
    ph = H + pid_b * sh_b + d + (last - 1) * sh_t  # h_{t-1}
    pg = DH + pid_b * sg_b + d * sg_d + last * sg_t
    po_a = DA + pid_b * so_b + d + last * so_t
    po_b = DB + pid_b * so_b + d + last * so_t
    for i in range(T):
        t = last - i
        g = _up(tl.load(pg, mask=m, other=0.0), F64) + a_next * g
        tl.store(po_b, g.to(DB.dtype.element_ty), mask=m)
        h_prev = _up(tl.load(ph, mask=m & (t > 0), other=0.0), F64)
        h_prev = tl.where(t > 0, h_prev, h0)
        tl.store(po_a, (g * h_prev).to(DA.dtype.element_ty), mask=m)
        a_next = _up(tl.load(pa, mask=m, other=0.0), F64)
        pa -= sa_t
        ph -= sh_t
        pg -= sg_t
        po_a -= so_t
        po_b -= so_t
    tl.store(DH0 + pid_b * D + d, (a_next * g).to(DH0.dtype.element_ty), mask=m)


@triton.jit
def _chunk_tile(
    A, X, pid_b, pid_c, T, D, sa_b, sa_t, sa_d, sx_b, sx_t, sx_d,
    BL: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # Scan one (BL, BD) tile of chunk pid_c from a zero state, in scan order (rows reversed
    # when REVERSE). Rows past T load the identity (a=1, x=0) so they change nothing.
    i = tl.arange(0, BL)
    if REVERSE:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
        t = pid_c.to(tl.int64) * BL + (BL - 1 - i)
    else:
        t = pid_c.to(tl.int64) * BL + i
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    m = (t < T)[:, None] & (d < D)[None, :]
    a = tl.load(A + pid_b * sa_b + t[:, None] * sa_t + d[None, :] * sa_d, mask=m, other=1.0)
    x = tl.load(X + pid_b * sx_b + t[:, None] * sx_t + d[None, :] * sx_d, mask=m, other=0.0)
    pa, px = tl.associative_scan((_up(a, F64), _up(x, F64)), 0, _combine)
    return t, d, m, pa, px


@triton.jit
def _chunk_reduce_kernel(
    A, X, P, E, T, D,
    sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, sp_b, sp_c,
    BL: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    _, d, _, pa, px = _chunk_tile(
        A, X, pid_b, pid_c, T, D, sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, BL, BD, REVERSE, F64
    )
    is_last = (tl.arange(0, BL) == BL - 1)[:, None]
    prod = tl.sum(tl.where(is_last, pa, 0.0), axis=0)
    end = tl.sum(tl.where(is_last, px, 0.0), axis=0)
    off = pid_b * sp_b + pid_c.to(tl.int64) * sp_c + d
    tl.store(P + off, prod, mask=d < D)
    tl.store(E + off, end, mask=d < D)


@triton.jit
def _chunk_apply_kernel(
    A, X, CARRY, OUT, T, D,
    sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, sc_b, sc_c, sc_d, so_b, so_t,
    BL: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    t, d, m, pa, px = _chunk_tile(
        A, X, pid_b, pid_c, T, D, sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, BL, BD, REVERSE, F64
    )
    carry = tl.load(
        CARRY + pid_b * sc_b + pid_c.to(tl.int64) * sc_c + d * sc_d, mask=d < D, other=0.0
    )
    h = px + pa * _up(carry, F64)[None, :]
    tl.store(
        OUT + pid_b * so_b + t[:, None] * so_t + d[None, :], h.to(OUT.dtype.element_ty), mask=m
    )


@triton.jit
def _stream_rows(c, T, md, BL: tl.constexpr, REVERSE: tl.constexpr):
    # Time index and mask of tile c: its steps counted in scan order (from the end, rows
    # reversed, when REVERSE). Rows past the ends are masked.
    s = tl.arange(0, BL).to(tl.int64) + c * BL
    if REVERSE:
        t = T - 1 - s
        mt = t >= 0
    else:
        t = s
        mt = t < T
    return t, mt[:, None] & md[None, :]


@triton.jit
def _stream_kernel(
    A, X, H0, OUT, T, D,
    sa_b, sa_t, sa_d, sx_b, sx_t, sx_d, s0_b, s0_d, so_b, so_t,
    BL: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr, F64: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    # One program per (batch row, BD channels) walks T in tiles of BL steps in scan order.
    # Masked rows load the identity (a=1, x=0), so the tile's last row holds the state after
    # its last real step: the carry into the next tile. PREFETCH issues the loads of tile c+1
    # before scanning tile c (register double-buffering: the loads fly during the scan).
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    md = d < D
    is_last = (tl.arange(0, BL) == BL - 1)[:, None]
    carry = _up(tl.load(H0 + pid_b * s0_b + d * s0_d, mask=md, other=0.0), F64)
    a_row = A + pid_b * sa_b + d[None, :] * sa_d
    x_row = X + pid_b * sx_b + d[None, :] * sx_d
    o_row = OUT + pid_b * so_b + d[None, :]
    if PREFETCH:
        t0, m0 = _stream_rows(0, T, md, BL, REVERSE)
        a_nx = tl.load(a_row + t0[:, None] * sa_t, mask=m0, other=1.0)
        x_nx = tl.load(x_row + t0[:, None] * sx_t, mask=m0, other=0.0)
    for c in range(tl.cdiv(T, BL)):
        t, m = _stream_rows(c, T, md, BL, REVERSE)
        if PREFETCH:
            a = a_nx
            x = x_nx
            t1, m1 = _stream_rows(c + 1, T, md, BL, REVERSE)
            a_nx = tl.load(a_row + t1[:, None] * sa_t, mask=m1, other=1.0)
            x_nx = tl.load(x_row + t1[:, None] * sx_t, mask=m1, other=0.0)
        else:
            a = tl.load(a_row + t[:, None] * sa_t, mask=m, other=1.0)
            x = tl.load(x_row + t[:, None] * sx_t, mask=m, other=0.0)
        pa, px = tl.associative_scan((_up(a, F64), _up(x, F64)), 0, _combine)
        h = pa * carry[None, :] + px
        tl.store(o_row + t[:, None] * so_t, h.to(OUT.dtype.element_ty), mask=m)
        carry = tl.sum(tl.where(is_last, h, 0.0), axis=0)


#: ``(BL, BD, PREFETCH, num_warps)`` of the autotuned stream kernel on a GPU.
STREAM_CONFIGS = (
    (64, 32, False, 4),
    (64, 32, True, 4),
    (128, 32, False, 4),
    (128, 32, True, 4),
    (128, 32, True, 8),
    (256, 32, False, 8),
    (64, 64, True, 4),
    (64, 16, True, 2),
)

_stream_tuned = None


def stream_autotuned():
    """``_stream_kernel`` autotuned over :data:`STREAM_CONFIGS`, keyed on ``D``, ``REVERSE``
    and the tensors' dtypes (built on first use: the interpreter path never needs it)."""
    global _stream_tuned
    if _stream_tuned is None:
        configs = [
            triton.Config({"BL": bl, "BD": bd, "PREFETCH": pf}, num_warps=nw, num_stages=1)
            for bl, bd, pf, nw in STREAM_CONFIGS
        ]
        _stream_tuned = triton.autotune(configs=configs, key=["D", "REVERSE"])(_stream_kernel)
    return _stream_tuned
