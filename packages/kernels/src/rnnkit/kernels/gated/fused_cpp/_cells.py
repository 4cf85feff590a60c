"""The native time loops of the ``fused_cpp`` backend, one pair per gated cell, and its kernels.

The autograd functions and kernels are those of :mod:`rnnkit.kernels.gated.fused` (same layouts,
same saved buffers, same reset semantics, the gradient of ``W`` as one batched GEMM after the
reverse loop); only the two time loops differ: here each is one call into C++
(``csrc/gated_cells.cpp``). The adapters below give the native ops the signatures of the pure-torch
loops (:class:`~rnnkit.kernels.gated.fused.LSTMLoops` and the others)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated.fused import (
    ElmanLoops,
    GRULoops,
    LSTMLoops,
    SLSTMLoops,
    run_elman,
    run_gru,
    run_lstm,
    run_slstm,
)
from rnnkit.kernels.gated.fused._common import Restart, fills, no_spill
from rnnkit.kernels.gated.fused_cpp._native import ops

Result = tuple[Tensor, tuple[Tensor, ...]]

_BACKEND = "fused_cpp"


def _mask2d(mask: Tensor | None) -> Tensor | None:
    """``(T, 1, B, 1) -> (T, B)``: the resets as the native loops read them."""
    return None if mask is None else mask.reshape(mask.shape[0], mask.shape[2])


def _previous(states: Tensor) -> Tensor:
    """``(N, T + 1, ...) -> (N, T, ...)``: the states entering each step, a view. Without resets
    the native loops return no copy of them (an op's outputs must not be views of each other)."""
    return states.narrow(1, 0, states.shape[1] - 1)


def lstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    inits: Sequence[Restart],
    save: bool,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Native :func:`~rnnkit.kernels.gated.fused._lstm.lstm_loop` (fills only)."""
    h_init, c_init = fills(inits, _BACKEND)
    hs, c_last, *saved = ops().lstm_forward(px, W, _mask2d(mask), h0, c0, h_init, c_init, save)
    saved = list(saved)  # torch 2.11's dynamo traces a starred target as a tuple
    if save and mask is None:
        saved.append(_previous(hs))
    return hs, c_last, tuple(saved)


def lstm_backward(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    d_c_last: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Native :func:`~rnnkit.kernels.gated.fused._lstm.lstm_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    acts, cs, tcs, _ = buffers
    dq, dh0, dc0 = ops().lstm_backward(W, acts, cs, tcs, _mask2d(mask), d_hs, d_c_last)
    return dq, dh0, dc0


def gru_forward(
    px: Tensor,
    W: Tensor,
    bhn: Tensor | None,
    mask: Tensor | None,
    h0: Tensor,
    init: Restart,
    save: bool,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Native :func:`~rnnkit.kernels.gated.fused._gru.gru_loop` (a fill only)."""
    b = None if bhn is None else bhn.reshape(W.shape[0], W.shape[1])
    (fill,) = fills([init], _BACKEND)
    hs, *saved = ops().gru_forward(px, W, b, _mask2d(mask), h0, fill, save)
    saved = list(saved)  # torch 2.11's dynamo traces a starred target as a tuple
    if save and mask is None:
        saved.append(_previous(hs))
    return hs, tuple(saved)


def gru_backward(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Native :func:`~rnnkit.kernels.gated.fused._gru.gru_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    acts, qs, hp = buffers
    dq, dpx, dh0 = ops().gru_backward(W, acts, qs, hp, _mask2d(mask), d_hs)
    return dq, dpx, dh0


def elman_forward(
    px: Tensor, W: Tensor, mask: Tensor | None, h0: Tensor, relu: bool, init: Restart
) -> tuple[Tensor, Tensor | None]:
    """Native :func:`~rnnkit.kernels.gated.fused._elman.elman_loop` (a fill only; ``hp`` is
    ``None`` without resets: the previous states are then ``hs[:, :T]``)."""
    (fill,) = fills([init], _BACKEND)
    hs, *hp = ops().elman_forward(px, W, _mask2d(mask), h0, fill, relu)
    return hs, hp[0] if hp else None


def elman_backward(
    W: Tensor,
    hs: Tensor,
    mask: Tensor | None,
    d_hs: Tensor,
    relu: bool,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Native :func:`~rnnkit.kernels.gated.fused._elman.elman_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    dq, dh0 = ops().elman_backward(W, hs, _mask2d(mask), d_hs, relu)
    return dq, dh0


def slstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    states: list[Tensor],
    inits: Sequence[Restart],
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Native :func:`~rnnkit.kernels.gated.fused._slstm.slstm_loop` (fills only)."""
    values = fills(inits, _BACKEND)
    hs, cn, ms, *saved = ops().slstm_forward(px, W, _mask2d(mask), *states, values, save)
    saved = list(saved)  # torch 2.11's dynamo traces a starred target as a tuple
    if save and mask is None:
        saved += [_previous(cn), _previous(hs)]
    return hs, cn, ms, tuple(saved)


def slstm_backward(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    d_c: Tensor,
    d_n: Tensor,
    d_m: Tensor,
    spill: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Native :func:`~rnnkit.kernels.gated.fused._slstm.slstm_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    cn, ms, gates, ex, cnp, _ = buffers
    dq, dh0, dc0, dn0, dm0 = ops().slstm_backward(
        W, hs, cn, ms, gates, ex, cnp, _mask2d(mask), d_hs, d_c, d_n, d_m
    )
    return dq, dh0, dc0, dn0, dm0


#: The native loops of each cell kind.
LSTM_LOOPS = LSTMLoops(lstm_forward, lstm_backward)
GRU_LOOPS = GRULoops(gru_forward, gru_backward)
ELMAN_LOOPS = ElmanLoops(elman_forward, elman_backward)
SLSTM_LOOPS = SLSTMLoops(slstm_forward, slstm_backward)


def pooled_empty(size: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor from the library's buffer cache (``csrc/buffer_pool.h``):
    the large tensors of a training step reuse the pages of the previous step's. Under
    torch.compile and torch.export a plain ``torch.empty`` (the compiler plans its buffers)."""
    if torch.compiler.is_compiling():
        return torch.empty(tuple(size), dtype=dtype)
    out: Tensor = ops().pooled_empty(list(size), dtype)
    return out


#: The native kernel of each cell kind: the ``fused`` kernels with the native loops (and the
#: projection allocated from the buffer cache, like the loops' own outputs).
RUNS: dict[str, Callable[[KernelCall], Result]] = {
    "elman": partial(run_elman, loops=ELMAN_LOOPS, empty=pooled_empty),
    "lstm": partial(run_lstm, loops=LSTM_LOOPS, empty=pooled_empty),
    "gru": partial(run_gru, loops=GRU_LOOPS, empty=pooled_empty),
    "slstm": partial(run_slstm, loops=SLSTM_LOOPS, empty=pooled_empty),
}
