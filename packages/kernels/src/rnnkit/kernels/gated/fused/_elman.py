"""Fused Elman loop: ``h_t = phi(px_t + h_{t-1} W)`` with ``phi`` tanh or ReLU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated.fused._common import (
    EmptyFn,
    Restart,
    carry_state_grad,
    chunks,
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


def elman_loop(
    px: Tensor, W: Tensor, mask: Tensor | None, h0: Tensor, relu: bool, init: Restart
) -> tuple[Tensor, Tensor | None]:
    """Forward time loop (no autograd).

    Args:
        px: ``(N, T, B, D)``; W: ``(N, D, D)``; mask: bool ``(T, 1, B, 1)`` or ``None``;
        h0: ``(N, B, D)``; relu: ReLU instead of tanh; init: the reset value of ``h`` (a fill
        or an ``(N, 1, D)`` tensor).

    Returns:
        ``hs: (N, T + 1, B, D)`` (slot 0 is ``h0``) and, with resets, the effective previous
        states ``hp: (N, T, B, D)`` (else ``None``: ``hs[:, :T]`` is the previous state).
    """
    N, T, B, D = px.shape
    hs = px.new_empty(N, T + 1, B, D)
    hs[:, 0] = h0
    H = hs.unbind(1)
    P = px.unbind(1)
    hp: Tensor | None = None
    HP: tuple[Tensor, ...] = ()
    if mask is not None:
        hp = px.new_empty(N, T, B, D)
        HP = hp.unbind(1)
        value = restart_value(init, px)
    act = torch.relu_ if relu else torch.tanh_
    for t in range(T):
        h_prev = H[t]
        if mask is not None:
            h_prev = reset_into(HP[t], h_prev, mask[t], value)
        act(gemm(H[t + 1], h_prev, W, P[t]))
    return hs, hp


def elman_backward_loop(
    W: Tensor,
    hs: Tensor,
    mask: Tensor | None,
    d_hs: Tensor,
    relu: bool,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Reverse time loop (no autograd).

    Args:
        W: ``(N, D, D)``; hs: ``(N, T + 1, B, D)`` from the forward loop; mask: as the
        forward's; d_hs: ``(N, T + 1, B, D)``; relu: ReLU instead of tanh; spill: ``[d init]``,
        the gradient of a restart tensor ``(N, 1, D)`` to add to (see ``cut``), or ``None``.

    Returns:
        ``dq: (N, T, B, D)`` the gradient of the pre-activations (= that of ``px``) and
        ``dh0: (N, B, D)``.
    """
    N, T1, B, D = hs.shape
    T = T1 - 1
    dq = hs.new_empty(N, T, B, D)
    DQ, DY = dq.unbind(1), d_hs.unbind(1)
    WT = W.transpose(1, 2)
    dh = hs.new_empty(N, B, D)
    dr = None if spill is None else spill[0]
    for t0, t1 in chunks(T, B * D * N):
        h_out = hs[:, t0 + 1 : t1 + 1]
        # phi'(pre-activation) of the chunk, from the outputs; ReLU's as torch's backward:
        # 1 where the output is not <= 0, so a NaN output passes its gradient on.
        deriv = (~(h_out <= 0)).to(hs.dtype) if relu else 1 - h_out * h_out
        DV = deriv.unbind(1)
        for t in range(t1 - 1, t0 - 1, -1):
            if t == T - 1:
                torch.mul(DY[T], DV[t - t0], out=DQ[t])
                continue
            carry_state_grad(dh, DQ, WT, DY, mask, t, dr)
            torch.mul(dh, DV[t - t0], out=DQ[t])
    dh0 = initial_state_grad(DQ[0], WT, mask, dr)
    dh0.add_(DY[0])
    return dq, dh0


#: An Elman forward time loop, as :func:`elman_loop`:
#: ``(px, W, mask, h0, relu, init) -> (hs, hp or None)``.
ElmanForward = Callable[
    [Tensor, Tensor, Tensor | None, Tensor, bool, Restart], tuple[Tensor, Tensor | None]
]
#: An Elman reverse time loop, as :func:`elman_backward_loop`:
#: ``(W, hs, mask, d_hs, relu, spill) -> (dq, dh0)``.
ElmanBackward = Callable[
    [Tensor, Tensor, Tensor | None, Tensor, bool, list[Tensor] | None], tuple[Tensor, Tensor]
]


class ElmanLoops(NamedTuple):
    """The two time loops that :class:`ElmanFn` and :func:`run_elman` run."""

    forward: ElmanForward
    backward: ElmanBackward


#: The pure-torch loops of this module (the ``fused`` backend).
ELMAN_LOOPS = ElmanLoops(elman_loop, elman_backward_loop)


class ElmanFn(torch.autograd.Function):
    """Elman sequence with a hand-written reverse-time backward, both loops from ``loops``;
    ``restarts`` (``(h_init,)`` or none) replaces the fill ``init`` as the reset value."""

    @staticmethod
    def forward(
        ctx: Any,
        loops: ElmanLoops,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        h0: Tensor,
        relu: bool,
        init: float,
        *restarts: Tensor,
    ) -> tuple[Tensor, Tensor]:
        hs, hp = loops.forward(px, W, mask, h0, relu, restarts[0] if restarts else init)
        ctx.restarts = tuple(r.detach() for r in restarts)
        ctx.loops = loops
        ctx.relu = relu
        ctx.mask = mask
        ctx.hp = hp
        ctx.save_for_backward(W, hs)
        return split_hs(hs)

    @staticmethod
    def backward(ctx: Any, d_ys: Tensor, d_h_last: Tensor) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        d_hs = join_hs_grads(hs, d_ys, d_h_last)
        T = hs.shape[1] - 1
        hp: Tensor = ctx.hp if ctx.hp is not None else hs[:, :T]
        spill = new_spill(ctx.restarts)
        dq, dh0 = ctx.loops.backward(W, hs, ctx.mask, d_hs, ctx.relu, spill)
        dW = recurrent_weight_grad(hp, dq, W.shape[0], W.shape[1])
        return None, dq, dW, None, dh0, None, None, *(spill or ())


def run_elman(
    call: KernelCall, loops: ElmanLoops = ELMAN_LOOPS, empty: EmptyFn | None = None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``fused`` kernel for Elman cells (see :class:`~rnnkit.core.dispatch.Kernel`).

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h,), each ``(B, H)``; ``loops``
    runs the time loops (the ``fused_cpp`` backend passes its native ones).
    """
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    p = prepare(call, empty)
    relu = cell.nonlinearity == "relu"
    if call.needs_grad:
        ys, h_last = ElmanFn.apply(  # type: ignore[no-untyped-call]
            loops, p.px, p.W, p.mask, p.states[0], relu, p.inits[0], *p.restarts
        )
        return finish_split(call, ys, h_last, [])
    with torch.no_grad():
        init = p.restarts[0] if p.restarts else p.inits[0]
        hs, _ = loops.forward(p.px, p.W, p.mask, p.states[0], relu, init)
    return finish(call, hs, [])
