"""The plain recurrence of the matrix-state form, step by step: the oracle of its kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.core.matrix_state import MEMORY_RULES


def memory_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    *,
    log_alpha: Tensor | None = None,
    rule: str = "delta",
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` (``"delta"``) or
    ``alpha_t S_{t-1} + beta_t v_t k_t^T`` (``"linear"``), ``o_t = S_t q_t``, one step at a time,
    with ``alpha_t = exp(log_alpha_t)`` (``log_alpha=None``: ``alpha = 1``) and ``S`` set to zero
    entering every step where ``resets`` is true.

    Args:
        q, k: ``(B, n, T, d_k)``; v: ``(B, n, T, d_v)``; beta: ``(B, n, T)``;
        S0: ``(B, n, d_v, d_k)``; log_alpha: optional ``(B, n, T)``, ``<= 0``;
        resets: optional bool ``(B, T)``.

    Returns:
        ``(o, S)``: ``(B, n, T, d_v)`` and the memory after the last step.
    """
    if rule not in MEMORY_RULES:
        raise ValueError(f"rule must be one of {MEMORY_RULES}, got {rule!r}")
    S = S0
    outs = []
    for t in range(q.shape[2]):
        if resets is not None:
            S = torch.where(resets[:, t, None, None, None], torch.zeros_like(S), S)
        if log_alpha is not None:
            # alpha S (I - beta k k^T) = (alpha S) - beta (alpha S) k k^T: decay first, then write
            S = torch.exp(log_alpha[:, :, t, None, None]) * S
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        if rule == "delta":
            recalled = (S @ kt.unsqueeze(-1)).squeeze(-1)  # what S returns for k_t
            S = S + bt * (vt - recalled).unsqueeze(-1) * kt.unsqueeze(-2)
        else:
            S = S + bt * vt.unsqueeze(-1) * kt.unsqueeze(-2)
        outs.append((S @ q[:, :, t].unsqueeze(-1)).squeeze(-1))
    o = torch.stack(outs, 2) if outs else v.new_empty(*v.shape)
    return o, S
