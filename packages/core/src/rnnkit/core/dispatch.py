"""Kernel dispatch: which implementation runs a cell's ``forward``.

Kernels are registered through the ``rnnkit_register_kernels`` hook and keyed by
``(backend, target)``, where ``target`` is a form (``"gated"``), a cell kind (``"lstm"``) or
``"*"`` (every cell). ``backend="auto"`` picks the available kernel with the highest priority
for this call; ``RNNKIT_BACKEND`` replaces ``"auto"`` globally; a named backend that cannot run
raises :class:`~rnnkit.core.errors.BackendUnavailableError` saying why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rnnkit.core.errors import BackendUnavailableError, unknown_name
from rnnkit.core.plugins import get_host

if TYPE_CHECKING:
    from rnnkit.core.cell import Cell

BACKEND_ENV = "RNNKIT_BACKEND"
ANY_CELL = "*"


@dataclass(frozen=True)
class KernelCall:
    """Everything a kernel sees of one ``forward`` call (inputs already validated).

    Attributes:
        cell: the cell.
        x: ``(B, T, input_size)``.
        state: the initial state, or ``None`` for the cell's ``init_state``.
        resets: bool ``(B, T)`` or ``None``.
        needs_grad: whether autograd will need gradients of the result.
    """

    cell: Cell[Any]
    x: Tensor
    state: tuple[Tensor, ...] | None
    resets: Tensor | None
    needs_grad: bool


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
        priority: ``auto`` prefers higher values; an int or a function of the call.
        available: ``() -> reason or None``: why it cannot run on this machine at all
            (not installed, no GPU), ``None`` when it can.
        supports: ``(call) -> reason or None``: why it cannot run this call (dtype, device,
            head size), ``None`` when it can.
    """

    backend: str
    target: str
    run: Callable[[KernelCall], tuple[Tensor, tuple[Tensor, ...]]]
    description: str = ""
    priority: int | Callable[[KernelCall], int] = 0
    available: Callable[[], str | None] = _always_available
    supports: Callable[[KernelCall], str | None] = _supports_everything

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


def targets_of(cell: Cell[Any]) -> list[str]:
    """The kernel targets a cell matches, most specific first: kind, forms, ``"*"``."""
    out = [cell.kind] if cell.kind else []
    out += sorted(f.value for f in cell.forms)
    out.append(ANY_CELL)
    return out


def kernels_for(cell: Cell[Any]) -> list[Kernel]:
    """Every registered kernel that targets ``cell``."""
    targets = set(targets_of(cell))
    return [e.obj for e in get_host().kernels if e.obj.target in targets]


def backend_names() -> list[str]:
    """Every registered backend name."""
    return sorted({e.obj.backend for e in get_host().kernels})


def _auto(call: KernelCall, candidates: list[Kernel]) -> tuple[Kernel | None, list[str]]:
    """The best kernel for ``call`` and the reasons the better-ranked ones were passed over."""
    ranked = sorted(candidates, key=lambda k: -k.rank(call))
    passed: list[str] = []
    for k in ranked:
        reason = k.why_not(call)
        if reason is None:
            return k, passed
        passed.append(f"{k.backend}: {reason}")
    return None, passed


def select(call: KernelCall, backend: str = "auto") -> Kernel:
    """The kernel that runs ``call`` for the requested ``backend`` (see module docstring)."""
    source = "backend"
    if backend == "auto" and os.environ.get(BACKEND_ENV, "").strip():
        backend, source = os.environ[BACKEND_ENV].strip(), f"{BACKEND_ENV} (environment)"
    candidates = kernels_for(call.cell)
    cell_name = call.cell.kind or type(call.cell).__name__
    if backend == "auto":
        kernel, passed = _auto(call, candidates)
        if kernel is None:
            raise BackendUnavailableError(
                f"no backend can run cell {cell_name!r} here: " + "; ".join(passed or ["none"])
            )
        return kernel
    if backend not in backend_names():
        raise unknown_name("backend", backend, backend_names())
    named = [k for k in candidates if k.backend == backend]
    if not named:
        usable = sorted({k.backend for k in candidates})
        raise BackendUnavailableError(
            f"{source} {backend!r} has no kernel for cell {cell_name!r} "
            f"(targets {', '.join(targets_of(call.cell))}); backends for this cell: "
            f"{', '.join(usable)}"
        )
    kernel, reasons = _auto(call, named)
    if kernel is None:
        fallback, _ = _auto(call, candidates)
        alt = f"; backend='auto' would use {fallback.backend!r}" if fallback else ""
        raise BackendUnavailableError(
            f"{source} {backend!r} cannot run cell {cell_name!r} here: "
            + "; ".join(r.split(": ", 1)[1] for r in reasons)
            + alt
        )
    return kernel


def run(
    cell: Cell[Any],
    x: Tensor,
    state: tuple[Tensor, ...] | None,
    *,
    resets: Tensor | None,
    backend: str = "auto",
) -> tuple[Tensor, Any]:
    """Run a validated ``forward`` call on the selected kernel."""
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in cell.parameters())
        or (state is not None and any(s.requires_grad for s in state))
    )
    call = KernelCall(cell, x, state, resets, needs_grad)
    return select(call, backend).run(call)
