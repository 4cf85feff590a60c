"""Long short-term memory (torch.nn.LSTM's equations and gate order i, f, g, o)."""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from rnnkit.core.cells._gated import GatedCell
from rnnkit.core.cells._torch_interop import (
    cell_kwargs,
    copy_into,
    export_into,
    new_torch_module,
    torch_layer_weights,
)


class LSTMState(NamedTuple):
    """State of :class:`LSTM`: ``h, c: (B, H)``."""

    h: Tensor
    c: Tensor


class LSTM(GatedCell[LSTMState]):
    """LSTM: with ``i, f, g, o`` the four gate blocks of ``W x_t + b + R h_{t-1}``,

    ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``, ``h_t = sigmoid(o) tanh(c_t)``,
    ``y_t = h_t``. Arguments as :class:`~rnnkit.core.cells._gated.GatedCell`.
    """

    kind = "lstm"
    num_gates = 4
    gate_names = ("i", "f", "g", "o")
    state_type = LSTMState

    def _state_docs(self) -> tuple[tuple[str, str], ...]:
        return (("h", "hidden state"), ("c", "cell state"))

    def recur(self, px_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        g = px_t + self.recurrent_term(state.h)
        i, f, z, o = g.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)

    def step_unchecked(self, x_t: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        if self.heads != 1:
            return super().step_unchecked(x_t, state)
        # one fused op instead of ~10 dispatched from Python: streaming latency matters
        H = self.hidden_size
        w_hh = self.recurrent.reshape(4 * H, H)
        h, c = torch.lstm_cell(x_t, [state.h, state.c], self.weight_ih, w_hh, self.bias, None)
        return h, LSTMState(h, c)

    @classmethod
    def from_torch(cls, module: nn.LSTM, *, layer: int = 0, direction: int = 0) -> LSTM:
        """A cell with the weights of one layer and direction of a ``torch.nn.LSTM``."""
        if not isinstance(module, nn.LSTM):
            raise TypeError(f"expected torch.nn.LSTM, got {type(module).__name__}")
        w_ih, w_hh, b_ih, b_hh = torch_layer_weights(module, layer, direction)
        cell = cls(**cell_kwargs(module, layer))
        copy_into(cell, w_ih, w_hh, None if b_ih is None or b_hh is None else b_ih + b_hh)
        return cell

    @torch.no_grad()
    def to_torch(self) -> nn.LSTM:
        """An equivalent single-layer, batch-first ``torch.nn.LSTM`` (``bias_hh`` is zero)."""
        b = self.bias
        mod = new_torch_module(nn.LSTM, self)
        export_into(mod, self.weight_ih, self.dense_recurrent(), b, None if b is None else 0 * b)
        return cast(nn.LSTM, mod)
