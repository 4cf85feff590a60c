"""The ``selective_torch`` backend of the selective diagonal form: the step recurrence in plain
torch, in chunks of :data:`CHUNK` steps, each chunk recomputed in the backward
(``torch.utils.checkpoint``).

Autograd of the plain loop keeps every step's ``(B, D, N)`` state and decay for the backward,
``O(B T D N)`` in all; here only each chunk's inputs and the state entering it are kept, and one
chunk's steps are rebuilt at a time in the backward: ``O(B D N (T / CHUNK + CHUNK))``. It runs
on any device and dtype, is the fallback of ``selective_cpp`` when its library cannot be built,
and is the same arithmetic as the reference, so non-finite values spread exactly as there.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rnnkit.core.dispatch import Kernel, Priority
from rnnkit.kernels.selective._shell import ScanInputs, scan_function, selective_kernel
from rnnkit.kernels.selective.reference import selective_scan_reference

#: Backend name (``backend="selective_torch"``).
BACKEND = "selective_torch"
#: Steps per recomputed chunk.
CHUNK = 64


def _chunk(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor,
    resets: Tensor | None,
) -> tuple[Tensor, Tensor]:
    return selective_scan_reference(x, dt, A, B, C, D, h0, resets=resets)


def _loop(inputs: ScanInputs, resets: Tensor | None, chunk: int) -> tuple[Tensor, Tensor]:
    x, dt, A, B, C, D, h0 = inputs
    if x.shape[1] == 0:
        return x.new_empty(x.shape), h0
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C, D, h0))
    parts = [t.split(chunk, 1) for t in (x, dt, B, C)]  # type: ignore[no-untyped-call]
    n_chunks = len(parts[0])
    rs: list[Tensor | None] = [None] * n_chunks
    if resets is not None:
        rs = list(resets.split(chunk, 1))  # type: ignore[no-untyped-call]
    h, ys = h0, []
    for x_c, dt_c, B_c, C_c, r_c in zip(*parts, rs, strict=True):
        if grad:
            y_c, h = checkpoint(_chunk, x_c, dt_c, A, B_c, C_c, D, h, r_c, use_reentrant=False)
        else:
            y_c, h = _chunk(x_c, dt_c, A, B_c, C_c, D, h, r_c)
        ys.append(y_c)
    return torch.cat(ys, 1), h


selective_scan_torch = scan_function(
    "selective_scan_torch",
    _loop,
    default_chunk=lambda: CHUNK,
    summary="The selective scan chunk by chunk, each chunk recomputed in the backward.",
)


def kernels() -> list[Kernel]:
    """The ``selective_torch`` kernel for every cell of the selective diagonal form."""
    return [
        selective_kernel(
            BACKEND,
            selective_scan_torch,
            description="selective scan, step loop in torch, chunks recomputed in the backward",
            priority=Priority.PORTABLE,
        )
    ]
