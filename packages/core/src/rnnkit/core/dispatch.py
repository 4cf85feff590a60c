"""Kernel dispatch: which implementation runs a cell's ``forward``.

Kernels are registered through the ``rnnkit_register_kernels`` hook and keyed by
``(backend, target)``, where ``target`` is a form (``"gated"``), a cell kind (``"lstm"``) or
``"*"`` (every cell). ``backend="auto"`` picks the available kernel with the highest
:class:`~rnnkit.core.kernel.Priority` for this call; ``RNNKIT_BACKEND`` replaces ``"auto"``
globally; a named backend that cannot run raises
:class:`~rnnkit.core.errors.BackendUnavailableError` saying why.

Dispatch reads the registered kernels through a *kernel source*, a function the plugin host
installs when :mod:`rnnkit.core.plugins` is imported (``import rnnkit.core`` does that), so
that this module needs nothing from the host: the cell ABI imports dispatch, the host imports
the ABI to validate registrations, and neither import runs in a circle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import torch
from torch import Tensor

from rnnkit.core.errors import BackendUnavailableError, unknown_name
from rnnkit.core.kernel import (
    ANY_CELL,
    Kernel,
    KernelCall,
    Priority,
    ProtocolGap,
    fill_restart_reason,
)
from rnnkit.core.varlen import run_with_lengths

if TYPE_CHECKING:
    from rnnkit.core.cell import Cell

__all__ = [
    "ANY_CELL",
    "BACKEND_ENV",
    "CellMethod",
    "Kernel",
    "KernelCall",
    "Priority",
    "ProtocolGap",
    "backend_names",
    "cell_method_kernel",
    "kernels_for",
    "rank_of",
    "ranking",
    "registered_kernels",
    "run",
    "select",
    "set_kernel_source",
    "targets_of",
]

BACKEND_ENV = "RNNKIT_BACKEND"

CellT = TypeVar("CellT", bound="Cell[Any]")
CellT_contra = TypeVar("CellT_contra", bound="Cell[Any]", contravariant=True)

#: ``() -> every registered kernel``, as a list the caller may keep.
KernelSource = Callable[[], list[Kernel]]
_source: KernelSource | None = None


def set_kernel_source(source: KernelSource) -> KernelSource | None:
    """Install where dispatch finds the registered kernels; returns the previous source.

    The plugin host installs ``lambda: [e.obj for e in get_host().kernels]`` when it is
    imported; tests can install a fixed list.
    """
    global _source
    old, _source = _source, source
    return old


def registered_kernels() -> list[Kernel]:
    """Every registered kernel (loads the plugins on first use)."""
    if _source is None:
        raise RuntimeError(
            "rnnkit.core.dispatch has no kernel source: import rnnkit.core (the plugin host "
            "installs it) before running a cell"
        )
    return _source()  # already a fresh list: no second copy on every dispatch


def targets_of(cell: Cell[Any]) -> list[str]:
    """The kernel targets a cell matches, most specific first: kind, forms, ``"*"``."""
    out = [cell.kind] if cell.kind else []
    out += sorted(f.value for f in cell.forms)
    out.append(ANY_CELL)
    return out


def kernels_for(cell: Cell[Any]) -> list[Kernel]:
    """Every registered kernel that targets ``cell``."""
    targets = set(targets_of(cell))
    return [k for k in registered_kernels() if k.target in targets]


def backend_names() -> list[str]:
    """Every registered backend name."""
    return sorted({k.backend for k in registered_kernels()})


def rank_of(kernel: Kernel, call: KernelCall) -> int:
    """``kernel``'s priority for ``call``: the cell's ``backend_priority`` entry for the
    backend if it has one, else the kernel's own rank."""
    override = call.cell.backend_priority.get(kernel.backend)
    return kernel.rank(call) if override is None else override


def ranking(call: KernelCall, candidates: Sequence[Kernel] | None = None) -> list[Kernel]:
    """The kernels for ``call`` (default: every kernel targeting its cell) in the order ``auto``
    tries them: highest priority first; among equals, in the order of their keys
    (``backend/target``, the registry's order), whatever order the plugins registered them in."""
    pool = kernels_for(call.cell) if candidates is None else candidates
    return sorted(pool, key=lambda k: -rank_of(k, call))


def _auto(call: KernelCall, candidates: list[Kernel]) -> tuple[Kernel | None, list[str]]:
    """The best kernel for ``call`` and the reasons the better-ranked ones were passed over."""
    passed: list[str] = []
    for k in ranking(call, candidates):
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
    lengths: Tensor | None = None,
) -> tuple[Tensor, Any]:
    """Run a validated ``forward`` call on the selected kernel (``lengths``: int64 ``(B,)`` on
    the CPU, see :mod:`rnnkit.core.varlen`)."""
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in cell.parameters())
        or (state is not None and any(s.requires_grad for s in state))
    )
    call = KernelCall(cell, x, state, resets, needs_grad, lengths)
    if lengths is not None:
        return run_with_lengths(call, lambda c: select(c, backend))
    return select(call, backend).run(call)


