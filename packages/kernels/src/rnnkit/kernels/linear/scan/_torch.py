"""Pure-torch scans for ``h_t = a_t * h_{t-1} + b_t``: a step loop and a chunked scan.

These functions do no autograd and no validation: they write into a caller-allocated ``out``
and work on whatever strided views they are given (``a`` may be an expanded view with stride
0 in the batch or time dimension). All tensors share one compute dtype; the op in
:mod:`rnnkit.kernels.linear.scan.op` upcasts 16-bit inputs before calling them.

Why chunked rather than log-space: the closed form ``h_t = A_t (h_0 + sum_s b_s / A_s)`` with
``A_t = prod_{r<=t} a_r`` divides by cumulative products that under- or overflow after a few
hundred steps of a gate like 0.5 (and ``log`` needs care for negative or zero gates). The
chunked scan never divides: inside a chunk it runs the recurrence itself (one vectorised op
per position, over all chunks at once), and across chunks it runs the same scan recursively on
the chunk products and chunk end states. Every intermediate is a true partial state or a true
product of the gates over a span, so nothing overflows unless the exact result does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rnnkit.kernels.linear.scan._alloc import alloc

#: Below this many steps (and no explicit chunk) the step loop is used: chunking would not pay.
MIN_CHUNKED_T = 32


def product_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the chunked scan keeps its chunk gate products in: double width for float32
    and complex64. A product of gates near 1 in magnitude rounds a little at every factor, and
    the chunk pass multiplies the state by thousands of such products in a row: in float32 that
    drift dominated the error of long scans (T = 65536, gates ``+-(1 - 1e-4 u)``: 6e-5 relative
    RMS against 2e-6 for the step loop); the products are a ``1 / L`` slice of the data."""
    return {torch.float32: torch.float64, torch.complex64: torch.complex128}.get(dtype, dtype)


