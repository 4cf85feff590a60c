"""The minimal GRU and LSTM (minGRU, minLSTM): gates and candidate see only the input."""

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


def g(x: Tensor) -> Tensor:
    """minGRU/minLSTM's positive activation: ``x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` below.

    Continuous (both branches give 1/2 at 0) and positive, so a state built from ``g`` values
    with convex weights stays positive, which the paper's log-space form needs.
    """
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinLSTM(DiagonalLinearCell):
    """minLSTM (Feng et al. 2024): ``f_t = sigmoid(W_f x_t + b_f)``,
    ``i_t = sigmoid(W_i x_t + b_i)``, ``h~_t = g(W_h x_t + b_h)``, normalised gates
    ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``, and
    ``h_t = f'_t h_{t-1} + i'_t h~_t``, ``y_t = h_t``.

    Like minGRU, gates and candidate depend on ``x_t`` alone, so the recurrence is diagonal
    linear (``a_t = f'_t``, ``b_t = i'_t h~_t``) and every scan backend applies. The gates are
    normalised in log space, as the paper's log-space form does: with
    ``d = softplus(-k_f) - softplus(-k_i)`` (``k`` the gate logits), ``log f' = -softplus(d)``
    and ``log i' = -softplus(-d)``, i.e. ``f' = sigmoid(-d)`` and ``i' = sigmoid(d)``, which
    never divides and sums to 1 exactly. The scan then runs on ``a, b`` directly (rnnkit's
    chunked scan needs no log-space cumulative sums to stay finite; ``docs/kernels-scan.md``).

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h`` and ``y``.
        candidate: ``"g"`` (default, the paper's log-space variant: ``h~ = g(W_h x + b_h)``
            with :func:`g`, so ``h`` stays positive from a non-negative start) or
            ``"linear"`` (``h~ = W_h x + b_h``, the paper's plain sequential form).
        device, dtype: for the parameters.

    Parameters: ``weight: (3H, I)`` and ``bias: (3H,)`` laid out ``[f | i | h~]``, drawn from
    ``U(-1/sqrt(H), 1/sqrt(H))`` as minGRU's (``3 H I`` weights, the paper's count).
    Shapes: ``project``: ``(..., I) -> (..., 3H)``.
    """

    kind = "minlstm"
    CANDIDATES = ("g", "linear")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        candidate: str = "g",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if candidate not in self.CANDIDATES:
            raise ValueError(f"candidate must be one of {self.CANDIDATES}, got {candidate!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = 3 * hidden_size
        self.candidate = candidate
        self.weight = nn.Parameter(
            torch.empty(3 * hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(3 * hidden_size, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), doc="hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        k_f, k_i, k_h = px.chunk(3, dim=-1)
        d = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
        cand = g(k_h) if self.candidate == "g" else k_h
        return torch.sigmoid(-d), torch.sigmoid(d) * cand

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        return h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, candidate={self.candidate!r}"
