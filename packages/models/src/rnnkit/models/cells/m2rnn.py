"""M2RNN: a recurrent cell whose state is a matrix per head, updated through a nonlinearity.

Linear-attention-style cells (DeltaNet, Mamba-2) keep a large matrix state but update it
linearly, which a parallel scan can compute and which limits what one layer can track; a
classic RNN updates its state nonlinearly but keeps only a vector. M2RNN (Mishra, Tan, Stoica,
Gonzalez and Dao, 2026) does both: each head holds ``H: (K, V)``, mixed by a ``V x V`` matrix
and squashed by ``tanh`` at every step, so one layer can compose permutations (state tracking)
with a state as large as a matrix memory's.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_range


class M2RNNState(NamedTuple):
    """State of :class:`M2RNN`: ``H: (B, heads, key_dim, value_dim)``, one ``K x V`` matrix
    per head."""

    H: Tensor


class M2RNN(Cell[M2RNNState]):
    """Matrix-valued nonlinear RNN (M2RNN), per head ``h = 0 .. heads - 1``::

        q_t, k_t = W_q x_t, W_k x_t                      (K,) each
        v_t = W_v x_t                                    (V,)
        f_t = exp(-exp(A_log) * softplus(w_f x_t + dt_bias))     scalar in (0, 1)
        Z_t = tanh(H_{t-1} W + k_t v_t^T)                (K, V); W: (V, V) per head
        H_t = f_t H_{t-1} + (1 - f_t) Z_t
        y_t = H_t^T q_t + D * v_t                        (V,); D: (V,) per head

    and ``y`` is the heads' outputs concatenated, ``(heads * V,) = (hidden_size,)``. Each row
    of ``H`` evolves by the same ``V x V`` map, so ``dH_t/dH_{t-1}`` is block-diagonal with
    dense ``V x V`` blocks ``f I + (1 - f) diag(1 - Z_row^2) W^T``: neither diagonal (no
    ``newton`` backend) nor linear (no scan), so the cell declares no form and runs the
    ``reference`` loop, as the published kernels loop over time too. The published layer's
    short convolution, output gate, normalisation and output projection are left out (the
    network around the cell supplies its own); so is the key/value-head broadcasting.

    Args:
        input_size: width of ``x``.
        hidden_size: ``heads * value_dim``, the output width.
        value_dim: ``V``, the value width per head; must divide ``hidden_size`` (the number
            of heads is ``hidden_size // value_dim``). Paper: 16.
        key_dim: ``K``, the key and query width per head (rows of ``H``). Paper: 64.
        a_range: ``(low, high)`` with ``0 < low``: ``A = exp(A_log) ~ U(low, high)`` per head
            (Mamba-2's ``(1, 16)``; the reference layer draws from ``(0, 16)``, whose ``A = 0``
            would be a gate stuck at 1).
        dt_range: ``(low, high)`` with ``0 < low``: ``softplus(dt_bias)`` starts log-uniform
            in it (``(1e-3, 0.1)``), so ``f`` starts between ``exp(-16 * 0.1)`` and
            ``exp(-1e-3)`` for a zero input.
        device, dtype: for the parameters.

    Parameters: ``weight: (heads * (2 K + V) + heads, I)`` (``W_q, W_k, W_v, w_f`` stacked)
    from ``U(-1/sqrt(I), 1/sqrt(I))``; ``mix: (heads, V, V)`` (``W``) = identity;
    ``skip: (heads, V)`` (``D``) = 1; ``A_log: (heads,)``, ``dt_bias: (heads,)`` (Mamba-2's
    initialisation). State ``H: (B, heads, K, V)``, zero at the start.
    """

    kind = "m2rnn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = M2RNNState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        value_dim: int = 16,
        key_dim: int = 64,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = (1e-3, 0.1),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("value_dim", value_dim)
        check_positive_int("key_dim", key_dim)
        if hidden_size % value_dim:
            raise ValueError(
                f"value_dim must divide hidden_size={hidden_size} (the heads are "
                f"hidden_size // value_dim blocks of width value_dim), got {value_dim!r}"
            )
        self.a_range = check_range("a_range", a_range, minimum=1e-12)
        self.dt_range = check_range("dt_range", dt_range, minimum=1e-12)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.value_dim = value_dim
        self.key_dim = key_dim
        self.heads = hidden_size // value_dim
        nh, K, V = self.heads, key_dim, value_dim
        self.projected_size = nh * (2 * K + V + 1)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.projected_size, input_size, **kw))
        self.mix = nn.Parameter(torch.empty(nh, V, V, **kw))
        self.skip = nn.Parameter(torch.empty(nh, V, **kw))
        self.A_log = nn.Parameter(torch.empty(nh, **kw))
        self.dt_bias = nn.Parameter(torch.empty(nh, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections uniform, ``W = I``, ``D = 1``, ``A ~ U(a_range)``, ``dt`` log-uniform in
        ``dt_range`` (see the class docstring)."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        self.mix.copy_(torch.eye(self.value_dim).expand_as(self.mix))
        nn.init.ones_(self.skip)
        self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(*self.a_range)))
        lo, hi = math.log(self.dt_range[0]), math.log(self.dt_range[1])
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(lo, hi))
        # softplus^{-1}(dt) = dt + log(1 - exp(-dt))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField(
                "H", (self.heads, self.key_dim, self.value_dim), doc="matrix state per head (K x V)"
            ),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., heads * (2 K + V + 1))``: ``[W_q x, W_k x, W_v x, w_f x]``."""
        return F.linear(x, self.weight)

    def recur(self, px_t: Tensor, state: M2RNNState) -> tuple[Tensor, M2RNNState]:
        nh, K, V = self.heads, self.key_dim, self.value_dim
        B = px_t.shape[0]
        q = px_t[:, : nh * K].reshape(B, nh, K)
        k = px_t[:, nh * K : 2 * nh * K].reshape(B, nh, K)
        v = px_t[:, 2 * nh * K : nh * (2 * K + V)].reshape(B, nh, V)
        f_pre = px_t[:, nh * (2 * K + V) :]  # (B, heads)
        f = torch.exp(-torch.exp(self.A_log) * F.softplus(f_pre + self.dt_bias))
        f = f[:, :, None, None]
        H = state.H
        Z = torch.tanh(H @ self.mix + k.unsqueeze(-1) * v.unsqueeze(-2))  # (B, heads, K, V)
        H = f * H + (1 - f) * Z
        y = (q.unsqueeze(-2) @ H).squeeze(-2) + self.skip * v  # (B, heads, V)
        return y.reshape(B, nh * V), M2RNNState(H)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, heads={self.heads}, key_dim={self.key_dim}, "
            f"value_dim={self.value_dim}"
        )