def default_chunk(time: int, row_bytes: int = 1024) -> int:
    """The chunk length for ``time`` steps of rows of ``row_bytes`` (``D * itemsize``).

    Each level of the chunked scan costs about ``2 * chunk`` vectorised ops plus the scan over
    ``time / chunk`` chunk states, so about ``sqrt(time)`` (a power of 2 in [8, 64]) balances
    the two. Narrow rows get shorter chunks: every op reads one row per chunk, ``chunk`` rows
    apart, and rows of a few cache lines that far apart defeat the hardware prefetcher (on
    CPU, ``D = 16`` runs 2x faster with chunks of 8 than of 64).
    """
    if time <= 1:
        return 8
    cap = max(8, min(64, row_bytes // 8))
    return 1 << max(3, min(cap.bit_length() - 1, round(math.log2(time) / 2)))


def sequential_scan_into(a: Tensor, b: Tensor, h0: Tensor, out: Tensor, *, reverse: bool) -> Tensor:
    """Step loop: ``out_t = a_t * out_{t-1} + b_t`` (``out_{t+1}`` when ``reverse``).

    Args:
        a, b, out: ``(B, T, D)`` (``a`` and ``b`` may be expanded views).
        h0: ``(B, D)``: the state before the first step (``t = 0``, or ``t = T - 1`` reversed).
        reverse: run from ``t = T - 1`` down to ``0``.

    Returns:
        The state after the last step, ``(B, D)`` (a view of ``out``, or ``h0`` when ``T = 0``).
    """
    steps = zip(a.unbind(1), b.unbind(1), out.unbind(1), strict=True)  # views made in one go
    state = h0
    for a_t, b_t, o in reversed(list(steps)) if reverse else steps:
        torch.addcmul(b_t, a_t, state, out=o)
        state = o
    return state


def doubling_scan(a: Tensor, b: Tensor, h0: Tensor, restart: Tensor | None = None) -> Tensor:
    """All states ``h: (B, T, D)`` by recursive doubling, in ``ceil(log2 T)`` rounds of
    out-of-place ops that autograd differentiates (no ``out=``, no hand-written backward).

    The form for traced programs (``torch.export``, ONNX): its graph has ``O(log T)`` nodes
    and runs under autograd. Round ``k`` combines each position with the one ``d = 2^k``
    earlier: ``h_t <- P_t h_{t-d} + h_t`` and ``P_t <- P_t P_{t-d}``, where ``P_t`` is the
    product of the gates over the span that ``h_t`` already covers. As in the chunked scan,
    every intermediate is a true partial state or a true product of gates over a span. It does
    ``O(T log T)`` work, so the eager scans stay faster outside traced programs.

    With ``restart`` the state entering a step where it is true is replaced by zero, a select
    as in the cells' reference loops (``h_t = a_t * 0 + b_t``; ``a`` holds the restart gates
    already, see ``op._restart_gates``): each span also records whether it holds a restart,
    and a span that does takes nothing from before it, so a NaN or infinite state before a
    restart does not reach past it as ``0 * NaN``, in values or in gradients. On finite inputs
    the values are those without the selects (the product with a zero gate adds an exact 0).

    Args:
        a, b: ``(B, T, D)`` with ``T >= 1`` (``a`` may be an expanded view).
        h0: ``(B, D)``, the state before step 0.
        restart: optional bool ``(B, T)``.
    """
    if restart is None:
        first = a[:, :1] * h0.unsqueeze(1) + b[:, :1]  # the state after step 0
        h = torch.cat([first, b[:, 1:]], 1)
        span = a
        time, d = b.shape[1], 1
        while d < time:
            h = torch.cat([h[:, :d], span[:, d:] * h[:, :-d] + h[:, d:]], 1)
            span = torch.cat([span[:, :d], span[:, d:] * span[:, :-d]], 1)
            d *= 2
        return h
    cut = restart.unsqueeze(-1)  # (B, T, 1): the span ending at t holds a restart
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    one = torch.ones((), dtype=a.dtype, device=a.device)
    # a restart step keeps ``a_t * 0`` (NaN for a NaN gate) and drops the state before it
    first = a[:, :1] * torch.where(cut[:, 0], zero, h0).unsqueeze(1) + b[:, :1]
    h = torch.cat([first, b[:, 1:] + torch.where(cut[:, 1:], a[:, 1:] * 0, zero)], 1)
    span = a
    time, d = b.shape[1], 1
    while d < time:
        c = cut[:, d:]
        # both factors selected: the product's gradient is an exact zero across a restart
        carried = torch.where(c, zero, span[:, d:]) * torch.where(c, zero, h[:, :-d])
        h = torch.cat([h[:, :d], h[:, d:] + carried], 1)
        span = torch.cat([span[:, :d], span[:, d:] * torch.where(c, one, span[:, :-d])], 1)
        cut = torch.cat([cut[:, :d], c | cut[:, :-d]], 1)
        d *= 2
    return h


def _rows(x: Tensor, first: int, count: int, step: int) -> Tensor:
    """Rows ``first, first + step, ..., first + (count - 1) step`` of ``x: (B, T, D)``:
    a ``(B, count, D)`` view (any strides, including the 0 strides of an expanded tensor)."""
    sb, st, sd = x.stride()
    size = (x.shape[0], count, x.shape[2])
    return x.as_strided(size, (sb, step * st, sd), x.storage_offset() + first * st)


def chunk_length(time: int, row_bytes: int, chunk: int | None = None) -> int | None:
    """The chunk length :func:`chunked_scan_into` uses at its top level for ``time`` steps of
    ``row_bytes`` rows, or ``None`` when it runs the step loop instead."""
    length = chunk or default_chunk(time, row_bytes)
    if time < 2 * length or (chunk is None and time < MIN_CHUNKED_T):
        return None
    return length


def chunked_scan_into(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    out: Tensor,
    *,
    reverse: bool,
    chunk: int | None = None,
    products: Tensor | None = None,
    products_out: Tensor | None = None,
) -> Tensor:
    """Chunked scan with the same contract as :func:`sequential_scan_into`.

    ``T`` is cut into ``C = ceil(T / L)`` chunks of ``L = chunk`` steps; when ``L`` does not
    divide ``T`` the chunk scanned last is partial (the last in time, or the first when
    reversed), and the ops of the positions it lacks leave it out:

    1. local pass: the end state ``E_c`` of each chunk started from zero, and the product
       ``P_c`` of its gates, for all chunks at once (``L`` ops on ``(B, C, D)`` row views);
    2. chunk pass: ``H_c = P_c * H_{c-1} + E_c`` from ``h0``, by this function recursively;
    3. fix-up pass: the recurrence again inside each chunk, now started from ``H_{c-1}``,
       writing ``out`` (``L`` ops).

    Args:
        chunk: the chunk length ``L``; ``None`` picks :func:`default_chunk` at every level.
        products: the chunks' gate products ``P_c: (B, C, D)`` (time order) when the caller
            already has them (the backward reuses the forward's): the local pass then skips
            them, a third of its work.
        products_out: a ``(B, C, D)`` buffer that receives the ``P_c`` computed here (for a
            later ``products``); ignored when the step loop runs (see :func:`chunk_length`).
    """
    batch, time, width = b.shape
    length = chunk_length(time, width * b.element_size(), chunk)
    if length is None:
        return sequential_scan_into(a, b, h0, out, reverse=reverse)
    full, rem = divmod(time, length)
    n_chunks = full + (rem > 0)
    # Chunks in time order. Forward: chunk c starts at c * L and the partial one is the last,
    # holding positions < rem. Reversed: the grid starts at rem - L, so the partial chunk is the
    # first, holding positions >= L - rem. Either way it is the chunk that runs out first in
    # scan order, so the chunks active at a position are a prefix (forward) or a suffix
    # (reversed) that only shrinks as the scan goes on.
    origin = rem - length if reverse and rem else 0
    order = list(range(length - 1, -1, -1) if reverse else range(length))

    def active(pos: int) -> tuple[int, int]:
        """Chunks ``[lo, hi)`` (time order) that have position ``pos``."""
        if not rem:
            return 0, n_chunks
        if reverse:
            return (0 if pos >= length - rem else 1), n_chunks
        return 0, (n_chunks if pos < rem else full)

    spans = [active(pos) for pos in range(length)]

    def position_views(x: Tensor) -> list[Tensor]:
        """``x``'s ``(B, chunks, D)`` rows at every position (index: position), made in one
        go: for the short scans of Newton tiles, view creation would otherwise cost more
        than the arithmetic."""
        if not rem:
            return list(x.view(batch, n_chunks, length, width).unbind(2))
        return [
            _rows(x, origin + p + lo * length, hi - lo, length) for p, (lo, hi) in enumerate(spans)
        ]

    a_at, b_at = position_views(a), position_views(b)
    cut: dict[tuple[int, int], tuple[Tensor, Tensor | None]] = {}

    # 1. local end states and chunk products in fresh contiguous buffers (time order).
    first = order[0]
    ends = b_at[first].clone(memory_format=torch.contiguous_format)
    prods = products
    if prods is None:
        if products_out is None:
            wide = product_dtype(torch.promote_types(a.dtype, ends.dtype))
            products_out = torch.empty(ends.shape, dtype=wide, device=ends.device)
        prods = products_out
        prods.copy_(a_at[first])  # the first position has every chunk
    local_prods = prods if products is None else None
    for pos in order[1:]:
        span = spans[pos]
        if span not in cut:
            lo, hi = span
            cut[span] = (ends[:, lo:hi], local_prods[:, lo:hi] if local_prods is not None else None)
        e, pr = cut[span]
        a_l = a_at[pos]
        torch.addcmul(b_at[pos], a_l, e, out=e)
        if pr is not None:
            pr.mul_(a_l)  # a_l was just read: it is still in cache

    # 2. the states at chunk boundaries: carry[:, c] enters chunk c (time order).
    states = alloc((batch, n_chunks + 1, width), dtype=out.dtype, device=out.device)
    if reverse:
        states[:, n_chunks] = h0
        last = chunked_scan_into(prods, ends, h0, states[:, :n_chunks], reverse=True, chunk=chunk)
        carry = states[:, 1:]
    else:
        states[:, 0] = h0
        last = chunked_scan_into(prods, ends, h0, states[:, 1:], reverse=False, chunk=chunk)
        carry = states[:, :n_chunks]

    # 3. fix-up: rerun each chunk from its true entering state; the chunks active at a position
    # were all active at the position before it, whose outputs are the states to continue from.
    out_at = position_views(out)
    state = carry
    prev = spans[first]
    for pos in order:
        span = spans[pos]
        if span != prev:  # the partial chunk has run out: drop its column
            state = state[:, span[0] - prev[0] : span[0] - prev[0] + span[1] - span[0]]
        o = out_at[pos]
        torch.addcmul(b_at[pos], a_at[pos], state, out=o)
        state, prev = o, span
    return last
