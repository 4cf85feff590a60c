"""What every backend of the selective diagonal form shares: running a cell's call through a
scan function, and the check that the cell implements the form."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall, ProtocolGap
from rnnkit.core.selective import SelectiveDiagonalCell

#: The dtypes the backends compute in; 16-bit inputs run the scan in float32.
COMPUTE_DTYPES = (torch.float32, torch.float64)


class ScanFn(Protocol):
    """``scan(x, dt, A, B, C, D, h0, *, resets) -> (y, h)`` with the shapes of
    :func:`rnnkit.kernels.selective.reference.selective_scan_reference`."""

    def __call__(
        self,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        h0: Tensor,
        /,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...


def run_selective(call: KernelCall, scan: ScanFn) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a :class:`~rnnkit.core.selective.SelectiveDiagonalCell` call: the cell's
    time-parallel :meth:`selective_inputs`, ``scan``, then the cell's :meth:`selective_outputs`;
    ``y: (B, T, output_size)`` and the final state. 16-bit inputs run the scan in float32."""
    cell = call.cell
    if not isinstance(cell, SelectiveDiagonalCell):
        raise TypeError(
            f"the selective backends run selective diagonal cells, got {type(cell).__name__}"
        )
    inputs = cell.selective_inputs(call.x, call.state, call.resets)
    x, dt, A, B, C, D, h0, _ = inputs
    if x.shape[1] == 0:
        return cell.selective_outputs(x, h0, inputs)
    work = x.dtype if x.dtype in COMPUTE_DTYPES else torch.float32
    y, h = scan(
        *(t.to(work) for t in (x, dt, A, B, C, D, h0)),
        resets=call.resets,
    )
    return cell.selective_outputs(y.to(x.dtype), h.to(h0.dtype), inputs)


def protocol_gap(call: KernelCall) -> str | None:
    """A :class:`ProtocolGap` when the cell declares the form without its base class."""
    if not isinstance(call.cell, SelectiveDiagonalCell):
        return ProtocolGap(
            f"{type(call.cell).__name__} declares the selective diagonal form but is not a "
            "SelectiveDiagonalCell (the kernels need its selective_inputs() and "
            "selective_outputs())"
        )
    return None
