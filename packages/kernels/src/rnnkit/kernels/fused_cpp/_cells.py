"""Autograd functions and kernels of the ``fused_cpp`` backend, one per gated cell.

They mirror the Python loops of :mod:`rnnkit.kernels.fused` (same layouts, same saved buffers,
same reset semantics, the gradient of ``W`` as one batched GEMM after the reverse loop); only
the two time loops run in C++ (``csrc/gated_cells.cpp``), one call each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.fused._common import (
    Prepared,
    empty_result,
    finish,
    prepare,
    recurrent_weight_grad,
)
from rnnkit.kernels.fused_cpp._native import ops

Result = tuple[Tensor, tuple[Tensor, ...]]


def _mask2d(mask: Tensor | None) -> Tensor | None:
    """``(T, 1, B, 1) -> (T, B)``: the resets as the native loops read them."""
    return None if mask is None else mask.reshape(mask.shape[0], mask.shape[2])


class LSTMFn(torch.autograd.Function):
    """LSTM sequence: native forward and reverse loops."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        inits: tuple[float, ...],
        h0: Tensor,
        c0: Tensor,
    ) -> tuple[Tensor, Tensor]:
        hs, c_last, acts, cs, tcs, hp = ops().lstm_forward(
            px, W, mask, h0, c0, inits[0], inits[1], True
        )
        ctx.mask = mask
        ctx.buffers = (acts, cs, tcs, hp)
        ctx.save_for_backward(W, hs)
        return hs, c_last

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor, d_c_last: Tensor) -> tuple[Tensor | None, ...]:
        W, _ = ctx.saved_tensors
        acts, cs, tcs, hp = ctx.buffers
        ctx.buffers = None
        dq, dh0, dc0 = ops().lstm_backward(W, acts, cs, tcs, ctx.mask, d_hs, d_c_last)
        dW = recurrent_weight_grad(hp, dq, W.shape[0], W.shape[1])
        return dq, dW, None, None, dh0, dc0


class GRUFn(torch.autograd.Function):
    """GRU sequence: native forward and reverse loops."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        W: Tensor,
        bhn: Tensor | None,
        mask: Tensor | None,
        h0: Tensor,
        init: float,
    ) -> Tensor:
        N, D = W.shape[0], W.shape[1]
        b = None if bhn is None else bhn.reshape(N, D)
        hs, acts, qs, hp = ops().gru_forward(px, W, b, mask, h0, init, True)
        ctx.mask = mask
        ctx.has_bhn = bhn is not None
        ctx.buffers = (acts, qs, hp)
        ctx.save_for_backward(W, hs)
        out: Tensor = hs
        return out

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple[Tensor | None, ...]:
        W, _ = ctx.saved_tensors
        acts, qs, hp = ctx.buffers
        ctx.buffers = None
        N, T, B, GD = acts.shape
        D = GD // 3
        dq, dpx, dh0 = ops().gru_backward(W, acts, qs, hp, ctx.mask, d_hs)
        dW = recurrent_weight_grad(hp, dq, N, D)
        d_bhn = None
        if ctx.has_bhn:
            d_bhn = dq.view(N, T, B, 3, D)[:, :, :, 2].sum(dim=(1, 2)).unsqueeze(1)
        return dpx, dW, d_bhn, None, dh0, None


class ElmanFn(torch.autograd.Function):
    """Elman sequence: native forward and reverse loops."""

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
        hs, hp = ops().elman_forward(px, W, mask, h0, init, relu)
        ctx.relu = relu
        ctx.mask = mask
        ctx.hp = hp
        ctx.save_for_backward(W, hs)
        out: Tensor = hs
        return out

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        hp = ctx.hp
        ctx.hp = None
        dq, dh0 = ops().elman_backward(W, hs, ctx.mask, d_hs, ctx.relu)
        dW = recurrent_weight_grad(hp, dq, W.shape[0], W.shape[1])
        return dq, dW, None, dh0, None, None


class SLSTMFn(torch.autograd.Function):
    """sLSTM sequence: native forward and reverse loops."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        W: Tensor,
        mask: Tensor | None,
        inits: tuple[float, ...],
        h0: Tensor,
        c0: Tensor,
        n0: Tensor,
        m0: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        hs, cn, ms, gates, ex, cnp, hp = ops().slstm_forward(
            px, W, mask, h0, c0, n0, m0, list(inits), True
        )
        T = px.shape[1]
        ctx.mask = mask
        ctx.buffers = (cn, ms, gates, ex, cnp, hp)
        ctx.save_for_backward(W, hs)
        return hs, cn[:, T, :, 0].clone(), cn[:, T, :, 1].clone(), ms[:, T].clone()

    @staticmethod
    def backward(
        ctx: Any, d_hs: Tensor, d_c: Tensor, d_n: Tensor, d_m: Tensor
    ) -> tuple[Tensor | None, ...]:
        W, hs = ctx.saved_tensors
        cn, ms, gates, ex, cnp, hp = ctx.buffers
        ctx.buffers = None
        dq, dh0, dc0, dn0, dm0 = ops().slstm_backward(
            W, hs, cn, ms, gates, ex, cnp, ctx.mask, d_hs, d_c, d_n, d_m
        )
        dW = recurrent_weight_grad(hp, dq, W.shape[0], W.shape[1])
        return dq, dW, None, None, dh0, dc0, dn0, dm0


