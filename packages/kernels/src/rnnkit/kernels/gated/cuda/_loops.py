"""The CUDA time loops as the ``fused`` backend's loops objects, and the ``cuda`` kernels' runs.

The autograd functions of :mod:`rnnkit.kernels.gated.fused` (``ElmanFn``, ``LSTMFn``, ``GRUFn``,
``SLSTMFn``: the layouts, saved buffers, reset semantics and the recurrent-weight gradient as one
batched GEMM after the reverse loop) run here with both time loops replaced by one persistent
CUDA launch each. The backward reads the gates the forward stored (no recomputation).

Everything inside the loops is float32: a bfloat16 or float16 call is projected in its own dtype
(``cell.project``), converted to float32 for the recurrence (state and accumulation in float32)
and its outputs converted back; autograd converts the gradients. Such a call asks the planner
for tensor cores with operands in its own dtype (``tensor_cores="bf16"`` or ``"fp16"`` on every
loop function, :data:`TENSOR_CORE_DTYPES`): its recurrent products then keep the weights and
the staged ``h`` (forward) or ``dq`` (backward) in that dtype, sums and state in float32.

The blocks exchange each step by a grid barrier unless :data:`EXCHANGE_ENV` names another step
exchange (``RNNKIT_CUDA_EXCHANGE=flags``: per-block step counters; see
:mod:`rnnkit.kernels.gated.cuda._plan`), read at every call.

With ``call.lengths`` the loops get the lengths (int32, on the device) and hold each sequence's
state past its length inside the kernels (one launch per direction, no segments); the runs then
zero ``y`` past each length.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.core.varlen import step_mask
from rnnkit.kernels._cuda_device import cuda_index as device_index
from rnnkit.kernels.gated.cuda._native import ops
from rnnkit.kernels.gated.cuda._plan import EXCHANGES, Tiling, plan
from rnnkit.kernels.gated.fused import ElmanLoops, GRULoops, LSTMLoops, SLSTMLoops
from rnnkit.kernels.gated.fused._common import (
    Restart,
    empty_result,
    fills,
    finish,
    finish_split,
    no_spill,
    prepare,
)
from rnnkit.kernels.gated.fused._elman import ElmanFn
from rnnkit.kernels.gated.fused._gru import GRUFn
from rnnkit.kernels.gated.fused._lstm import LSTMFn
from rnnkit.kernels.gated.fused._slstm import SLSTMFn

__all__ = [
    "CUDA_LOOPS",
    "EXCHANGE_ENV",
    "RUNS",
    "Result",
    "device_index",
    "device_limits",
    "plan_on",
    "run_elman",
    "run_gru",
    "run_lstm",
    "run_slstm",
    "step_exchange",
    "tiling",
]

Result = tuple[Tensor, tuple[Tensor, ...]]

_BACKEND = "cuda"

# Cell kinds as the library numbers them (gated_cuda.h, CellKind).
_ELMAN_TANH, _ELMAN_RELU, _LSTM, _GRU, _SLSTM = 0, 1, 2, 3, 4

#: Names the step exchange of every launch (a key of
#: :data:`~rnnkit.kernels.gated.cuda._plan.EXCHANGES`); unset or empty: ``"grid"``.
EXCHANGE_ENV = "RNNKIT_CUDA_EXCHANGE"


def step_exchange() -> str:
    """The step exchange :data:`EXCHANGE_ENV` names (``"grid"`` where it is unset or empty).

    Raises:
        ValueError: it names none of :data:`~rnnkit.kernels.gated.cuda._plan.EXCHANGES`.
    """
    name = os.environ.get(EXCHANGE_ENV, "").strip().lower() or "grid"
    if name not in EXCHANGES:
        raise ValueError(
            f"{EXCHANGE_ENV}={name!r} names no step exchange: one of {', '.join(EXCHANGES)}"
        )
    return name


@lru_cache(maxsize=16)
def device_limits(index: int) -> tuple[int, int]:
    """``(SMs, shared memory per block in bytes, opt-in maximum)`` of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    smem = int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))
    return int(props.multi_processor_count), smem


@lru_cache(maxsize=16)
def has_wmma(index: int) -> bool:
    """Whether CUDA device ``index`` has the tensor cores the kernels use (TF32 and bfloat16
    WMMA: compute capability 8.0 or later)."""
    return torch.cuda.get_device_capability(index) >= (8, 0)


def tiling(
    kind: str,
    heads: int,
    head_dim: int,
    batch: int,
    device: torch.device,
    tensor_cores: str | None = None,
) -> Tiling:
    """The :func:`~rnnkit.kernels.gated.cuda._plan.plan` of a call on ``device``;
    ``tensor_cores`` (an operand format, or ``None``): where the device has them (sm_80 on).

    Raises:
        ValueError: the call cannot run there (the message says why).
    """
    cut = plan_on(kind, heads, head_dim, batch, device, tensor_cores)
    if isinstance(cut, str):
        raise ValueError(cut)
    return cut


