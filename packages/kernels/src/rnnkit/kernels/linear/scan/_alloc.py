"""Output allocation for the scan backends, with optional NaN poisoning.

With poisoning on (``RNNKIT_POISON=1`` in the environment, or :func:`set_poison`), every buffer
a scan backend allocates for a kernel to fill starts as NaN, so a kernel that leaves part of
its output unwritten fails the tests instead of passing on leftover memory.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

_poison = os.environ.get("RNNKIT_POISON", "") == "1"


def set_poison(enabled: bool) -> bool:
    """Turn NaN poisoning of scan outputs on or off; returns the previous setting."""
    global _poison
    previous = _poison
    _poison = enabled
    return previous


def poison_enabled() -> bool:
    """Whether scan outputs are poisoned with NaN before kernels write them."""
    return _poison


def alloc(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised (or NaN-filled, when poisoning) tensor of ``shape``."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
