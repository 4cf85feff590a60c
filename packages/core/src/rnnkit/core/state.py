"""State descriptions (``state_spec``) and the helpers every backend uses on states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

StateT = TypeVar("StateT", bound=tuple[Tensor, ...])


@dataclass(frozen=True)
class StateField:
    """One tensor of a cell's state.

    Attributes:
        name: the ``NamedTuple`` field name (``"h"``, ``"c"``, ...).
        shape: the per-example shape; the full tensor is ``(batch, *shape)``.
        dtype: a fixed dtype, or ``None`` to follow the compute dtype of the input.
        complex: when ``dtype`` is ``None``, whether the field is the complex counterpart of the
            compute dtype (for complex diagonal recurrences).
        init: the value the base class's ``init_state`` fills the field with (a cell that
            overrides ``init_state``, for a learnable initial state, need not use it).
        doc: a short description for documentation and ``rnnkit`` listings.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None = None
    complex: bool = False
    init: float = 0.0
    doc: str = ""

    def resolve_dtype(self, compute: torch.dtype) -> torch.dtype:
        """The dtype this field has when the cell computes in ``compute``."""
        if self.dtype is not None:
            return self.dtype
        if self.complex:
            return torch.complex128 if compute == torch.float64 else torch.complex64
        return compute

    def full_shape(self, batch: int) -> tuple[int, ...]:
        """The tensor shape ``(batch, *shape)``."""
        return (batch, *self.shape)


def apply_resets(state: StateT, initial: StateT, reset_t: Tensor) -> StateT:
    """Replace the state of the examples where ``reset_t`` is true by ``initial``.

    Args:
        state: the current state, each field ``(B, ...)``.
        initial: the state to restart from, same shapes.
        reset_t: bool ``(B,)``.

    Returns:
        A state of the same type, each field ``torch.where(reset_t, initial, state)``.
    """
    fields = []
    for s, s0 in zip(state, initial, strict=True):
        mask = reset_t.view(reset_t.shape[0], *([1] * (s.dim() - 1)))
        fields.append(torch.where(mask, s0, s))
    return _rebuild(state, fields)


def _rebuild(like: StateT, fields: list[Tensor]) -> StateT:
    make: Any = getattr(type(like), "_make", None)
    if make is not None:
        out: StateT = make(fields)
        return out
    return type(like)(fields)
