"""The ``newton`` dispatch kernel for cells of the diagonal-Jacobian form."""

from __future__ import annotations

import torch

from rnnkit.core.dispatch import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.forms import Form
from rnnkit.kernels.newton._kernel import failed_before, iterations_before, newton_forward
from rnnkit.kernels.newton._solve import PROTOCOL

#: ``auto`` prefers ``newton`` over the sequential loop from this many steps on ...
MIN_AUTO_TIME = 128
#: ... and, on CPU, only while ``lanes * iterations`` (``lanes = B * hidden_size``) stays
#: within a work budget: Newton's cost grows with both (every iteration evaluates the step
#: and runs a scan over all lanes), while wider steps amortise the loop's per-step overhead.
#: ``iterations`` is what the last converged solve of this cell at this call shape needed,
#: or :data:`PRIOR_ITERATIONS` before the first. The budget is the cell's
#: ``newton_auto_work`` attribute when it has one (a cell whose sequential step is cheap,
#: like IndRNN's, sets a smaller one), else :data:`DEFAULT_AUTO_WORK_CPU`. Crossovers
#: measured in ``docs/kernels-newton.md``, "When auto picks it".
PRIOR_ITERATIONS = 4
#: The default budget: with the prior of 4 iterations, up to 2048 lanes (ParaGRU's crossover).
DEFAULT_AUTO_WORK_CPU = 8192
#: The lanes ``auto`` accepts before any solve with the default budget (kept for reference).
MAX_AUTO_LANES_CPU = DEFAULT_AUTO_WORK_CPU // PRIOR_ITERATIONS


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
    if call.x.device.type == "cpu":
        lanes = call.x.shape[0] * call.cell.hidden_size
        seen = iterations_before(call)
        iterations = PRIOR_ITERATIONS if seen is None else max(seen, 1)
        if lanes * iterations > auto_work(call.cell):
            return Priority.BELOW_REFERENCE
    return Priority.PORTABLE


def auto_work(cell: object) -> int:
    """The CPU work budget ``lanes * iterations`` up to which ``auto`` ranks Newton above the
    loop for ``cell``: its ``newton_auto_work`` attribute, else :data:`DEFAULT_AUTO_WORK_CPU`."""
    work = getattr(cell, "newton_auto_work", None)
    return DEFAULT_AUTO_WORK_CPU if work is None else int(work)


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
