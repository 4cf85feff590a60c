"""The plain recurrence of the selective diagonal form, step by step: the oracle of its
kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.core.selective import selective_step


def selective_scan_reference(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor,
    *,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``h_t = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t^T``, ``y_t = h_t C_t + D x_t``, one step
    at a time, with ``h`` set to zero entering every step where ``resets`` is true.

    Args:
        x, dt: ``(B, T, D)``; A: ``(D, N)``; B, C: ``(B, T, N)``; D: ``(D,)``;
        h0: ``(B, D, N)``; resets: optional bool ``(B, T)``.

    Returns:
        ``(y, h)``: ``(B, T, D)`` and the state after the last step, ``(B, D, N)``.
    """
    h = h0
    ys = []
    # unbind, not per-step indexing: autograd's backward stays linear in T
    rs = resets.unbind(1) if resets is not None else [None] * x.shape[1]
    steps = zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1), rs, strict=True)
    for x_t, dt_t, B_t, C_t, r in steps:
        if r is not None:
            h = torch.where(r[:, None, None], torch.zeros_like(h), h)
        y_t, h = selective_step(h, x_t, dt_t, A, B_t, C_t, D)
        ys.append(y_t)
    y = torch.stack(ys, 1) if ys else x.new_empty(x.shape)
    return y, h
