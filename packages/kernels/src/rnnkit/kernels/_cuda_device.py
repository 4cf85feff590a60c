"""Which CUDA device a tensor's ``torch.device`` names."""

from __future__ import annotations

import torch

__all__ = ["cuda_index"]


def cuda_index(device: torch.device) -> int:
    """The index of a CUDA ``device``; the current device for a bare ``torch.device("cuda")``,
    whose ``index`` is ``None``."""
    index: int | None = device.index
    return torch.cuda.current_device() if index is None else index
