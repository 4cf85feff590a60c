"""Scans for ``h_t = A_t h_{t-1} + b_t`` with ``A_t`` 2x2 block-diagonal (one block per unit)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _mv(a: Tensor, s: Tensor) -> Tensor:
    """``a @ s`` per unit: ``(..., 2, 2), (..., 2) -> (..., 2)`` (elementwise, no bmm)."""
    s0, s1 = s[..., 0], s[..., 1]
    return torch.stack(
        (a[..., 0, 0] * s0 + a[..., 0, 1] * s1, a[..., 1, 0] * s0 + a[..., 1, 1] * s1), -1
    )


def _mm(a: Tensor, p: Tensor) -> Tensor:
    """``a @ p`` per unit: ``(..., 2, 2), (..., 2, 2) -> (..., 2, 2)``."""
    return torch.stack((_mv(a, p[..., :, 0]), _mv(a, p[..., :, 1])), -1)


def block2_scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The step loop: ``a: (B, T, H, 2, 2)``, ``b: (B, T, H, 2)``, ``h0: (B, H, 2)`` or
    ``None`` (zeros) ``-> h: (B, T, H, 2)``. The oracle for :func:`block2_scan`."""
    s = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        s = _mv(a_t, s) + b_t
        out.append(s)
    return torch.stack(out, 1)


def block2_scan(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, chunk: int | None = None
) -> Tensor:
    """All states of ``h_t = A_t h_{t-1} + b_t`` with 2x2 blocks, by a three-pass chunked scan.

    Args:
        a: ``(B, T, H, 2, 2)``, ``a[..., i, j]`` multiplies component ``j`` of ``h_{t-1}``
            into component ``i`` of ``h_t``.
        b: ``(B, T, H, 2)``.
        h0: ``(B, H, 2)`` or ``None`` for zeros.
        chunk: the chunk length ``L`` (default about ``sqrt(T)``).

    Returns:
        ``h: (B, T, H, 2)``.

    Passes: (1) inside every chunk of ``L`` steps at once, run from a zero state and keep each
    chunk's end state and its product of blocks; (2) scan the chunk ends recursively;
    (3) rerun every chunk from its true entering state. ``3 L + O(log)`` vectorised steps, and
    every intermediate is a true partial state or a true product of blocks (no division).
    No autograd formula of its own (used under ``no_grad`` by the Newton solver).
    """
    batch, time, width = b.shape[0], b.shape[1], b.shape[2]
    if h0 is None:
        h0 = torch.zeros(batch, width, 2, dtype=b.dtype, device=b.device)
    if time <= 16:
        return block2_scan_sequential(a, b, h0)
    L = chunk or max(4, math.isqrt(time))
    C = -(-time // L)
    pad = C * L - time
    if pad:
        a = torch.cat((a, a.new_zeros(batch, pad, width, 2, 2)), 1)
        b = torch.cat((b, b.new_zeros(batch, pad, width, 2)), 1)
    a4 = a.reshape(batch, C, L, width, 2, 2)
    b4 = b.reshape(batch, C, L, width, 2)
    s = torch.zeros(batch, C, width, 2, dtype=b.dtype, device=b.device)
    prod = a4[:, :, 0]
    s = b4[:, :, 0]
    for i in range(1, L):
        s = _mv(a4[:, :, i], s) + b4[:, :, i]
        prod = _mm(a4[:, :, i], prod)
    ends = block2_scan(prod, s, h0)
    s = torch.cat((h0.unsqueeze(1), ends[:, :-1]), 1)
    out = []
    for i in range(L):
        s = _mv(a4[:, :, i], s) + b4[:, :, i]
        out.append(s)
    return torch.stack(out, 2).reshape(batch, C * L, width, 2)[:, :time]
