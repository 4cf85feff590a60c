"""The Elman network: ``h_t = phi(W x_t + b + R h_{t-1})`` with ``phi`` tanh or ReLU."""

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


class ElmanState(NamedTuple):
    """State of :class:`Elman`: ``h: (B, H)``."""

    h: Tensor


class Elman(GatedCell[ElmanState]):
    """Elman RNN (``torch.nn.RNN``): ``h_t = phi(W x_t + b + R h_{t-1})``, ``y_t = h_t``.

    Args:
        input_size, hidden_size, heads, bias, device, dtype: see
            :class:`~rnnkit.core.cells._gated.GatedCell`.
        nonlinearity: ``"tanh"`` or ``"relu"``.
    """

    kind = "elman"
    num_gates = 1
    gate_names = ("g",)
    state_type = ElmanState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        nonlinearity: str = "tanh",
        heads: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(
            input_size, hidden_size, heads=heads, bias=bias, device=device, dtype=dtype
        )

    def recur(self, px_t: Tensor, state: ElmanState) -> tuple[Tensor, ElmanState]:
        g = px_t + self.recurrent_term(state.h)
        h = torch.tanh(g) if self.nonlinearity == "tanh" else torch.relu(g)
        return h, ElmanState(h)

    @classmethod
    def from_torch(cls, module: nn.RNN, *, layer: int = 0, direction: int = 0) -> Elman:
        """A cell with the weights of one layer and direction of a ``torch.nn.RNN``."""
        if not isinstance(module, nn.RNN):
            raise TypeError(f"expected torch.nn.RNN, got {type(module).__name__}")
        w_ih, w_hh, b_ih, b_hh = torch_layer_weights(module, layer, direction)
        cell = cls(nonlinearity=module.nonlinearity, **cell_kwargs(module, layer))
        copy_into(cell, w_ih, w_hh, None if b_ih is None or b_hh is None else b_ih + b_hh)
        return cell

    @torch.no_grad()
    def to_torch(self) -> nn.RNN:
        """An equivalent single-layer, batch-first ``torch.nn.RNN`` (``bias_hh`` is zero)."""
        b = self.bias
        mod = new_torch_module(nn.RNN, self, nonlinearity=self.nonlinearity)
        export_into(mod, self.weight_ih, self.dense_recurrent(), b, None if b is None else 0 * b)
        return cast(nn.RNN, mod)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"
