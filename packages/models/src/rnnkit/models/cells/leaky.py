"""A leaky (discretised continuous-time) RNN with one trainable timescale per unit."""

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
from rnnkit.models.cells._checks import check_range

ACTIVATIONS = ("tanh", "relu", "leaky_relu")
#: ``tau - 1`` is kept at least this large when initialising: ``tau = 1 + softplus(rho)`` only
#: approaches 1, so a drawn ``tau = 1`` starts at ``1 + 1e-3``.
TAU_FLOOR = 1e-3


class LeakyRNNState(NamedTuple):
    """State of :class:`LeakyRNN`: ``h: (B, H)``."""

    h: Tensor


def _inverse_softplus(x: Tensor) -> Tensor:
    """``rho`` with ``softplus(rho) = x`` for ``x > 0``: ``x + log(1 - exp(-x))``."""
    return x + torch.log(-torch.expm1(-x))


class LeakyRNN(Cell[LeakyRNNState]):
    """Leaky RNN with trainable timescales ``tau >= 1`` per unit::

        h_t = (1 - 1/tau) * h_{t-1} + (1/tau) * act(W x_t + U h_{t-1} + b),    y_t = h_t

    ``tau = 1 + softplus(rho)`` with ``rho: (H,)`` the trained parameter, so ``tau`` stays
    above 1 whatever the optimiser does (``tau = 1`` is a plain Elman unit, large ``tau`` a slow
    integrator with memory of about ``tau`` steps). :meth:`tau` returns the current values.

    No form is declared: ``U`` is dense, so ``dh_t/dh_{t-1} = (1 - 1/tau) I + diag(act' / tau)
    U`` is dense and Newton (diagonal Jacobians) does not apply; nor does the gated form, whose
    kernels apply a fixed gate function to ``px + U h`` alone (this step also needs ``h``
    outside the activation). The ``reference`` loop runs it.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h`` and ``y``.
        activation: ``"tanh"`` (default), ``"relu"`` or ``"leaky_relu"`` (slope 0.01).
        bias: whether there is a bias ``b``.
        tau_init: ``(low, high)`` with ``1 <= low <= high``: initial ``tau ~ U(low, high)``
            (default ``(1, 2)``, i.e. ``1 + U(0, 1)`` as Khajehabdollahi et al. 2024).
        train_tau: whether ``rho`` is a parameter (``False``: a buffer, timescales fixed).
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (H, I)`` and ``bias: (H,)`` from ``U(-1/sqrt(I), 1/sqrt(I))``,
    ``recurrent: (H, H)`` (``U``) from ``U(-1/sqrt(H), 1/sqrt(H))``, ``tau_raw: (H,)``
    (``rho``). Shapes: ``project``: ``(..., I) -> (..., H)``.
    """

    kind = "leakyrnn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = LeakyRNNState
    tau_raw: Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "tanh",
        bias: bool = True,
        tau_init: tuple[float, float] = (1.0, 2.0),
        train_tau: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.tau_init = check_range("tau_init", tau_init, minimum=1.0)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = hidden_size
        self.activation = activation
        self.weight_ih = nn.Parameter(
            torch.empty(hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype)) if bias else None
        )
        self.recurrent = nn.Parameter(
            torch.empty(hidden_size, hidden_size, device=device, dtype=dtype)
        )
        raw = torch.empty(hidden_size, device=device, dtype=dtype)
        if train_tau:
            self.tau_raw = nn.Parameter(raw)
        else:
            self.register_buffer("tau_raw", raw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights and bias uniform (see the class docstring); ``tau ~ U(*tau_init)``."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        rec = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.recurrent, -rec, rec)
        with torch.no_grad():
            low, high = self.tau_init
            tau = torch.empty_like(self.tau_raw, dtype=torch.float64).uniform_(low, high)
            self.tau_raw.copy_(_inverse_softplus((tau - 1).clamp(min=TAU_FLOOR)))

    def tau(self) -> Tensor:
        """The timescales ``tau = 1 + softplus(rho): (H,)``, each ``>= 1``."""
        return 1 + F.softplus(self.tau_raw)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), doc="hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., H)``: ``W x + b``."""
        return F.linear(x, self.weight_ih, self.bias)

    def _act(self, pre: Tensor) -> Tensor:
        if self.activation == "tanh":
            return torch.tanh(pre)
        if self.activation == "relu":
            return torch.relu(pre)
        return F.leaky_relu(pre, 0.01)

    def recur(self, px_t: Tensor, state: LeakyRNNState) -> tuple[Tensor, LeakyRNNState]:
        h = state.h
        # the rate 1/tau in (0, 1), recomputed from rho at each step so its gradient reaches rho
        rate = torch.reciprocal(self.tau())
        target = self._act(px_t + F.linear(h, self.recurrent))
        h = h + rate * (target - h)  # (1 - 1/tau) h + (1/tau) act(...)
        return h, LeakyRNNState(h)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, activation={self.activation!r}, "
            f"tau_init={self.tau_init}, train_tau={isinstance(self.tau_raw, nn.Parameter)}"
        )
