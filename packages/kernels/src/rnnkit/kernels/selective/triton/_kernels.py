"""Triton kernels of the selective scan (imported only where triton is).

One program per (batch row, block of ``BLOCK_D`` channels) holds its ``(BLOCK_D, BLOCK_N)``
state in registers and walks time in chunks of ``CHUNK`` steps. The forward stores the state
entering every chunk (the checkpoints). The backward walks the chunks from the last: it
recomputes a chunk's states from its checkpoint into a per-program scratch of ``CHUNK`` states
(``O(CHUNK D N)`` per batch row, whatever ``T``), then runs the adjoint recurrence back
through the chunk. The gradients of ``B`` and ``C`` (sums over channels) are written per
channel block, those of ``A`` and ``D`` (sums over batch rows) per batch row; the caller adds
the partial sums. Shapes as in ``selective/cpp/csrc/selective.cpp``: ``x, dt: (B, T, D)``,
``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, states ``(B, D, N)``, all contiguous.
Each step of a program waits on the previous one (the state stays in registers), so the
kernels need many (batch row, channel block) programs to fill a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, r_ptr,
    y_ptr, hl_ptr, ck_ptr,
    T, DIM, NS, NCK,
    HAS_RESETS: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: no int32 overflow on large inputs
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < DIM
    nm = n < NS
    m2 = dm[:, None] & nm[None, :]
    st = d[:, None] * NS + n[None, :]  # offset of (d, n) in a (D, N) state
    A = tl.load(A_ptr + st, mask=m2, other=0.0)
    Dv = tl.load(D_ptr + d, mask=dm, other=0.0)
    h = tl.load(h0_ptr + pid_b * DIM * NS + st, mask=m2, other=0.0)
    for c in range(NCK):
        if SAVE:
            tl.store(ck_ptr + (pid_b * NCK + c) * DIM * NS + st, h, mask=m2)
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, T)
        for t in range(t0, t1):
            row = (pid_b * T + t) * DIM
            xv = tl.load(x_ptr + row + d, mask=dm, other=0.0)
            dtv = tl.load(dt_ptr + row + d, mask=dm, other=0.0)
            Bt = tl.load(B_ptr + (pid_b * T + t) * NS + n, mask=nm, other=0.0)
            Ct = tl.load(C_ptr + (pid_b * T + t) * NS + n, mask=nm, other=0.0)
            if HAS_RESETS:
                reset = tl.load(r_ptr + pid_b * T + t) != 0
                h = tl.where(reset, 0.0, h)
            a = tl.exp(dtv[:, None] * A)
            h = a * h + (dtv * xv)[:, None] * Bt[None, :]
            yv = tl.sum(h * Ct[None, :], 1) + Dv * xv
            tl.store(y_ptr + row + d, yv, mask=dm)
    tl.store(hl_ptr + pid_b * DIM * NS + st, h, mask=m2)


@triton.jit
def _bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, r_ptr, ck_ptr, dy_ptr, dhl_ptr, hs_ptr,
    dx_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dh0_ptr,
    T, DIM, NS, NCK, NBLK,
    HAS_RESETS: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: no int32 overflow on large inputs
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dm = d < DIM
    nm = n < NS
    m2 = dm[:, None] & nm[None, :]
    st = d[:, None] * NS + n[None, :]
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]  # offset in a scratch state
    scratch = hs_ptr + (pid_b * NBLK + pid_d) * CHUNK * BLOCK_D * BLOCK_N
    A = tl.load(A_ptr + st, mask=m2, other=0.0)
    Dv = tl.load(D_ptr + d, mask=dm, other=0.0)
    g = tl.load(dhl_ptr + pid_b * DIM * NS + st, mask=m2, other=0.0)
    dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=g.dtype)
    dD = tl.zeros([BLOCK_D], dtype=g.dtype)
    for i in range(NCK):
        c = NCK - 1 - i
        t0 = c * CHUNK
        L = tl.minimum(CHUNK, T - t0)
        hc = tl.load(ck_ptr + (pid_b * NCK + c) * DIM * NS + st, mask=m2, other=0.0)
        # recompute the chunk's states h_t into the scratch (slot s holds h_{t0 + s})
        h = hc
        for s in range(L):
            t = t0 + s
            row = (pid_b * T + t) * DIM
            xv = tl.load(x_ptr + row + d, mask=dm, other=0.0)
            dtv = tl.load(dt_ptr + row + d, mask=dm, other=0.0)
            Bt = tl.load(B_ptr + (pid_b * T + t) * NS + n, mask=nm, other=0.0)
            if HAS_RESETS:
                reset = tl.load(r_ptr + pid_b * T + t) != 0
                h = tl.where(reset, 0.0, h)
            h = tl.exp(dtv[:, None] * A) * h + (dtv * xv)[:, None] * Bt[None, :]
            tl.store(scratch + s * BLOCK_D * BLOCK_N + tile, h)
        tl.debug_barrier()
        # the adjoint recurrence back through the chunk
        for j in range(L):
            s = L - 1 - j
            t = t0 + s
            row = (pid_b * T + t) * DIM
            xv = tl.load(x_ptr + row + d, mask=dm, other=0.0)
            dtv = tl.load(dt_ptr + row + d, mask=dm, other=0.0)
            dyv = tl.load(dy_ptr + row + d, mask=dm, other=0.0)
            Bt = tl.load(B_ptr + (pid_b * T + t) * NS + n, mask=nm, other=0.0)
            Ct = tl.load(C_ptr + (pid_b * T + t) * NS + n, mask=nm, other=0.0)
            hcur = tl.load(scratch + s * BLOCK_D * BLOCK_N + tile)
            prev = tl.load(scratch + (s - 1) * BLOCK_D * BLOCK_N + tile, mask=s > 0, other=0.0)
            prev = tl.where(s > 0, prev, hc)
            if HAS_RESETS:
                reset = tl.load(r_ptr + pid_b * T + t) != 0
                prev = tl.where(reset, 0.0, prev)
            a = tl.exp(dtv[:, None] * A)
            gv = g + Ct[None, :] * dyv[:, None]  # dL/dh_t
            ap = a * prev
            part = ((pid_b * NBLK + pid_d) * T + t) * NS + n
            tl.store(dC_ptr + part, tl.sum(hcur * dyv[:, None], 0), mask=nm)
            tl.store(dB_ptr + part, tl.sum(gv * (dtv * xv)[:, None], 0), mask=nm)
            dA += gv * dtv[:, None] * ap
            ddt = tl.sum(gv * (A * ap + xv[:, None] * Bt[None, :]), 1)
            dxv = Dv * dyv + dtv * tl.sum(gv * Bt[None, :], 1)
            dD += dyv * xv
            tl.store(dx_ptr + row + d, dxv, mask=dm)
            tl.store(ddt_ptr + row + d, ddt, mask=dm)
            g = a * gv
            if HAS_RESETS:
                g = tl.where(reset, 0.0, g)
        tl.debug_barrier()
    tl.store(dh0_ptr + pid_b * DIM * NS + st, g, mask=m2)
    tl.store(dA_ptr + pid_b * DIM * NS + st, dA, mask=m2)
    tl.store(dD_ptr + pid_b * DIM + d, dD, mask=dm)
