"""The ``analog`` backend's kernel: gated cells (elman, lstm, gru) on simulated crossbars.

Only cells converted by :func:`~rnnkit.kernels.analog.to_analog` run here: ``supports`` gives
the reason for any other cell (the simulator models noisy hardware, so it must never stand in
for an exact backend, neither under ``backend="auto"`` nor in the conformance kit, which runs
every backend that supports a cell). A converted cell gets a priority above every other
backend, so ``auto`` runs it on crossbars; ``backend="analog"`` then selects it explicitly.
"""

from __future__ import annotations

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.kernels.analog.cells import analog_forward, analog_reason, is_analog

__all__ = ["kernels"]

CONVERTED_PRIORITY = Priority.CONVERTED
UNCONVERTED_PRIORITY = Priority.NEVER


def _priority(call: KernelCall) -> Priority:
    return CONVERTED_PRIORITY if is_analog(call.cell) else UNCONVERTED_PRIORITY


def _supports(call: KernelCall) -> str | None:
    reason = analog_reason(call.cell)
    if reason is not None:
        return reason
    if not is_analog(call.cell):
        return (
            "the cell is not converted: call rnnkit.kernels.analog.to_analog(model, config) "
            "first (the analog backend simulates noisy hardware and is never used implicitly)"
        )
    if not call.x.is_floating_point():
        return f"dtype {call.x.dtype} is not supported (floating point only)"
    if call.x.device.type != "cpu":
        return "the analog simulator runs on CPU only for now (its seeded generators are CPU)"
    return None


def kernels() -> list[Kernel]:
    """The ``analog`` kernel (target: the gated form)."""
    return [
        Kernel(
            backend="analog",
            target="gated",
            run=analog_forward,
            description="crossbar simulator: one tile per cell, ramp NL-ADC activations",
            priority=_priority,
            supports=_supports,
        )
    ]
