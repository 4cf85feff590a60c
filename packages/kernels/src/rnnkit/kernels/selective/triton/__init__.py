"""The ``selective_triton`` backend: the selective scan as Triton kernels, one program per
(batch row, block of channels), time in chunks of :data:`CHUNK` steps, the backward by
recomputation from the forward's per-chunk checkpoints (``_kernels.py`` has the details).

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, how
the tests run it without a GPU: there it is far slower than ``selective_cpp`` and ranks
``BELOW_REFERENCE``). float32 and float64; 16-bit inputs run the scan in float32.
:func:`unavailable_reason` says why it cannot run instead of failing at import.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.kernel import is_exporting
from rnnkit.kernels._triton_runtime import device_reason, interpreted
from rnnkit.kernels.selective._run import COMPUTE_DTYPES, protocol_gap
from rnnkit.kernels.selective._shell import (
    ScanInputs,
    autograd_scan,
    scan_function,
    selective_kernel,
)

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
    return interpreted(None if _kernels is None else _kernels._fwd_kernel)


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the Triton kernels cannot run (on ``device``), or ``None`` when they can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    return device_reason(device, interpreting=interpreting(), what="the kernels")


def _k() -> Any:
    if _kernels is None:
        raise RuntimeError(_IMPORT_ERROR)
    return _kernels


def _block_n(n: int) -> int:
    return max(2, 1 << (n - 1).bit_length())


def _forward(
    inputs: ScanInputs, resets: Tensor | None, chunk: int, save: bool
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    x, dt, A, B, C, D, h0 = (t.contiguous() for t in inputs)
    batch, time, dim = x.shape
    n = A.shape[1]
    nck = -(-time // chunk)
    y = torch.empty_like(x)
    h = torch.empty_like(h0)
    ck = x.new_empty((batch if save else 0, nck, dim, n))
    if batch and time and dim:
        grid = (batch, -(-dim // BLOCK_D))
        _k()._fwd_kernel[grid](
            x, dt, A, B, C, D, h0, resets if resets is not None else x, y, h, ck,
            time, dim, n, nck,
            HAS_RESETS=resets is not None, SAVE=save, CHUNK=chunk,
            BLOCK_D=BLOCK_D, BLOCK_N=_block_n(n),
        )  # fmt: skip
    else:
        h.copy_(h0)
    return y, h, (x, dt, A, B, C, D, ck)


def _backward(
    saved: tuple[Tensor, ...], resets: Tensor | None, chunk: int, dy: Tensor, dh: Tensor
) -> tuple[Tensor, ...]:
    x, dt, A, B, C, D, ck = saved
    batch, time, dim = x.shape
    n = A.shape[1]
    blocks = -(-dim // BLOCK_D)
    bn = _block_n(n)
    if not (batch and time and dim):
        return (
            torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(A),
            torch.zeros_like(B), torch.zeros_like(C), torch.zeros_like(D), dh.clone(),
        )  # fmt: skip
    dx, ddt = torch.empty_like(x), torch.empty_like(x)
    dA = x.new_empty((batch, dim, n))
    dB = x.new_empty((batch, blocks, time, n))
    dC = x.new_empty((batch, blocks, time, n))
    dD = x.new_empty((batch, dim))
    dh0 = x.new_empty((batch, dim, n))
    scratch = x.new_empty((batch, blocks, chunk, BLOCK_D, bn))
    _k()._bwd_kernel[(batch, blocks)](
        x, dt, A, B, C, D, resets if resets is not None else x, ck, dy, dh, scratch,
        dx, ddt, dA, dB, dC, dD, dh0,
        time, dim, n, -(-time // chunk), blocks,
        HAS_RESETS=resets is not None, CHUNK=chunk, BLOCK_D=BLOCK_D, BLOCK_N=bn,
    )  # fmt: skip
    return (dx, ddt, dA.sum(0), dB.sum(1), dC.sum(1), dD.sum(0), dh0)


def _check(x: Tensor) -> None:
    reason = unavailable_reason(x.device)
    if reason is not None:
        raise RuntimeError(f"{BACKEND}: {reason}")
    if x.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{BACKEND}: float32 or float64 expected, got {x.dtype}")


selective_scan_triton = scan_function(
    "selective_scan_triton",
    autograd_scan("_SelectiveScanTriton", _forward, _backward),
    default_chunk=lambda: CHUNK,
    summary="The selective scan by the Triton kernels, float32 or float64.",
    check=_check,
    raises="    RuntimeError: the kernels cannot run here (the message says why).\n"
    "    TypeError: ``x`` is neither float32 nor float64.\n",
)


def _supports(call: KernelCall) -> str | None:
    gap = protocol_gap(call)
    if gap is not None:
        return gap
    return unavailable_reason(call.x.device)


def _available() -> str | None:
    return _IMPORT_ERROR


def _priority(call: KernelCall) -> Priority:
    if is_exporting() or call.x.device.type != "cuda":
        # the interpreter on CPU is far slower than selective_cpp and the loop
        return Priority.BELOW_REFERENCE
    return Priority.DEVICE_BEST


def kernels() -> list[Kernel]:
    """The ``selective_triton`` kernel for every cell of the selective diagonal form."""
    return [
        selective_kernel(
            BACKEND,
            selective_scan_triton,
            description="selective scan, Triton, chunked with recomputation (CUDA)",
            priority=_priority,
            available=_available,
            supports=_supports,
        )
    ]
