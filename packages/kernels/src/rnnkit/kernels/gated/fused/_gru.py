"""Fused GRU loop (torch gate order ``r, z, n``) with a hand-written backward.

Forward per step, with ``q = h_{t-1} W + [0, 0, b_hn]``::

    r = sigmoid(a_r + q_r),  z = sigmoid(a_z + q_z),  n = tanh(a_n + r q_n)
    h_t = n + z (h_{t-1} - n)

Backward per step, with ``dh`` the total gradient of ``h_t``::

    d(pre n) = dh (1 - z)(1 - n^2)            (= d a_n)
    d(pre z) = dh (h_{t-1} - n) z (1 - z)     (= d a_z = d q_z)
    d(pre r) = d(pre n) q_n r (1 - r)         (= d a_r = d q_r)
    d q_n    = d(pre n) r
    dh_{t-1} = dh z + [d q_r, d q_z, d q_n] W^T + dy_{t-1}

``W`` and ``b_hn`` get their gradients from ``dq`` after the loop (one GEMM, one sum).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated.fused._common import (
    EmptyFn,
    Restart,
    chunks,
    cut,
    empty_result,
    finish,
    finish_split,
    gemm,
    gemm_acc,
    join_hs_grads,
    new_spill,
    prepare,
    recurrent_weight_grad,
    reset_into,
    restart_value,
    split_hs,
)


def gru_loop(
    px: Tensor,
    W: Tensor,
    bhn: Tensor | None,
    mask: Tensor | None,
    h0: Tensor,
    init: Restart,
    save: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Forward time loop (no autograd).

    Args:
        px: ``(N, T, B, 3 D)``; W: ``(N, D, 3 D)``; bhn: ``(N, 1, D)`` or ``None``;
        mask: bool ``(T, 1, B, 1)`` or ``None``; h0: ``(N, B, D)``; init: reset value of ``h``
        (a fill or an ``(N, 1, D)`` tensor);
        save: keep what the backward needs (otherwise per-step buffers are reused).

    Returns:
        ``hs: (N, T + 1, B, D)`` (slot 0 ``h0``) and, when ``save``, ``(acts, qs, hp)``:
        activations ``r, z, n`` ``(N, T, B, 3 D)``, recurrent terms ``q`` ``(N, T, B, 3 D)``
        and the previous ``h`` after resets ``(N, T, B, D)``.
    """
    N, T, B, GD = px.shape
    D = GD // 3
    k = T if save else 1
    hs = px.new_empty(N, T + 1, B, D)
    hs[:, 0] = h0
    acts = px.new_empty(N, k, B, GD)
    qs = px.new_empty(N, k, B, GD)
    qbias: Tensor | None = None
    if bhn is not None:
        # r multiplies b_hn, so it joins the recurrent term q rather than the projection.
        qbias = torch.cat((px.new_zeros(N, 1, 2 * D), bhn), dim=2)
    hp = hs[:, :T]
    if mask is not None:
        hp = px.new_empty(N, k, B, D)
        h_init = restart_value(init, px)
    H, HP, Q = hs.unbind(1), hp.unbind(1), qs.unbind(1)
    RZ = acts[:, :, :, : 2 * D].unbind(1)
    R_ = acts[:, :, :, :D].unbind(1)
    Z_ = acts[:, :, :, D : 2 * D].unbind(1)
    N_ = acts[:, :, :, 2 * D :].unbind(1)
    QRZ, QN = qs[:, :, :, : 2 * D].unbind(1), qs[:, :, :, 2 * D :].unbind(1)
    PRZ, PN = px[:, :, :, : 2 * D].unbind(1), px[:, :, :, 2 * D :].unbind(1)
    for t in range(T):
        s = t if save else 0
        h_prev = H[t]
        if mask is not None:
            h_prev = reset_into(HP[s], h_prev, mask[t], h_init)
        gemm(Q[s], h_prev, W, qbias)
        torch.add(PRZ[t], QRZ[s], out=RZ[s])
        torch.sigmoid(RZ[s], out=RZ[s])
        torch.addcmul(PN[t], R_[s], QN[s], out=N_[s])
        torch.tanh(N_[s], out=N_[s])
        torch.lerp(N_[s], h_prev, Z_[s], out=H[t + 1])
    return hs, ((acts, qs, hp) if save else ())


