"""Layout and reset helpers shared by the fused gated-cell loops.

Inside the fused loops every tensor is **head-major and time-major**:

- projected input ``px: (N, T, B, G * D)``, gate ``g`` of unit ``e`` of head ``n`` at
  ``px[n, t, b, g * D + e]``;
- recurrent weights ``W: (N, D, G * D)`` with ``W[n, d, g * D + e] = recurrent[g, n, e, d]``,
  so one step is ``gates = px_t + bmm(h_prev, W)`` with ``h_prev: (N, B, D)``;
- state fields ``(N, B, D)``; per-step buffers ``(N, T, B, ...)``.

Head-major makes each head's ``(T * B, D)`` slab of a buffer contiguous, so the gradient of
``W`` is one batched GEMM over all steps after the reverse loop. For ``heads == 1`` the
conversions of ``px`` and of the states are views; ``W`` is always a small copy (``G H D``).

``resets`` restart each state field from the fill ``StateField.init`` (a float), or, for a cell
that overrides ``init_state`` (a learnable initial state), from one example of its
``init_state`` as a ``(N, 1, D)`` tensor (:attr:`Prepared.restarts`). The pure-torch loops
take either (:data:`Restart`); the autograd functions then take the tensors as inputs and their
reverse loops add the gradient that a reset cuts from the state it replaces into the restart
value's gradient (:func:`cut`'s ``spill``). The native loops (``fused_cpp``, ``cuda``) take
the fills only (:func:`fills`); those backends refuse such calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import overrides_init_state
from rnnkit.core.cells import GatedCell
from rnnkit.core.dispatch import KernelCall

#: What a state field restarts from at a reset: its fill ``StateField.init``, or one example
#: of the cell's own ``init_state`` laid out ``(N, 1, D)`` (broadcast over the batch).
Restart = float | Tensor


@dataclass
class Prepared:
    """One call converted to the fused loops' layout.

    Attributes:
        px: ``(N, T, B, G * D)`` projected input (differentiable, from ``cell.project``).
        W: ``(N, D, G * D)`` recurrent weights (differentiable view or copy of
            ``cell.recurrent``).
        states: initial state fields, each ``(N, B, D)``.
        mask: bool ``(T, 1, B, 1)``, true where the state entering step ``t`` is reset,
            or ``None``.
        inits: the value each state field restarts from (``StateField.init``).
        restarts: with resets, for a cell that overrides ``init_state``: each state field of
            ``init_state(1)`` laid out ``(N, 1, D)`` (differentiable), which the fields restart
            from instead of ``inits``; else empty.
    """

    px: Tensor
    W: Tensor
    states: list[Tensor]
    mask: Tensor | None
    inits: tuple[float, ...]
    restarts: tuple[Tensor, ...] = ()


#: Allocates an uninitialised tensor: ``(size, dtype) -> Tensor`` (on the input's device).
EmptyFn = Callable[[Sequence[int], torch.dtype], Tensor]


def prepare(call: KernelCall, empty: EmptyFn | None = None) -> Prepared:
    """Project ``x`` once (one GEMM for all steps) and convert everything to head-major.

    ``x`` may be any strided ``(B, T, I)`` tensor: it is read through a transposed view and the
    projection writes a fresh time-major ``(T, B, G * H)`` tensor, allocated by ``empty`` when
    given (the ``fused_cpp`` backend passes its buffer cache).
    """
    cell: Any = call.cell
    x = call.x
    B, T = x.shape[0], x.shape[1]
    N, D, G = int(cell.heads), int(cell.head_dim), int(cell.num_gates)
    # Time-major projection: the per-step slices px[:, t] are then contiguous (B, G*D) blocks.
    if type(cell).project is GatedCell.project and x.device.type == "cpu":
        # Each head projected into its own slab: no permuting copy of px for several heads.
        # (CPU only: on a GPU the copy is cheap and one GEMM beats one launch per head.)
        px = head_major_projection(x.transpose(0, 1), cell.weight_ih, cell.bias, N, G, empty)
        px = px.view(N, T, B, G * D)
    elif N == 1:
        px = cell.project(x.transpose(0, 1)).contiguous().unsqueeze(0)
    else:
        px = cell.project(x.transpose(0, 1)).contiguous()
        px = px.view(T, B, G, N, D).permute(3, 0, 1, 2, 4).reshape(N, T, B, G * D)
    W = cell.recurrent.permute(1, 3, 0, 2).reshape(N, D, G * D)
    state = call.state
    if state is None:
        state = cell.init_state(B, device=x.device, dtype=x.dtype)
    states = [s.reshape(B, N, D).transpose(0, 1) for s in state]
    mask = None
    restarts: tuple[Tensor, ...] = ()
    if call.resets is not None:
        mask = call.resets.transpose(0, 1).reshape(T, 1, B, 1)
        if overrides_init_state(cell):
            start = cell.init_state(1, device=x.device, dtype=x.dtype)
            restarts = tuple(s.reshape(1, N, D).transpose(0, 1) for s in start)
    inits = tuple(float(f.init) for f in cell.state_spec())
    return Prepared(px, W, states, mask, inits, restarts)


def restart_value(value: Restart, like: Tensor) -> Tensor:
    """A restart value for :func:`reset_into`: a fill as a 0-d tensor on ``like``'s dtype and
    device, a restart tensor as it is."""
    return value if isinstance(value, Tensor) else scalar_like(value, like)


def fills(values: Sequence[Restart], backend: str) -> list[float]:
    """The restart values as fills, for native loops that take only those.

    Raises:
        TypeError: a value is a tensor (a cell overriding ``init_state``: ``backend``'s
            ``supports`` refuses its calls with resets, so this is not reached through
            dispatch).
    """
    out = []
    for v in values:
        if isinstance(v, Tensor):
            raise TypeError(
                f"the {backend} loops restart resets from the fill StateField.init only, not "
                "from a cell's own init_state; run backend 'fused'"
            )
        out.append(float(v))
    return out


def no_spill(spill: list[Tensor] | None, backend: str) -> None:
    """Refuse restart gradients in native reverse loops (see :func:`fills`).

    Raises:
        TypeError: ``spill`` is given.
    """
    if spill is not None:
        raise TypeError(
            f"the {backend} loops restart resets from the fill StateField.init only, not from "
            "a cell's own init_state; run backend 'fused'"
        )


def new_spill(restarts: Sequence[Tensor]) -> list[Tensor] | None:
    """Zeroed gradients of the restart tensors (``None`` without any), for the reverse loops
    to accumulate into (see :func:`cut`)."""
    return [torch.zeros_like(r) for r in restarts] if restarts else None


def _heads_first(w: Tensor, N: int, G: int) -> Tensor:
    """``(G * N * D, ...) -> (N, G * D, ...)``: gate-major rows regrouped by head."""
    rest = w.shape[1:]
    D = w.shape[0] // (G * N)
    return w.view(G, N, D, *rest).transpose(0, 1).reshape(N, G * D, *rest)


def _gates_first(w: Tensor, G: int) -> Tensor:
    """Inverse of :func:`_heads_first`: ``(N, G * D, ...) -> (G * N * D, ...)``."""
    N, GD, *rest = w.shape
    D = GD // G
    return w.view(N, G, D, *rest).transpose(0, 1).reshape(G * N * D, *rest)


def _rows(x: Tensor, bias: Tensor | None) -> Tensor:
    """``(..., I) -> (M, I)`` rows of ``x`` in memory order, or with a bias ``(M, I + 1)``: the
    rows followed by a 1, so that one GEMM against ``[W | b]`` adds the bias (no broadcast copy
    of ``b`` into the output before the GEMM, as ``addmm`` makes) and the transposed GEMM of the
    backward yields the bias gradient as its last column (no separate pass summing ``dpx``)."""
    n_in = x.shape[-1]
    m = x.numel() // max(n_in, 1)
    if bias is None:
        return x.reshape(m, n_in)
    rows = x.new_empty(*x.shape[:-1], n_in + 1)
    rows[..., :n_in].copy_(x)
    rows[..., n_in].fill_(1)
    return rows.view(m, n_in + 1)


def _project_heads(
    rows: Tensor, weight: Tensor, bias: Tensor | None, N: int, G: int, empty: EmptyFn | None
) -> tuple[Tensor, Tensor]:
    """``out[n] = rows @ [wh[n] | bh[n]]^T`` with ``wh, bh`` the head-major weights and bias
    (``rows`` from :func:`_rows`): ``(M, I (+ 1)) -> (N, M, G * D)``; returns ``out`` and
    ``wh (N, G * D, I)``."""
    wh = _heads_first(weight, N, G)
    wa = wh if bias is None else torch.cat([wh, _heads_first(bias, N, G).unsqueeze(2)], 2)
    if torch.compiler.is_compiling():
        # out= ops do not survive export (autograd refuses them when the exported program runs
        # with gradients), and the compilers plan their own buffers: the same per-head products
        # stacked (one batched product would sum in another order than eager mode's per-head
        # GEMMs on some CPUs, and compiled results would then differ from eager ones)
        return torch.stack([rows @ wa[n].t() for n in range(wa.shape[0])]), wh
    size = (wh.shape[0], rows.shape[0], wh.shape[1])
    out = rows.new_empty(size) if empty is None else empty(size, rows.dtype)
    for n in range(wh.shape[0]):
        torch.mm(rows, wa[n].t(), out=out[n])
    return out, wh


class HeadMajorProjection(torch.autograd.Function):
    """``px[n] = x W_n^T + b_n`` for every head ``n`` into one ``(N, M, G * D)`` tensor.

    ``W_n`` are head ``n``'s rows of the gate-major ``weight_ih``. One GEMM per head writes
    its slab in place (the bias enters through a column of ones after the inputs, see
    :func:`_rows`), and the backward accumulates ``dx`` over heads with ``addmm``: neither
    direction permutes the ``(M, G * H)`` projection, which for long sequences is the
    largest tensor of the call.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        N: int,
        G: int,
        empty: EmptyFn | None,
    ) -> Tensor:
        rows = _rows(x, bias)
        out, wh = _project_heads(rows, weight, bias, N, G, empty)
        ctx.save_for_backward(rows, wh)
        ctx.G = G
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, dpx: Tensor) -> tuple[Tensor | None, ...]:
        rows, wh = ctx.saved_tensors
        N, n_in = wh.shape[0], wh.shape[2]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(dpx[0], wh[0])
            for n in range(1, N):
                dx.addmm_(dpx[n], wh[n])
            dx = dx.view(ctx.x_shape)
        bias_grad = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or bias_grad:
            # (N, G * D, I (+ 1)): the last column is the bias gradient when there is a bias.
            dwa = wh.new_empty(N, wh.shape[1], rows.shape[1])
            for n in range(N):
                torch.mm(dpx[n].t(), rows, out=dwa[n])
            if ctx.needs_input_grad[1]:
                dw = _gates_first(dwa[..., :n_in], ctx.G)
            if bias_grad:
                db = _gates_first(dwa[..., n_in], ctx.G)
        return dx, dw, db, None, None, None


