"""Fused Elman loop: ``h_t = phi(px_t + h_{t-1} W)`` with ``phi`` tanh or ReLU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.fused._common import (
    chunks,
    empty_result,
    finish,
    gemm,
    initial_state_grad,
    keep_factor,
    prepare,
    recurrent_weight_grad,
    reset_into,
    scalar_like,
)


def elman_loop(
    px: Tensor, W: Tensor, mask: Tensor | None, h0: Tensor, relu: bool, init: float
) -> tuple[Tensor, Tensor | None]:
    """Forward time loop (no autograd).

    Args:
        px: ``(N, T, B, D)``; W: ``(N, D, D)``; mask: bool ``(T, 1, B, 1)`` or ``None``;
        h0: ``(N, B, D)``; relu: ReLU instead of tanh; init: the reset value of ``h``.

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
        value = scalar_like(init, px)
    act = torch.relu_ if relu else torch.tanh_
    for t in range(T):
        h_prev = H[t]
        if mask is not None:
            h_prev = reset_into(HP[t], h_prev, mask[t], value)
        act(gemm(H[t + 1], h_prev, W, P[t]))
    return hs, hp


class ElmanFn(torch.autograd.Function):
    """Elman sequence with a hand-written reverse-time backward."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        h0: Tensor,
        relu: bool,
        init: float,
    ) -> Tensor:
        hs, hp = elman_loop(px, W, mask, h0, relu, init)
        ctx.relu = relu
        ctx.mask = mask
        ctx.hp = hp
        ctx.save_for_backward(W, hs)
        return hs

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        N, T1, B, D = hs.shape
        T = T1 - 1
        hp: Tensor = ctx.hp if ctx.hp is not None else hs[:, :T]
        keep = keep_factor(ctx.mask, hs)
        dq = hs.new_empty(N, T, B, D)
        DQ, DY = dq.unbind(1), d_hs.unbind(1)
        WT = W.transpose(1, 2)
        dh = hs.new_empty(N, B, D)
        for t0, t1 in chunks(T, B * D * N):
            h_out = hs[:, t0 + 1 : t1 + 1]
            # phi'(pre-activation) of the chunk, from the outputs.
            deriv = (h_out > 0).to(hs.dtype) if ctx.relu else 1 - h_out * h_out
            DV = deriv.unbind(1)
            for t in range(t1 - 1, t0 - 1, -1):
                if t == T - 1:
                    torch.mul(DY[T], DV[t - t0], out=DQ[t])
                    continue
                if keep is None:
                    gemm(dh, DQ[t + 1], WT, DY[t + 1])
                else:
                    gemm(dh, DQ[t + 1], WT)
                    dh.mul_(keep[t + 1]).add_(DY[t + 1])
                torch.mul(dh, DV[t - t0], out=DQ[t])
        dh0 = initial_state_grad(DQ[0], WT, keep)
        dh0.add_(DY[0])
        dW = recurrent_weight_grad(hp, dq, N, D)
        return dq, dW, None, dh0, None, None


def run_elman(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``fused`` kernel for Elman cells (see :class:`~rnnkit.core.dispatch.Kernel`)."""
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    p = prepare(call)
    relu = cell.nonlinearity == "relu"
    if call.needs_grad:
        hs = ElmanFn.apply(p.px, p.W, p.mask, p.states[0], relu, p.inits[0])  # type: ignore[no-untyped-call]
    else:
        with torch.no_grad():
            hs, _ = elman_loop(p.px, p.W, p.mask, p.states[0], relu, p.inits[0])
    return finish(call, hs, [])
