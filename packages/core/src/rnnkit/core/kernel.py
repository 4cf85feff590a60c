"""The kernel vocabulary: what a backend implementation is, what it sees of a call, and the
named scale ``auto`` ranks implementations on.

This is a leaf module: it imports nothing from the rest of rnnkit at run time (the cell type
appears in annotations only), so the ABI (:mod:`rnnkit.core.cell`), dispatch
(:mod:`rnnkit.core.dispatch`), the hook specifications and the plugin host all build on it
without importing each other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rnnkit.core.cell import Cell

#: The kernel target that matches every cell.
ANY_CELL = "*"


def is_exporting() -> bool:
    """Whether ``torch.export`` is tracing the current call (kernels rank portable ATen code
    first there, and refuse calls whose ops do not export).

    Use this rather than ``torch.compiler.is_exporting()``: torch 2.11's dynamo folds that call
    to ``True`` under every ``torch.compile`` (2.13 reads the flag below, as this does), which
    gave compiled calls the export ranking and refusals.
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


class Priority(IntEnum):
    """The tiers ``backend="auto"`` ranks kernels on (higher runs first).

    A kernel's ``priority`` is one tier, or a function of the call returning one, so that a
    kernel can sit in a different tier for, say, CUDA and CPU. Which tier a kernel takes for
    which calls is decided by measurement (``tools/bench``); the figures behind each choice
    are in the kernel docs (``docs/kernels-*.md``), not in code. Use the tiers, not raw
    numbers: the gaps between them are not a scale to interpolate on.
    """

    #: Never chosen by ``auto`` over anything that can run the call; runs only when named
    #: (a simulator of noisy hardware for a cell that was not converted for it).
    NEVER = -1_000_000
    #: Measured slower than the ``reference`` loop for this call (an interpreter, a parallel
    #: solver on short sequences): ``auto`` keeps the loop, the kernel runs when named.
    BELOW_REFERENCE = -100
    #: The generic sequential loop over ``Cell.recur``: always available, the oracle.
    REFERENCE = 0
    #: Faster than the loop but measured slower than the form's portable kernel for this
    #: call, or kept off it on purpose (float64 validation runs stay on the portable kernel).
    FALLBACK = 5
    #: The form's portable fast kernel: pure torch, any device (``fused``, ``scan``,
    #: ``chunked``, a cell's own parallel algorithm).
    PORTABLE = 10
    #: Measured faster than the form's portable kernel for this call, but not than the
    #: device's best op where one exists (``fused_cpp`` against oneDNN's LSTM; S4D's
    #: convolution mode against the scans).
    BEATS_PORTABLE = 15
    #: The device's best measured op for this call: a vendor library (cuDNN, oneDNN through
    #: torch's RNN ops) or a GPU scan kernel.
    DEVICE_BEST = 20
    #: Measured faster than the device's best op for this call.
    BEATS_DEVICE_BEST = 25
    #: A fused GPU kernel that keeps the recurrent weights on chip across steps.
    FUSED_ON_CHIP = 30
    #: The user converted the cell for this backend (``to_analog``): it always runs there.
    CONVERTED = 1_000_000


@dataclass(frozen=True)
class KernelCall:
    """Everything a kernel sees of one ``forward`` call (inputs already validated).

    Attributes:
        cell: the cell.
        x: ``(B, T, input_size)``.
        state: the initial state, or ``None`` for the cell's ``init_state`` (never ``None``
            for a cell that overrides ``init_state``: ``Cell.forward`` hands kernels its
            state; see :func:`rnnkit.core.cell.overrides_init_state`).
        resets: bool ``(B, T)`` or ``None``; where true the state entering the step restarts
            from ``init_state`` (the fill ``StateField.init`` unless the cell overrides it).
        needs_grad: whether autograd will need gradients of the result.
        lengths: int64 ``(B,)`` on the CPU, or ``None`` (every sequence has length ``T``).
            Dispatch takes the empty sequences and the all-padding tail off first, so a
            kernel sees ``1 <= lengths[b] <= T`` with ``max(lengths) == T``, and never
            lengths that are all ``T`` (those calls come without). ``supports`` sees them
            when selecting; ``run`` gets them only with ``supports_lengths`` (see
            :mod:`rnnkit.core.varlen`).
    """

    cell: Cell[Any]
    x: Tensor
    state: tuple[Tensor, ...] | None
    resets: Tensor | None
    needs_grad: bool
    lengths: Tensor | None = None


