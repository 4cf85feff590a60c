"""Fused LSTM loop (torch gate order ``i, f, g, o``) with a hand-written backward.

Forward per step: ``a = px_t + h_{t-1} W``; ``i, f, o = sigmoid``, ``g = tanh``;
``c_t = f c_{t-1} + i g``; ``h_t = o tanh(c_t)``.

Backward per step, with ``dh`` the total gradient of ``h_t`` and ``dc`` that of ``c_t``::

    dc += dh * o * (1 - tanh(c_t)^2)
    d(pre i, f, g) = dc * [g i (1 - i), c_{t-1} f (1 - f), i (1 - g^2)]
    d(pre o)       = dh * tanh(c_t) o (1 - o)
    dc_{t-1} = dc * f,   dh_{t-1} = d(pre) W^T + dy_{t-1}

The bracketed factors do not depend on the gradients, so they are computed for all steps at
once before the reverse loop, which then does five small ops and one GEMM per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated.fused._common import (
    EmptyFn,
    Restart,
    carry_state_grad,
    chunks,
    cut,
    empty_result,
    finish,
    finish_split,
    gemm,
    initial_state_grad,
    join_hs_grads,
    new_spill,
    prepare,
    recurrent_weight_grad,
    reset_into,
    restart_value,
    split_hs,
)


def lstm_loop(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    inits: Sequence[Restart],
    save: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Forward time loop (no autograd).

    Args:
        px: ``(N, T, B, 4 D)``; W: ``(N, D, 4 D)``; mask: bool ``(T, 1, B, 1)`` or ``None``;
        h0, c0: ``(N, B, D)``; inits: reset values of ``h`` and ``c`` (fills or ``(N, 1, D)``
        tensors);
        save: keep what the backward needs (otherwise per-step buffers are reused).

    Returns:
        ``hs: (N, T + 1, B, D)`` (slot 0 ``h0``), ``c_T: (N, B, D)`` and, when ``save``,
        ``(acts, cs, tcs, hp)``: gate activations ``(N, T, B, 4 D)``, the cell state entering
        each step after resets plus the final one ``(N, T + 1, B, D)``, ``tanh(c_t)``
        ``(N, T, B, D)`` and the previous ``h`` after resets ``(N, T, B, D)``.
    """
    N, T, B, GD = px.shape
    D = GD // 4
    k = T if save else 1
    hs = px.new_empty(N, T + 1, B, D)
    hs[:, 0] = h0
    acts = px.new_empty(N, k, B, GD)
    cs = px.new_empty(N, T + 1 if save else 2, B, D)
    cs[:, 0] = c0
    tcs = px.new_empty(N, k, B, D)
    hp = hs[:, :T]
    if mask is not None:
        hp = px.new_empty(N, k, B, D)
        h_init, c_init = restart_value(inits[0], px), restart_value(inits[1], px)
    H, P, HP = hs.unbind(1), px.unbind(1), hp.unbind(1)
    A, C, TC = acts.unbind(1), cs.unbind(1), tcs.unbind(1)
    gv = acts.view(N, k, B, 4, D)
    I_, F_, G_, O_ = (gv[:, :, :, j].unbind(1) for j in range(4))
    IF = acts[:, :, :, : 2 * D].unbind(1)
    nc = len(C)
    for t in range(T):
        s = t if save else 0
        h_prev, c_prev, c_new = H[t], C[t % nc], C[(t + 1) % nc]
        if mask is not None:
            h_prev = reset_into(HP[s], h_prev, mask[t], h_init)
            # c entering step t is only read by this step and the backward, so reset in place.
            if c_init.dim() == 0:
                c_prev.masked_fill_(mask[t], c_init)
            else:
                c_prev.copy_(torch.where(mask[t], c_init, c_prev))
        gemm(A[s], h_prev, W, P[t])
        torch.sigmoid(IF[s], out=IF[s])
        torch.sigmoid(O_[s], out=O_[s])
        torch.tanh(G_[s], out=G_[s])
        torch.mul(F_[s], c_prev, out=c_new)
        c_new.addcmul_(I_[s], G_[s])
        torch.tanh(c_new, out=TC[s])
        torch.mul(O_[s], TC[s], out=H[t + 1])
    c_last = C[T % nc].clone()
    saved = (acts, cs, tcs, hp) if save else ()
    return hs, c_last, saved


