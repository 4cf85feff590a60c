"""Cells of the selective diagonal form: a ``(channels, N)`` state per sequence whose decay and
input matrix depend on the input (the selective scan of Mamba-1).

Per step ``t``, for every channel ``d`` and state index ``n``::

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n]
    y_t[d]    = sum_n h_t[d, n] C_t[n] + D[d] x_t[d]

with ``dt_t > 0`` per channel, ``A < 0`` fixed per ``(d, n)`` (so every decay is in
``(0, 1]``), ``B_t, C_t`` shared by the channels and ``D`` a skip per channel. A cell of this
form splits its sequence work into the time-parallel part that produces ``x, dt, B, C`` for
every step (:meth:`SelectiveDiagonalCell.selective_inputs`), and the part that turns the scan's
outputs back into its own outputs and state (:meth:`selective_outputs`). The kernels
registered for :attr:`Form.SELECTIVE_DIAGONAL` (rnnkit-kernels' ``selective`` folder) run the
scan in between without materialising the ``(B, T, channels, N)`` states, so a subclass gets
every such kernel with no kernel code of its own.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form

StateT = TypeVar("StateT", bound=tuple[Tensor, ...])


class SelectiveInputs(NamedTuple):
    """The selective scan's inputs for a whole sequence.

    Attributes:
        x: ``(B, T, D)`` the scanned input per channel.
        dt: ``(B, T, D)`` positive steps per channel.
        A: ``(D, N)`` negative continuous-time decays.
        B: ``(B, T, N)`` input matrix per step (shared by the channels).
        C: ``(B, T, N)`` read-out per step (shared by the channels).
        D: ``(D,)`` skip per channel.
        h0: ``(B, D, N)`` state entering step 0.
        carry: whatever else :meth:`SelectiveDiagonalCell.selective_outputs` needs (the gate
            of the output, a convolution's last inputs: a tuple of tensors, possibly empty).
    """

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    h0: Tensor
    carry: tuple[Tensor, ...]


def selective_step(
    h: Tensor, x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, D: Tensor
) -> tuple[Tensor, Tensor]:
    """One step of the selective diagonal recurrence.

    Args:
        h: ``(B, D, N)`` the state entering the step.
        x_t, dt_t: ``(B, D)``.
        A: ``(D, N)``.
        B_t, C_t: ``(B, N)``.
        D: ``(D,)``.

    Returns:
        ``(y_t, h_t)``: ``(B, D)`` and ``(B, D, N)``.
    """
    h = torch.exp(dt_t.unsqueeze(-1) * A) * h + (dt_t * x_t).unsqueeze(-1) * B_t.unsqueeze(-2)
    y = (h @ C_t.unsqueeze(-1)).squeeze(-1) + D * x_t
    return y, h


class SelectiveDiagonalCell(Cell[StateT]):
    """Base class for cells whose recurrence is a selective scan (see the module docstring).

    A subclass implements :meth:`selective_inputs` and :meth:`selective_outputs` (and
    ``project``, ``recur``, ``state_spec`` as every cell does; ``recur`` can use
    :func:`selective_step`). ``recur`` stays the oracle: a kernel of this form must give the
    same results as the loop over ``recur``.
    """

    forms: ClassVar[frozenset[Form]] = frozenset({Form.SELECTIVE_DIAGONAL})

    @abstractmethod
    def selective_inputs(
        self, x: Tensor, state: StateT | None, resets: Tensor | None
    ) -> SelectiveInputs:
        """``x, dt, A, B, C, D, h0`` of the scan for every step of ``x: (B, T, input_size)``.

        ``state`` is the initial state (``None``: :meth:`init_state`); ``resets`` (bool
        ``(B, T)``) restart the state where true: this method applies them to whatever it
        computes over time itself (a causal convolution), and the kernel zeroes ``h``
        entering every step where a reset is set.
        """

    @abstractmethod
    def selective_outputs(
        self, y: Tensor, h: Tensor, inputs: SelectiveInputs
    ) -> tuple[Tensor, StateT]:
        """``(output: (B, T, output_size), final state)`` from the scan's outputs
        ``y: (B, T, D)`` (skip included) and its state ``h: (B, D, N)`` after the last step."""
