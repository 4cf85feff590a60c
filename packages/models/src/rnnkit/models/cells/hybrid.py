"""Gated and attentive hybrids of a simple RNN: the ablation ladder of Heidenreich, Vlachas and
Koumoutsakos, "Deconstructing recurrence, attention, and gating" (arXiv 2410.02654), as options
of one cell.

Each option adds one mechanism to a recurrent core, so that every step of the ablation is one
keyword away: the core (``core``: a tanh RNN or a Recurrent Highway Network of depth ``L``),
the state update (``update``: replace, additive, learned per-unit rate, input-dependent gate)
and attention over a window of the last ``K`` states (``attention``).
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
#: the recurrent cores :class:`HybridRNN` computes its candidate with
HYBRID_CORES = ("tanh", "rhn")


class HybridRNNState(NamedTuple):
    """State of :class:`HybridRNN`: ``h: (B, H)``, the hidden state, and ``window: (B, K, H)``,
    the last ``K`` states oldest first (``K = max(attention, 1)``; unused zeros without
    attention). A fresh state's window is zeros: zero keys and values, see the class."""

    h: Tensor
    window: Tensor


class HybridRNN(Cell[HybridRNNState]):
    """A tanh RNN or RHN with a selectable state update and optional attention over past states.

    Per step the core computes a candidate ``f`` from ``x_t`` and ``h_{t-1}``:

    - ``core="tanh"``: ``f = tanh(W x_t + U h_{t-1} + b)``;
    - ``core="rhn"``: the highway micro-steps of :class:`~rnnkit.models.cells.RHN` (coupled
      carry), ``s_0 = h_{t-1}`` and for ``l = 1 .. L``::

          c_l = tanh(W_H x_t [l = 1] + R_{H,l} s_{l-1} + b_{H,l})
          t_l = sigmoid(W_T x_t [l = 1] + R_{T,l} s_{l-1} + b_{T,l})
          s_l = c_l * t_l + s_{l-1} * (1 - t_l)

      and ``f = s_L``; with ``update="replace"`` and no attention this is the RHN cell itself.

    The update gives ``u`` from ``f``:

    - ``replace`` (the plain RNN or RHN): ``u = f``;
    - ``additive`` (a residual update): ``u = h_{t-1} + f``;
    - ``learned_rate`` (a leak per unit): ``u = (1 - a) * h_{t-1} + a * f``,
      ``a = sigmoid(rate)`` with ``rate: (H,)`` learned, independent of the input;
    - ``gated`` (an input-dependent gate): ``u = (1 - g) * h_{t-1} + g * f``,
      ``g = sigmoid(W_g x_t + U_g h_{t-1} + b_g)`` (on either core: for the RHN a gate on the
      whole step, beside its micro-steps' own transform gates).

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
        rate_init: initial ``rate`` of ``learned_rate`` (finite; default 0, ``a = 0.5``;
            another value needs ``update="learned_rate"``).
        gate_bias: initial ``b_g`` of ``gated`` (finite; default 0, ``g`` about 0.5; another
            value needs ``update="gated"``).
        core: ``"tanh"`` (default) or ``"rhn"``.
        depth: ``L``, the RHN's micro-steps per time step (``core="rhn"`` only; default 1).
        transform_bias: initial value of every ``b_T`` of the RHN core (finite; default -2.0,
            as :class:`~rnnkit.models.cells.RHN`; another value needs ``core="rhn"``).
        device, dtype: for the parameters.

    Parameters: ``weight_ih: (P, I)``, ``recurrent: (P, H)``, ``bias: (P,)``, rows laid out
    ``[candidate; gate]``: the candidate is ``H`` rows for the tanh core and ``2H`` rows
    ``[W_H; W_T]`` (the RHN's first micro-step) for the RHN core, the gate ``H`` rows with
    ``gated``; for the RHN core with ``L > 1`` also ``deep: (L - 1, 2H, H)`` and ``deep_bias:
    (L - 1, 2H)``, the later micro-steps' ``[R_H; R_T]`` and ``[b_H | b_T]``; ``rate: (H,)`` for
    ``learned_rate``; ``attn: (4, H, H)`` laid out ``[W_Q, W_K, W_V, W_O]`` with ``K > 0``.
    Weights ``U(-1/sqrt(H), 1/sqrt(H))``, biases zero but ``b_g = gate_bias`` and ``b_T =
    transform_bias``. Parameter count ``P (I + H + 1)``, plus ``2 (L - 1) H (H + 1)`` (RHN
    core), plus ``H`` (``learned_rate``), plus ``4 H^2`` (attention). ``project``: ``(..., I)
    -> (..., P)``.
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
        core: str = "tanh",
        depth: int = 1,
        transform_bias: float = -2.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if update not in HYBRID_UPDATES:
            raise ValueError(f"update must be one of {HYBRID_UPDATES}, got {update!r}")
        if core not in HYBRID_CORES:
            raise ValueError(f"core must be one of {HYBRID_CORES}, got {core!r}")
        check_positive_int("depth", depth)
        if core == "tanh" and depth != 1:
            raise ValueError(
                f"depth (the RHN's micro-steps) needs core='rhn'; the tanh core has one step, "
                f"got depth={depth}"
            )
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
        self.transform_bias = check_finite("transform_bias", transform_bias)
        # an initial value of a part the cell does not have is refused, not ignored
        for name, value, default, needs, has in (
            ("rate_init", self.rate_init, 0.0, "update='learned_rate'", update == "learned_rate"),
            ("gate_bias", self.gate_bias, 0.0, "update='gated'", update == "gated"),
            ("transform_bias", self.transform_bias, -2.0, "core='rhn'", core == "rhn"),
        ):
            if value != default and not has:
                raise ValueError(f"{name} needs {needs}, got {name}={value!r}")
        self.core = core
        self.depth = depth
        #: rows of the candidate in ``weight_ih`` / ``recurrent`` / ``bias``
        self.candidate_size = 2 * hidden_size if core == "rhn" else hidden_size
        width = self.candidate_size + (hidden_size if update == "gated" else 0)
        self.projected_size = width
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(width, input_size, **kw))  # type: ignore[arg-type]
        self.recurrent = nn.Parameter(torch.empty(width, hidden_size, **kw))  # type: ignore[arg-type]
        self.bias = nn.Parameter(torch.empty(width, **kw))  # type: ignore[arg-type]
        self.deep: nn.Parameter | None = None
        self.deep_bias: nn.Parameter | None = None
        if core == "rhn" and depth > 1:
            deep = (depth - 1, 2 * hidden_size)
            self.deep = nn.Parameter(torch.empty(*deep, hidden_size, **kw))  # type: ignore[arg-type]
            self.deep_bias = nn.Parameter(torch.empty(*deep, **kw))  # type: ignore[arg-type]
        self.rate: nn.Parameter | None = None
        if update == "learned_rate":
            self.rate = nn.Parameter(torch.empty(hidden_size, **kw))  # type: ignore[arg-type]
        self.attn: nn.Parameter | None = None
        if attention > 0:
            self.attn = nn.Parameter(torch.empty(4, hidden_size, hidden_size, **kw))  # type: ignore[arg-type]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ``U(-1/sqrt(H), 1/sqrt(H))``; ``b = 0`` but ``b_g = gate_bias`` and the
        RHN core's ``b_T = transform_bias``; ``rate = rate_init``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        hid, cand = self.hidden_size, self.candidate_size
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.recurrent, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            if self.update == "gated":
                self.bias[cand:].fill_(self.gate_bias)
            if self.core == "rhn":
                self.bias[hid:cand].fill_(self.transform_bias)
            if self.rate is not None:
                self.rate.fill_(self.rate_init)
        if self.deep is not None and self.deep_bias is not None:
            nn.init.uniform_(self.deep, -bound, bound)
            with torch.no_grad():
                self.deep_bias[:, :hid].zero_()
                self.deep_bias[:, hid:].fill_(self.transform_bias)
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

    def _candidate(self, pre_f: Tensor, h: Tensor) -> Tensor:
        """The core's candidate ``f: (B, H)`` from its pre-activation rows ``pre_f`` (``W x +
        U h + b``, ``H`` or ``2H`` wide) and the state ``h: (B, H)``."""
        if self.core == "tanh":
            return torch.tanh(pre_f)
        s = h
        for layer in range(self.depth):
            if layer:
                assert self.deep is not None and self.deep_bias is not None
                pre_f = F.linear(s, self.deep[layer - 1], self.deep_bias[layer - 1])
            pre_c, pre_t = pre_f.chunk(2, dim=-1)
            t = torch.sigmoid(pre_t)
            s = s + t * (torch.tanh(pre_c) - s)  # c t + s (1 - t)
        return s

    def recur(self, px_t: Tensor, state: HybridRNNState) -> tuple[Tensor, HybridRNNState]:
        h, window = state.h, state.window
        pre = px_t + F.linear(h, self.recurrent)
        f = self._candidate(pre[..., : self.candidate_size], h)
        if self.update == "gated":
            g = torch.sigmoid(pre[..., self.candidate_size :])
            u = h + g * (f - h)  # (1 - g) h + g f
        elif self.update == "learned_rate":
            assert self.rate is not None
            a = torch.sigmoid(self.rate)
            u = h + a * (f - h)
        elif self.update == "additive":
            u = h + f
        else:
            u = f
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
        core = f", core='rhn', depth={self.depth}" if self.core == "rhn" else ""
        return f"{super().extra_repr()}, update={self.update!r}, attention={self.attention}{core}"
