"""Gated and attentive hybrids of a simple RNN: the ablation ladder of Heidenreich, Vlachas and
Koumoutsakos, "Deconstructing recurrence, attention, and gating" (arXiv 2410.02654), as options
of one cell.

Each option adds one mechanism to a tanh RNN, so that every step of the ablation is one
keyword away: the state update (``update``: replace, additive, learned per-unit rate,
input-dependent gate) and attention over a window of the last ``K`` states (``attention``).
"""

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

#: the state updates :class:`HybridRNN` offers, in the order of the ablation
HYBRID_UPDATES = ("replace", "additive", "learned_rate", "gated")


class HybridRNNState(NamedTuple):
    """State of :class:`HybridRNN`: ``h: (B, H)``, the hidden state, and ``window: (B, K, H)``,
    the last ``K`` states oldest first (``K = max(attention, 1)``; unused zeros without
    attention). A fresh state's window is zeros: zero keys and values, see the class."""

    h: Tensor
    window: Tensor


class HybridRNN(Cell[HybridRNNState]):
    """A tanh RNN with a selectable state update and optional attention over past states.

    Per step, with the candidate ``f = tanh(W x_t + U h_{t-1} + b)``, the update gives ``u``:

    - ``replace`` (the plain RNN): ``u = f``;
    - ``additive`` (a residual update): ``u = h_{t-1} + f``;
    - ``learned_rate`` (a leak per unit): ``u = (1 - a) * h_{t-1} + a * f``,
      ``a = sigmoid(rate)`` with ``rate: (H,)`` learned, independent of the input;
    - ``gated`` (an input-dependent gate): ``u = (1 - g) * h_{t-1} + g * f``,
      ``g = sigmoid(W_g x_t + U_g h_{t-1} + b_g)``.

    With ``attention = K > 0``, ``u`` attends over the ``K`` previous states ``m_1 .. m_K``
    (the window, oldest first) and itself, ``M = [m_1; ..; m_K; u]`` (``K + 1`` rows)::

        s_j = (W_Q u) . (W_K M_j) / sqrt(H),   p = softmax(s),   h_t = u + W_O sum_j p_j W_V M_j

    and the window drops ``m_1`` and appends ``h_t``; without attention ``h_t = u``. The output
    is ``y_t = h_t``. Keys and values carry no bias, so the zeros of a fresh window are
    zero keys (score 0) and zero values: the first ``K`` steps attend to a zero-padded history,
    as a causal convolution pads with zeros.

    No form is declared: the step multiplies ``h`` by a dense ``U`` inside a tanh (and the
    attention mixes the window), so the ``reference`` loop runs it.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, width of ``h`` and ``y``.
        update: one of ``"replace"``, ``"additive"``, ``"learned_rate"``, ``"gated"``
            (default ``"gated"``).
        attention: ``K``, the number of past states attended over; 0 (default) for none.
        rate_init: initial ``rate`` of ``learned_rate`` (finite; default 0, ``a = 0.5``).
        gate_bias: initial ``b_g`` of ``gated`` (finite; default 0, ``g`` about 0.5).
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (P, I)``, ``recurrent: (P, H)``, ``bias: (P,)`` with ``P = 2H``
    laid out ``[candidate; gate]`` for ``gated`` and ``P = H`` otherwise; ``rate: (H,)`` for
    ``learned_rate``; ``attn: (4, H, H)`` laid out ``[W_Q, W_K, W_V, W_O]`` with ``K > 0``.
    Weights ``U(-1/sqrt(H), 1/sqrt(H))``, ``b`` zero. Parameter count ``P (I + H + 1)``, plus
    ``H`` (``learned_rate``), plus ``4 H^2`` (attention). ``project``: ``(..., I) -> (..., P)``.
    """

    kind = "hybrid_rnn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = HybridRNNState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        update: str = "gated",
        attention: int = 0,
        rate_init: float = 0.0,
        gate_bias: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if update not in HYBRID_UPDATES:
            raise ValueError(f"update must be one of {HYBRID_UPDATES}, got {update!r}")
        window: object = attention  # checked as any object: the registry passes JSON values
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"attention must be an int >= 0 (0: none), got {attention!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.update = update
        self.attention = attention
        self.rate_init = check_finite("rate_init", rate_init)
        self.gate_bias = check_finite("gate_bias", gate_bias)
        width = 2 * hidden_size if update == "gated" else hidden_size
        self.projected_size = width
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(width, input_size, **kw))  # type: ignore[arg-type]
        self.recurrent = nn.Parameter(torch.empty(width, hidden_size, **kw))  # type: ignore[arg-type]
        self.bias = nn.Parameter(torch.empty(width, **kw))  # type: ignore[arg-type]
        self.rate: nn.Parameter | None = None
        if update == "learned_rate":
            self.rate = nn.Parameter(torch.empty(hidden_size, **kw))  # type: ignore[arg-type]
        self.attn: nn.Parameter | None = None
        if attention > 0:
            self.attn = nn.Parameter(torch.empty(4, hidden_size, hidden_size, **kw))  # type: ignore[arg-type]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ``U(-1/sqrt(H), 1/sqrt(H))``; ``b = 0`` but ``b_g = gate_bias``;
        ``rate = rate_init``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.recurrent, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            if self.update == "gated":
                self.bias[self.hidden_size :].fill_(self.gate_bias)
            if self.rate is not None:
                self.rate.fill_(self.rate_init)
        if self.attn is not None:
            nn.init.uniform_(self.attn, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        k = max(self.attention, 1)
        return (
            StateField("h", (self.hidden_size,), doc="hidden state"),
            StateField(
                "window", (k, self.hidden_size), doc="last K states, oldest first (attention)"
            ),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., P)``: ``W x + b`` (``[candidate | gate]`` for ``gated``)."""
        return F.linear(x, self.weight_ih, self.bias)

    def recur(self, px_t: Tensor, state: HybridRNNState) -> tuple[Tensor, HybridRNNState]:
        h, window = state.h, state.window
        pre = px_t + F.linear(h, self.recurrent)
        if self.update == "gated":
            pre_f, pre_g = pre.chunk(2, dim=-1)
            f = torch.tanh(pre_f)
            g = torch.sigmoid(pre_g)
            u = h + g * (f - h)  # (1 - g) h + g f
        elif self.update == "learned_rate":
            assert self.rate is not None
            a = torch.sigmoid(self.rate)
            u = h + a * (torch.tanh(pre) - h)
        elif self.update == "additive":
            u = h + torch.tanh(pre)
        else:
            u = torch.tanh(pre)
        if self.attn is None:
            return u, HybridRNNState(u, window)
        w_q, w_k, w_v, w_o = self.attn.unbind(0)
        mem = torch.cat([window, u.unsqueeze(-2)], dim=-2)  # (B, K + 1, H)
        q = F.linear(u, w_q)  # (B, H)
        scores = (F.linear(mem, w_k) @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.hidden_size)
        p = torch.softmax(scores, dim=-1)  # (B, K + 1)
        ctx = (p.unsqueeze(-1) * F.linear(mem, w_v)).sum(-2)  # (B, H)
        h_new = u + F.linear(ctx, w_o)
        new_window = torch.cat([window[..., 1:, :], h_new.unsqueeze(-2)], dim=-2)
        return h_new, HybridRNNState(h_new, new_window)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, update={self.update!r}, attention={self.attention}"
