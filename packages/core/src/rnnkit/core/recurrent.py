"""``Recurrent``: a stack of cells with torch.nn.LSTM's options (layers, bidirectional, dropout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit.core.api import get_cell_class
from rnnkit.core.cell import Cell
from rnnkit.core.cells import GRU, LSTM, Elman
from rnnkit.core.errors import check_keywords
from rnnkit.core.validation import (
    check_lengths,
    check_positive_int,
    check_resets,
    check_sequence,
    check_step_input,
)
from rnnkit.core.varlen import pack_like, reverse_padded, reverse_resets, unpack

__all__ = ["Recurrent", "reverse_resets"]

#: The torch module each dense cell class converts to and from.
_TORCH_MODULES: dict[type[Any], type[nn.RNNBase]] = {Elman: nn.RNN, LSTM: nn.LSTM, GRU: nn.GRU}


class Recurrent(nn.Module):
    """A multi-layer, optionally bidirectional stack of one kind of cell.

    Args:
        cell: a registered cell name (``"lstm"``) or a :class:`~rnnkit.core.cell.Cell` class.
        input_size: width of ``x``.
        hidden_size: hidden width of every cell.
        num_layers: number of stacked layers.
        bidirectional: run a second cell per layer on the reversed sequence and concatenate.
        dropout: dropout probability on the outputs of every layer but the last (training only).
        **cell_kwargs: passed to every cell (``heads=4``, ``nonlinearity="relu"``, ...).

    The state is the cell's ``NamedTuple`` with every field stacked along a new leading
    dimension of size ``num_layers * num_directions`` (torch.nn.LSTM's ``h_0`` layout:
    index ``layer * num_directions + direction``).
    """

    def __init__(
        self,
        cell: str | type[Cell[Any]],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        dropout: float = 0.0,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        check_positive_int("num_layers", num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        cls = get_cell_class(cell) if isinstance(cell, str) else cell
        check_keywords(
            "cell",
            cell if isinstance(cell, str) else cls.__name__,
            cls,
            {"input_size": input_size, "hidden_size": hidden_size, **cell_kwargs},
        )
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.dropout = dropout
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.cells = nn.ModuleList()
        width = input_size
        for _ in range(num_layers):
            layer_cells = [
                cls(input_size=width, hidden_size=hidden_size, **cell_kwargs)
                for _ in range(self.num_directions)
            ]
            self.cells.extend(layer_cells)
            width = layer_cells[0].output_size * self.num_directions
        first = self.cell(0)
        self.state_type: type[Any] = first.state_type
        self.output_size = first.output_size * self.num_directions

    def cell(self, layer: int, direction: int = 0) -> Cell[Any]:
        """The cell of ``layer`` and ``direction`` (0 forward, 1 backward)."""
        return cast(Cell[Any], self.cells[layer * self.num_directions + direction])

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """The stacked initial state: each field ``(num_layers * num_directions, batch, ...)``."""
        states = [
            self.cell(layer, d).init_state(batch, device=device, dtype=dtype)
            for layer in range(self.num_layers)
            for d in range(self.num_directions)
        ]
        return self._stack(states)

    def _stack(self, states: list[Any]) -> Any:
        return self.state_type._make(torch.stack(fields, 0) for fields in zip(*states, strict=True))

    @overload
    def forward(
        self,
        x: Tensor,
        state: Any = None,
        *,
        backend: str = "auto",
        resets: Tensor | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Any]: ...

    @overload
    def forward(
        self,
        x: PackedSequence,
        state: Any = None,
        *,
        backend: str = "auto",
        resets: Tensor | None = None,
        lengths: None = None,
    ) -> tuple[PackedSequence, Any]: ...

    def forward(
        self,
        x: Tensor | PackedSequence,
        state: Any = None,
        *,
        backend: str = "auto",
        resets: Tensor | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor | PackedSequence, Any]:
        """Run the stack.

        Args:
            x: ``(B, T, input_size)``, or a ``torch.nn.utils.rnn.PackedSequence`` of
                ``(*, input_size)`` data (then the output is one too, packed like ``x``, and
                the state is in the batch order of ``x`` before sorting, as in
                ``torch.nn.LSTM``).
            state: stacked state (see class docstring) or ``None``.
            backend: passed to every cell.
            resets: bool ``(B, T)``, applied in every layer (reversed for backward cells); with
                a packed ``x``, in its padded layout (``T`` the longest length).
            lengths: optional ``(B,)`` integers in ``[0, T]`` for a right-padded ``x`` (see
                :meth:`Cell.forward <rnnkit.core.cell.Cell.forward>`): ``y`` is zero past each
                length, the forward cells' final state is the one after step
                ``lengths[b] - 1`` and the backward cells run each sequence from its own last
                step (their final state is the one after step 0), exactly as if each sequence
                ran alone.

        Returns:
            ``(y, state)`` with ``y: (B, T, num_directions * hidden_size)`` (or packed).
        """
        if isinstance(x, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths must be None when x is a PackedSequence (it has them)")
            padded, packed_lengths, layout = unpack(x)
            y, final = self._run(padded, state, backend, resets, packed_lengths)
            return pack_like(y, layout), final
        return self._run(x, state, backend, resets, lengths)

    def _run(
        self,
        x: Tensor,
        state: Any,
        backend: str,
        resets: Tensor | None,
        lengths: Tensor | Sequence[int] | None,
    ) -> tuple[Tensor, Any]:
        x = check_sequence(self.cell(0), x)
        batch, time = x.shape[:2]
        if resets is not None:
            resets = check_resets(resets, batch=batch, time=time, device=x.device)
        lens = None if lengths is None else check_lengths(lengths, batch=batch, time=time)
        per_cell: list[Any] = [None] * len(self.cells)
        if state is not None:
            per_cell = self._split(state, batch)
        finals: list[Any] = []
        out = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                cell = self.cell(layer, d)
                if d == 0:
                    y, s = cell(out, per_cell[k], backend=backend, resets=resets, lengths=lens)
                else:
                    # each sequence runs backwards from its own last valid step
                    r = reverse_resets(resets, lens) if resets is not None else None
                    y, s = cell(
                        reverse_padded(out, lens),
                        per_cell[k],
                        backend=backend,
                        resets=r,
                        lengths=lens,
                    )
                    y = reverse_padded(y, lens)
                outs.append(y)
                finals.append(s)
            out = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                out = nn.functional.dropout(out, self.dropout, training=True)
        return out, self._stack(finals)

    def step(self, x_t: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Advance a unidirectional stack by one step through all layers.

        Equal to :meth:`forward` on a sequence of length 1 (dropout between layers included,
        in training mode), so stepping ``T`` times gives ``forward``'s outputs and state.

        Args:
            x_t: ``(B, input_size)``.
            state: stacked state (see class docstring) or ``None`` for :meth:`init_state`.

        Returns:
            ``(y_t, state)`` with ``y_t: (B, hidden_size)``.

        Raises:
            ValueError: for a bidirectional stack (its backward cells need the whole sequence,
                from its last step, before the first output exists).
        """
        if self.num_directions != 1:
            raise ValueError(
                "step() needs a unidirectional stack: the backward cells of a bidirectional "
                "one read the sequence from its end, so no output exists after one step; "
                "use forward() on the whole sequence"
            )
        x_t = check_step_input(self.cell(0), x_t)
        batch = x_t.shape[0]
        per_cell: list[Any] = [None] * len(self.cells)
        if state is not None:
            per_cell = self._split(state, batch)
        finals = []
        out = x_t
        for layer in range(self.num_layers):
            out, s = self.cell(layer).step(out, per_cell[layer])
            finals.append(s)
            if self.dropout and self.training and layer < self.num_layers - 1:
                out = nn.functional.dropout(out, self.dropout, training=True)
        return out, self._stack(finals)

    def _split(self, state: Any, batch: int) -> list[Any]:
        n = len(self.cells)
        if not isinstance(state, tuple):
            raise TypeError(
                f"state must be a {self.state_type.__name__}, got {type(state).__name__}"
            )
        for name, f in zip(self.state_type._fields, state, strict=False):
            if not isinstance(f, Tensor) or f.dim() < 2 or f.shape[0] != n or f.shape[1] != batch:
                got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise ValueError(
                    f"state.{name} must have leading shape (num_layers * num_directions, batch)"
                    f" = ({n}, {batch}), got {got}"
                )
        return [self.state_type._make(f[k] for f in state) for k in range(n)]

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> Recurrent:
        """A stack equivalent to a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (any layers/directions).

        The returned stack is batch-first whatever ``module.batch_first`` is.
        """
        kinds: dict[type[nn.RNNBase], type[Any]] = {nn.RNN: Elman, nn.LSTM: LSTM, nn.GRU: GRU}
        cell_cls = kinds.get(type(module))
        if cell_cls is None:
            raise TypeError(f"expected torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
        extra = {"nonlinearity": module.nonlinearity} if isinstance(module, nn.RNN) else {}
        p = module.weight_ih_l0
        stack = cls(
            cell_cls,
            module.input_size,
            module.hidden_size,
            module.num_layers,
            bidirectional=module.bidirectional,
            dropout=float(module.dropout),
            bias=module.bias,
            device=p.device,
            dtype=p.dtype,
            **extra,
        )
        for layer in range(module.num_layers):
            for d in range(stack.num_directions):
                src = cell_cls.from_torch(module, layer=layer, direction=d)
                stack.cell(layer, d).load_state_dict(src.state_dict())
        return stack

    @torch.no_grad()
    def to_torch(self) -> nn.RNNBase:
        """The equivalent batch-first ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (the inverse of
        :meth:`from_torch`): same layers, directions and dropout, every layer's weights from
        its cells' ``to_torch`` (rnnkit's merged bias in ``bias_ih``; ``bias_hh`` zero but for
        the GRU's ``b_hn``), on the stack's device and dtype, in the stack's training mode.

        Raises:
            TypeError: a stack of cells torch has no module for (anything but exactly
                :class:`~rnnkit.core.cells.Elman`, :class:`~rnnkit.core.cells.LSTM` and
                :class:`~rnnkit.core.cells.GRU`, whose step torch's modules compute).
        """
        cls = type(self.cell(0))
        module_cls: Any = _TORCH_MODULES.get(cls)  # Any: RNNBase's own __init__ takes a mode
        if module_cls is None:
            raise TypeError(
                f"to_torch() converts stacks of Elman, LSTM or GRU cells (what torch.nn.RNN, "
                f"LSTM and GRU compute); this stack's cells are {cls.__name__}, which torch has "
                "no module for"
            )
        first: Any = self.cell(0)
        extra = {"nonlinearity": first.nonlinearity} if cls is Elman else {}
        p = first.weight_ih
        module: nn.RNNBase = module_cls(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            bias=first.bias is not None,
            batch_first=True,
            dropout=self.dropout,
            bidirectional=self.num_directions == 2,
            device=p.device,
            dtype=p.dtype,
            **extra,
        )
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                single: Any = self.cell(layer, d)
                one = single.to_torch()
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                for name, value in one.named_parameters():
                    getattr(module, name.replace("_l0", suffix)).copy_(value)
        return module.train(self.training)
