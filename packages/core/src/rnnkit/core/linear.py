"""Cells of the diagonal linear form: ``h_t = a_t * h_{t-1} + b_t``, read out per step."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, NamedTuple

from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form


class LinearState(NamedTuple):
    """State of a diagonal linear cell: ``h: (B, state_size)`` (real or complex)."""

    h: Tensor


class DiagonalLinearCell(Cell[LinearState]):
    """Base class for cells whose recurrence is ``h_t = a_t * h_{t-1} + b_t`` elementwise.

    A subclass implements :meth:`coefficients` (``a`` and ``b`` from the projected input) and
    :meth:`readout` (``y`` from the states and the projected input), plus ``project`` and
    ``state_spec`` (one field ``h``). ``recur`` is derived from them, and scan kernels
    registered for :attr:`Form.DIAGONAL_LINEAR` compute all ``h_t`` at once from the same two
    methods, so a subclass gets every scan backend for free.
    """

    forms: ClassVar[frozenset[Form]] = frozenset({Form.DIAGONAL_LINEAR})
    state_type = LinearState

    @abstractmethod
    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        """``(..., projected_size) -> (a, b)``, each ``(..., state_size)`` (same dtype as ``h``).

        Works for any leading shape: ``(B, projected_size)`` for one step and
        ``(B, T, projected_size)`` for a sequence.
        """

    @abstractmethod
    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        """``y: (..., output_size)`` from ``h: (..., state_size)`` and ``px``."""

    def recur(self, px_t: Tensor, state: LinearState) -> tuple[Tensor, LinearState]:
        a, b = self.coefficients(px_t)
        # The step runs in the coefficients' dtype (a cell may compute in complex64 for a
        # bfloat16 state); the state keeps its own dtype. Both are no-ops when they agree.
        h = a * state.h.to(b.dtype) + b
        return self.readout(h, px_t), LinearState(h.to(state.h.dtype))
