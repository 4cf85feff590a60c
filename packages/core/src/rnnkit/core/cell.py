"""The cell ABI: the base class every recurrent architecture in rnnkit implements.

See ``docs/cell-abi.md`` for the full specification.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Generic, cast

import torch
from torch import Tensor, nn

from rnnkit.core.dispatch import run
from rnnkit.core.forms import Form
from rnnkit.core.kernel import KernelCall, fill_restart_reason
from rnnkit.core.state import StateField, StateT
from rnnkit.core.validation import (
    cell_dtype_device,
    check_lengths,
    check_resets,
    check_sequence,
    check_state,
    check_step_input,
)


class Cell(nn.Module, ABC, Generic[StateT]):
    """A recurrent cell: ``(B, T, input_size) -> (B, T, output_size)`` plus a state.

    Subclasses set the class attributes and implement :meth:`project`, :meth:`recur` and
    :meth:`state_spec`; everything else (``step``, ``forward``, ``init_state``, validation,
    backend dispatch, ``resets``) is provided here.

    Class attributes:
        kind: the name kernels may target for cell-specific implementations (``"lstm"``).
        forms: the structural forms the cell has (:class:`~rnnkit.core.forms.Form`).
        state_type: the ``NamedTuple`` class of the state.

    ``backend_priority`` maps backend names to :class:`~rnnkit.core.kernel.Priority` tiers that
    replace the kernels' own ranks for this cell under ``backend="auto"`` (class default: none);
    :meth:`set_backend_priority` sets one for an instance, e.g. to keep ``auto`` off a backend
    that is slow or unreliable for this cell: ``cell.set_backend_priority("newton",
    Priority.BELOW_REFERENCE)``. A named ``backend=`` still runs whatever it names.

    Instance attributes (set by the subclass constructor):
        input_size: width of ``x``.
        hidden_size: width of the recurrent state.
        output_size: width of ``y``.
        projected_size: width of ``project(x)``.
    """

    kind: ClassVar[str] = ""
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type: ClassVar[type[Any]]

    input_size: int
    hidden_size: int
    output_size: int
    projected_size: int
    backend_priority: Mapping[str, int] = MappingProxyType({})

    # --- what a cell implements -----------------------------------------------------------

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """The time-parallel part: ``(..., input_size) -> (..., projected_size)``."""

    @abstractmethod
    def recur(self, px_t: Tensor, state: StateT) -> tuple[Tensor, StateT]:
        """One sequential step on a projected input.

        Args:
            px_t: ``(B, projected_size)``.
            state: the state entering the step, each field ``(B, *field.shape)``.

        Returns:
            ``(y_t, state)`` with ``y_t: (B, output_size)`` and the state leaving the step.
        """

    @abstractmethod
    def state_spec(self) -> tuple[StateField, ...]:
        """The fields of the state, in ``state_type`` order."""

    # --- provided ---------------------------------------------------------------------------

    def set_backend_priority(self, backend: str, priority: int | None) -> None:
        """Rank ``backend`` at ``priority`` (a :class:`~rnnkit.core.kernel.Priority` tier) for
        this cell under ``auto``; ``None`` goes back to the kernel's own rank."""
        table = dict(self.backend_priority)
        if priority is None:
            table.pop(backend, None)
        else:
            table[backend] = int(priority)
        self.backend_priority = table  # a plain dict: cells are deep-copied

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StateT:
        """The initial state for ``batch`` sequences (each field filled with ``field.init``).

        ``device`` and ``dtype`` default to those of the cell's parameters (float32 on CPU for a
        cell without parameters). A subclass may override it, for a learnable initial state
        (an ``nn.Parameter`` expanded over the batch): the fields must have ``state_spec``'s
        shapes and dtypes, be on ``device`` and hold the same state for every example
        (``resets`` restart each sequence from it); see docs/cell-abi.md, section 3. Every
        backend then starts from it (``forward`` hands kernels its state, see
        :func:`overrides_init_state`) and restarts from it at ``resets``, or refuses the call.
        """
        if batch < 0:
            raise ValueError(f"batch must be non-negative, got {batch}")
        p_dtype, p_device = cell_dtype_device(self)
        dtype = dtype or p_dtype or torch.get_default_dtype()
        device = torch.device(device) if device is not None else (p_device or torch.device("cpu"))
        fields = [
            torch.full(f.full_shape(batch), f.init, dtype=f.resolve_dtype(dtype), device=device)
            for f in self.state_spec()
        ]
        state: StateT = self.state_type._make(fields)
        return state

    def check_state(self, state: object, *, batch: int, like: Tensor) -> StateT:
        """Validate a user-given state for a batch of ``batch`` on ``like``'s dtype and device."""
        return cast(
            StateT,
            check_state(
                self.state_spec(),
                state,
                batch=batch,
                dtype=like.dtype,
                device=like.device,
                state_type=self.state_type,
            ),
        )

    def step(self, x_t: Tensor, state: StateT | None = None) -> tuple[Tensor, StateT]:
        """Advance one step from the raw input: ``recur(project(x_t), state)``.

        Args:
            x_t: ``(B, input_size)``.
            state: the current state, or ``None`` for :meth:`init_state`.

        Returns:
            ``(y_t, state)`` with ``y_t: (B, output_size)``.
        """
        x_t = check_step_input(self, x_t)
        batch = x_t.shape[0]
        if state is None:
            state = self.init_state(batch, device=x_t.device, dtype=x_t.dtype)
        else:
            state = self.check_state(state, batch=batch, like=x_t)
        return self.step_unchecked(x_t, state)

    def step_unchecked(self, x_t: Tensor, state: StateT) -> tuple[Tensor, StateT]:
        """:meth:`step` without input validation: ``recur(project(x_t), state)``.

        Cells may override it with a faster equivalent (e.g. one fused torch op); it must
        stay equal to ``recur(project(x_t), state)``, which the conformance kit checks.
        """
        return self.recur(self.project(x_t), state)

    def forward(
        self,
        x: Tensor,
        state: StateT | None = None,
        *,
        backend: str = "auto",
        resets: Tensor | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, StateT]:
        """Run the whole sequence.

        Args:
            x: ``(B, T, input_size)``, batch-first.
            state: the initial state, or ``None`` for :meth:`init_state`.
            backend: a registered backend name, or ``"auto"`` for the fastest available one
                (the environment variable ``RNNKIT_BACKEND`` overrides ``"auto"``).
            resets: optional bool ``(B, T)``; where true, the state entering step ``t`` is
                replaced by :meth:`init_state` (an episode starts at ``t``).
            lengths: optional ``(B,)`` integers in ``[0, T]`` (a tensor on any device, or a
                list): ``x`` is right-padded and sequence ``b`` is ``x[b, :lengths[b]]``. The
                result equals running each sequence alone: ``y[b, t]`` is zero for
                ``t >= lengths[b]`` and the final state is the one after step
                ``lengths[b] - 1`` (the initial state for length 0). Every backend accepts it
                (see :mod:`rnnkit.core.varlen`).

        Returns:
            ``(y, final_state)`` with ``y: (B, T, output_size)``.

        Under ``torch.autocast`` for ``x``'s device, a cell with float32 parameters takes
        ``x`` (and ``state``) in any floating dtype, runs in float32 with autocast off (the
        recurrence compounds rounding over the steps, so every backend keeps it in float32) and
        returns ``y`` in autocast's dtype, like a linear layer; the final state stays float32.
        """
        autocast_dtype = _autocast_dtype(self, x)
        if autocast_dtype is not None:
            return _run_autocast(self, x, state, autocast_dtype, backend=backend, resets=resets)
        x = check_sequence(self, x)
        batch, time = x.shape[0], x.shape[1]
        if state is not None:
            state = self.check_state(state, batch=batch, like=x)
        if resets is not None:
            resets = check_resets(resets, batch=batch, time=time, device=x.device)
        if lengths is not None:
            lengths = check_lengths(lengths, batch=batch, time=time)
        if state is None and overrides_init_state(self):
            # a kernel given no state may start from the fill StateField.init (or zeros): hand
            # it init_state's, with the gradient of a learnable initial state
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        return run(self, x, state, resets=resets, backend=backend, lengths=lengths)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}"
        )