def head_major_projection(
    x: Tensor, weight: Tensor, bias: Tensor | None, N: int, G: int, empty: EmptyFn | None = None
) -> Tensor:
    """``(..., I) -> (N, M, G * D)``: the gated input projection ``x W^T + b`` split by head.

    Args:
        x: ``(..., I)`` inputs, any strides; the ``M`` rows of the output follow ``x``'s
            leading dimensions in order (``prepare`` passes the time-major view ``(T, B, I)``).
        weight: ``(G * N * D, I)`` gate-major input weights (``GatedCell.weight_ih``).
        bias: ``(G * N * D,)`` or ``None``.
        N: heads; G: gates.
        empty: allocates the output (``x.new_empty`` when ``None``).
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        out: Tensor = HeadMajorProjection.apply(x, weight, bias, N, G, empty)  # type: ignore[no-untyped-call]
        return out
    with torch.no_grad():
        return _project_heads(_rows(x, bias), weight, bias, N, G, empty)[0]


def to_batch_first(hs: Tensor) -> Tensor:
    """``(N, T, B, D) -> (B, T, N * D)``: a view for ``N == 1``, a copy otherwise."""
    N, T, B, D = hs.shape
    if N == 1:
        # squeeze, not hs[0]: its backward is a view, where select's fills a zero tensor.
        return hs.squeeze(0).transpose(0, 1)
    return hs.permute(2, 1, 0, 3).reshape(B, T, N * D)


def state_to_batch(s: Tensor) -> Tensor:
    """``(N, B, D) -> (B, N * D)``, always a new tensor (never a view of a loop buffer)."""
    N, B, D = s.shape
    out = s.transpose(0, 1).reshape(B, N * D)
    # For N == 1 the reshape is a view; the final state must not alias y or a loop buffer.
    return out.clone() if N == 1 else out


def finish(call: KernelCall, hs: Tensor, finals: list[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Outputs in the ABI layout: ``y: (B, T, H)`` and the final state as ``state_type``.

    Args:
        call: the call being answered.
        hs: ``(N, T + 1, B, D)``, slot 0 the initial ``h``, slot ``t + 1`` the output of step t.
        finals: the final state fields other than ``h``, each ``(N, B, D)``.
    """
    return finish_split(call, hs[:, 1:], hs[:, -1], finals)


