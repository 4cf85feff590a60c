"""Fake (meta) kernels of the ``rnnkit_selective_cpp`` ops, for torch.compile and torch.export.

Each gives the shapes and dtypes of its op's outputs (fresh contiguous tensors in the dtype of
``x``) without computing anything, following the op's contract in ``csrc/selective.cpp``:
``x, dt: (B, T, D)``, ``At: (N, D)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels.selective.cpp._native import LIB_NAME

__all__ = ["register"]


def forward(
    x: Tensor,
    dt: Tensor,
    At: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor,
    resets: Tensor | None,
    chunk: int,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y (B, T, D), h_last (B, D, N), checkpoints (B, ceil(T / chunk), D, N))``; the
    checkpoints are ``(0, 0, D, N)`` unless ``save``."""
    batch, time, dim = x.shape
    n = At.shape[0]
    nck = -(-time // chunk) if save else 0
    ck = x.new_empty((batch if save else 0, nck, dim, n))
    return x.new_empty((batch, time, dim)), x.new_empty((batch, dim, n)), ck


def backward(
    x: Tensor,
    dt: Tensor,
    At: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    resets: Tensor | None,
    checkpoints: Tensor,
    dy: Tensor,
    dh_last: Tensor,
    chunk: int,
) -> tuple[Tensor, ...]:
    """``(dx, ddt (B, T, D), dA (D, N), dB, dC (B, T, N), dD (D,), dh0 (B, D, N))``."""
    batch, time, dim = x.shape
    n = At.shape[0]
    return (
        x.new_empty((batch, time, dim)),
        x.new_empty((batch, time, dim)),
        x.new_empty((dim, n)),
        x.new_empty((batch, time, n)),
        x.new_empty((batch, time, n)),
        x.new_empty((dim,)),
        x.new_empty((batch, dim, n)),
    )


_FAKES: dict[str, Callable[..., Any]] = {"forward": forward, "backward": backward}
_registered: list[str] = []


def register() -> None:
    """Register every fake kernel (once the library has defined its ops; again: no effect)."""
    if _registered:
        return
    for op, fake in _FAKES.items():
        torch.library.register_fake(f"{LIB_NAME}::{op}", fake)
        _registered.append(op)
