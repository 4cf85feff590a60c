"""Triton drivers for the scan (real dtypes), with a guarded import of triton.

Everything here runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the
tests exercise the kernels without a GPU). :func:`unavailable_reason` says why the Triton
backends cannot run, instead of raising an ImportError at import time.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels.scan._alloc import alloc

_kernels: ModuleType | None
try:
    from rnnkit.kernels.scan import _triton_kernels as _kernels

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken triton install
    _kernels = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

#: Default chunk length of the chunked Triton scan (a power of 2).
DEFAULT_CHUNK = 256
#: Real dtypes the kernels accept (complex is left to the torch scan).
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter.

    Triton decides at decoration time (``TRITON_INTERPRET=1`` when the kernels module was
    imported), so this asks the kernel object rather than the environment.
    """
    if _kernels is None:
        return os.environ.get("TRITON_INTERPRET", "") == "1"
    return type(_kernels._seq_fwd_kernel).__name__ == "InterpretedFunction"


def unavailable_reason(
    device: torch.device | None = None, dtype: torch.dtype | None = None
) -> str | None:
    """Why the Triton scan cannot run (on ``device`` with ``dtype``), or ``None`` if it can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if dtype is not None and dtype not in DTYPES:
        return f"the Triton scan supports {', '.join(str(d) for d in DTYPES)}, not {dtype}"
    if interpreting():
        return None
    if device is not None and device.type != "cuda":
        return (
            f"the Triton scan needs CUDA tensors (got {device}; TRITON_INTERPRET=1 runs it on CPU)"
        )
    if device is None and not torch.cuda.is_available():
        return "no CUDA device (TRITON_INTERPRET=1 runs the Triton scan on CPU)"
    return None


def _k() -> Any:
    if _kernels is None:
        raise RuntimeError(_IMPORT_ERROR)
    return _kernels


def _block_d(width: int) -> int:
    return max(4, min(32, 1 << max(0, width - 1).bit_length()))


def _f64(*tensors: Tensor) -> bool:
    return any(t.dtype == torch.float64 for t in tensors)


def sequential_forward(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """Step-loop kernel: ``h: (B, T, D)`` (``b``'s dtype); ``a, b: (B, T, D)``, ``h0: (B, D)``."""
    batch, time, width = b.shape
    h = alloc((batch, time, width), dtype=b.dtype, device=b.device)
    if h.numel() == 0:
        return h
    bd = _block_d(width)
    _k()._seq_fwd_kernel[(batch, -(-width // bd))](
        a, b, h0, h, time, width,
        *a.stride(), *b.stride(), *h0.stride(), h.stride(0), h.stride(1),
        BD=bd, F64=_f64(a, b, h0),
    )  # fmt: skip
    return h


def sequential_backward(
    a: Tensor, h: Tensor, h0: Tensor, dh: Tensor, dh_last: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Step-loop gradient kernel: ``(da, db, dh0)`` with shapes ``(B,T,D), (B,T,D), (B,D)``.

    ``da`` and ``db`` are in ``h``'s dtype and ``dh0`` in ``h0``'s; the caller casts.
    """
    batch, time, width = h.shape
    da = alloc((batch, time, width), dtype=h.dtype, device=h.device)
    db = alloc((batch, time, width), dtype=h.dtype, device=h.device)
    dh0 = alloc((batch, width), dtype=h0.dtype, device=h.device)
    if h.numel() == 0:
        return da, db, dh0.zero_()
    bd = _block_d(width)
    _k()._seq_bwd_kernel[(batch, -(-width // bd))](
        a, h, h0, dh, dh_last, da, db, dh0, time, width,
        *a.stride(), h.stride(0), h.stride(1), *h0.stride(), *dh.stride(), *dh_last.stride(),
        da.stride(0), da.stride(1),
        BD=bd, F64=_f64(a, h, h0),
    )  # fmt: skip
    return da, db, dh0


def chunked_scan_into(
    a: Tensor, b: Tensor, h0: Tensor, out: Tensor, *, reverse: bool, chunk: int | None = None
) -> None:
    """Chunked Triton scan: ``out_t = a_t * out_{t-1} + b_t`` (``out_{t+1}`` when ``reverse``).

    Args:
        a, b: ``(B, T, D)``, any strides (expanded views welcome).
        h0: ``(B, D)``: the state before the first step in scan order.
        out: ``(B, T, D)`` with unit stride in ``D``; written in its own dtype.
        chunk: chunk length, a power of 2 (default :data:`DEFAULT_CHUNK`).
    """
    batch, time, width = b.shape
    if out.numel() == 0:
        return
    length = chunk or DEFAULT_CHUNK
    if length & (length - 1):
        raise ValueError(f"the Triton scan's chunk must be a power of 2, got {length}")
    n_chunks = -(-time // length)
    bd = _block_d(width)
    grid = (batch, n_chunks, -(-width // bd))
    f64 = _f64(a, b, h0, out)
    acc = torch.float64 if f64 else torch.float32
    k = _k()
    if n_chunks == 1:
        carry = h0.unsqueeze(1)
    else:
        # chunk products and end states, then the scan over chunks (recursively) for the
        # state entering each chunk.
        prods = alloc((batch, n_chunks, width), dtype=acc, device=out.device)
        ends = alloc((batch, n_chunks, width), dtype=acc, device=out.device)
        k._chunk_reduce_kernel[grid](
            a, b, prods, ends, time, width,
            *a.stride(), *b.stride(), prods.stride(0), prods.stride(1),
            BL=length, BD=bd, REVERSE=reverse, F64=f64,
        )  # fmt: skip
        states = alloc((batch, n_chunks + 1, width), dtype=acc, device=out.device)
        if reverse:
            states[:, n_chunks] = h0
            chunked_scan_into(prods, ends, h0, states[:, :n_chunks], reverse=True, chunk=chunk)
            carry = states[:, 1:]
        else:
            states[:, 0] = h0
            chunked_scan_into(prods, ends, h0, states[:, 1:], reverse=False, chunk=chunk)
            carry = states[:, :n_chunks]
    k._chunk_apply_kernel[grid](
        a, b, carry, out, time, width,
        *a.stride(), *b.stride(), *carry.stride(), out.stride(0), out.stride(1),
        BL=length, BD=bd, REVERSE=reverse, F64=f64,
    )  # fmt: skip