def lstm_backward_loop(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    d_c_last: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse time loop (no autograd).

    Args:
        W: ``(N, D, 4 D)``; hs: ``(N, T + 1, B, D)`` from the forward loop;
        buffers: ``(acts, cs, tcs, hp)`` saved by the forward loop; mask: as the forward's;
        d_hs: ``(N, T + 1, B, D)``; d_c_last: ``(N, B, D)``; spill: ``[d h_init, d c_init]``,
        the gradients of restart tensors ``(N, 1, D)`` to add to (see ``cut``), or ``None``.

    Returns:
        ``dq: (N, T, B, 4 D)`` the gradient of the gate pre-activations (= that of ``px``),
        ``dh0`` and ``dc0``, each ``(N, B, D)``.
    """
    acts, cs, tcs, _ = buffers
    N, T, B, GD = acts.shape
    D = GD // 4
    dq = acts.new_empty(N, T, B, GD)
    DQ = dq.unbind(1)
    DQ3 = dq.view(N, T, B, 4, D)[:, :, :, :3].unbind(1)
    DQo = dq[:, :, :, 3 * D :].unbind(1)
    DY = d_hs.unbind(1)
    WT = W.transpose(1, 2)
    dh = hs.new_empty(N, B, D)
    dc = d_c_last.clone()
    dh_r, dc_r = (None, None) if spill is None else spill
    for t0, t1 in chunks(T, N * B * GD):
        # Gradient-independent factors of the chunk (see the module docstring).
        i, f, g, o = acts[:, t0:t1].view(N, t1 - t0, B, 4, D).unbind(3)
        tc, c_prev = tcs[:, t0:t1], cs[:, t0:t1]
        KK = (o * (1 - tc * tc)).unbind(1)
        M3 = torch.stack((g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)), dim=3)
        MM3, MMo = M3.unbind(1), (tc * o * (1 - o)).unbind(1)
        FF = f.unbind(1)
        for t in range(t1 - 1, t0 - 1, -1):
            k = t - t0
            carry_state_grad(dh, DQ, WT, DY, mask, t, dh_r)
            dc.addcmul_(dh, KK[k])
            torch.mul(dc.unsqueeze(2), MM3[k], out=DQ3[t])
            torch.mul(dh, MMo[k], out=DQo[t])
            cut(dc.mul_(FF[k]), mask, t, dc_r)
    dh0 = initial_state_grad(DQ[0], WT, mask, dh_r)
    dh0.add_(DY[0])
    return dq, dh0, dc


#: An LSTM forward time loop, as :func:`lstm_loop`:
#: ``(px, W, mask, h0, c0, inits, save) -> (hs, c_last, saved)``.
LSTMForward = Callable[
    [Tensor, Tensor, Tensor | None, Tensor, Tensor, Sequence[Restart], bool],
    tuple[Tensor, Tensor, tuple[Tensor, ...]],
]
#: An LSTM reverse time loop, as :func:`lstm_backward_loop`:
#: ``(W, hs, buffers, mask, d_hs, d_c_last, spill) -> (dq, dh0, dc0)``.
LSTMBackward = Callable[
    [Tensor, Tensor, tuple[Tensor, ...], Tensor | None, Tensor, Tensor, list[Tensor] | None],
    tuple[Tensor, Tensor, Tensor],
]


class LSTMLoops(NamedTuple):
    """The two time loops that :class:`LSTMFn` and :func:`run_lstm` run."""

    forward: LSTMForward
    backward: LSTMBackward


#: The pure-torch loops of this module (the ``fused`` backend).
LSTM_LOOPS = LSTMLoops(lstm_loop, lstm_backward_loop)


class LSTMFn(torch.autograd.Function):
    """LSTM sequence with a hand-written reverse-time backward, both loops from ``loops``;
    ``restarts`` (``(h_init, c_init)`` or none) replace the fills ``inits`` as reset values."""

    @staticmethod
    def forward(
        ctx: Any,
        loops: LSTMLoops,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        inits: tuple[float, ...],
        h0: Tensor,
        c0: Tensor,
        *restarts: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        hs, c_last, saved = loops.forward(px, W, mask, h0, c0, restarts or inits, True)
        ctx.restarts = tuple(r.detach() for r in restarts)
        ctx.loops = loops
        ctx.mask = mask
        ctx.buffers = saved
        ctx.save_for_backward(W, hs)
        return (*split_hs(hs), c_last)

    @staticmethod
    def backward(
        ctx: Any, d_ys: Tensor, d_h_last: Tensor, d_c_last: Tensor
    ) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        d_hs = join_hs_grads(hs, d_ys, d_h_last)
        buffers = ctx.buffers
        ctx.buffers = None
        spill = new_spill(ctx.restarts)
        dq, dh0, dc0 = ctx.loops.backward(W, hs, buffers, ctx.mask, d_hs, d_c_last, spill)
        dW = recurrent_weight_grad(buffers[3], dq, W.shape[0], W.shape[1])
        return None, dq, dW, None, None, dh0, dc0, *(spill or ())


def run_lstm(
    call: KernelCall, loops: LSTMLoops = LSTM_LOOPS, empty: EmptyFn | None = None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``fused`` kernel for LSTM cells (see :class:`~rnnkit.core.dispatch.Kernel`).

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h, c), each ``(B, H)``; ``loops``
    runs the time loops (the ``fused_cpp`` backend passes its native ones).
    """
    if call.x.shape[1] == 0:
        return empty_result(call)
    p = prepare(call, empty)
    h0, c0 = p.states
    if call.needs_grad:
        ys, h_last, c_last = LSTMFn.apply(  # type: ignore[no-untyped-call]
            loops, p.px, p.W, p.mask, p.inits, h0, c0, *p.restarts
        )
        return finish_split(call, ys, h_last, [c_last])
    with torch.no_grad():
        hs, c_last, _ = loops.forward(p.px, p.W, p.mask, h0, c0, p.restarts or p.inits, False)
    return finish(call, hs, [c_last])
