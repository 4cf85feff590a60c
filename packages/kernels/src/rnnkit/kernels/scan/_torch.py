"""Pure-torch scans for ``h_t = a_t * h_{t-1} + b_t``: a step loop and a chunked scan.

These functions do no autograd and no validation: they write into a caller-allocated ``out``
and work on whatever strided views they are given (``a`` may be an expanded view with stride
0 in the batch or time dimension). All tensors share one compute dtype; the op in
:mod:`rnnkit.kernels.scan.op` upcasts 16-bit inputs before calling them.

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

from rnnkit.kernels.scan._alloc import alloc

#: Below this many steps (and no explicit chunk) the step loop is used: chunking would not pay.
MIN_CHUNKED_T = 32


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
    time = b.shape[1]
    state = h0
    for t in range(time - 1, -1, -1) if reverse else range(time):
        o = out[:, t]
        torch.addcmul(b[:, t], a[:, t], state, out=o)
        state = o
    return state


def chunked_scan_into(
    a: Tensor, b: Tensor, h0: Tensor, out: Tensor, *, reverse: bool, chunk: int | None = None
) -> Tensor:
    """Chunked scan with the same contract as :func:`sequential_scan_into`.

    ``T`` is cut into ``C = T // L`` chunks of ``L = chunk`` steps (the last ``T - C * L``
    steps, or the first ones when reversed, run as a step loop afterwards):

    1. local pass: the end state ``E_c`` of each chunk started from zero, and the product
       ``P_c`` of its gates, for all chunks at once (``L`` ops on ``(B, C, D)`` slices);
    2. chunk pass: ``H_c = P_c * H_{c-1} + E_c`` from ``h0``, by this function recursively;
    3. fix-up pass: the recurrence again inside each chunk, now started from ``H_{c-1}``,
       writing ``out`` (``L`` ops).

    Args:
        chunk: the chunk length ``L``; ``None`` picks :func:`default_chunk` at every level.
    """
    batch, time, width = b.shape
    length = chunk or default_chunk(time, width * b.element_size())
    if time < 2 * length or (chunk is None and time < MIN_CHUNKED_T):
        return sequential_scan_into(a, b, h0, out, reverse=reverse)
    n_chunks = time // length
    main_len = n_chunks * length
    main = slice(time - main_len, time) if reverse else slice(0, main_len)
    tail = slice(0, time - main_len) if reverse else slice(main_len, time)
    # (B, C, L, D) views: splitting one dimension is a view whatever the strides.
    split = (batch, n_chunks, length, width)
    a_c, b_c, out_c = a[:, main].view(split), b[:, main].view(split), out[:, main].view(split)
    order = list(range(length - 1, -1, -1) if reverse else range(length))

    # 1. local end states and chunk products; the clones are fresh contiguous buffers that the
    # loop updates in place (never the caller's tensors).
    first = order[0]
    ends = b_c[:, :, first].clone(memory_format=torch.contiguous_format)
    prods = a_c[:, :, first].clone(memory_format=torch.contiguous_format)
    for pos in order[1:]:
        a_l = a_c[:, :, pos]
        torch.addcmul(b_c[:, :, pos], a_l, ends, out=ends)
        prods.mul_(a_l)  # a_l was just read: it is still in cache

    # 2. the states at chunk boundaries; states[:, c] enters chunk c (in scan order).
    states = alloc((batch, n_chunks + 1, width), dtype=out.dtype, device=out.device)
    if reverse:
        states[:, n_chunks] = h0
        last = chunked_scan_into(prods, ends, h0, states[:, :n_chunks], reverse=True, chunk=chunk)
        carry = states[:, 1:]
    else:
        states[:, 0] = h0
        last = chunked_scan_into(prods, ends, h0, states[:, 1:], reverse=False, chunk=chunk)
        carry = states[:, :n_chunks]

    # 3. fix-up: rerun each chunk from its true entering state.
    state = carry
    for pos in order:
        o = out_c[:, :, pos]
        torch.addcmul(b_c[:, :, pos], a_c[:, :, pos], state, out=o)
        state = o
    if time == main_len:
        return last
    return sequential_scan_into(a[:, tail], b[:, tail], last, out[:, tail], reverse=reverse)
