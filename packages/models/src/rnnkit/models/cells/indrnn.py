"""IndRNN (Li et al., CVPR 2018): independently recurrent units, ``h = act(W x + u * h + b)``.

Each unit sees only its own previous value through one recurrent weight ``u_i``, so the step's
Jacobian ``dh_t / dh_{t-1} = diag(u * act'(W x_t + u * h_{t-1} + b))`` is diagonal: the cell
declares :attr:`~rnnkit.core.forms.Form.DIAGONAL_JACOBIAN` and implements the protocol that
the ``newton`` backend calls (``docs/kernels-newton.md``), with an analytic vector-Jacobian
product for its backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_finite, check_range

ACTIVATIONS = ("relu", "tanh")


class IndRNNState(NamedTuple):
    """State of :class:`IndRNN`: ``h: (B, H)``."""

    h: Tensor


def indrnn_u_max(time: int, gamma: float = 2.0) -> float:
    """The paper's bound on ``|u|`` for ReLU units over ``time`` steps: ``gamma ** (1 / time)``.

    A unit with ``|u| <= gamma ** (1/T)`` (and an active ReLU) grows a gradient by at most
    ``gamma`` over ``T`` steps, so ``indrnn_u_max(T)`` keeps backpropagation through ``T``
    steps from exploding while letting ``u`` reach just above 1 (long memory).

    Args:
        time: ``T``, the number of steps to backpropagate through (positive int).
        gamma: the largest gradient growth allowed over ``T`` steps (finite, > 0; the paper
            uses 2).
    """
    check_positive_int("time", time)
    gamma = check_finite("gamma", gamma, positive=True)
    return float(gamma ** (1.0 / time))


class IndRNN(Cell[IndRNNState]):
    """IndRNN: ``h_t = act(W x_t + u * h_{t-1} + b)``, ``y_t = h_t`` (``u: (H,)`` elementwise).

    ``u`` is used clamped to ``[-u_max, u_max]`` when ``u_max`` is given (the paper's
    constraint; :func:`indrnn_u_max` computes its recipe ``2 ** (1/T)``): the clamp is part of
    the step, so every backend (and the Newton solve) sees the constrained weight and the
    gradient of ``u`` is zero where it is clamped, as ``torch.clamp``'s.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h`` and ``y``.
        activation: ``"relu"`` (default, the paper's) or ``"tanh"``.
        bias: whether the input projection has a bias ``b``.
        u_max: ``None`` (no clamp) or a finite number > 0.
        u_init: ``(low, high)``: ``u`` is drawn from ``U(low, high)`` (default ``(0, 1)``,
            the paper's for ReLU units); finite, ``low <= high``.
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (H, I)`` and ``bias: (H,)`` drawn from ``U(-1/sqrt(I), 1/sqrt(I))``,
    ``recurrent: (H,)`` (``u``). Shapes: ``project``: ``(..., I) -> (..., H)``.
    """

    kind = "indrnn"
    forms: ClassVar[frozenset[Form]] = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = IndRNNState
    newton_block: ClassVar[int] = 1
    #: The CPU work budget ``B * H * iterations`` up to which ``backend="auto"`` prefers Newton
    #: over the loop (the newton kernel reads it; default 8192). IndRNN's sequential step is a
    #: few elementwise ops, cheaper than ParaGRU's, so Newton pays only on narrower batches
    #: (crossover measured by ``tools/bench/indrnn_newton.py``, docs/kernels-newton.md).
    newton_auto_work: ClassVar[int] = 2048

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        activation: str = "relu",
        bias: bool = True,
        u_max: float | None = None,
        u_init: tuple[float, float] = (0.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        u_max = None if u_max is None else check_finite("u_max", u_max, positive=True)
        low, high = check_range("u_init", u_init)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = hidden_size
        self.activation = activation
        self.u_max = u_max
        self.u_init = (low, high)
        self.weight_ih = nn.Parameter(
            torch.empty(hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype)) if bias else None
        )
        self.recurrent = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight_ih``, ``bias`` from ``U(-1/sqrt(I), 1/sqrt(I))``; ``u`` from ``U(*u_init)``."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.uniform_(self.recurrent, *self.u_init)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), doc="hidden state"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., H)``: ``x W^T + b``."""
        return F.linear(x, self.weight_ih, self.bias)

    def effective_u(self) -> Tensor:
        """``u`` as the step uses it: clamped to ``[-u_max, u_max]`` when ``u_max`` is set,
        ``(H,)``."""
        if self.u_max is None:
            return self.recurrent
        return self.recurrent.clamp(-self.u_max, self.u_max)

    def _act(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) if self.activation == "relu" else torch.tanh(pre)

    def recur(self, px_t: Tensor, state: IndRNNState) -> tuple[Tensor, IndRNNState]:
        h = self.recur_parallel(px_t, state.h)
        return h, IndRNNState(h)

    # --- the diagonal-Jacobian protocol ------------------------------------------------------

    def pack_state(self, state: IndRNNState) -> Tensor:
        """``z = h: (B, H)``."""
        return state.h

    def unpack_state(self, z: Tensor) -> IndRNNState:
        """``(B, H) -> IndRNNState``."""
        return IndRNNState(z)

    def recur_parallel(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``h_t`` from ``h_{t-1}`` at all positions: ``(..., H), (..., H) -> (..., H)``."""
        return self._act(torch.addcmul(px, self.effective_u(), z_prev))

    def _slope(self, pre: Tensor, out: Tensor) -> Tensor:
        """``act'(pre)`` from the pre-activation and the output (values only)."""
        if self.activation == "relu":
            # torch's relu has slope 0 at 0; the reference's gradient is the same
            return (pre > 0).to(pre.dtype)
        return 1 - out * out

    def recur_parallel_with_jacobian(self, px: Tensor, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        """``(h_t, dh_t/dh_{t-1})`` at every position, values only:
        ``(..., H), (..., H) -> ((..., H), (..., H))``, ``J = u * act'(px + u * h)``."""
        with torch.no_grad():
            u = self.effective_u().detach()
            pre = torch.addcmul(px, u, z_prev)
            out = self._act(pre)
            return out, self._slope(pre, out).mul_(u)

    def jacobian_diag(self, px: Tensor, z_prev: Tensor) -> Tensor:
        """``d h_t / d h_{t-1}``, diagonal: ``(..., H), (..., H) -> (..., H)`` (values only)."""
        return self.recur_parallel_with_jacobian(px, z_prev)[1]

    def recur_parallel_vjp(
        self,
        px: Tensor,
        z_prev: Tensor,
        adjoint: Callable[[Tensor], Tensor],
        *,
        scratch: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, tuple[tuple[Tensor, Tensor], ...]]:
        """The Newton backward's vector-Jacobian product (values only).

        With ``g = act'(px + u h)``: ``J = u g``, ``lam = adjoint(J)``, ``dpx = lam g`` and
        ``du = sum(lam g h)`` over the leading dimensions (zero where ``u`` is clamped).

        Args:
            px: ``(..., H)``; z_prev: ``(..., H)``; adjoint: ``J -> lam``, both ``(..., H)``.
            scratch: unused (the cell declares no ``newton_scratch``).
            out: optional ``(..., H)`` tensor to write ``dpx`` into.

        Returns:
            ``dpx: (..., H)`` and ``((self.recurrent, du: (H,)),)``.
        """
        with torch.no_grad():
            u = self.effective_u().detach()
            pre = torch.addcmul(px, u, z_prev)
            g = self._slope(pre, self._act(pre))
            lam = adjoint(g * u)
            dpx = torch.mul(lam, g, out=out) if out is not None else lam * g
            du = (dpx * z_prev).sum(tuple(range(dpx.dim() - 1)))
            if self.u_max is not None:
                w = self.recurrent.detach()
                du = du * ((w >= -self.u_max) & (w <= self.u_max)).to(du.dtype)
        return dpx, ((self.recurrent, du),)

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        """``y = h``: ``(B, T, H)``."""
        return z

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, activation={self.activation!r}, u_max={self.u_max}, "
            f"bias={self.bias is not None}"
        )
