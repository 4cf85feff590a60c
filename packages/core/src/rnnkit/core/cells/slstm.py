"""sLSTM (xLSTM): exponential input gating with normaliser and stabiliser states."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from rnnkit.core.cells._gated import GatedCell


class SLSTMState(NamedTuple):
    """State of :class:`SLSTM`: hidden ``h``, cell ``c``, normaliser ``n``, stabiliser ``m``;
    each ``(B, H)``."""

    h: Tensor
    c: Tensor
    n: Tensor
    m: Tensor


class SLSTM(GatedCell[SLSTMState]):
    """sLSTM with the stabilised exponential gating of xLSTM (gates ``i, f, z, o``).

    With pre-activations ``ĩ, f̃, z̃, õ = W x_t + b + R h_{t-1}`` (``R`` block-diagonal over
    heads), per element::

        m_t = ĩ                              where n_{t-1} == 0 (nothing accumulated yet)
            = max(ĩ, log σ(f̃) + m_{t-1})     otherwise
        i'  = exp(ĩ - m_t)                   (<= 1)
        f'  = exp(log σ(f̃) + m_{t-1} - m_t)  (<= 1)
        c_t = f' c_{t-1} + i' tanh(z̃)
        n_t = f' n_{t-1} + i'
        h_t = σ(õ) c_t / n_t,   y_t = h_t

    ``m`` only rescales ``c`` and ``n`` together, so ``h`` does not depend on it; it keeps the
    exponentials from overflowing. Arguments as :class:`~rnnkit.core.cells._gated.GatedCell`.

    Conventions against Beck et al. (2024), Section 2.2: the input gate is exponential,
    ``i = exp(ĩ)``; the forget gate is the paper's sigmoid option, ``f = σ(f̃)`` (the paper
    allows ``exp(f̃)`` too; the xLSTM reference code's sLSTM uses the sigmoid), so ``log f`` is
    ``log σ(f̃)``. Unscaled, ``c_t = f c_{t-1} + i z``, ``n_t = f n_{t-1} + i``,
    ``h_t = o c_t / n_t`` (Eqs. 8-13); the state holds ``c, n`` times ``exp(-m)``. ``m`` starts
    at ``ĩ`` on an episode's first step instead of ``max(ĩ, log f + m_0)``: ``c`` and ``n`` are
    zero there, so ``h`` is the same. The xLSTM block around the cell (causal convolution,
    group norm, projections) is not part of it.
    """

    kind = "slstm"
    num_gates = 4
    gate_names = ("i", "f", "z", "o")
    state_type = SLSTMState

    def _state_docs(self) -> tuple[tuple[str, str], ...]:
        return (
            ("h", "hidden state"),
            ("c", "cell state (scaled by exp(-m))"),
            ("n", "normaliser state (scaled by exp(-m))"),
            ("m", "stabiliser (log-scale of c and n)"),
        )

    def recur(self, px_t: Tensor, state: SLSTMState) -> tuple[Tensor, SLSTMState]:
        h_prev, c_prev, n_prev, m_prev = state
        g = px_t + self.recurrent_term(h_prev)
        i_t, f_t, z_t, o_t = g.chunk(4, dim=-1)
        log_f = F.logsigmoid(f_t)
        fresh = n_prev == 0
        m = torch.where(fresh, i_t, torch.maximum(i_t, log_f + m_prev))
        i_gate = torch.exp(i_t - m)
        # Where nothing was accumulated, c_prev and n_prev are zero and f' is irrelevant: make it
        # exp(-inf) = 0 so an arbitrary m_prev can neither overflow nor leak NaN into gradients.
        f_exp = torch.where(fresh, torch.full_like(m, -torch.inf), log_f + m_prev - m)
        f_gate = torch.exp(f_exp)
        c = f_gate * c_prev + i_gate * torch.tanh(z_t)
        n = f_gate * n_prev + i_gate
        h = torch.sigmoid(o_t) * c / n
        return h, SLSTMState(h, c, n, m)
