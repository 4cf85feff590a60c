"""The ``reference`` backend: the generic sequential loop over ``Cell.recur``.

Always available and the oracle every other backend is tested against. With ``lengths`` it
holds each sequence's state past its last step (one call, see :mod:`rnnkit.core.varlen`). It
iterates with
``unbind(1)`` rather than ``x[:, t]``: per-step indexing makes autograd's backward quadratic
in ``T`` (each index op's backward writes a full-size zero tensor).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.core.kernel import ANY_CELL, Kernel, KernelCall, Priority
from rnnkit.core.state import apply_resets
from rnnkit.core.varlen import step_mask


def reference_forward(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``call`` step by step with ``cell.recur``; see :class:`~rnnkit.core.dispatch.Kernel`."""
    cell, x = call.cell, call.x
    batch = x.shape[0]
    state: Any = call.state
    if state is None:
        state = cell.init_state(batch, device=x.device, dtype=x.dtype)
    if x.shape[1] == 0:
        return x.new_empty(batch, 0, cell.output_size), state
    px = cell.project(x)
    initial: Any = None
    resets = call.resets.unbind(1) if call.resets is not None else None
    if resets is not None:
        initial = cell.init_state(batch, device=x.device, dtype=x.dtype)
    valid = None
    if call.lengths is not None:
        valid = step_mask(call.lengths, x.shape[1], x.device).unbind(1)
    ys = []
    for t, px_t in enumerate(px.unbind(1)):
        before = state
        if resets is not None:
            state = apply_resets(state, initial, resets[t])
        y_t, state = cell.recur(px_t, state)
        if valid is not None:
            # past its length a sequence keeps its state (~valid "restarts" from before) and
            # outputs zeros
            state = apply_resets(state, before, ~valid[t])
            y_t = torch.where(valid[t].view(-1, *([1] * (y_t.dim() - 1))), y_t, 0.0)
        ys.append(y_t)
    return torch.stack(ys, 1), state


REFERENCE_KERNEL = Kernel(
    backend="reference",
    target=ANY_CELL,
    run=reference_forward,
    description="sequential loop over Cell.recur (autograd); the oracle for every backend",
    priority=Priority.REFERENCE,
    supports_lengths=True,
)