class ProtocolGap(str):
    """A refusal reason (the value of ``Kernel.supports``) saying that the cell breaks the
    contract of the form the kernel targets: it declares the form but lacks a method or base
    class the form requires (``ProtocolGap("MyCell lacks jacobian_diag")``).

    Dispatch treats it as any other reason (``auto`` passes over the kernel; a named backend
    raises with it); the conformance kit fails on it, where a plain reason (a dtype, a head
    size, no GPU) only skips the kernel: a cell that declares a form it does not implement
    would otherwise lose the form's kernels without anyone noticing.
    """

    __slots__ = ()


def fill_restart_reason(cell: Cell[Any], instead: str) -> str:
    """The refusal reason of a kernel whose ``resets`` restart the state from the fill
    ``StateField.init`` (or zeros) for a ``cell`` that overrides ``init_state``; ``instead``
    names the backend ``auto`` runs such calls on. See
    :func:`rnnkit.core.cell.fill_restart_refusal`."""
    return (
        "resets restart the state from the fill StateField.init here, not from "
        f"{type(cell).__name__}'s own init_state (a learnable initial state?); "
        f"backend='auto' runs such calls on {instead}, which restarts from init_state"
    )


def _always_available() -> str | None:
    return None


def _supports_everything(call: KernelCall) -> str | None:
    return None


@dataclass(frozen=True)
class Kernel:
    """One backend implementation for one target.

    Attributes:
        backend: the backend name users pass as ``backend=`` (``"fused"``, ``"triton"``).
        target: a :class:`~rnnkit.core.forms.Form` value, a cell ``kind``, or ``"*"``.
        run: ``run(call) -> (y, final_state)``, with ``y: (B, T, output_size)`` and the final
            state an instance of the cell's ``state_type``.
        description: one line for ``rnnkit list backends``.
        priority: ``auto`` prefers higher values: a :class:`Priority` tier (any int is
            accepted) or a function of the call returning one.
        available: ``() -> reason or None``: why it cannot run on this machine at all
            (not installed, no GPU), ``None`` when it can.
        supports: ``(call) -> reason or None``: why it cannot run this call (dtype, device,
            head size), ``None`` when it can.
        supports_lengths: ``run`` handles ``call.lengths`` itself: ``y`` is zero at
            ``t >= lengths[b]`` and the final state is the one after step ``lengths[b] - 1``.
            Dispatch runs a kernel without it once per distinct length on the shrinking
            batch of sequences still running (see :mod:`rnnkit.core.varlen`), so every kernel
            accepts lengths; this flag only declares a faster single-call path.
    """

    backend: str
    target: str
    run: Callable[[KernelCall], tuple[Tensor, tuple[Tensor, ...]]]
    description: str = ""
    priority: int | Callable[[KernelCall], int] = Priority.REFERENCE
    available: Callable[[], str | None] = _always_available
    supports: Callable[[KernelCall], str | None] = _supports_everything
    supports_lengths: bool = False

    @property
    def key(self) -> str:
        """The registry key ``backend/target``."""
        return f"{self.backend}/{self.target}"

    def rank(self, call: KernelCall) -> int:
        """The priority of this kernel for ``call``."""
        return self.priority(call) if callable(self.priority) else self.priority

    def why_not(self, call: KernelCall) -> str | None:
        """Why this kernel cannot run ``call`` (``None`` when it can)."""
        return self.available() or self.supports(call)
