"""Triton drivers for the scan (real dtypes), with a guarded import of triton.

Everything here runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the
tests exercise the kernels without a GPU). :func:`scan_into` picks between the single-pass
stream kernel and the 3-phase chunked kernels (:func:`prefers_stream`).
:func:`unavailable_reason` says why the Triton backends cannot run, instead of raising an
ImportError at import time.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor

from rnnkit.kernels._cuda_device import cuda_index
from rnnkit.kernels._triton_runtime import interpreted
from rnnkit.kernels.linear.scan._alloc import alloc

_kernels: ModuleType | None
try:
    from rnnkit.kernels.linear.scan import _triton_kernels as _kernels

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken triton install
    _kernels = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

#: Default chunk length of the chunked Triton scan (a power of 2).
DEFAULT_CHUNK = 256
#: Tile of the stream kernel under the interpreter: one fixed ``(BL, BD <= this)`` config with
#: small tiles (the interpreter's scan is an element loop), prefetching; on a GPU it is
#: autotuned (``_triton_kernels.STREAM_CONFIGS``).
INTERPRET_STREAM_TILE = (16, 8)
#: Channel block assumed when counting the stream kernel's programs (:func:`prefers_stream`).
STREAM_BD = 32
#: The stream kernel is chosen when it has at least this many programs per SM.
STREAM_PROGRAMS_PER_SM = 2
#: Real dtypes the kernels accept (complex is left to the torch scan).
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (decided when they were imported)."""
    return interpreted(None if _kernels is None else _kernels._seq_fwd_kernel)


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


def stream_scan_into(a: Tensor, b: Tensor, h0: Tensor, out: Tensor, *, reverse: bool) -> None:
    """Single-pass Triton scan, same contract as :func:`chunked_scan_into` (no ``chunk``).

    One program per (batch row, block of channels) walks ``T`` tile by tile, carrying the state;
    it reads ``a`` and ``b`` once. Autotuned on a GPU (tile and warps, keyed on ``D``, the
    direction and the dtypes); one small fixed tile under the interpreter.
    """
    batch, time, width = b.shape
    if out.numel() == 0:
        return
    args = (
        a, b, h0, out, time, width,
        *a.stride(), *b.stride(), *h0.stride(), out.stride(0), out.stride(1),
    )  # fmt: skip
    f64 = _f64(a, b, h0, out)
    k = _k()
    if interpreting():
        bl, bd_max = INTERPRET_STREAM_TILE
        bd = min(_block_d(width), bd_max)
        k._stream_kernel[(batch, -(-width // bd))](
            *args, BL=bl, BD=bd, REVERSE=reverse, F64=f64, PREFETCH=True
        )
        return

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (batch, -(-width // meta["BD"]))

    k.stream_autotuned()[grid](*args, REVERSE=reverse, F64=f64)


@cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; 1 elsewhere (the interpreter)."""
    if device.type != "cuda":
        return 1
    return _sm_count(cuda_index(device))


def prefers_stream(batch: int, time: int, width: int, device: torch.device) -> bool:
    """Whether the ``triton`` backend runs the stream kernel rather than the chunked one.

    The stream kernel reads ``a`` and ``b`` once, the chunked one twice (its reduce and apply
    phases) plus a small chunk-state pass, but the chunked kernels also split ``T`` into
    parallel chunks. So: stream when ``T`` spans more than one chunk (at most one chunk, the
    chunked scan is a single pass already) and there are enough ``(batch, channel block)``
    programs to fill the GPU: ``B * ceil(D / 32) >= 2 * SMs``. E.g. on a 132-SM H100/H200,
    ``B=8, D=1536`` (384 programs) streams; ``B=8, D=256`` (64) and ``B=1, D=16`` stay chunked.
    """
    if time <= DEFAULT_CHUNK:
        return False
    programs = batch * -(-width // STREAM_BD)
    return programs >= STREAM_PROGRAMS_PER_SM * sm_count(device)


def scan_into(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    out: Tensor,
    *,
    reverse: bool,
    kernel: Literal["auto", "stream", "chunked"] = "auto",
    chunk: int | None = None,
) -> None:
    """The Triton scan with the kernel chosen: ``auto`` is the stream kernel where
    :func:`prefers_stream` says so and no ``chunk`` is given, else the chunked kernels."""
    if kernel == "auto":
        batch, time, width = b.shape
        stream = chunk is None and prefers_stream(batch, time, width, out.device)
        kernel = "stream" if stream else "chunked"
    if kernel == "stream":
        stream_scan_into(a, b, h0, out, reverse=reverse)
    else:
        chunked_scan_into(a, b, h0, out, reverse=reverse, chunk=chunk)