def plan_on(
    kind: str,
    heads: int,
    head_dim: int,
    batch: int,
    device: torch.device,
    tensor_cores: str | None,
) -> Tiling | str:
    """:func:`tiling`, with why the call cannot run as a string instead of an error (its step
    exchange the one :func:`step_exchange` names, which raises where that is unknown)."""
    index = device_index(device)
    sms, smem = device_limits(index)
    mma = tensor_cores if tensor_cores is not None and has_wmma(index) else None
    return plan(kind, heads, head_dim, batch, sms, smem, tensor_cores=mma, exchange=step_exchange())


def _mask2d(mask: Tensor | None) -> Tensor | None:
    """``(T, 1, B, 1) -> (T, B)`` contiguous: the resets as the kernels read them."""
    return None if mask is None else mask.reshape(mask.shape[0], mask.shape[2]).contiguous()


def _previous(hs: Tensor) -> Tensor:
    """``(N, T + 1, B, D) -> (N, T, B, D)``: the states entering each step, a view."""
    return hs.narrow(1, 0, hs.shape[1] - 1)


def _cut(kind: str, px: Tensor, gates: int, tensor_cores: str | None) -> Tiling:
    N, _, B, GD = px.shape
    return tiling(kind, N, GD // gates, B, px.device, tensor_cores)


def lstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    inits: Sequence[Restart],
    save: bool,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._lstm.lstm_loop` (fills only); ``lengths``: int32
    ``(B,)`` on the device, the state held past each length (see the module docstring)."""
    t = _cut("lstm", px, 4, tensor_cores)
    out = ops().forward(
        _LSTM, px.contiguous(), W.contiguous(), None, _mask2d(mask), lengths, h0.contiguous(),
        c0.contiguous(), None, None, fills(inits[:2], _BACKEND), save, *t.forward_args,
    )  # fmt: skip
    hs, c_last = out[0], out[1]
    if not save:
        return hs, c_last, ()
    hp = out[5] if mask is not None else _previous(hs)
    return hs, c_last, (out[2], out[3], out[4], hp)


def lstm_backward(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    d_c_last: Tensor,
    spill: list[Tensor] | None = None,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._lstm.lstm_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    acts, cs, tcs, _ = buffers
    N, _, B, D = hs.shape
    t = tiling("lstm", N, D, B, hs.device, tensor_cores)
    dq, dh0, d_state = ops().backward(
        _LSTM, W.contiguous(), hs, acts, cs, tcs, None, None, None, None, None, _mask2d(mask),
        lengths, d_hs.contiguous(), d_c_last.unsqueeze(1).contiguous(), *t.backward_args,
    )  # fmt: skip
    return dq, dh0, d_state[:, 0]


def gru_forward(
    px: Tensor,
    W: Tensor,
    bhn: Tensor | None,
    mask: Tensor | None,
    h0: Tensor,
    init: Restart,
    save: bool,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._gru.gru_loop` (a fill only); ``lengths`` as
    :func:`lstm_forward`'s."""
    t = _cut("gru", px, 3, tensor_cores)
    bias = None if bhn is None else bhn.contiguous()
    out = ops().forward(
        _GRU, px.contiguous(), W.contiguous(), bias, _mask2d(mask), lengths, h0.contiguous(),
        None, None, None, fills([init], _BACKEND), save, *t.forward_args,
    )  # fmt: skip
    hs = out[0]
    if not save:
        return hs, ()
    hp = out[3] if mask is not None else _previous(hs)
    return hs, (out[1], out[2], hp)


def gru_backward(
    W: Tensor,
    hs: Tensor,
    buffers: tuple[Tensor, ...],
    mask: Tensor | None,
    d_hs: Tensor,
    spill: list[Tensor] | None = None,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._gru.gru_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    acts, qs, hp = buffers
    N, _, B, D = hs.shape
    t = tiling("gru", N, D, B, hs.device, tensor_cores)
    hp_arg = hp if mask is not None else None
    dq, dh0, dpx = ops().backward(
        _GRU, W.contiguous(), hs, acts, None, None, qs, None, None, None, hp_arg, _mask2d(mask),
        lengths, d_hs.contiguous(), None, *t.backward_args,
    )  # fmt: skip
    return dq, dpx, dh0


def elman_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    relu: bool,
    init: Restart,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._elman.elman_loop` (a fill only); ``lengths`` as
    :func:`lstm_forward`'s."""
    t = _cut("elman", px, 1, tensor_cores)
    out = ops().forward(
        _ELMAN_RELU if relu else _ELMAN_TANH, px.contiguous(), W.contiguous(), None,
        _mask2d(mask), lengths, h0.contiguous(), None, None, None, fills([init], _BACKEND),
        mask is not None,
        *t.forward_args,
    )  # fmt: skip
    return out[0], (out[1] if mask is not None else None)


def elman_backward(
    W: Tensor,
    hs: Tensor,
    mask: Tensor | None,
    d_hs: Tensor,
    relu: bool,
    spill: list[Tensor] | None = None,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._elman.elman_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    N, _, B, D = hs.shape
    t = tiling("elman", N, D, B, hs.device, tensor_cores)
    dq, dh0 = ops().backward(
        _ELMAN_RELU if relu else _ELMAN_TANH, W.contiguous(), hs, None, None, None, None, None,
        None, None, None, _mask2d(mask), lengths, d_hs.contiguous(), None, *t.backward_args,
    )  # fmt: skip
    return dq, dh0


def slstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    states: list[Tensor],
    inits: Sequence[Restart],
    save: bool,
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._slstm.slstm_loop` (the same buffers: ``cn (N,
    T + 1 or 2, B, 2, D)``, ``ms``, and with ``save`` the pre-activations ``ĩ, f̃`` with ``tanh z̃,
    σ(õ)``, ``i', f'``, and the ``c, n`` and ``h`` entering each step; fills only);
    ``lengths`` as :func:`lstm_forward`'s."""
    t = _cut("slstm", px, 4, tensor_cores)
    h0, c0, n0, m0 = (s.contiguous() for s in states)
    out = ops().forward(
        _SLSTM, px.contiguous(), W.contiguous(), None, _mask2d(mask), lengths, h0, c0, n0, m0,
        fills(inits[:4], _BACKEND), save, *t.forward_args,
    )  # fmt: skip
    hs, cn, ms = out[0], out[1], out[2]
    if not save:
        return hs, cn, ms, ()
    if mask is not None:
        cnp, hp = out[5], out[6]
    else:
        cnp, hp = _previous(cn), _previous(hs)
    return hs, cn, ms, (out[3], out[4], cnp, hp)


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
    lengths: Tensor | None = None,
    tensor_cores: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """CUDA :func:`~rnnkit.kernels.gated.fused._slstm.slstm_backward_loop` (no ``spill``)."""
    no_spill(spill, _BACKEND)
    cn, ms, gates, ex, cnp, _ = buffers
    N, _, B, D = hs.shape
    t = tiling("slstm", N, D, B, hs.device, tensor_cores)
    cnp_arg = cnp if mask is not None else None
    dq, dh0, d_state = ops().backward(
        _SLSTM, W.contiguous(), hs, gates, cn, None, None, ms, ex, cnp_arg, None, _mask2d(mask),
        lengths, d_hs.contiguous(), torch.stack((d_c, d_n, d_m), 1), *t.backward_args,
    )  # fmt: skip
    return dq, dh0, d_state[:, 0], d_state[:, 1], d_state[:, 2]


#: The CUDA loops of each cell kind, in the ``fused`` backend's loops objects.
CUDA_LOOPS: dict[str, Any] = {
    "elman": ElmanLoops(elman_forward, elman_backward),
    "lstm": LSTMLoops(lstm_forward, lstm_backward),
    "gru": GRULoops(gru_forward, gru_backward),
    "slstm": SLSTMLoops(slstm_forward, slstm_backward),
}


#: Input dtypes whose calls run their recurrent products on the tensor cores, and the operand
#: format each asks for (its own: the weights lose nothing; float32 calls keep float32 FMAs).
TENSOR_CORE_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _loops(kind: str, call: KernelCall, loops: Any) -> Any:
    """The loops that run ``call``: ``loops`` when given (they know nothing of lengths), else
    the CUDA loops, bound to ``call.lengths`` when it has them and asking for tensor cores in
    the call's dtype when it is 16-bit."""
    if loops is not None:
        if call.lengths is not None:
            raise ValueError("only the CUDA loops hold the state past each length")
        return loops
    cuda_loops = CUDA_LOOPS[kind]
    bound: dict[str, Any] = {"tensor_cores": TENSOR_CORE_DTYPES.get(call.x.dtype)}
    if call.lengths is not None:
        bound["lengths"] = call.lengths.to(device=call.x.device, dtype=torch.int32)
    return type(cuda_loops)(
        partial(cuda_loops.forward, **bound), partial(cuda_loops.backward, **bound)
    )


def _in_dtype(call: KernelCall, y: Tensor, state: tuple[Tensor, ...]) -> Result:
    """``y`` and the state fields in the input's dtype (no-ops for float32), ``y`` zero past
    each sequence's length when the call has lengths."""
    if call.lengths is not None:
        valid = step_mask(call.lengths, y.shape[1], y.device)
        y = y.masked_fill(~valid.unsqueeze(-1), 0.0)
    dtype = call.x.dtype
    fields = [s.to(dtype) for s in state]
    return y.to(dtype), call.cell.state_type(*fields)


def _float32(t: Tensor) -> Tensor:
    return t.float()


def run_lstm(call: KernelCall, loops: LSTMLoops | None = None) -> Result:
    """``call.x (B, T, I) -> y (B, T, H)``, final ``(h, c)`` each ``(B, H)``; the CUDA loops
    unless ``loops`` names others (the pure-torch ones when the library cannot be built; those
    refuse ``call.lengths``)."""
    if call.x.shape[1] == 0:
        return empty_result(call)
    lp = _loops("lstm", call, loops)
    p = prepare(call)
    px, W = _float32(p.px), _float32(p.W)
    h0, c0 = (_float32(s) for s in p.states)
    if call.needs_grad:
        ys, h_last, c_last = LSTMFn.apply(lp, px, W, p.mask, p.inits, h0, c0)  # type: ignore[no-untyped-call]
        return _in_dtype(call, *finish_split(call, ys, h_last, [c_last]))
    with torch.no_grad():
        hs, c_last, _ = lp.forward(px, W, p.mask, h0, c0, p.inits, False)
        return _in_dtype(call, *finish(call, hs, [c_last]))


def run_gru(call: KernelCall, loops: GRULoops | None = None) -> Result:
    """``call.x (B, T, I) -> y (B, T, H)``, final ``(h,)`` ``(B, H)``; see :func:`run_lstm`."""
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    lp = _loops("gru", call, loops)
    p = prepare(call)
    N, D = int(cell.heads), int(cell.head_dim)
    bhn = None if cell.bias_hn is None else _float32(cell.bias_hn.view(N, 1, D))
    px, W, h0 = _float32(p.px), _float32(p.W), _float32(p.states[0])
    if call.needs_grad:
        ys, h_last = GRUFn.apply(lp, px, W, bhn, p.mask, h0, p.inits[0])  # type: ignore[no-untyped-call]
        return _in_dtype(call, *finish_split(call, ys, h_last, []))
    with torch.no_grad():
        hs, _ = lp.forward(px, W, bhn, p.mask, h0, p.inits[0], False)
        return _in_dtype(call, *finish(call, hs, []))


def run_elman(call: KernelCall, loops: ElmanLoops | None = None) -> Result:
    """``call.x (B, T, I) -> y (B, T, H)``, final ``(h,)`` ``(B, H)``; see :func:`run_lstm`."""
    cell: Any = call.cell
    if call.x.shape[1] == 0:
        return empty_result(call)
    lp = _loops("elman", call, loops)
    p = prepare(call)
    relu = cell.nonlinearity == "relu"
    px, W, h0 = _float32(p.px), _float32(p.W), _float32(p.states[0])
    if call.needs_grad:
        ys, h_last = ElmanFn.apply(lp, px, W, p.mask, h0, relu, p.inits[0])  # type: ignore[no-untyped-call]
        return _in_dtype(call, *finish_split(call, ys, h_last, []))
    with torch.no_grad():
        hs, _ = lp.forward(px, W, p.mask, h0, relu, p.inits[0])
        return _in_dtype(call, *finish(call, hs, []))


def run_slstm(call: KernelCall, loops: SLSTMLoops | None = None) -> Result:
    """``call.x (B, T, I) -> y (B, T, H)``, final ``(h, c, n, m)`` each ``(B, H)``; see
    :func:`run_lstm`."""
    if call.x.shape[1] == 0:
        return empty_result(call)
    lp = _loops("slstm", call, loops)
    p = prepare(call)
    px, W = _float32(p.px), _float32(p.W)
    states = [_float32(s) for s in p.states]
    if call.needs_grad:
        ys, h_last, c, n, m = SLSTMFn.apply(lp, px, W, p.mask, p.inits, *states)  # type: ignore[no-untyped-call]
        return _in_dtype(call, *finish_split(call, ys, h_last, [c, n, m]))
    with torch.no_grad():
        hs, cn, ms, _ = lp.forward(px, W, p.mask, states, p.inits, False)
        last = px.shape[1] % 2  # without saving, the state leaving step t sits in slot (t+1) % 2
        c, n, m = cn[:, last, :, 0], cn[:, last, :, 1], ms[:, last]
        return _in_dtype(call, *finish(call, hs, [c, n, m]))


#: Each kind's run: ``(call, loops or None) -> (y, final state)``.
RUNS: dict[str, Callable[..., Result]] = {
    "elman": run_elman,
    "lstm": run_lstm,
    "gru": run_gru,
    "slstm": run_slstm,
}
