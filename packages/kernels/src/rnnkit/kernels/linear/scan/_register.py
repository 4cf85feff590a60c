"""The dispatch kernels of the scan backends, for cells of the diagonal linear form.

With ``lengths`` a sequence's state is held past its last step by the recurrence itself:
``a_t = 1, b_t = 0`` there (so ``h_t = h_{t-1}`` exactly, with zero gradient into the padding),
one scan for the whole batch.

``resets`` restart the scans from zero; a cell whose ``init_state`` is not zero (it overrides
``init_state``, e.g. with a learnable initial state, or its field's fill is not 0) restarts
from ``h_init``, one example of ``init_state``, by the same recurrence:
``h_t = a_t h_init + b_t`` at a reset, so the scan runs with ``b_t + a_t h_init`` there (and its
gradient reaches ``h_init`` through that sum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import overrides_init_state
from rnnkit.core.dispatch import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.forms import Form
from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.varlen import step_mask
from rnnkit.kernels.linear.scan import _triton
from rnnkit.kernels.linear.scan.op import linear_scan


def _supports(call: KernelCall) -> str | None:
    cell = call.cell
    if not isinstance(cell, DiagonalLinearCell):
        return ProtocolGap(
            f"{type(cell).__name__} declares the diagonal linear form but is not a "
            "DiagonalLinearCell (the scan needs its coefficients() and readout())"
        )
    spec = cell.state_spec()
    if len(spec) != 1:
        return f"the scan runs a one-field state h, but the cell's state has {len(spec)} fields"
    return None


def _supports_triton(call: KernelCall) -> str | None:
    reason = _supports(call)
    if reason is not None:
        return reason
    spec = call.cell.state_spec()[0]
    dtype = spec.resolve_dtype(call.x.dtype)
    return _triton.unavailable_reason(call.x.device, dtype)


def _run(call: KernelCall, backend: str) -> tuple[Tensor, tuple[Tensor, ...]]:
    cell: Any = call.cell
    x = call.x
    batch, time = x.shape[0], x.shape[1]
    state = call.state
    if state is None:
        state = cell.init_state(batch, device=x.device, dtype=x.dtype)
    if time == 0:
        return x.new_empty(batch, 0, cell.output_size), state
    px = cell.project(x)
    a, b = cell.coefficients(px)
    (h0,) = state
    resets = call.resets
    valid = None
    if call.lengths is not None:
        valid = step_mask(call.lengths, time, x.device)
        keep = valid.unsqueeze(-1)
        a = torch.where(keep, a, torch.ones((), dtype=a.dtype, device=a.device))
        b = torch.where(keep, b, torch.zeros((), dtype=b.dtype, device=b.device))
        resets = None if resets is None else resets & valid
    if resets is not None and (overrides_init_state(cell) or cell.state_spec()[0].init != 0.0):
        # the scans restart from zero: h_t = a_t h_init + b_t at a reset
        (h_init,) = cell.init_state(1, device=x.device, dtype=x.dtype)
        b = b + torch.where(resets.unsqueeze(-1), a * h_init.to(b.dtype), 0.0)
    common = torch.promote_types(torch.promote_types(a.dtype, b.dtype), h0.dtype)
    h, h_last = linear_scan(
        a.to(common), b.to(common), h0.to(common), resets=resets, backend=backend
    )
    y = cell.readout(h, px)
    if valid is not None:
        y = torch.where(valid.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))
    final: tuple[Tensor, ...] = cell.state_type(h_last.to(h0.dtype))
    return y, final


def _run_torch(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    # on CPU "auto" is the native scan when it builds, else (with a warning) the torch scan
    return _run(call, "auto" if call.x.device.type == "cpu" else "torch")


def _run_triton(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    return _run(call, "triton")


def _triton_available() -> str | None:
    return _triton.unavailable_reason()


def _triton_priority(call: KernelCall) -> Priority:
    # Under TRITON_INTERPRET=1 the kernels also run on CPU, but far slower than "scan" there.
    return Priority.DEVICE_BEST if call.x.device.type == "cuda" else Priority.FALLBACK


def kernels() -> list[Kernel]:
    """The ``scan`` (torch, any device) and ``scan_triton`` (CUDA) kernels."""
    target = Form.DIAGONAL_LINEAR.value
    return [
        Kernel(
            backend="scan",
            target=target,
            run=_run_torch,
            description=(
                "linear scan: native C++ on CPU when it builds, else chunked pure torch "
                "(any device, real and complex)"
            ),
            priority=Priority.PORTABLE,
            supports=_supports,
            supports_lengths=True,
        ),
        Kernel(
            backend="scan_triton",
            target=target,
            run=_run_triton,
            description="Triton linear scan, single-pass or chunked kernels (CUDA, real dtypes)",
            priority=_triton_priority,
            available=_triton_available,
            supports=_supports_triton,
            supports_lengths=True,
        ),
    ]
