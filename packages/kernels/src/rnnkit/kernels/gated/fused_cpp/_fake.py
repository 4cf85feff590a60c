"""Fake (meta) kernels of the ``rnnkit_fused_cpp`` ops, for torch.compile and torch.export.

A fake kernel gives the shapes, dtypes and strides of an op's outputs from those of its inputs
without computing anything; with them torch.compile traces the native loops into its graph as
opaque calls (no graph break) and torch.export records them. Each follows its op's contract in
``csrc/gated_ops.cpp``: every output is a fresh contiguous tensor in the dtype of the first
float input, none a view of another (the Python side makes the views, see ``_cells.py``).

Shapes: ``N`` heads, ``T`` steps, ``B`` batch rows, ``D`` head size, ``G`` gates; the projected
input ``px`` is ``(N, T, B, G * D)``, states ``(N, B, D)``, ``hs`` ``(N, T + 1, B, D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels.gated.fused_cpp._native import LIB_NAME

__all__ = ["register"]


def _dims(t: Tensor, gates: int) -> tuple[int, int, int, int]:
    """``(N, T, B, G * D) -> (N, T, B, D)``."""
    n, time, batch, width = t.shape
    return n, time, batch, width // gates


def _new(like: Tensor, *shape: int) -> Tensor:
    return like.new_empty(shape)


def lstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    h_init: float,
    c_init: float,
    save: bool,
) -> list[Tensor]:
    """``[hs, c_last]``; when ``save`` also ``acts (N, T, B, 4D), cs (N, T + 1, B, D), tcs
    (N, T, B, D)`` and, with a mask, ``hp (N, T, B, D)``."""
    N, T, B, D = _dims(px, 4)
    out = [_new(px, N, T + 1, B, D), _new(px, N, B, D)]
    if save:
        out += [_new(px, N, T, B, 4 * D), _new(px, N, T + 1, B, D), _new(px, N, T, B, D)]
        if mask is not None:
            out.append(_new(px, N, T, B, D))
    return out


def lstm_backward(
    W: Tensor,
    acts: Tensor,
    cs: Tensor,
    tcs: Tensor,
    mask: Tensor | None,
    d_hs: Tensor,
    d_c: Tensor,
) -> list[Tensor]:
    """``[dq (N, T, B, 4D), dh0, dc0]``."""
    N, T, B, D = _dims(acts, 4)
    return [_new(acts, N, T, B, 4 * D), _new(acts, N, B, D), _new(acts, N, B, D)]


def gru_forward(
    px: Tensor,
    W: Tensor,
    bhn: Tensor | None,
    mask: Tensor | None,
    h0: Tensor,
    h_init: float,
    save: bool,
) -> list[Tensor]:
    """``[hs]``; when ``save`` also ``acts, qs (N, T, B, 3D)`` and, with a mask, ``hp``."""
    N, T, B, D = _dims(px, 3)
    out = [_new(px, N, T + 1, B, D)]
    if save:
        out += [_new(px, N, T, B, 3 * D), _new(px, N, T, B, 3 * D)]
        if mask is not None:
            out.append(_new(px, N, T, B, D))
    return out


def gru_backward(
    W: Tensor, acts: Tensor, qs: Tensor, hp: Tensor, mask: Tensor | None, d_hs: Tensor
) -> list[Tensor]:
    """``[dq (N, T, B, 3D), dpx (N, T, B, 3D), dh0]``."""
    N, T, B, D = _dims(acts, 3)
    return [_new(acts, N, T, B, 3 * D), _new(acts, N, T, B, 3 * D), _new(acts, N, B, D)]


def elman_forward(
    px: Tensor, W: Tensor, mask: Tensor | None, h0: Tensor, h_init: float, relu: bool
) -> list[Tensor]:
    """``[hs]`` and, with a mask, ``hp (N, T, B, D)``."""
    N, T, B, D = _dims(px, 1)
    out = [_new(px, N, T + 1, B, D)]
    if mask is not None:
        out.append(_new(px, N, T, B, D))
    return out


def elman_backward(
    W: Tensor, hs: Tensor, mask: Tensor | None, d_hs: Tensor, relu: bool
) -> list[Tensor]:
    """``[dq (N, T, B, D), dh0]``."""
    N, T1, B, D = hs.shape
    return [_new(hs, N, T1 - 1, B, D), _new(hs, N, B, D)]


def slstm_forward(
    px: Tensor,
    W: Tensor,
    mask: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    n0: Tensor,
    m0: Tensor,
    inits: Sequence[float],
    save: bool,
) -> list[Tensor]:
    """``[hs, cn (N, S, B, 2, D), ms (N, S, B, D)]`` with ``S = T + 1`` when ``save`` (else 2);
    when ``save`` also ``gates (N, T, B, 4D), ex (N, T, B, 2, D)`` and, with a mask, ``cnp
    (N, T, B, 2, D), hp (N, T, B, D)``."""
    N, T, B, D = _dims(px, 4)
    S = T + 1 if save else 2
    out = [_new(px, N, T + 1, B, D), _new(px, N, S, B, 2, D), _new(px, N, S, B, D)]
    if save:
        out += [_new(px, N, T, B, 4 * D), _new(px, N, T, B, 2, D)]
        if mask is not None:
            out += [_new(px, N, T, B, 2, D), _new(px, N, T, B, D)]
    return out


def slstm_backward(
    W: Tensor,
    hs: Tensor,
    cn: Tensor,
    ms: Tensor,
    gates: Tensor,
    ex: Tensor,
    cnp: Tensor,
    mask: Tensor | None,
    d_hs: Tensor,
    d_c: Tensor,
    d_n: Tensor,
    d_m: Tensor,
) -> list[Tensor]:
    """``[dq (N, T, B, 4D), dh0, dc0, dn0, dm0]``."""
    N, T, B, D = _dims(gates, 4)
    return [_new(gates, N, T, B, 4 * D), *(_new(gates, N, B, D) for _ in range(4))]


def tile_product(isa: str, w: Tensor, a: Tensor) -> Tensor:
    """``(rows, K) x (K, W) -> (rows, W)``."""
    return a.new_empty((a.shape[0], w.shape[1]))


_FAKES: dict[str, Callable[..., Any]] = {
    "lstm_forward": lstm_forward,
    "lstm_backward": lstm_backward,
    "gru_forward": gru_forward,
    "gru_backward": gru_backward,
    "elman_forward": elman_forward,
    "elman_backward": elman_backward,
    "slstm_forward": slstm_forward,
    "slstm_backward": slstm_backward,
    "tile_product": tile_product,
}


_registered: list[str] = []


def register() -> None:
    """Register every fake kernel (once the library has defined its ops; again: no effect)."""
    if _registered:
        return
    for op, fake in _FAKES.items():
        torch.library.register_fake(f"{LIB_NAME}::{op}", fake)
        _registered.append(op)
