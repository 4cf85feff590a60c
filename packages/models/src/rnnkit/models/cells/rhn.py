"""Recurrent Highway Network (Zilly et al., ICML 2017): ``depth`` highway micro-steps per step."""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_finite


class RHNState(NamedTuple):
    """State of :class:`RHN`: ``s: (B, H)``, the last micro-step's output."""

    s: Tensor


class RHN(Cell[RHNState]):
    """Recurrent Highway Network with coupled carry gate ``c = 1 - t``.

    Per time step, ``s_0 = s_{t-1}`` and for micro-steps ``l = 1 .. L`` (``L = depth``)::

        h_l = tanh(W_H x_t [l = 1] + R_{H,l} s_{l-1} + b_{H,l})
        t_l = sigmoid(W_T x_t [l = 1] + R_{T,l} s_{l-1} + b_{T,l})
        s_l = h_l * t_l + s_{l-1} * (1 - t_l)

    then ``s_t = y_t = s_L``. The input enters the first micro-step only.

    No form is declared: every micro-step multiplies the state by dense ``R`` matrices, so the
    step's Jacobian is dense (depth 1 included) and neither the gated fused kernels (one
    ``R h`` per step) nor Newton (diagonal Jacobians) apply; the ``reference`` loop runs it.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``s`` and ``y``.
        depth: ``L``, the recurrence depth (micro-steps per time step), a positive int.
        transform_bias: initial value of every ``b_T`` (finite; default -2.0 as the paper's
            PTB runs: gates start mostly closed, so the cell starts close to carrying its
            state, which the paper's Gersgorin analysis motivates).
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (2H, I)`` laid out ``[W_H; W_T]``, ``recurrent: (L, 2H, H)``
    laid out ``[R_{H,l}; R_{T,l}]``, both drawn from ``U(-1/sqrt(H), 1/sqrt(H))``;
    ``bias: (L, 2H)`` laid out ``[b_{H,l} | b_{T,l}]``, ``b_H = 0`` and ``b_T =
    transform_bias``. Shapes: ``project``: ``(..., I) -> (..., 2H)``, ``W x + [b_H1 | b_T1]``.
    Parameter count ``2HI + 2LH^2 + 2LH``.
    """

    kind = "rhn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = RHNState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        depth: int = 3,
        transform_bias: float = -2.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("depth", depth)
        self.transform_bias = check_finite("transform_bias", transform_bias)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = 2 * hidden_size
        self.depth = depth
        self.weight_ih = nn.Parameter(
            torch.empty(2 * hidden_size, input_size, device=device, dtype=dtype)
        )
        self.recurrent = nn.Parameter(
            torch.empty(depth, 2 * hidden_size, hidden_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(depth, 2 * hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ``U(-1/sqrt(H), 1/sqrt(H))``; ``b_H = 0``, ``b_T = transform_bias``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.recurrent, -bound, bound)
        with torch.no_grad():
            self.bias[:, : self.hidden_size].zero_()
            self.bias[:, self.hidden_size :].fill_(self.transform_bias)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("s", (self.hidden_size,), doc="highway state (last micro-step)"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., 2H)``: ``[W_H x + b_H1 | W_T x + b_T1]``."""
        return F.linear(x, self.weight_ih, self.bias[0])

    def recur(self, px_t: Tensor, state: RHNState) -> tuple[Tensor, RHNState]:
        s = state.s
        for layer in range(self.depth):
            if layer == 0:
                g = px_t + F.linear(s, self.recurrent[0])
            else:
                g = F.linear(s, self.recurrent[layer], self.bias[layer])
            pre_h, pre_t = g.chunk(2, dim=-1)
            h = torch.tanh(pre_h)
            t = torch.sigmoid(pre_t)
            s = s + t * (h - s)  # h t + s (1 - t)
        return s, RHNState(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, depth={self.depth}, transform_bias={self.transform_bias}"