def gru_backward_loop(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse time loop (no autograd).

    Args:
        W: ``(N, D, 3 D)``; hs: ``(N, T + 1, B, D)`` from the forward loop;
        buffers: ``(acts, qs, hp)`` saved by the forward loop; mask: as the forward's;
        d_hs: ``(N, T + 1, B, D)``; spill: ``[d h_init]``, the gradient of a restart tensor
        ``(N, 1, D)`` to add to (see ``cut``), or ``None``.

    Returns:
        ``dq: (N, T, B, 3 D)`` the gradient of the recurrent terms ``q``, ``dpx: (N, T, B, 3 D)``
        that of ``px`` and ``dh0: (N, B, D)``.
    """
    acts, qs, hp = buffers
    N, T, B, GD = acts.shape
    D = GD // 3
    dq = acts.new_empty(N, T, B, GD)
    dan = acts.new_empty(N, T, B, D)
    DQ, DAN = dq.unbind(1), dan.unbind(1)
    dqv = dq.view(N, T, B, 3, D)
    DR, DZ, DQN = (dqv[:, :, :, j].unbind(1) for j in range(3))
    DY = d_hs.unbind(1)
    WT = W.transpose(1, 2)
    dh = hs.new_empty(N, B, D)
    dh_next = hs.new_empty(N, B, D)
    z_next = hs.new_empty(0)
    dr = None if spill is None else spill[0]
    for t0, t1 in chunks(T, N * B * D):
        # Gradient-independent factors of the chunk (see the module docstring).
        r, z, n = acts[:, t0:t1].view(N, t1 - t0, B, 3, D).unbind(3)
        qn = qs[:, t0:t1, :, 2 * D :]
        PZ = ((hp[:, t0:t1] - n) * z * (1 - z)).unbind(1)
        PN = ((1 - z) * (1 - n * n)).unbind(1)
        PR = (qn * r * (1 - r)).unbind(1)
        RR = r.unbind(1)
        ZZ = z.unbind(1)
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            if t == T - 1:
                dh.copy_(DY[T])
            else:
                dh, dh_next = dh_next, dh
                # dh_next holds the gradient of h_{t+1}; h_t feeds step t+1 directly (z)
                # and through the recurrent GEMM.
                # A reset entering step t+1 cuts both (see cut).
                if mask is None:
                    torch.addcmul(DY[t + 1], dh_next, z_next, out=dh)
                    gemm_acc(dh, DQ[t + 1], WT)
                else:
                    gemm(dh, DQ[t + 1], WT)
                    cut(dh.addcmul_(dh_next, z_next), mask, t + 1, dr).add_(DY[t + 1])
            torch.mul(dh, PN[k], out=DAN[t])
            torch.mul(dh, PZ[k], out=DZ[t])
            torch.mul(DAN[t], PR[k], out=DR[t])
            torch.mul(DAN[t], RR[k], out=DQN[t])
            z_next = ZZ[k]
    dh0 = torch.bmm(DQ[0], WT)
    cut(dh0.addcmul_(dh, z_next), mask, 0, dr).add_(DY[0])
    dpx = torch.cat((dq[:, :, :, : 2 * D], dan), dim=3)
    return dq, dpx, dh0


#: A GRU forward time loop, as :func:`gru_loop`:
#: ``(px, W, bhn, mask, h0, init, save) -> (hs, saved)``.
GRUForward = Callable[
    [Tensor, Tensor, Tensor | None, Tensor | None, Tensor, Restart, bool],
    tuple[Tensor, tuple[Tensor, ...]],
]
#: A GRU reverse time loop, as :func:`gru_backward_loop`:
#: ``(W, hs, buffers, mask, d_hs, spill) -> (dq, dpx, dh0)``.
GRUBackward = Callable[
    [Tensor, Tensor, tuple[Tensor, ...], Tensor | None, Tensor, list[Tensor] | None],
    tuple[Tensor, Tensor, Tensor],
]


class GRULoops(NamedTuple):
    """The two time loops that :class:`GRUFn` and :func:`run_gru` run."""

    forward: GRUForward
    backward: GRUBackward


#: The pure-torch loops of this module (the ``fused`` backend).
GRU_LOOPS = GRULoops(gru_loop, gru_backward_loop)


class GRUFn(torch.autograd.Function):
    """GRU sequence with a hand-written reverse-time backward, both loops from ``loops``;
    ``restarts`` (``(h_init,)`` or none) replaces the fill ``init`` as the reset value."""

    @staticmethod
    def forward(
        ctx: Any,
        loops: GRULoops,
        px: Tensor,
        W: Tensor,
        bhn: Tensor | None,
        mask: Tensor | None,
        h0: Tensor,
        init: float,
        *restarts: Tensor,
    ) -> tuple[Tensor, Tensor]:
        hs, saved = loops.forward(px, W, bhn, mask, h0, restarts[0] if restarts else init, True)
        ctx.restarts = tuple(r.detach() for r in restarts)
        ctx.loops = loops
        ctx.mask = mask
        ctx.has_bhn = bhn is not None
        ctx.buffers = saved
        ctx.save_for_backward(W, hs)
        return split_hs(hs)

    @staticmethod
    def backward(ctx: Any, d_ys: Tensor, d_h_last: Tensor) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        d_hs = join_hs_grads(hs, d_ys, d_h_last)
        buffers = ctx.buffers
        ctx.buffers = None
        spill = new_spill(ctx.restarts)
        dq, dpx, dh0 = ctx.loops.backward(W, hs, buffers, ctx.mask, d_hs, spill)
        N, T, B, GD = dq.shape
        D = GD // 3
        dW = recurrent_weight_grad(buffers[2], dq, N, D)
        d_bhn = None
        if ctx.has_bhn:
            d_bhn = dq.view(N, T, B, 3, D)[:, :, :, 2].sum(dim=(1, 2)).unsqueeze(1)
        return None, dpx, dW, d_bhn, None, dh0, None, *(spill or ())


def run_gru(
    call: KernelCall, loops: GRULoops = GRU_LOOPS, empty: EmptyFn | None = None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``fused`` kernel for GRU cells (see :class:`~rnnkit.core.dispatch.Kernel`).

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h,), each ``(B, H)``; ``loops``
    runs the time loops (the ``fused_cpp`` backend passes its native ones).
    """
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    p = prepare(call, empty)
    N, D = int(cell.heads), int(cell.head_dim)
    bhn = None if cell.bias_hn is None else cell.bias_hn.view(N, 1, D)
    if call.needs_grad:
        ys, h_last = GRUFn.apply(  # type: ignore[no-untyped-call]
            loops, p.px, p.W, bhn, p.mask, p.states[0], p.inits[0], *p.restarts
        )
        return finish_split(call, ys, h_last, [])
    with torch.no_grad():
        init = p.restarts[0] if p.restarts else p.inits[0]
        hs, _ = loops.forward(p.px, p.W, bhn, p.mask, p.states[0], init, False)
    return finish(call, hs, [])
