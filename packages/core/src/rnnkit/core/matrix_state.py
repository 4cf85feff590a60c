"""Cells of the matrix-state form: a per-head memory ``S`` written by rank-one updates.

``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` (``rule="delta"``) or
``S_t = alpha_t S_{t-1} + beta_t v_t k_t^T`` (``rule="linear"``: no delta correction), read out
as ``o_t = S_t q_t``, with a scalar decay ``alpha_t`` in ``(0, 1]`` and a scalar write strength
``beta_t`` per head and step. Special cases: linear attention (``"linear"``, ``alpha = 1``),
RetNet / scalar-gated linear attention (``"linear"`` with a decay), Mamba-2's SSD
(``"linear"``, ``alpha_t = exp(dt_t A)``, ``beta_t = dt_t``, ``v = x``, ``k = B``, ``q = C``),
DeltaNet (``"delta"``, ``alpha = 1``) and Gated DeltaNet (``"delta"`` with a decay).

Which rule writes the memory is a property of the cell (:attr:`MatrixStateCell.rule`), not of
the data: it decides which work the kernel does at all (the delta rule's triangular solve).
The decay is data: :attr:`MemoryInputs.log_alpha`, ``None`` for ``alpha = 1`` (so a cell
without a decay costs the kernel nothing for it). It is given as ``log alpha`` because that is
what gated cells compute (``-exp(A) softplus(.)``) and what a chunked kernel needs (sums of
logs over a chunk); an ``alpha`` close to 0 stays representable there.

A cell of this form splits its sequence work into the time-parallel part that produces
``q, k, v, beta, log_alpha`` for every step (:meth:`MatrixStateCell.memory_inputs`) and the
part that turns the memory's read-outs back into outputs and a state (:meth:`memory_outputs`); the
kernels registered for :attr:`Form.MATRIX_STATE` (rnnkit-kernels' ``chunked``) run the memory
recurrence in between, so a subclass gets every such kernel with no kernel code of its own.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, NamedTuple, TypeVar

from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form

#: rules a matrix-state memory can be written with.
MEMORY_RULES: tuple[str, ...] = ("delta", "linear")

StateT = TypeVar("StateT", bound=tuple[Tensor, ...])


class MemoryInputs(NamedTuple):
    """The memory recurrence's inputs for a whole sequence, per head.

    Attributes:
        q: ``(B, heads, T, d_k)`` queries.
        k: ``(B, heads, T, d_k)`` keys.
        v: ``(B, heads, T, d_v)`` values.
        beta: ``(B, heads, T)`` write strengths.
        S0: ``(B, heads, d_v, d_k)`` memory entering step 0 (value index first).
        carry: whatever else :meth:`MatrixStateCell.memory_outputs` needs to build the final
            state (a tuple of tensors; empty when the memory is the whole state).
        log_alpha: ``(B, heads, T)`` log decays ``log alpha_t <= 0`` (``-inf`` is a full
            forget), or ``None`` (the default): ``alpha = 1``, no decay.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor
    S0: Tensor
    carry: tuple[Tensor, ...]
    log_alpha: Tensor | None = None


class MatrixStateCell(Cell[StateT]):
    """Base class for cells whose recurrence is a matrix memory with the (gated) delta or linear
    rule.

    A subclass sets :attr:`rule`, implements :meth:`memory_inputs` and :meth:`memory_outputs`
    (and ``project``, ``recur``, ``state_spec`` as every cell does). ``recur`` stays the
    oracle: a kernel of this form must give the same results as the loop over ``recur``.
    """

    forms: ClassVar[frozenset[Form]] = frozenset({Form.MATRIX_STATE})
    #: ``"delta"`` or ``"linear"`` (one of :data:`MEMORY_RULES`).
    rule: str

    @abstractmethod
    def memory_inputs(self, x: Tensor, state: StateT | None, resets: Tensor | None) -> MemoryInputs:
        """``q, k, v, beta, S0`` (and ``log_alpha`` for a decaying memory) for every step of
        ``x: (B, T, input_size)``.

        ``state`` is the initial state (``None``: :meth:`init_state`); ``resets`` (bool
        ``(B, T)``) restart the state where true: this method applies them to whatever it
        computes over time itself (short convolutions), and the kernel applies them to ``S``.
        """

    @abstractmethod
    def memory_outputs(self, o: Tensor, S: Tensor, inputs: MemoryInputs) -> tuple[Tensor, StateT]:
        """``(y: (B, T, output_size), final state)`` from the read-outs ``o: (B, heads, T,
        d_v)`` and the memory ``S: (B, heads, d_v, d_k)`` after the last step."""
