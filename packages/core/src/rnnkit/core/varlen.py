"""Variable-length batches: ``lengths`` (and ``PackedSequence``) on every backend.

A right-padded batch ``x: (B, T, I)`` with ``lengths: (B,)`` means sequence ``b`` is
``x[b, :lengths[b]]``. The result equals running each sequence alone: ``y[b, t]`` is zero for
``t >= lengths[b]`` (as ``pad_packed_sequence`` pads) and the final state of ``b`` is its state
after step ``lengths[b] - 1`` (the initial state for an empty sequence), in value and gradient.

:func:`run_with_lengths` does this for every kernel, so kernels need no change:

1. Sequences of length 0 leave the batch (their output is zero, their final state the
   initial one) and the time steps past the longest sequence are cut off (a view).
2. A kernel whose ``supports_lengths`` is true gets the lengths and handles them in one call
   (the reference loop holds the state past each length, the scans hold it with ``a = 1,
   b = 0``, Triton and torch's RNN ops run packed sequences).
3. Any other kernel runs once per distinct length, on the time steps between one length and
   the next and on the sequences still running there (sorted longest first, so they are a
   prefix of the batch), each run starting from the previous one's final state. That is the
   ABI's chunking guarantee, so it is exact; the sequential steps add up to the longest length,
   as in one padded call, and no step past a sequence's end is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.core.kernel import Kernel, KernelCall

__all__ = [
    "PackedLayout",
    "pack_like",
    "reverse_padded",
    "reverse_resets",
    "run_by_segments",
    "run_with_lengths",
    "step_mask",
    "unpack",
]


def step_mask(lengths: Tensor, time: int, device: torch.device) -> Tensor:
    """bool ``(B, time)`` on ``device``: true at the valid steps ``t < lengths[b]``."""
    steps = torch.arange(time, device=device)
    return steps.unsqueeze(0) < lengths.to(device).unsqueeze(1)


def _initial(call: KernelCall) -> tuple[Tensor, ...]:
    if call.state is not None:
        return call.state
    x = call.x
    state: tuple[Tensor, ...] = call.cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    return state


def _rows(t: Tensor | None, index: Tensor | None, time: int) -> Tensor | None:
    """``t[index, :time]`` (all rows when ``index`` is ``None``; a view then)."""
    if t is None:
        return None
    if index is not None:
        t = t.index_select(0, index.to(t.device))
    return t[:, :time]


def _select(t: Tensor, index: Tensor | None) -> Tensor:
    return t if index is None else t.index_select(0, index.to(t.device))


def run_with_lengths(
    call: KernelCall, choose: Callable[[KernelCall], Kernel]
) -> tuple[Tensor, Any]:
    """Run ``call`` (with ``call.lengths`` set, validated) on the kernel ``choose`` selects.

    ``choose`` gets the call as the kernel will see it: without the empty sequences and the
    all-padding tail, and without lengths where every remaining sequence is full length.
    """
    assert call.lengths is not None
    lengths = call.lengths
    x = call.x
    batch, time = x.shape[0], x.shape[1]
    lens = lengths.tolist()
    if all(n == time for n in lens):
        plain = KernelCall(call.cell, x, call.state, call.resets, call.needs_grad)
        return choose(plain).run(plain)
    cell = call.cell
    t_max = max(lens)
    keep = [b for b, n in enumerate(lens) if n > 0]
    index = torch.tensor(keep, dtype=torch.int64) if len(keep) < batch else None
    if not keep:
        y, final = x.new_zeros(batch, time, cell.output_size), _initial(call)
        return y, cell.state_type._make(final)
    sub_lengths = lengths if index is None else lengths.index_select(0, index)
    full = bool((sub_lengths == t_max).all())
    state = call.state
    sub = KernelCall(
        cell,
        _rows(x, index, t_max),  # type: ignore[arg-type]
        None if state is None else cell.state_type._make(_select(s, index) for s in state),
        _rows(call.resets, index, t_max),
        call.needs_grad,
        None if full else sub_lengths,
    )
    kernel = choose(sub)
    if full or kernel.supports_lengths:
        y, final = kernel.run(sub)
    else:
        y, final = _by_segments(kernel, sub)
    if t_max < time:
        y = F.pad(y, (0, 0, 0, time - t_max))
    if index is None:
        return y, final
    dev_index = index.to(x.device)
    y = y.new_zeros(batch, time, y.shape[2]).index_copy(0, dev_index, y)
    fields = [
        s0.index_copy(0, dev_index.to(s0.device), s)
        for s0, s in zip(_initial(call), final, strict=True)
    ]
    return y, cell.state_type._make(fields)


def _by_segments(kernel: Kernel, call: KernelCall) -> tuple[Tensor, Any]:
    return run_by_segments(kernel.run, call)


def run_by_segments(
    run: Callable[[KernelCall], tuple[Tensor, tuple[Tensor, ...]]], call: KernelCall
) -> tuple[Tensor, Any]:
    """Run ``call`` (lengths in ``[1, T]``) with ``run``, a kernel's run that ignores lengths.

    What dispatch does for a kernel without ``supports_lengths``; a kernel that has a lengths
    path only for some calls can hand the others here.

    The batch is sorted longest first; between consecutive distinct lengths ``lo < hi`` the
    sequences with length ``>= hi`` (a prefix) run steps ``lo:hi`` from their state at ``lo``.
    """
    assert call.lengths is not None
    cell, x = call.cell, call.x
    batch, time = x.shape[0], x.shape[1]
    order = torch.argsort(call.lengths, descending=True, stable=True)
    lens = call.lengths[order].tolist()
    in_order = order.tolist() == list(range(batch))
    dev_order = order.to(x.device)

    def sort(t: Tensor | None) -> Tensor | None:
        if t is None or in_order:
            return t
        return t.index_select(0, dev_order.to(t.device))

    xs = sort(x)
    assert xs is not None
    resets = sort(call.resets)
    state: tuple[Tensor, ...] | None = None
    if call.state is not None:
        state = cell.state_type._make(sort(s) for s in call.state)
    pieces: list[Tensor] = []
    finals: list[tuple[Tensor, ...]] = []  # final states of rows [m, n), last rows first
    lo = 0
    for hi in sorted(set(lens)):
        n = sum(1 for v in lens if v >= hi)  # sequences running through step hi - 1
        m = sum(1 for v in lens if v > hi)  # those that go on after it
        seg_state = None if state is None else cell.state_type._make(s[:n] for s in state)
        seg = KernelCall(
            cell,
            xs[:n, lo:hi],
            seg_state,
            None if resets is None else resets[:n, lo:hi],
            call.needs_grad,
        )
        y_seg, out = run(seg)
        pieces.append(F.pad(y_seg, (0, 0, 0, 0, 0, batch - n)) if n < batch else y_seg)
        finals.append(tuple(s[m:n] for s in out))
        state = cell.state_type._make(s[:m] for s in out)
        lo = hi
    assert lo == time
    y = torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]
    fields = [torch.cat(parts[::-1], 0) for parts in zip(*finals, strict=True)]
    if not in_order:
        inverse = torch.argsort(order)
        y = y.index_select(0, inverse.to(y.device))
        fields = [f.index_select(0, inverse.to(f.device)) for f in fields]
    return y, cell.state_type._make(fields)


# --- reversing padded sequences (the backward direction of a bidirectional stack) ----------


def reverse_index(lengths: Tensor, time: int, device: torch.device) -> Tensor:
    """int64 ``(B, time)``: ``lengths[b] - 1 - t`` for ``t < lengths[b]``, else ``t``.

    The permutation of each row that reverses the valid steps and leaves the padding in place;
    it is its own inverse.
    """
    steps = torch.arange(time, device=device).unsqueeze(0)
    n = lengths.to(device).unsqueeze(1)
    return torch.where(steps < n, n - 1 - steps, steps)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``x: (B, T, ...)`` with each sequence's first ``lengths[b]`` steps reversed (all ``T``
    steps, ``x.flip(1)``, when ``lengths`` is ``None``); the padding stays in place."""
    if lengths is None:
        return x.flip(1)
    index = reverse_index(lengths, x.shape[1], x.device)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def reverse_resets(resets: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Resets for the time-reversed sequences (see :func:`reverse_padded`).

    ``resets[:, t]`` marks a boundary between steps ``t - 1`` and ``t``. Running backwards, that
    boundary is crossed on entering step ``t - 1``, which is reversed step ``n - t`` of a
    sequence of length ``n``; the reversed run's first step never resets, nor does padding.
    """
    batch, time = resets.shape
    if lengths is None:
        lengths = torch.full((batch,), time, dtype=torch.int64)
    steps = torch.arange(time, device=resets.device).unsqueeze(0)
    n = lengths.to(resets.device).unsqueeze(1)
    inside = (steps >= 1) & (steps < n)
    source = (n - steps).clamp(0, max(time - 1, 0))
    return resets.gather(1, source) & inside


# --- PackedSequence ------------------------------------------------------------------------


class PackedLayout(NamedTuple):
    """What :func:`pack_like` needs to pack an output like a given ``PackedSequence``."""

    lengths: Tensor
    batch_sizes: Tensor
    sorted_indices: Tensor | None
    unsorted_indices: Tensor | None


def unpack(x: PackedSequence) -> tuple[Tensor, Tensor, PackedLayout]:
    """A ``PackedSequence`` as a batch-first padded ``(B, T, ...)`` tensor in the original
    batch order, its lengths (int64, CPU) and its layout."""
    padded, lengths = pad_packed_sequence(x, batch_first=True)
    layout = PackedLayout(lengths, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return padded, lengths, layout


def pack_like(y: Tensor, layout: PackedLayout) -> PackedSequence:
    """Pack a batch-first padded ``y: (B, T, ...)`` with the layout of the input it came from
    (same ``batch_sizes`` and index permutations), as ``torch.nn.LSTM`` answers a packed input."""
    if layout.sorted_indices is not None:
        y = y.index_select(0, layout.sorted_indices.to(y.device))
    lengths = layout.lengths
    if layout.sorted_indices is not None:
        lengths = lengths.index_select(0, layout.sorted_indices.cpu())
    data = pack_padded_sequence(y, lengths, batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, layout.batch_sizes, layout.sorted_indices, layout.unsorted_indices)