def _prepared(call: KernelCall) -> tuple[Prepared, Tensor | None]:
    p = prepare(call)
    return p, _mask2d(p.mask)


def run_lstm(call: KernelCall) -> Result:
    """The ``fused_cpp`` kernel for LSTM cells.

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h, c), each ``(B, H)``.
    """
    if call.x.shape[1] == 0:
        return empty_result(call)
    p, mask = _prepared(call)
    h0, c0 = p.states
    if call.needs_grad:
        hs, c_last = LSTMFn.apply(p.px, p.W, mask, p.inits, h0, c0)  # type: ignore[no-untyped-call]
    else:
        with torch.no_grad():
            hs, c_last = ops().lstm_forward(p.px, p.W, mask, h0, c0, *p.inits[:2], False)
    return finish(call, hs, [c_last])


def run_gru(call: KernelCall) -> Result:
    """The ``fused_cpp`` kernel for GRU cells.

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h,), each ``(B, H)``.
    """
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    p, mask = _prepared(call)
    N, D = int(cell.heads), int(cell.head_dim)
    bhn = None if cell.bias_hn is None else cell.bias_hn.view(N, 1, D)
    if call.needs_grad:
        hs = GRUFn.apply(p.px, p.W, bhn, mask, p.states[0], p.inits[0])  # type: ignore[no-untyped-call]
    else:
        with torch.no_grad():
            b = None if bhn is None else bhn.reshape(N, D)
            (hs,) = ops().gru_forward(p.px, p.W, b, mask, p.states[0], p.inits[0], False)
    return finish(call, hs, [])


def run_elman(call: KernelCall) -> Result:
    """The ``fused_cpp`` kernel for Elman cells (tanh and ReLU).

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h,), each ``(B, H)``.
    """
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    p, mask = _prepared(call)
    relu = cell.nonlinearity == "relu"
    if call.needs_grad:
        hs = ElmanFn.apply(p.px, p.W, mask, p.states[0], relu, p.inits[0])  # type: ignore[no-untyped-call]
    else:
        with torch.no_grad():
            hs, _ = ops().elman_forward(p.px, p.W, mask, p.states[0], p.inits[0], relu)
    return finish(call, hs, [])


def run_slstm(call: KernelCall) -> Result:
    """The ``fused_cpp`` kernel for sLSTM cells.

    ``call.x (B, T, I) -> y (B, T, H)`` and the final state (h, c, n, m), each ``(B, H)``.
    """
    if call.x.shape[1] == 0:
        return empty_result(call)
    p, mask = _prepared(call)
    if call.needs_grad:
        hs, c, n, m = SLSTMFn.apply(p.px, p.W, mask, p.inits, *p.states)  # type: ignore[no-untyped-call]
    else:
        with torch.no_grad():
            hs, cn, ms = ops().slstm_forward(p.px, p.W, mask, *p.states, list(p.inits), False)
            last = p.px.shape[1] % 2
            c, n, m = cn[:, last, :, 0], cn[:, last, :, 1], ms[:, last]
    return finish(call, hs, [c, n, m])


#: The native kernel of each cell kind.
RUNS: dict[str, Callable[[KernelCall], Result]] = {
    "elman": run_elman,
    "lstm": run_lstm,
    "gru": run_gru,
    "slstm": run_slstm,
}
