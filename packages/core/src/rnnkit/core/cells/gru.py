"""Gated recurrent unit (torch.nn.GRU's equations and gate order r, z, n)."""

from __future__ import annotations

import math
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


class GRUState(NamedTuple):
    """State of :class:`GRU`: ``h: (B, H)``."""

    h: Tensor


class GRU(GatedCell[GRUState]):
    """GRU as ``torch.nn.GRU``: with ``a = W x_t + b`` and ``q = R h_{t-1}`` split into r, z, n,

    ``r = sigmoid(a_r + q_r)``, ``z = sigmoid(a_z + q_z)``, ``n = tanh(a_n + r * (q_n + b_hn))``,
    ``h_t = (1 - z) n + z h_{t-1}``, ``y_t = h_t``.

    Besides ``bias`` (``b_ir + b_hr``, ``b_iz + b_hz``, ``b_in``) the GRU has ``bias_hn: (H,)``,
    which ``r`` multiplies. Other arguments as :class:`~rnnkit.core.cells._gated.GatedCell`.

    The reset gate acts *after* the recurrent product, ``r * (R_n h + b_hn)`` (torch's and
    cuDNN's form), not before it as in Cho et al. (2014), Eq. (8),
    ``tanh(W x + U (r * h_{t-1}))``; the two differ whenever ``r`` is not all ones. ``z`` keeps
    the old state (``z -> 1``: ``h_t = h_{t-1}``), as in Cho et al.'s Eq. (7).
    """

    kind = "gru"
    num_gates = 3
    gate_names = ("r", "z", "n")
    state_type = GRUState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, heads=heads, bias=bias, device=device, dtype=dtype
        )
        self.bias_hn: nn.Parameter | None = None
        if bias:
            self.bias_hn = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
            bound = 1.0 / math.sqrt(hidden_size)
            nn.init.uniform_(self.bias_hn, -bound, bound)

    def step_unchecked(self, x_t: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        if self.heads != 1:
            return super().step_unchecked(x_t, state)
        # one fused op instead of ~12 dispatched from Python: streaming latency matters
        H = self.hidden_size
        b_hh = None
        if self.bias is not None and self.bias_hn is not None:
            b_hh = torch.cat([self.bias_hn.new_zeros(2 * H), self.bias_hn])
        w_hh = self.recurrent.reshape(3 * H, H)
        h = torch.gru_cell(x_t, state.h, self.weight_ih, w_hh, self.bias, b_hh)
        return h, GRUState(h)

    def recur(self, px_t: Tensor, state: GRUState) -> tuple[Tensor, GRUState]:
        h_prev = state.h
        a_r, a_z, a_n = px_t.chunk(3, dim=-1)
        q_r, q_z, q_n = self.recurrent_term(h_prev).chunk(3, dim=-1)
        if self.bias_hn is not None:
            q_n = q_n + self.bias_hn
        r = torch.sigmoid(a_r + q_r)
        z = torch.sigmoid(a_z + q_z)
        n = torch.tanh(a_n + r * q_n)
        h = n + z * (h_prev - n)
        return h, GRUState(h)

    @classmethod
    def from_torch(cls, module: nn.GRU, *, layer: int = 0, direction: int = 0) -> GRU:
        """A cell with the weights of one layer and direction of a ``torch.nn.GRU``."""
        if not isinstance(module, nn.GRU):
            raise TypeError(f"expected torch.nn.GRU, got {type(module).__name__}")
        w_ih, w_hh, b_ih, b_hh = torch_layer_weights(module, layer, direction)
        cell = cls(**cell_kwargs(module, layer))
        merged = None
        if b_ih is not None and b_hh is not None:
            H = module.hidden_size
            merged = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]])
        copy_into(cell, w_ih, w_hh, merged)
        if b_hh is not None and cell.bias_hn is not None:
            with torch.no_grad():
                cell.bias_hn.copy_(b_hh[2 * module.hidden_size :])
        return cell

    @torch.no_grad()
    def to_torch(self) -> nn.GRU:
        """An equivalent single-layer, batch-first ``torch.nn.GRU``.

        ``bias_ih`` is rnnkit's merged ``bias``; ``bias_hh`` is zero but for ``b_hn``.
        """
        b_ih = b_hh = None
        if self.bias is not None and self.bias_hn is not None:
            b_ih = self.bias
            b_hh = torch.cat([torch.zeros_like(self.bias[: 2 * self.hidden_size]), self.bias_hn])
        mod = new_torch_module(nn.GRU, self)
        export_into(mod, self.weight_ih, self.dense_recurrent(), b_ih, b_hh)
        return cast(nn.GRU, mod)
