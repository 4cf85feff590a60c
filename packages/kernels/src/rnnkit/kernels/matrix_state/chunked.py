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
reset. Half-precision inputs are computed in float32 and cast back.

The backward is written out (:class:`_ChunkedMemory`): the forward keeps the inputs and the
memory entering each chunk (``O(T / C d_k d_v)`` per head), never the ``C x C`` blocks
(``O(T C)``). The backward walks blocks of chunks (:func:`_block_chunks`) from the last,
recomputes a block's intra-chunk quantities (``D``, ``gamma``, the solve, ``W``, ``U``,
``U~``) from the inputs and the saved memories, carries the memory's gradient back chunk by chunk
(``dU~ = P^T dO + K_out dS_C^T``, ``dS_0 = dO^T Q_in + gamma_{C-1} dS_C - dU~^T W``, with
``P = causal(D * Q K^T)``, ``Q_in = diag(gamma) Q``, ``K_out = diag(D[C-1, :]) K``) and then
forms the rest of the block's gradients in batched products, the solve's adjoint included.
The forward runs in blocks as well, so neither pass holds more than a block's ``C x C``
products at a time. Under ``torch.compile`` and ``torch.export`` the same operations run in
one block, differentiated by autograd (an exported program has no hand-written backward).
The written backward is not itself differentiable (no double backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.core.cell import fill_restart_refusal
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
    return on_finite_inputs(_chunked, q, k, v, beta, S0, log_alpha, rule, resets, chunk)


#: A matrix-state computation on finite inputs: ``(q, k, v, beta, S0, log_alpha, rule,
#: resets, chunk) -> (o, S)`` with the shapes of :func:`delta_rule_chunked`.
FiniteRun = Callable[
    [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, str, Tensor | None, int],
    tuple[Tensor, Tensor],
]


def on_finite_inputs(
    run: FiniteRun,
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
    """``run`` on finite copies of the inputs (``T > 0``), with the step recurrence's own
    spread of each non-finite value put back as NaN afterwards: a chunk's products would
    carry it to the chunk's earlier tokens as ``0 * nan``. Shared by the chunked backends."""
    if not torch.compiler.is_compiling() and _surely_finite(q, k, v, beta, S0, log_alpha):
        # all finite (the usual case): the masks below would be all false; skipping them saves
        # their full-length temporaries and integer cumulative sums (a traced graph keeps the
        # general path)
        return run(q, k, v, beta, S0, log_alpha, rule, resets, chunk)
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
    o, S = run(q, k, v, beta, S0, log_alpha, rule, resets, chunk)
    nan = torch.full((), float("nan"), dtype=o.dtype, device=o.device)
    return torch.where(poison_o, nan, o), torch.where(poison_S, nan, S)


def _surely_finite(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S0: Tensor, log_alpha: Tensor | None
) -> bool:
    """Whether every entry of ``q, k, v, beta, S0`` is finite and ``log_alpha`` holds no NaN
    or ``+inf``, decided from one sum per input: a sum is NaN or infinite wherever an entry is
    (NaN and ``+-inf`` survive addition), and a ``-inf`` log decay (a valid ``alpha = 0``) can
    only make its sum ``-inf`` or NaN (NaN if a ``+inf`` is there too). A sum can also overflow
    on finite entries; the answer is then ``False`` and the caller's exact masks decide. This
    reads each input once and allocates nothing of its size (``torch.isfinite`` allocates a
    mask and temporaries of the input's size, which at long ``T`` cost a third of the
    forward)."""
    with torch.no_grad():
        # each sum in its input's dtype (a float64 sum of a float32 tensor would copy it)
        sums = torch.stack([t.sum().to(torch.float64) for t in (q, k, v, beta, S0)])
        ok = torch.isfinite(sums).all()
        if log_alpha is not None:
            la = log_alpha.sum()
            ok = ok & ~(torch.isnan(la) | torch.isposinf(la))
        return bool(ok)


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
    r = None if resets is None else F.pad(resets.to(torch.int64), (0, pad)).reshape(B, N, C)
    parts = _Parts(
        q.reshape(B, n, N, C, dk),
        k.reshape(B, n, N, C, dk),
        v.reshape(B, n, N, C, dv),
        beta.reshape(B, n, N, C),
        None if log_alpha is None else log_alpha.reshape(B, n, N, C),
        r,
    )
    if torch.compiler.is_compiling():
        # traced by torch.compile or torch.export: plain operations, differentiated by
        # autograd (an exported program runs under autograd without the Function below)
        o, S, _ = _forward(parts, S0, rule, N)
    else:
        block = _block_chunks(B * n, C)
        o, S = _ChunkedMemory.apply(*parts, S0, rule, block)  # type: ignore[no-untyped-call]
    return o.reshape(B, n, N * C, dv)[:, :, :T], S


#: chunks per block: the forward and the backward batch a block's intra-chunk work (its
#: ``C x C`` products and solves), so they hold ``O(BLOCK C^2)`` per head at a time; at most
#: this many, fewer where :data:`BLOCK_ELEMENTS` says so
BLOCK = 16

#: at most this many entries in one of a block's ``C x C`` products over all heads (``B n G C
#: C``): a block's temporaries are allocated and freed once per block, and above a few MiB
#: each the CPU allocator maps fresh pages for them every time (``mmap`` above its threshold),
#: so the page faults, not the arithmetic, dominated the backward of larger batches
BLOCK_ELEMENTS = 2**19


def _block_chunks(heads: int, C: int) -> int:
    """Chunks per block for ``heads = B n`` heads of chunks of ``C``: :data:`BLOCK`, or fewer
    (at least one) to keep a block's ``C x C`` products within :data:`BLOCK_ELEMENTS`."""
    return max(1, min(BLOCK, BLOCK_ELEMENTS // max(1, heads * C * C)))  # B = 0: no heads


class _Parts(NamedTuple):
    """The inputs cut into chunks (padded to whole chunks), or one block of them."""

    q: Tensor  # (B, n, N, C, d_k)
    k: Tensor  # (B, n, N, C, d_k)
    v: Tensor  # (B, n, N, C, d_v)
    beta: Tensor  # (B, n, N, C)
    log_alpha: Tensor | None  # (B, n, N, C)
    resets: Tensor | None  # (B, N, C) int64

    def block(self, s: slice) -> _Parts:
        """Chunks ``s`` of every part, each copied once into a contiguous block (see
        :func:`_chunks`)."""
        la, r = self.log_alpha, self.resets
        return _Parts(
            _chunks(self.q, s),
            _chunks(self.k, s),
            _chunks(self.v, s),
            _chunks(self.beta, s),
            None if la is None else _chunks(la, s),
            None if r is None else r[:, s],
        )


def _chunks(t: Tensor, s: slice) -> Tensor:
    """Chunks ``s`` of ``t: (B, n, N, ...)`` as a contiguous ``(B, n, G, ...)`` tensor.

    A slice of fewer than all chunks is strided across the heads, so its batch dimensions
    cannot be merged into one and every batched product that reads it copies it first; a
    block's ``q`` and ``k`` are read by several products in each pass, so they were copied
    several times per block. One copy here serves them all (a whole-length slice is already
    contiguous and is returned as is)."""
    return t[:, :, s].contiguous()


class _Intra(NamedTuple):
    """What one block's chunks compute on their own (no incoming memory), per chunk and head;
    the decays (``decay``, ``gamma`` and, with a decay, ``tail``) in float64, ``None`` where
    they are 1."""

    causal: Tensor  # (C, C) or (B, 1, G, C, C) bool: s <= t, same segment
    strict: Tensor  # the same with s < t
    decay: Tensor | None  # (B, n, G, C, C): D
    gamma: Tensor | None  # (B, n, G, C)
    tail: Tensor | None  # (B, n | 1, G, C, 1): D[C-1, :], how much of a write leaves the chunk
    first: Tensor | None  # (B, 1, G, C, 1): the token still sees the incoming memory
    qk: Tensor  # (B, n, G, C, C): causal(Q K^T)
    attn: Tensor  # causal(D * Q K^T)
    q_in: Tensor  # (B, n, G, C, d_k): diag(gamma first) Q, reads the incoming memory
    k_out: Tensor  # (B, n, G, C, d_k): diag(tail) K, writes the outgoing memory
    s_decay: Tensor | None  # (B, n | 1, G, 1, 1): factor of the incoming memory at the end
    kb: Tensor | None  # (B, n, G, C, d_k): diag(beta) K (delta rule)
    kbk: Tensor | None  # (B, n, G, C, C): strict(diag(beta) K K^T) (delta rule)
    lower: Tensor | None  # (B, n, G, C, C): I + D * kbk, the unit-lower system (delta rule)
    wu: Tensor | None  # (B, n, G, C, d_k + d_v): [w_full, U] (delta rule)
    w_full: Tensor | None  # (B, n, G, C, d_k): M diag(beta gamma) K (delta rule)
    W: Tensor | None  # w_full with the rows after the chunk's first reset zeroed
    U: Tensor  # (B, n, G, C, d_v): M diag(beta) V, or diag(beta) V (linear rule)


def _intra(p: _Parts, rule: str) -> _Intra:
    """The intra-chunk quantities of the chunks ``p`` (the module docstring's equations)."""
    q, k = p.q, p.k
    C = q.shape[-2]
    ones = torch.ones(C, C, dtype=torch.bool, device=k.device)
    causal = torch.tril(ones)  # j <= i
    strict = torch.tril(ones, -1)  # j < i
    first: Tensor | None = None  # (B, 1, G, C, 1): token still sees the incoming S
    keep: Tensor | None = None  # (B, 1, G, 1, 1): the incoming S survives the chunk
    if p.resets is not None:
        seg = torch.cumsum(p.resets, -1)  # segment within the chunk, per token
        same = (seg.unsqueeze(-1) == seg.unsqueeze(-2)).unsqueeze(1)  # (B, 1, G, C, C)
        causal = causal & same
        strict = strict & same
        first_b = seg == 0
        first = first_b.to(q.dtype)[:, None, :, :, None]
        keep = first_b[..., -1].to(q.dtype)[:, None, :, None, None]
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    # decay[i, j] = alpha_{j+1} ... alpha_i (j <= i, same segment), else 0; tail[j] = decay[C-1, j]
    # is how much of token j's write reaches the chunk's end (0 across a reset). The decays,
    # and their products with the chunk's blocks, are formed in float64: the gradient of one
    # log alpha sums O(C^2) such products of both signs, and in float32 that sum alone costs
    # more accuracy than the step recurrence loses (these are elementwise, not the matmuls)
    decay = tail = gamma = None
    if p.log_alpha is not None:
        decay, gamma = _decays(p.log_alpha.to(torch.float64), causal)
        tail = decay[..., -1, :].unsqueeze(-1)  # (B, n, G, C, 1)
    elif p.resets is not None:
        tail = causal[..., -1, :].to(q.dtype).unsqueeze(-1)  # (B, 1, G, C, 1)
    qk = torch.where(causal, q @ k.transpose(-1, -2), zero)
    attn = _scaled(qk, decay)
    # what the incoming S contributes: read by gamma_t q_t, corrected through gamma_t w_t
    q_in = _scaled(q, None if gamma is None else gamma.unsqueeze(-1))
    if first is not None:
        q_in = q_in * first
    b = p.beta.unsqueeze(-1)
    vb = p.v * b
    kb = kbk = lower = sol = w_full = W = None
    if rule == "delta":
        kb = k * b
        kbk = torch.where(strict, kb @ k.transpose(-1, -2), zero)
        lower = _scaled(kbk, decay) + torch.eye(C, dtype=q.dtype, device=q.device)
        kw = _scaled(kb, None if gamma is None else gamma.unsqueeze(-1))
        # (the right-sided form of this solve is faster on the CPU but rounds differently, and
        # the float32 gradient of Gated DeltaNet's A_log, a sum with heavy cancellation, then
        # left the conformance bound; this form rounds as the autograd path did)
        sol = torch.linalg.solve_triangular(
            lower, torch.cat((kw, vb), -1), upper=False, unitriangular=True
        )
        w_full, U = sol.split((k.shape[-1], vb.shape[-1]), -1)
        W = w_full if first is None else w_full * first
    else:
        U = vb
    k_out = _scaled(k, tail)  # keys as they reach the chunk's end
    s_decay: Tensor | None = None
    if gamma is not None:
        s_decay = gamma[..., -1, None, None].to(q.dtype)
    if keep is not None:
        s_decay = keep if s_decay is None else s_decay * keep
    return _Intra(
        causal, strict, decay, gamma, tail, first, qk, attn, q_in, k_out, s_decay,
        kb, kbk, lower, sol, w_full, W, U,
    )  # fmt: skip


def _carry(x: _Intra, S: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The sequential part over a block's chunks: from the memory ``S: (B, n, d_v, d_k)``
    entering the first, the memory leaving the last, the memories entering each ``(B, n, G,
    d_v, d_k)`` and the pseudo-values ``U~ = U - W S_0^T`` ``(B, n, G, C, d_v)``."""
    G = x.U.shape[2]
    # unbind, not indexing: under autograd the backward of an index op allocates a zero
    # tensor of the whole input per chunk (quadratic in T); unbind's backward stacks
    per_chunk = zip(
        x.U.unbind(2),
        x.W.unbind(2) if x.W is not None else [None] * G,
        x.k_out.unbind(2),
        x.s_decay.unbind(2) if x.s_decay is not None else [None] * G,
        strict=True,
    )
    S_in: list[Tensor] = []
    U_t: list[Tensor] = []
    for u_i, w_i, k_i, sd_i in per_chunk:
        S_in.append(S)
        if w_i is not None:
            u_i = u_i - w_i @ S.transpose(-1, -2)
        U_t.append(u_i)
        write = u_i.transpose(-1, -2) @ k_i
        S = S + write if sd_i is None else sd_i * S + write
    # without a correction (linear rule) U~ is U itself: no block-sized copy of it
    return S, torch.stack(S_in, 2), x.U if x.W is None else torch.stack(U_t, 2)


def _forward(p: _Parts, S0: Tensor, rule: str, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked memory over ``p``, ``block`` chunks at a time: the outputs ``(B, n, N, C,
    d_v)``, the final memory and the memories entering each chunk ``(B, n, N, d_v, d_k)``.
    Plain torch operations (differentiable by autograd)."""
    N = p.q.shape[2]
    if block >= N:  # one block (always so on the traced path): no copies
        x = _intra(p, rule)
        S, S_in, U_t = _carry(x, S0)
        return x.q_in @ S_in.transpose(-1, -2) + x.attn @ U_t, S, S_in
    # several blocks (only under the written backward, so nothing here is recorded by
    # autograd): each block's results are written into the full-length ones as they come, so
    # the block temporaries are freed and reused rather than all kept for one concatenation
    # (which held the outputs twice and, at long T, made the allocator map fresh pages)
    B, n, _, C, dv = p.v.shape
    o = p.v.new_empty(B, n, N, C, dv)
    S_ins = S0.new_empty(B, n, N, *S0.shape[2:])
    S = S0
    for start in range(0, N, block):
        s = slice(start, start + block)
        x = _intra(p.block(s), rule)
        S, S_in, U_t = _carry(x, S)
        o[:, :, s] = x.q_in @ S_in.transpose(-1, -2) + x.attn @ U_t
        S_ins[:, :, s] = S_in
    return o, S, S_ins


class _ChunkedMemory(torch.autograd.Function):
    """The chunked memory with a backward that recomputes each block of chunks: the forward
    keeps the inputs and the memory entering each chunk (``O(T / C d_v d_k)`` per head), never
    the ``C x C`` blocks (``O(T C)``)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        log_alpha: Tensor | None,
        resets: Tensor | None,
        S0: Tensor,
        rule: str,
        block: int,
    ) -> tuple[Tensor, Tensor]:
        p = _Parts(q, k, v, beta, log_alpha, resets)
        o, S, S_ins = _forward(p, S0, rule, block)
        ctx.save_for_backward(q, k, v, beta, log_alpha, resets, S_ins)
        ctx.rule, ctx.block = rule, block
        return o, S

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, do: Tensor, dS: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, beta, log_alpha, resets, S_ins = ctx.saved_tensors
        p = _Parts(q, k, v, beta, log_alpha, resets)
        rule, block = ctx.rule, ctx.block
        N = q.shape[2]
        grads = _Grads.empty(p)
        for start in reversed(range(0, N, block)):
            s = slice(start, start + block)
            dS = _block_backward(p.block(s), _chunks(S_ins, s), _chunks(do, s), dS, rule, grads, s)
        return (*grads, None, dS, None, None)


class _Grads(NamedTuple):
    """The gradients of the chunked inputs, filled block by block."""

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor
    log_alpha: Tensor | None

    @staticmethod
    def empty(p: _Parts) -> _Grads:
        la = p.log_alpha
        return _Grads(
            torch.empty_like(p.q),
            torch.empty_like(p.k),
            torch.empty_like(p.v),
            torch.empty_like(p.beta),
            None if la is None else torch.empty_like(la),
        )


def _block_backward(
    p: _Parts, S_in: Tensor, do: Tensor, dS: Tensor, rule: str, grads: _Grads, s: slice
) -> Tensor:
    """One block's backward: recompute its intra-chunk quantities from ``p`` and the memories
    entering its chunks ``S_in: (B, n, G, d_v, d_k)``, carry the memory's gradient ``dS`` (of
    the memory leaving the block) back through its chunks, write the inputs' gradients into
    ``grads[..., s, ...]`` and return the gradient of the memory entering the block.

    Per chunk, from ``O = Q_in S_0^T + P U~``, ``S_C = s S_0 + U~^T K_out`` and ``U~ = U - W
    S_0^T``: ``dU~ = P^T dO + K_out dS_C^T`` and ``dS_0 = dO^T Q_in + s dS_C - dU~^T W``
    (sequential); then ``dP = dO U~^T``, ``dK_out = U~ dS_C``, ``dQ_in = dO S_0``, ``dW = -dU~
    S_0``, ``ds = <dS_C, S_0>``, and the solve's adjoint ``[dR_w, dR_u] = L^{-T} [dW, dU~]``,
    ``dL = -[dR_w, dR_u] [W, U]^T`` (batched over the block)."""
    x = _intra(p, rule)
    f64 = torch.float64
    U_t = x.U if x.W is None else x.U - x.W @ S_in.transpose(-1, -2)
    # the sequential part, backwards: the gradients of U~ and of each chunk's outgoing memory
    pt_do = x.attn.transpose(-1, -2) @ do  # (B, n, G, C, d_v)
    do_q = do.transpose(-1, -2) @ x.q_in  # (B, n, G, d_v, d_k)
    dUt = torch.empty_like(U_t)  # (B, n, G, C, d_v)
    dSo = torch.empty_like(S_in)  # (B, n, G, d_v, d_k): gradient of each chunk's outgoing S
    for i in reversed(range(do.shape[2])):
        dSo[:, :, i] = dS
        du = dUt[:, :, i]
        torch.add(pt_do[:, :, i], x.k_out[:, :, i] @ dS.transpose(-1, -2), out=du)
        sd = None if x.s_decay is None else x.s_decay[:, :, i]
        dS_prev = do_q[:, :, i] + (dS if sd is None else sd * dS)
        if x.W is not None:
            dS_prev = dS_prev - du.transpose(-1, -2) @ x.W[:, :, i]
        dS = dS_prev
    # the batched part
    dP = do @ U_t.transpose(-1, -2)  # (B, n, G, C, C)
    dk_out = U_t @ dSo  # (B, n, G, C, d_k)
    dq_in = do @ S_in  # (B, n, G, C, d_k)
    if x.first is not None:
        dq_in = dq_in * x.first
    zero = torch.zeros((), dtype=do.dtype, device=do.device)
    dqk = torch.where(x.causal, _scaled(dP, x.decay), zero)
    dq = dqk @ p.k + _scaled(dq_in, None if x.gamma is None else x.gamma.unsqueeze(-1))
    dk = dqk.transpose(-1, -2) @ p.q + _scaled(dk_out, x.tail)
    dD = dgamma = None
    if x.decay is not None:
        assert x.gamma is not None
        dD = dP.to(f64) * x.qk.to(f64)  # 0 off the causal mask (qk is)
        dgamma = (dq_in.to(f64) * p.q.to(f64)).sum(-1)
        # the tail: tail = D[C-1, :]; the decay of the incoming memory: s = gamma_{C-1} keep
        dD[..., -1, :] += (dk_out.to(f64) * p.k.to(f64)).sum(-1)
        ds = (dSo * S_in).sum((-2, -1))
        if p.resets is not None:
            ds = ds * (p.resets.sum(-1) == 0).to(ds.dtype).unsqueeze(1)
        dgamma[..., -1] += ds.to(f64)
    b = p.beta.unsqueeze(-1)
    if rule == "delta":
        assert x.lower is not None and x.wu is not None and x.W is not None
        assert x.kb is not None and x.kbk is not None
        dW = -(dUt @ S_in)
        if x.first is not None:
            dW = dW * x.first
        # L^-T [dW, dU~] as the right-sided solve ([dW, dU~]^T L^-1)^T: the same system, which
        # torch's CPU solver runs several times faster this way round than upper=True
        dR = torch.linalg.solve_triangular(
            x.lower, torch.cat((dW, dUt), -1).mT, upper=False, left=False, unitriangular=True
        ).mT
        dRw, dvb = dR.split((p.k.shape[-1], p.v.shape[-1]), -1)
        dL = torch.where(x.strict, -(dR @ x.wu.mT), zero)
        dkbk = _scaled(dL, x.decay)
        dkb = dkbk @ p.k + _scaled(dRw, None if x.gamma is None else x.gamma.unsqueeze(-1))
        dk = dk + dkbk.transpose(-1, -2) @ x.kb + dkb * b
        if dD is not None and dgamma is not None:
            dD += dL.to(f64) * x.kbk.to(f64)
            dgamma += (dRw.to(f64) * x.kb.to(f64)).sum(-1)
        grads.beta[:, :, s] = (dkb * p.k).sum(-1) + (dvb * p.v).sum(-1)
    else:
        dvb = dUt
        grads.beta[:, :, s] = (dvb * p.v).sum(-1)
    grads.q[:, :, s] = dq
    grads.k[:, :, s] = dk
    grads.v[:, :, s] = dvb * b
    if grads.log_alpha is not None:
        assert dD is not None and dgamma is not None
        assert x.decay is not None and x.gamma is not None
        grads.log_alpha[:, :, s] = _decays_backward(dD, dgamma, x.decay, x.gamma)
    return dS


def _decays_backward(dD: Tensor, dgamma: Tensor, decay: Tensor, gamma: Tensor) -> Tensor:
    """The gradient of the log decays ``(B, n, G, C)`` from those of :func:`_decays`' results
    (all float64): ``D[t, s]`` depends on ``log alpha_r`` for ``s < r <= t``, ``gamma_t`` for
    ``r <= t``; so ``dlog alpha_r = sum_{t >= r, s < r} dD[t, s] D[t, s] + sum_{t >= r}
    dgamma_t gamma_t``."""
    C = decay.shape[-1]
    g = dD * decay  # 0 off the causal mask (D is 0 there)
    # before[t, r] = sum_{s < r} g[t, s]: an exclusive cumulative sum along the row
    before = F.pad(torch.cumsum(g, -1)[..., :-1], (1, 0))
    from_t = torch.tril(torch.ones(C, C, dtype=torch.bool, device=g.device))  # t >= r
    d_from_decay = torch.where(from_t, before, 0.0).sum(-2)
    gg = dgamma * gamma
    d_from_gamma = torch.flip(torch.cumsum(torch.flip(gg, (-1,)), -1), (-1,))
    return d_from_decay + d_from_gamma


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
    # resets restart the memory from zero (and memory_inputs' own carry from what the cell
    # class restarts it from), not from a learnable initial state
    return fill_restart_refusal(call, "reference")


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