def overrides_init_state(cell: Cell[Any]) -> bool:
    """Whether ``cell`` overrides :meth:`Cell.init_state` (in its class or on the instance),
    e.g. with a learnable initial state: its initial state is then not the fill
    ``StateField.init`` of its ``state_spec``, nor necessarily constant.

    For such a cell :meth:`Cell.forward` hands kernels ``init_state``'s state instead of
    ``None``, and a kernel given ``resets`` must restart each sequence from ``init_state``
    (one example of it, ``init_state(1)``, broadcast over the batch: every example starts from
    the same state) with its gradient, or refuse the call (see
    :func:`fill_restart_refusal`). A cell without an override keeps every fast path.
    """
    # (not ``cell.init_state.__func__``: torch.compile's dynamo does not trace that as is)
    return type(cell).init_state is not Cell.init_state or "init_state" in cell.__dict__


def fill_restart_refusal(call: KernelCall, instead: str) -> str | None:
    """The ``supports`` reason of a kernel whose ``resets`` restart the state from the fill
    ``StateField.init`` (or zeros) rather than from ``init_state``: a reason naming
    ``instead``, the backend ``auto`` runs the call on, when the call has resets and its cell
    :func:`overrides_init_state`; else ``None``."""
    if call.resets is None or not overrides_init_state(call.cell):
        return None
    return fill_restart_reason(call.cell, repr(instead))