def split_hs(hs: Tensor) -> tuple[Tensor, Tensor]:
    """The autograd Functions' outputs for ``h``: ``hs[:, 1:]`` (a view, the per-step outputs)
    and ``hs[:, T]`` (a copy, the final state), each with its own gradient.

    Returning ``hs`` itself and slicing it outside would make autograd build the gradient of
    ``hs`` from two zero-filled full-size tensors (one per slice) and add them;
    :func:`join_hs_grads` writes it in one pass.
    """
    return hs[:, 1:], hs[:, -1].clone()


def join_hs_grads(hs: Tensor, d_ys: Tensor, d_last: Tensor) -> Tensor:
    """The gradient of ``hs (N, T + 1, B, D)`` from those of :func:`split_hs`'s outputs
    (autograd materialises the gradient of an unused output as zeros, so both are tensors)."""
    d_hs = torch.empty_like(hs)
    d_hs[:, 0].zero_()
    d_hs[:, 1:].copy_(d_ys)
    d_hs[:, -1].add_(d_last)
    return d_hs


def finish_split(
    call: KernelCall, ys: Tensor, h_last: Tensor, finals: list[Tensor]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`finish` for the outputs of :func:`split_hs`: ``ys (N, T, B, D)``, ``h_last
    (N, B, D)`` and the other final state fields."""
    y = to_batch_first(ys)
    fields = [state_to_batch(h) for h in (h_last, *finals)]
    return y, call.cell.state_type(*fields)


def scalar_like(value: float, like: Tensor) -> Tensor:
    """A 0-d tensor on ``like``'s dtype and device (``torch.where`` with ``out=`` wants one)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def reset_into(dst: Tensor, src: Tensor, mask_t: Tensor, value: Tensor) -> Tensor:
    """``dst = where(mask_t, value, src)``: the state entering a step after ``resets``."""
    return torch.where(mask_t, value, src, out=dst)


def cut(grad: Tensor, mask: Tensor | None, t: int, spill: Tensor | None = None) -> Tensor:
    """Zero, in place, the gradient ``grad: (N, B, ...)`` of the state leaving step ``t - 1``
    for the examples whose state entering step ``t`` was reset (``mask[t]``); returns ``grad``.

    That gradient is the one of the value the reset put in its place: with ``spill``
    (``(N, 1, ...)``, the gradient of a restart tensor) it is summed over those examples into
    ``spill`` first.

    A select, not a multiplication by a 0/1 factor: a reset replaces the state, so the
    gradient of the replaced one is exactly zero even where the gradient reaching the reset is
    NaN (``0 * NaN`` would carry a NaN of a later episode into an earlier one, which the
    reference loop's ``torch.where`` does not).
    """
    if mask is not None:
        m = mask[t]  # (1, B, 1)
        m = m.view(*m.shape, *([1] * (grad.dim() - m.dim())))
        if spill is not None:
            spill.add_(torch.where(m, grad, 0.0).sum(1, keepdim=True))
        grad.masked_fill_(m, 0)
    return grad


def empty_result(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The answer for ``T == 0``: an empty ``y: (B, 0, H)`` and the initial state unchanged."""
    cell: Any = call.cell
    x = call.x
    state = call.state
    if state is None:
        state = cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    return x.new_empty(x.shape[0], 0, cell.output_size), state


def gemm(out: Tensor, a: Tensor, b: Tensor, inp: Tensor | None = None) -> Tensor:
    """``out = inp + a @ b`` per head (``out = a @ b`` without ``inp``).

    Args:
        out: ``(N, M, P)``; a: ``(N, M, K)``; b: ``(N, K, P)``; inp: broadcastable to ``out``.

    With one head this is a plain 2-D ``addmm``/``mm``: measurably faster on CPU than the
    batched routine with a batch of one.
    """
    if out.shape[0] == 1:
        if inp is None:
            torch.mm(a[0], b[0], out=out[0])
        else:
            torch.addmm(inp[0], a[0], b[0], out=out[0])
        return out
    if inp is None:
        return torch.bmm(a, b, out=out)
    return torch.baddbmm(inp, a, b, out=out)


def gemm_acc(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``acc += a @ b`` per head, in place; shapes as :func:`gemm`."""
    if acc.shape[0] == 1:
        acc[0].addmm_(a[0], b[0])
        return acc
    return acc.baddbmm_(a, b)


#: Elements per factor tensor in one backward chunk (fp32: 256 KiB, about an L2 share).
CHUNK_ELEMENTS = 1 << 16


def chunks(T: int, per_step: int) -> list[tuple[int, int]]:
    """Time chunks ``[(t0, t1), ...]`` from the end backwards, for the reverse loops.

    The gradient-independent factors of the backward (derivatives of the activations) are
    computed per chunk with a few vectorised ops: the chunk's data is still in cache when the
    step loop reads it, where one pass over the whole sequence would be memory bound.

    Args:
        T: sequence length.
        per_step: elements of the largest per-step factor tensor.
    """
    size = max(1, min(T, CHUNK_ELEMENTS // max(1, per_step)))
    return [(max(0, t1 - size), t1) for t1 in range(T, 0, -size)]


def carry_state_grad(
    dh: Tensor,
    DQ: tuple[Tensor, ...],
    w_t: Tensor,
    DY: tuple[Tensor, ...],
    mask: Tensor | None,
    t: int,
    spill: Tensor | None = None,
) -> None:
    """``dh = cut(DQ[t + 1] @ w_t) + DY[t + 1]``, in place: the gradient of ``h_t``.

    ``DQ[t + 1]: (N, B, G*D)`` are step ``t + 1``'s gate gradients, ``w_t: (N, G*D, D)`` the
    transposed per-head weights, ``DY[t + 1]: (N, B, D)`` the gradient reaching ``h_t`` directly
    and ``mask`` the resets (a reset entering step ``t + 1`` cuts the recurrent part, see
    :func:`cut`, which adds what it cuts to ``spill``). At the last step
    (``t + 1 == len(DQ)``) there is no step ``t + 1``: ``dh = DY[t + 1]``.
    """
    if t + 1 == len(DQ):
        dh.copy_(DY[t + 1])
    elif mask is None:
        gemm(dh, DQ[t + 1], w_t, DY[t + 1])
    else:
        gemm(dh, DQ[t + 1], w_t)
        cut(dh, mask, t + 1, spill).add_(DY[t + 1])


def initial_state_grad(
    dq0: Tensor, w_t: Tensor, mask: Tensor | None, spill: Tensor | None = None
) -> Tensor:
    """``d h_0`` through the first step's recurrent product: ``(N, B, D)``.

    ``dq0: (N, B, G*D)`` are the first step's gate gradients, ``w_t: (N, G*D, D)`` the transposed
    per-head weights and ``mask`` the resets (a reset at step 0 cuts the gradient, into
    ``spill``). The caller adds the gradient that reaches ``h_0`` directly.
    """
    return cut(torch.bmm(dq0, w_t), mask, 0, spill)


def recurrent_weight_grad(h_prev: Tensor, dq: Tensor, heads: int, head_dim: int) -> Tensor:
    """``d R`` for all steps at once, one batched GEMM: ``(N, D, G*D)``.

    ``h_prev`` holds the states entering each step and ``dq`` the gate gradients, both laid out
    ``(N, T, B, ...)`` in memory.
    """
    rows = h_prev.numel() // (heads * head_dim)
    h = h_prev.reshape(heads, rows, head_dim).transpose(1, 2)
    # explicit widths: with an empty batch there are no rows to infer a width from
    return torch.bmm(h, dq.reshape(heads, rows, dq.shape[-1]))
