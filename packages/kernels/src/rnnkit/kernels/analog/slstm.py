"""sLSTM on a crossbar: which pre-activations go through which converter, and the digital
stabilised exponential gating.

The sLSTM step (``rnnkit.core.cells.SLSTM``) with pre-activations ``ĩ, f̃, z̃, õ`` is::

    a   = log σ(f̃) + m_{t-1}
    m_t = max(ĩ, a)           (ĩ where nothing was accumulated yet: n_{t-1} == 0)
    i'  = exp(ĩ - m_t),  f' = exp(a - m_t)
    c_t = f' c + i' tanh(z̃),  n_t = f' n + i',  h_t = σ(õ) c_t / n_t

**Mapping.** One tile holds all four gates (input, recurrent and bias rows summed on the bit
line, as for the LSTM); the block-diagonal multi-head recurrent matrix is placed dense, its
off-block pairs left at ``g_min`` (a real array has those crosspoints: they carry their
devices' noise; a per-head tile layout would avoid that and is not modelled). Columns, in tile
order:

- ``f`` (sigmoid NL-ADC) and ``o`` (sigmoid NL-ADC), then ``z`` (tanh NL-ADC): as in the LSTM.
  ``log σ(f̃)`` is the log of the converted code's value, ``log(y_min + (D + ½)Δy)``: a
  function of the ``2^n`` codes, i.e. a ``2^n``-entry table, never ``-inf``.
- ``i`` (conventional ADC): ``ĩ`` is converted linearly.

**Why no exp NL-ADC on the bit line.** The exponential gate's argument is stabilised:
``exp(ĩ - m_t)`` with ``m_t = max(ĩ, log σ(f̃) + m_{t-1})``, which depends on ``ĩ`` itself and
on the previous step, so the subtraction can only happen after ``ĩ`` is converted. An NL-ADC
with ``f = exp`` on a bounded input range instead would clip the gate at ``e^{T_max}`` (a large
``ĩ`` could no longer overwrite the memory, which is what exponential gating is for) and would
quantise small gates with uniform *absolute* output levels, losing the dynamic range the
exponential exists for. ``ĩ`` is already the log of the gate, so a linear conversion keeps
all of it.

**The stabilised gates are bounded.** With ``d = ĩ - a``: ``i' = exp(-max(-d, 0))`` and
``f' = exp(-max(d, 0))``, i.e. one of them is 1 and the other ``e = exp(-|d|) ∈ (0, 1]``.
So each unit needs one exponential of a non-positive digital number per step: exact
(``state_activation="digital"``), or (``"nl_adc"``) converted by an NL-ADC with ``f = exp`` on
``[-state_bound, 0]`` after a DAC, like ``tanh(c_t)`` of the LSTM; ``h = o c / n`` stays a
digital division.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["column_plan", "exp_domain", "gate_update", "tile_rows"]


def tile_rows(m: Tensor) -> Tensor:
    """Reorder the gate-major rows ``(i, f, z, o)`` of ``m (4H, K)`` to tile order
    ``(f, o, z, i)``: the NL-ADC banks (sigmoid, tanh) are contiguous and come first."""
    i, f, z, o = m.chunk(4, 0)
    return torch.cat([f, o, z, i], 0)


def column_plan(hidden: int, nl_adc: bool) -> list[tuple[str, int, int]]:
    """``(function, start, stop)`` NL-ADC column ranges of the tile (``[]`` without NL-ADCs)."""
    if not nl_adc:
        return []
    return [("sigmoid", 0, 2 * hidden), ("tanh", 2 * hidden, 3 * hidden)]


def exp_domain(state_bound: float) -> tuple[float, float]:
    """Input range of the ``exp`` NL-ADC of the stabilised gates: ``[-state_bound, 0]``."""
    return (-float(state_bound), 0.0)


def gate_update(
    z: Tensor, state: Any, *, nl: bool, exp_neg: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Any]:
    """The digital part of an sLSTM step.

    Args:
        z: ``(B, 4H)`` the tile's outputs in tile order ``(f, o, z, i)``: converted activations
            ``σ̂(f̃), σ̂(õ), tanh^(z̃)`` when ``nl``, else the pre-activations; always ``ĩ``.
        state: ``SLSTMState`` ``(h, c, n, m)``, each ``(B, H)``.
        nl: whether the first ``3H`` columns are already activations (NL-ADCs).
        exp_neg: ``exp`` of a non-positive ``(B, H)`` tensor (exact, or an NL-ADC).

    Returns:
        ``h (B, H)`` and the new state.
    """
    f_t, o_t, z_t, i_t = z.chunk(4, dim=-1)
    if nl:
        log_f, o_gate, z_gate = torch.log(f_t), o_t, z_t
    else:
        log_f, o_gate, z_gate = F.logsigmoid(f_t), torch.sigmoid(o_t), torch.tanh(z_t)
    fresh = state.n == 0
    a = log_f + state.m
    d = i_t - a
    # where nothing was accumulated, m restarts at ĩ and f' = 0 (c and n are zero anyway), so
    # an arbitrary m_{t-1} can neither overflow nor leak NaN into gradients.
    d = torch.where(fresh, torch.zeros_like(d), d)
    e = exp_neg(-d.abs())
    one = torch.ones_like(e)
    pos = d >= 0
    i_gate = torch.where(pos, one, e)
    f_gate = torch.where(fresh, torch.zeros_like(e), torch.where(pos, e, one))
    m = torch.where(fresh, i_t, torch.maximum(i_t, a))
    c = f_gate * state.c + i_gate * z_gate
    n = f_gate * state.n + i_gate
    h = o_gate * c / n
    return h, type(state)(h, c, n, m)
