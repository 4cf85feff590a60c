"""The ``newton`` dispatch kernel for cells of the diagonal-Jacobian form."""

from __future__ import annotations

import torch

from rnnkit.core.dispatch import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.forms import Form
from rnnkit.kernels.newton._kernel import failed_before, newton_forward
from rnnkit.kernels.newton._solve import PROTOCOL

#: ``auto`` prefers ``newton`` over the sequential loop from this many steps on ...
MIN_AUTO_TIME = 128
#: ... and, on CPU, only up to this many parallel lanes ``B * hidden_size``: wider steps
#: amortise the loop's per-step overhead while Newton's repeated evaluations of the step and
#: its scans grow with them (crossover measured in ``docs/kernels-newton.md``, "auto").
MAX_AUTO_LANES_CPU = 2048


def _supports(call: KernelCall) -> str | None:
    cell = call.cell
    missing = [m for m in PROTOCOL if not callable(getattr(cell, m, None))]
    if missing:
        return ProtocolGap(
            f"{type(cell).__name__} lacks the diagonal-Jacobian protocol methods "
            f"{', '.join(missing)} (see docs/kernels-newton.md)"
        )
    block = getattr(cell, "newton_block", 1)
    if block not in (1, 2):
        return f"newton_block must be 1 or 2, got {block!r}"
    if call.x.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        return f"newton solves real floating inputs, got {call.x.dtype}"
    return None


def _priority(call: KernelCall) -> Priority:
    if failed_before(call):
        return Priority.BELOW_REFERENCE
    if call.x.shape[1] < MIN_AUTO_TIME:
        return Priority.BELOW_REFERENCE
    lanes = call.x.shape[0] * call.cell.hidden_size
    if call.x.device.type == "cpu" and lanes > MAX_AUTO_LANES_CPU:
        return Priority.BELOW_REFERENCE
    return Priority.PORTABLE


def kernels() -> list[Kernel]:
    """The ``newton`` kernel (pure torch, any device)."""
    return [
        Kernel(
            backend="newton",
            target=Form.DIAGONAL_JACOBIAN.value,
            run=newton_forward,
            description="ParaRNN-style Newton solve with scans, adjoint-scan backward",
            priority=_priority,
            supports=_supports,
        )
    ]
