"""The ``chunked`` backend of the matrix-state form: the gated delta rule (or gated linear
attention) over chunks of ``C`` tokens in the WY/UT form (Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length"; the decay folded in as in Yang
et al. 2025, "Gated Delta Networks"), in plain torch (CPU and GPU).

Per head, with the memory ``S`` (value x key) entering a chunk ``S_0``, rows ``K, Q: (C, d_k)``,
``V: (C, d_v)``, ``beta: (C,)`` of the chunk, the decay from the chunk's start
``gamma_t = alpha_0 ... alpha_t`` and ``D[t, s] = alpha_{s+1} ... alpha_t`` (``s <= t``; each
product formed as the exponential of a partial sum of ``log alpha``, never as a ratio):

- the recurrence unrolls to ``S_t = gamma_t S_0 + sum_{s<=t} D[t, s] u~_s k_s^T`` with
  pseudo-values ``U~ = U - W S_0^T``, ``U = M diag(beta) V``, ``W = M diag(beta gamma) K`` and
  ``M = (I + strictly_lower(D * diag(beta) K K^T))^{-1}`` (one unit-lower-triangular solve per
  chunk, all chunks at once);
- so ``O = diag(gamma) Q S_0^T + (causal(D * Q K^T)) U~`` and the state leaving the chunk is
  ``gamma_{C-1} S_0 + U~^T diag(D[C-1, :]) K``;
- ``rule="linear"`` is the special case ``U~ = diag(beta) V`` (no correction), and without a
  decay (``log_alpha=None``) ``gamma = 1``, ``D = 1`` (DeltaNet, linear attention).

Only the carry of ``S`` and ``U~`` across chunks is sequential (``ceil(T / C)`` steps of two
matrix products); the read-outs of all chunks are batched after it. ``resets`` are supported:
a reset at ``t`` cuts the chunk into segments, the solve, the intra-chunk attention and ``D``
are masked to the same segment, and ``S_0`` only reaches the tokens before the chunk's first
reset. Gradients come from torch autograd through these operations (no hand-written
backward); what it keeps is ``O(T C)`` per head for the intra-chunk blocks and
``O(T / C d_k d_v)`` for the chunk-entry memories. Half-precision inputs are computed in
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
    log_alpha: Tensor | None = None,
    rule: str = "delta",
    resets: Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """The matrix-state memory over a whole sequence, chunk by chunk.

    ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` (``rule="delta"``) or
    ``alpha_t S_{t-1} + beta_t v_t k_t^T`` (``"linear"``), ``o_t = S_t q_t``, with
    ``alpha_t = exp(log_alpha_t)`` and ``S`` reset to zero entering every step where ``resets``
    is true. ``log_alpha=None`` is ``alpha = 1`` (DeltaNet, linear attention) and skips the
    decay's work.

    Args:
        q: ``(B, n, T, d_k)`` queries.
        k: ``(B, n, T, d_k)`` keys.
        v: ``(B, n, T, d_v)`` values.
        beta: ``(B, n, T)`` write strengths.
        S0: ``(B, n, d_v, d_k)`` memory entering step 0.
        log_alpha: optional ``(B, n, T)`` log decays, ``<= 0`` (``-inf``: alpha = 0).
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
    if log_alpha is not None:
        # -inf is alpha = 0, a valid decay; NaN and +inf spoil the memory like a bad beta
        alpha_bad = torch.isnan(log_alpha) | torch.isposinf(log_alpha)
        log_alpha = _finite(log_alpha, alpha_bad)
        beta_bad = beta_bad | alpha_bad
    poison_o, poison_S = _poison(q_bad, k_bad, v_bad, beta_bad, s0_bad, rule, resets)
    q, k, v = _finite(q, q_bad), _finite(k, k_bad), _finite(v, v_bad)
    beta, S0 = _finite(beta, beta_bad), _finite(S0, s0_bad)
    o, S = _chunked(q, k, v, beta, S0, log_alpha, rule, resets, chunk)
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
    non-finite entries of ``q, k, v, beta, S0`` (``beta_bad`` also marks non-finite decays).

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
    log_alpha: Tensor | None,
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
        if log_alpha is not None:
            log_alpha = F.pad(log_alpha, (0, pad))  # alpha = 1: padded tokens decay nothing
    qc = q.reshape(B, n, N, C, dk)
    kc = k.reshape(B, n, N, C, dk)
    vb = (v * beta.unsqueeze(-1)).reshape(B, n, N, C, dv)
    kb = (k * beta.unsqueeze(-1)).reshape(B, n, N, C, dk)
    ones = torch.ones(C, C, dtype=torch.bool, device=k.device)
    causal = torch.tril(ones)  # j <= i
    strict = torch.tril(ones, -1)  # j < i
    first: Tensor | None = None  # (B, 1, N, C, 1): token still sees the incoming S
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
        keep = first_b[..., -1].to(q.dtype)[:, None, :, None, None]
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    # decay[i, j] = alpha_{j+1} ... alpha_i (j <= i, same segment), else 0; tail[j] = decay[C-1, j]
    # is how much of token j's write reaches the chunk's end (0 across a reset). The decays,
    # and their products with the chunk's blocks, are formed in float64: the gradient of one
    # log alpha sums O(C^2) such products of both signs, and in float32 that sum alone costs
    # more accuracy than the step recurrence loses (these are elementwise, not the matmuls)
    decay = tail = gamma = None
    if log_alpha is not None:
        decay, gamma = _decays(log_alpha.reshape(B, n, N, C).to(torch.float64), causal)
        tail = decay[..., -1, :].unsqueeze(-1)  # (B, n, N, C, 1)
    elif resets is not None:
        tail = causal[..., -1, :].to(q.dtype).unsqueeze(-1)  # (B, 1, N, C, 1)
    attn = _scaled(torch.where(causal, qc @ kc.transpose(-1, -2), zero), decay)  # (B,n,N,C,C)
    # what the incoming S contributes: read by gamma_t q_t, corrected through gamma_t w_t
    q_in = _scaled(qc, None if gamma is None else gamma.unsqueeze(-1))
    if first is not None:
        q_in = q_in * first
    if rule == "delta":
        A = _scaled(torch.where(strict, kb @ kc.transpose(-1, -2), zero), decay)
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        kw = _scaled(kb, None if gamma is None else gamma.unsqueeze(-1))
        sol = torch.linalg.solve_triangular(
            A + eye, torch.cat((kw, vb), -1), upper=False, unitriangular=True
        )
        W, U = sol.split((dk, dv), -1)
        if first is not None:
            W = W * first
    else:
        W, U = None, vb
    k_out = _scaled(kc, tail)  # keys as they reach the chunk's end
    s_decay: Tensor | None = None  # (B, n, N, 1, 1): factor of the incoming S at the chunk's end
    if gamma is not None:
        s_decay = gamma[..., -1, None, None].to(q.dtype)
    if keep is not None:
        s_decay = keep if s_decay is None else s_decay * keep
    # the only sequential part: the memory entering each chunk, and the pseudo-values U~
    # (unbind, not indexing: the backward of an index op allocates a zero tensor of the whole
    # input per chunk, which makes the backward quadratic in T; unbind's backward stacks)
    S = S0
    S_in: list[Tensor] = []
    U_t: list[Tensor] = []
    per_chunk = zip(
        U.unbind(2),
        W.unbind(2) if W is not None else [None] * N,
        k_out.unbind(2),
        s_decay.unbind(2) if s_decay is not None else [None] * N,
        strict=True,
    )
    for u_i, w_i, k_i, sd_i in per_chunk:
        S_in.append(S)
        if w_i is not None:
            u_i = u_i - w_i @ S.transpose(-1, -2)
        U_t.append(u_i)
        write = u_i.transpose(-1, -2) @ k_i
        S = S + write if sd_i is None else sd_i * S + write
    S_ins = torch.stack(S_in, 2)  # (B, n, N, d_v, d_k)
    o = q_in @ S_ins.transpose(-1, -2) + attn @ torch.stack(U_t, 2)
    return o.reshape(B, n, N * C, dv)[:, :, :T], S


def _scaled(x: Tensor, factor: Tensor | None) -> Tensor:
    """``x * factor`` computed in ``factor``'s dtype (float64 for decays) and returned in
    ``x``'s; ``x`` itself when ``factor`` is ``None``."""
    if factor is None:
        return x
    return (x.to(factor.dtype) * factor).to(x.dtype)


def _decays(log_alpha: Tensor, causal: Tensor) -> tuple[Tensor, Tensor]:
    """Decay products of one chunk from ``log_alpha: (B, n, N, C)``: ``(decay, gamma)``.

    ``decay[..., i, j] = exp(sum_{j < s <= i} log_alpha_s)`` where ``causal[i, j]``, else 0
    (``(B, n, N, C, C)``), and ``gamma[..., i] = exp(sum_{s <= i} log_alpha_s)`` (``(B, n, N,
    C)``). Each partial sum is accumulated on its own (a cumulative sum down the columns of a
    masked copy) rather than as a difference of two prefix sums, so a tiny ``alpha`` (a large
    negative log) never cancels against another: every exponent is a sum of non-positive
    terms, and an ``alpha`` of exactly 0 (``-inf``) gives exact zeros, not ``inf - inf``.
    """
    C = log_alpha.shape[-1]
    lower = torch.tril(torch.ones(C, C, dtype=torch.bool, device=log_alpha.device), -1)
    rows = log_alpha.unsqueeze(-1).expand(*log_alpha.shape, C)  # rows[i, j] = log_alpha_i
    zero = torch.zeros((), dtype=log_alpha.dtype, device=log_alpha.device)
    sums = torch.cumsum(torch.where(lower, rows, zero), -2)
    ninf = torch.full((), float("-inf"), dtype=log_alpha.dtype, device=log_alpha.device)
    decay = torch.exp(torch.where(causal, sums, ninf))
    gamma = torch.exp(torch.cumsum(log_alpha, -1))
    return decay, gamma


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
    q, k, v, beta, S0 = inputs.q, inputs.k, inputs.v, inputs.beta, inputs.S0
    log_alpha = inputs.log_alpha
    if x.shape[1] == 0:
        return cell.memory_outputs(v, S0, inputs)
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    o, S = delta_rule_chunked(
        q.to(work),
        k.to(work),
        v.to(work),
        beta.to(work),
        S0.to(work),
        log_alpha=None if log_alpha is None else log_alpha.to(work),
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
            description="matrix-state memory (gated delta rule, linear attention) in WY chunks",
            priority=Priority.PORTABLE,
            supports=_supports,
        )
    ]