#: Whether autocast exists for a device type, looked up once per type outside any trace:
#: torch 2.11's dynamo cannot trace ``torch.amp.is_autocast_available`` (a graph break, an
#: error under ``fullgraph=True``), and every ``cell(x)`` asks.
_AUTOCAST_AVAILABLE: dict[str, bool] = {
    d: torch.amp.is_autocast_available(d) for d in ("cpu", "cuda", "xpu", "mps", "hpu", "meta")
}


def _autocast_available(device: str) -> bool:
    known = _AUTOCAST_AVAILABLE.get(device)
    if known is None:  # another backend (a renamed privateuseone, say): asked once
        known = _AUTOCAST_AVAILABLE[device] = torch.amp.is_autocast_available(device)
    return known


def _autocast_dtype(cell: Cell[Any], x: object) -> torch.dtype | None:
    """Autocast's dtype when ``cell(x)`` runs under an enabled ``torch.autocast`` for ``x``'s
    device and the cell's parameters are float32 (the dtype autocast lowers), else ``None``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return None
    device = x.device.type
    if not _autocast_available(device) or not torch.is_autocast_enabled(device):
        return None
    if cell_dtype_device(cell)[0] != torch.float32:
        return None
    return torch.get_autocast_dtype(device)


def _run_autocast(
    cell: Cell[Any],
    x: Tensor,
    state: Any,
    dtype: torch.dtype,
    *,
    backend: str,
    resets: Tensor | None,
) -> tuple[Tensor, Any]:
    """:meth:`Cell.forward` under autocast: float32 inside, ``y`` in ``dtype``."""
    if isinstance(state, (tuple, list)):
        fields = [
            s.float() if isinstance(s, Tensor) and s.is_floating_point() else s for s in state
        ]
        state = type(state)(*fields) if hasattr(state, "_fields") else type(state)(fields)
    with torch.autocast(x.device.type, enabled=False):
        y, final = cell(x.float(), state, backend=backend, resets=resets)
    return (y.to(dtype) if y.is_floating_point() else y), final
