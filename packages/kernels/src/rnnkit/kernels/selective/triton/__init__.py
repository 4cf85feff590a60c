"""The ``selective_triton`` backend: the selective scan as Triton kernels, one program per
(batch row, block of channels), time in chunks of :data:`CHUNK` steps, the backward by
recomputation from the forward's per-chunk checkpoints (``_kernels.py`` has the details).

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, how
the tests run it without a GPU: there it is far slower than ``selective_cpp`` and ranks
``BELOW_REFERENCE``). float32 and float64; 16-bit inputs run the scan in float32.
:func:`unavailable_reason` says why it cannot run instead of failing at import.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.forms import Form
from rnnkit.kernels.selective._run import COMPUTE_DTYPES, protocol_gap, run_selective

_kernels: ModuleType | None
try:
    from rnnkit.kernels.selective.triton import _kernels

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken triton install
    _kernels = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

__all__ = ["BACKEND", "CHUNK", "kernels", "selective_scan_triton", "unavailable_reason"]

#: Backend name (``backend="selective_triton"``).
BACKEND = "selective_triton"
#: Steps per chunk (checkpoint interval and the backward's scratch, in states).
CHUNK = 64
#: Channels per program.
BLOCK_D = 16


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (decided when they were imported)."""
    if _kernels is None:
        return os.environ.get("TRITON_INTERPRET", "") == "1"
    return type(_kernels._fwd_kernel).__name__ == "InterpretedFunction"


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the Triton kernels cannot run (on ``device``), or ``None`` when they can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if interpreting():
        return None
    if device is not None and device.type != "cuda":
        return f"CUDA tensors needed (got {device}; TRITON_INTERPRET=1 runs it on CPU)"
    if device is None and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the Triton kernels on CPU)"
    return None


def _k() -> Any:
    if _kernels is None:
        raise RuntimeError(_IMPORT_ERROR)
    return _kernels


def _block_n(n: int) -> int:
    return max(2, 1 << (n - 1).bit_length())


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        h0: Tensor,
        resets: Tensor | None,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        x, dt, A, B, C, D, h0 = (t.contiguous() for t in (x, dt, A, B, C, D, h0))
        batch, time, dim = x.shape
        n = A.shape[1]
        save = any(ctx.needs_input_grad[:7])
        nck = -(-time // chunk)
        y = torch.empty_like(x)
        h = torch.empty_like(h0)
        ck = x.new_empty((batch if save else 0, nck, dim, n))
        rs = resets.contiguous() if resets is not None else None
        if batch and time and dim:
            grid = (batch, -(-dim // BLOCK_D))
            _k()._fwd_kernel[grid](
                x, dt, A, B, C, D, h0, rs if rs is not None else x, y, h, ck,
                time, dim, n, nck,
                HAS_RESETS=rs is not None, SAVE=save, CHUNK=chunk,
                BLOCK_D=BLOCK_D, BLOCK_N=_block_n(n),
            )  # fmt: skip
        else:
            h.copy_(h0)
        if save:
            ctx.save_for_backward(x, dt, A, B, C, D, ck)
            ctx.resets = rs
            ctx.chunk = chunk
        return y, h

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dh: Tensor | None) -> tuple[Tensor | None, ...]:
        x, dt, A, B, C, D, ck = ctx.saved_tensors
        batch, time, dim = x.shape
        n = A.shape[1]
        chunk = ctx.chunk
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dh = x.new_zeros((batch, dim, n)) if dh is None else dh.contiguous()
        blocks = -(-dim // BLOCK_D)
        bn = _block_n(n)
        if not (batch and time and dim):
            grads: tuple[Tensor, ...] = (
                torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(A),
                torch.zeros_like(B), torch.zeros_like(C), torch.zeros_like(D), dh.clone(),
            )  # fmt: skip
        else:
            dx, ddt = torch.empty_like(x), torch.empty_like(x)
            dA = x.new_empty((batch, dim, n))
            dB = x.new_empty((batch, blocks, time, n))
            dC = x.new_empty((batch, blocks, time, n))
            dD = x.new_empty((batch, dim))
            dh0 = x.new_empty((batch, dim, n))
            scratch = x.new_empty((batch, blocks, chunk, BLOCK_D, bn))
            rs = ctx.resets
            _k()._bwd_kernel[(batch, blocks)](
                x, dt, A, B, C, D, rs if rs is not None else x, ck, dy, dh, scratch,
                dx, ddt, dA, dB, dC, dD, dh0,
                time, dim, n, -(-time // chunk), blocks,
                HAS_RESETS=rs is not None, CHUNK=chunk, BLOCK_D=BLOCK_D, BLOCK_N=bn,
            )  # fmt: skip
            grads = (dx, ddt, dA.sum(0), dB.sum(1), dC.sum(1), dD.sum(0), dh0)
        need = ctx.needs_input_grad
        return (*(g if need[i] else None for i, g in enumerate(grads)), None, None)


def selective_scan_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor,
    *,
    resets: Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[Tensor, Tensor]:
    """The selective scan by the Triton kernels; same arguments and results as
    :func:`~rnnkit.kernels.selective.reference.selective_scan_reference` (``x, dt: (B, T, D)``,
    ``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``; returns
    ``y: (B, T, D)`` and ``h: (B, D, N)``), float32 or float64.

    Raises:
        RuntimeError: the kernels cannot run here (the message says why).
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    reason = unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"{BACKEND}: {reason}")
    if x.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{BACKEND}: float32 or float64 expected, got {x.dtype}")
    out: tuple[Tensor, Tensor] = _SelectiveScanTriton.apply(  # type: ignore[no-untyped-call]
        x, dt, A, B, C, D, h0, resets, chunk
    )
    return out


def _scan(
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
    return selective_scan_triton(x, dt, A, B, C, D, h0, resets=resets, chunk=CHUNK)


def _supports(call: KernelCall) -> str | None:
    gap = protocol_gap(call)
    if gap is not None:
        return gap
    return unavailable_reason(call.x.device)


def _available() -> str | None:
    return _IMPORT_ERROR


def _priority(call: KernelCall) -> Priority:
    if torch.compiler.is_exporting() or call.x.device.type != "cuda":
        # the interpreter on CPU is far slower than selective_cpp and the loop
        return Priority.BELOW_REFERENCE
    return Priority.DEVICE_BEST


def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(B, T, input_size) -> (B, T, output_size)`` and the final state."""
    return run_selective(call, _scan)


def kernels() -> list[Kernel]:
    """The ``selective_triton`` kernel for every cell of the selective diagonal form."""
    return [
        Kernel(
            backend=BACKEND,
            target=Form.SELECTIVE_DIAGONAL.value,
            run=run,
            description="selective scan, Triton, chunked with recomputation (CUDA)",
            priority=_priority,
            available=_available,
            supports=_supports,
        )
    ]
