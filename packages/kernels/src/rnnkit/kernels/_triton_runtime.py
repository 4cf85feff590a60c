"""What the Triton backends share about where their kernels run.

Triton decides at decoration time whether a ``@triton.jit`` function runs compiled or in its
CPU interpreter (``TRITON_INTERPRET=1`` when the kernels' module was imported), so a backend
asks one of its kernel objects rather than the environment, which may have changed since.
"""

from __future__ import annotations

import os

import torch


def interpreted(kernel: object | None) -> bool:
    """Whether ``kernel`` (a ``@triton.jit`` function; ``None`` when triton did not import)
    runs in Triton's CPU interpreter; without a kernel, what the environment asks for."""
    if kernel is None:
        return os.environ.get("TRITON_INTERPRET", "") == "1"
    return type(kernel).__name__ == "InterpretedFunction"


def device_reason(
    device: torch.device | None, *, interpreting: bool, what: str = "it"
) -> str | None:
    """Why compiled Triton kernels cannot run on ``device`` (any CUDA device when ``None``),
    or ``None`` when they can or when they run in the interpreter (any device)."""
    if interpreting:
        return None
    if device is not None and device.type != "cuda":
        return f"CUDA tensors needed (got {device}; TRITON_INTERPRET=1 runs {what} on CPU)"
    if device is None and not torch.cuda.is_available():
        return f"no CUDA device (TRITON_INTERPRET=1 runs {what} on CPU)"
    return None
