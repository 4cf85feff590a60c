"""The minimal GRU (minGRU): a GRU whose gate and candidate see only the input."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int


class MinGRU(DiagonalLinearCell):
    """minGRU: ``z_t = sigmoid(W_z x_t + b_z)``, ``h~_t = W_h x_t + b_h``,
    ``h_t = (1 - z_t) h_{t-1} + z_t h~_t``, ``y_t = h_t``.

    Because neither ``z_t`` nor ``h~_t`` depends on ``h_{t-1}``, the recurrence is diagonal
    linear (``a_t = 1 - z_t``, ``b_t = z_t h~_t``) and every scan backend applies.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h`` and ``y``.
        device, dtype: for the parameters.

    Shapes: ``project``: ``(..., input_size) -> (..., 2H)`` laid out ``[z-logits | h~]``.
    """

    kind = "mingru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = 2 * hidden_size
        self.weight = nn.Parameter(
            torch.empty(2 * hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(2 * hidden_size, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), doc="hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        z_logit, candidate = px.chunk(2, dim=-1)
        # 1 - sigmoid(u) == sigmoid(-u), which keeps precision when z is close to 1
        return torch.sigmoid(-z_logit), torch.sigmoid(z_logit) * candidate

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        return h