class CellMethod(Protocol[CellT_contra]):
    """A cell class's own whole-sequence method, taken from the class (``PLSTM.chunked_forward``):
    ``method(cell, x, state, *, resets) -> (y, final_state)``, with ``x: (B, T, input_size)``,
    ``state`` the cell's state ``NamedTuple`` or ``None`` (the cell's ``init_state``), ``resets``
    bool ``(B, T)`` or ``None``, ``y: (B, T, output_size)`` and the final state a ``state_type``
    instance. The method may skip validation: ``forward`` validates before dispatch. Where
    ``resets`` is true the state restarts from the cell's ``init_state``: a method that
    restarts from the class's own initial state (the fill, zeros) runs no resets for a
    subclass overriding ``init_state`` (see :func:`cell_method_kernel`)."""

    __name__: str

    def __call__(
        self, cell: CellT_contra, x: Tensor, state: Any, /, *, resets: Tensor | None
    ) -> tuple[Tensor, Any]: ...


def cell_method_kernel(
    cls: type[CellT],
    method: CellMethod[CellT],
    *,
    backend: str,
    description: str,
    priority: int | Callable[[KernelCall], int],
    target: str | None = None,
    label: str | None = None,
    supports_extra: Callable[[CellT, KernelCall], str | None] | None = None,
    restarts_from_init_state: bool = False,
) -> Kernel:
    """A :class:`Kernel` that runs a cell's own parallel algorithm, a method of the cell class.

    The kernel's ``run`` refuses a cell that is not a ``cls`` with a ``TypeError``, rebuilds
    the call's state as the cell's ``state_type`` (``None`` stays ``None``) and calls the
    method named ``method.__name__`` on the cell, so a subclass's override runs. Its
    ``supports`` refuses a cell that is not a ``cls``, then returns ``supports_extra(cell,
    call)`` (what the method cannot do: resets, a missing setting) when given; last, unless
    ``restarts_from_init_state``, it refuses ``resets`` for a cell whose ``init_state`` is not
    ``cls``'s (a subclass with a learnable initial state): the method restarts from what
    ``cls`` starts from, and ``auto`` runs such calls on another backend.

    Args:
        cls: the cell class the method belongs to (``isinstance`` is checked, so its
            subclasses are accepted).
        method: the method, taken from ``cls`` (``PLSTM.chunked_forward``); see
            :class:`CellMethod`.
        backend: the backend name (``"chunked"``).
        description: one line for ``rnnkit list backends``.
        priority: a :class:`Priority` tier or a function of the call returning one.
        target: the kernel target; default ``cls.kind``.
        label: how messages name the cells it runs; default ``cls.__name__``.
        supports_extra: ``(cell, call) -> reason or None``, asked after the type check.
        restarts_from_init_state: the method restarts ``resets`` from ``cell.init_state``
            (one example of it, with its gradient), so it runs them for every cell.

    Raises:
        ValueError: ``method`` is not ``cls``'s attribute of that name, or the target is empty
            (``cls`` has no ``kind`` and no ``target`` was given).
    """
    name = method.__name__
    if not hasattr(cls, name):
        raise ValueError(
            f"{cls.__name__} has no attribute {name!r}: define the method in the class body "
            f"under that name (the kernel calls cell.{name}, so a subclass's override runs), "
            f"got {method!r}"
        )
    if getattr(cls, name) is not method:
        raise ValueError(
            f"method must be an attribute of {cls.__name__} (pass {cls.__name__}.{name}), "
            f"got {method!r}"
        )
    kernel_target = cls.kind if target is None else target
    if not kernel_target:
        raise ValueError(f"{cls.__name__} has no kind: give cell_method_kernel a target")
    cells = cls.__name__ if label is None else label

    def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        cell = call.cell
        if not isinstance(cell, cls):
            raise TypeError(f"the {backend} backend runs {cells} cells, got {type(cell).__name__}")
        state = None if call.state is None else cell.state_type._make(call.state)
        bound = getattr(cell, name)
        return cast(tuple[Tensor, tuple[Tensor, ...]], bound(call.x, state, resets=call.resets))

    def supports(call: KernelCall) -> str | None:
        cell = call.cell
        if not isinstance(cell, cls):
            return f"runs {cells} cells only, not {type(cell).__name__}"
        reason = None if supports_extra is None else supports_extra(cell, call)
        if (
            reason is None
            and call.resets is not None
            and not restarts_from_init_state
            # an init_state other than cls's (the method's own start): a learnable one, say
            and (type(cell).init_state is not cls.init_state or "init_state" in cell.__dict__)
        ):
            return fill_restart_reason(cell, "another backend ('reference' at the latest)")
        return reason

    run.__doc__ = f"The {backend!r} kernel: {cls.__name__}.{name} on a validated call."
    return Kernel(
        backend=backend,
        target=kernel_target,
        run=run,
        description=description,
        priority=priority,
        supports=supports,
    )
