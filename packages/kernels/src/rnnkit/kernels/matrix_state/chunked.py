"""The ``chunked`` backend of the matrix-state form: the delta rule (or linear attention) over
chunks of ``C`` tokens in the WY/UT form (Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length"), in plain torch (CPU and GPU).

Per head, with the memory ``S`` (value x key) entering a chunk ``S_0`` and rows
``K, Q: (C, d_k)``, ``V: (C, d_v)``, ``beta: (C,)`` of the chunk:

- the product ``prod_{s<=t} (I - beta_s k_s k_s^T) = I - sum_{s<=t} w_s k_s^T`` and the
  written part ``sum_{s<=t} u_s k_s^T`` have rows ``W = T diag(beta) K`` and
  ``U = T diag(beta) V`` with ``T = (I + strictly_lower(diag(beta) K K^T))^{-1}``
  (one unit-lower-triangular solve per chunk, all chunks at once);
- the pseudo-values ``U~ = U - W S_0^T`` give ``S_t = S_0 + sum_{s<=t} u~_s k_s^T``, so
  ``O = Q S_0^T + (causal(Q K^T)) U~`` and the state leaving the chunk is ``S_0 + U~^T K``;
- ``rule="linear"`` is the special case ``U~ = diag(beta) V`` (no correction).

Only the carry of ``S`` across chunks is sequential (``ceil(T / C)`` steps of matrix
products). ``resets`` are supported: a reset at ``t`` cuts the chunk into segments, the
solve and the intra-chunk attention are masked to the same segment, and ``S_0`` only
reaches the tokens before the chunk's first reset. Gradients come from torch autograd
through these operations (no hand-written backward). Half-precision inputs are computed in
float32 and cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.forms import Form
from rnnkit.core.matrix_state import MEMORY_RULES, MatrixStateCell

#: tokens per chunk (the chunk is ``min(CHUNK, T)`` for shorter sequences).
CHUNK = 64


def delta_rule_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    *,
    rule: str = "delta",
    resets: Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """The delta-rule (or linear-attention) core over a whole sequence, chunk by chunk.

    ``S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` (``rule="delta"``) or
    ``S_{t-1} + beta_t v_t k_t^T`` (``"linear"``), ``o_t = S_t q_t``, with ``S`` reset to zero
    entering every step where ``resets`` is true.

    Args:
        q: ``(B, n, T, d_k)`` queries.
        k: ``(B, n, T, d_k)`` keys.
        v: ``(B, n, T, d_v)`` values.
        beta: ``(B, n, T)`` write strengths.
        S0: ``(B, n, d_v, d_k)`` memory entering step 0.
        rule: ``"delta"`` or ``"linear"``.
        resets: optional bool ``(B, T)``.
        chunk: tokens per chunk.

    Returns:
        ``(o, S)``: outputs ``(B, n, T, d_v)`` and the memory after the last step.
    """
    if rule not in MEMORY_RULES:
        raise ValueError(f"rule must be 'delta' or 'linear', got {rule!r}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if q.shape[2] == 0:
        return v.new_empty(v.shape), S0
    # the non-finite masks are computed once, for the poison masks and the replacement
    q_bad, k_bad, v_bad, beta_bad, s0_bad = (~torch.isfinite(t) for t in (q, k, v, beta, S0))
    poison_o, poison_S = _poison(q_bad, k_bad, v_bad, beta_bad, s0_bad, rule, resets)
    q, k, v = _finite(q, q_bad), _finite(k, k_bad), _finite(v, v_bad)
    beta, S0 = _finite(beta, beta_bad), _finite(S0, s0_bad)
    o, S = _chunked(q, k, v, beta, S0, rule, resets, chunk)
    nan = torch.full((), float("nan"), dtype=o.dtype, device=o.device)
    return torch.where(poison_o, nan, o), torch.where(poison_S, nan, S)


def _finite(t: Tensor, bad: Tensor) -> Tensor:
    """``t`` with its non-finite entries (``bad``) replaced by 0 (their effect is restored by
    the poison masks of :func:`_poison`)."""
    return torch.where(bad, torch.zeros((), dtype=t.dtype, device=t.device), t)


def _since_reset(bad: Tensor, resets: Tensor | None) -> Tensor:
    """``bad: (B, n, T, X)`` bool -> whether any step since the last reset (inclusive) was bad."""
    x = bad.to(torch.int64)
    counts = torch.cumsum(x, 2)
    if resets is not None:
        r = resets[:, None, :, None]
        # the count entering each segment, carried forward (counts never decrease in t)
        base = torch.cummax(torch.where(r, counts - x, torch.zeros_like(counts)), 2).values
        counts = counts - base
    return counts > 0


def _poison(
    q_bad: Tensor,
    k_bad: Tensor,
    v_bad: Tensor,
    beta_bad: Tensor,
    s0_bad: Tensor,
    rule: str,
    resets: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Where the step recurrence gives non-finite results, as bool masks of the outputs
    ``(B, n, T, d_v)`` and of the final memory ``(B, n, d_v, d_k)``, from the masks of the
    non-finite entries of ``q, k, v, beta, S0``.

    The chunked products multiply masked (zero) coefficients with every token of a chunk, so a
    NaN would reach the chunk's earlier outputs (``0 * nan``); the chunks are therefore computed
    on finite inputs and the recurrence's own propagation is put back. Until the next reset, a
    non-finite value spoils its row of the memory; a non-finite key or write strength every
    row (the delta rule's ``S k`` reads whole rows; for linear attention a key spoils its
    column of ``S``, and so every read-out); a non-finite entry of ``S0`` its row (delta rule)
    or itself (linear); a non-finite query only its own output.
    """
    B, T = v_bad.shape[0], v_bad.shape[2]
    beta_bad = beta_bad.unsqueeze(-1)  # (B, n, T, 1)
    every_row = k_bad.any(-1, keepdim=True) | beta_bad
    rows = _since_reset(v_bad | every_row, resets)  # (B, n, T, d_v)
    first = torch.ones(B, 1, T, 1, dtype=torch.bool, device=v_bad.device)
    if resets is not None:
        first = (torch.cumsum(resets.to(torch.int64), 1) == 0)[:, None, :, None]
    state = rows | (first & s0_bad.any(-1).unsqueeze(2))
    o = state | q_bad.any(-1, keepdim=True)
    d_k = k_bad.shape[-1]
    if rule == "delta":
        final = state[:, :, -1].unsqueeze(-1).expand(*s0_bad.shape)
    else:
        v_rows = _since_reset(v_bad, resets)[:, :, -1]  # (B, n, d_v)
        k_cols = _since_reset(k_bad, resets)[:, :, -1]  # (B, n, d_k)
        all_bad = _since_reset(beta_bad, resets)[:, :, -1]  # (B, n, 1)
        final = (
            v_rows.unsqueeze(-1)
            | k_cols.unsqueeze(-2)
            | all_bad.unsqueeze(-1).expand(-1, -1, 1, d_k)
            | (first[:, :, -1].unsqueeze(-1) & s0_bad)
        )
    return o, final


def _chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    rule: str,
    resets: Tensor | None,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    """:func:`delta_rule_chunked` on finite inputs (same arguments and results)."""
    B, n, T, dk = k.shape
    dv = v.shape[-1]
    C = min(chunk, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
        beta = F.pad(beta, (0, pad))  # beta = 0, k = 0: padded tokens write nothing
    qc = q.reshape(B, n, N, C, dk)
    kc = k.reshape(B, n, N, C, dk)
    vb = (v * beta.unsqueeze(-1)).reshape(B, n, N, C, dv)
    kb = (k * beta.unsqueeze(-1)).reshape(B, n, N, C, dk)
    ones = torch.ones(C, C, dtype=torch.bool, device=k.device)
    causal = torch.tril(ones)  # j <= i
    strict = torch.tril(ones, -1)  # j < i
    first: Tensor | None = None  # (B, 1, N, C, 1): token still sees the incoming S
    last: Tensor | None = None  # (B, 1, N, C, 1): token's write reaches the chunk's end
    keep: Tensor | None = None  # (B, 1, N, 1, 1): the incoming S survives the chunk
    if resets is not None:
        r = F.pad(resets.to(torch.int64), (0, pad)).reshape(B, N, C)
        g = torch.cumsum(r.reshape(B, N * C), 1).reshape(B, N, C)  # segment id per token
        same = (g.unsqueeze(-1) == g.unsqueeze(-2)).unsqueeze(1)  # (B, 1, N, C, C)
        causal = causal & same
        strict = strict & same
        g_in = g[..., :1] - r[..., :1]  # segment id entering the chunk
        first_b = g == g_in
        first = first_b.to(q.dtype)[:, None, :, :, None]
        last = (g == g[..., -1:]).to(q.dtype)[:, None, :, :, None]
        keep = first_b[..., -1].to(q.dtype)[:, None, :, None, None]
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    attn = torch.where(causal, qc @ kc.transpose(-1, -2), zero)  # (B, n, N, C, C)
    W: Tensor | None = None
    if rule == "delta":
        A = torch.where(strict, kb @ kc.transpose(-1, -2), zero)
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        sol = torch.linalg.solve_triangular(
            A + eye, torch.cat((kb, vb), -1), upper=False, unitriangular=True
        )
        W, U = sol.split((dk, dv), -1)
    else:
        U = vb
    S = S0
    outs: list[Tensor] = []
    per_chunk = zip(
        qc.unbind(2),
        kc.unbind(2),
        attn.unbind(2),
        U.unbind(2),
        W.unbind(2) if W is not None else [None] * N,
        first.unbind(2) if first is not None else [None] * N,
        last.unbind(2) if last is not None else [None] * N,
        keep.unbind(2) if keep is not None else [None] * N,
        strict=True,
    )
    for q_i, k_i, a_i, u_i, w_i, f_i, l_i, keep_i in per_chunk:
        St = S.transpose(-1, -2)  # (B, n, d_k, d_v)
        read = q_i @ St
        if w_i is not None:
            u_i = u_i - (w_i @ St if f_i is None else f_i * (w_i @ St))
        if f_i is not None:
            read = f_i * read
        outs.append(read + a_i @ u_i)
        write = (u_i if l_i is None else l_i * u_i).transpose(-1, -2) @ k_i
        S = S + write if keep_i is None else keep_i * S + write
    o = torch.stack(outs, 2).reshape(B, n, N * C, dv)[:, :, :T]
    return o, S


def chunked_forward(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a :class:`~rnnkit.core.matrix_state.MatrixStateCell` call: the cell's time-parallel
    :meth:`memory_inputs`, :func:`delta_rule_chunked`, then the cell's :meth:`memory_outputs`;
    same outputs and final state as the ``reference`` loop (``y: (B, T, output_size)``).
    Half-precision inputs run the memory in float32."""
    cell = call.cell
    if not isinstance(cell, MatrixStateCell):
        raise TypeError(f"the chunked backend runs matrix-state cells, got {type(cell).__name__}")
    x = call.x
    inputs = cell.memory_inputs(x, call.state, call.resets)
    q, k, v, beta, S0, _ = inputs
    if x.shape[1] == 0:
        return cell.memory_outputs(v, S0, inputs)
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    o, S = delta_rule_chunked(
        q.to(work),
        k.to(work),
        v.to(work),
        beta.to(work),
        S0.to(work),
        rule=cell.rule,
        resets=call.resets,
        chunk=CHUNK,
    )
    return cell.memory_outputs(o.to(x.dtype), S.to(S0.dtype), inputs)


def _supports(call: KernelCall) -> str | None:
    if not isinstance(call.cell, MatrixStateCell):
        return ProtocolGap(
            f"{type(call.cell).__name__} declares the matrix-state form but is not a "
            "MatrixStateCell (the kernel needs its memory_inputs() and memory_outputs())"
        )
    return None


def kernels() -> list[Kernel]:
    """The ``chunked`` kernel for every cell of the matrix-state form."""
    return [
        Kernel(
            backend="chunked",
            target=Form.MATRIX_STATE.value,
            run=chunked_forward,
            description="matrix-state memory (delta rule / linear attention) in chunks, WY form",
            priority=Priority.PORTABLE,
            supports=_supports,
        )
    ]
