"""The ``selective_cpp`` backend: the selective scan as one native (C++) loop over time per lane
(batch row x block of channels), lanes in parallel, with a backward by recomputation (CPU).

The forward keeps each lane's ``(N, channels)`` state in a local array and stores only the
states entering every :data:`CHUNK`-th step; the backward recomputes one chunk's states at a
time from them and runs the adjoint recurrence through it. Neither pass holds the
``(B, T, D, N)`` states: the extra memory is ``O(B D N T / CHUNK)`` for the checkpoints plus the
lanes' buffers (``csrc/selective.cpp`` has the details). float32 and float64 on the CPU.

The library is compiled by :mod:`rnnkit.kernels.native` on first use (about 15 s) and cached;
``rnnkit kernels build`` compiles it ahead of time. Without a C++ compiler or ninja the kernel
reports why through ``available`` and ``auto`` uses ``selective_torch``; if a build fails on
first use the call runs ``selective_torch`` with a warning, and later calls report the
failure. ``RNNKIT_SELECTIVE_CPP=0`` (or ``RNNKIT_CPP=0``) turns the backend off.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.forms import Form
from rnnkit.kernels.native import BuildError
from rnnkit.kernels.selective._run import protocol_gap, run_selective
from rnnkit.kernels.selective.cpp._native import DISABLE_ENV, LIBRARY, ops
from rnnkit.kernels.selective.torch_loop import BACKEND as TORCH_BACKEND
from rnnkit.kernels.selective.torch_loop import selective_scan_torch

__all__ = [
    "BACKEND",
    "CHUNK",
    "DISABLE_ENV",
    "LIBRARY",
    "available",
    "kernels",
    "priority",
    "selective_scan_cpp",
    "supports",
]

#: Backend name (``backend="selective_cpp"``).
BACKEND = "selective_cpp"
#: Steps between the forward's checkpoints (and per recomputed chunk in the backward).
CHUNK = 32
_DTYPES = (torch.float32, torch.float64)


class _SelectiveScan(torch.autograd.Function):
    """The native forward and backward ops as one autograd node."""

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
        x, dt, B, C, D, h0 = (t.contiguous() for t in (x, dt, B, C, D, h0))
        At = A.t().contiguous()
        rs = resets.contiguous() if resets is not None else None
        save = any(ctx.needs_input_grad[:7])
        y, h, ck = ops().forward(x, dt, At, B, C, D, h0, rs, chunk, save)
        if save:
            ctx.save_for_backward(x, dt, At, B, C, D, ck)
            ctx.resets = rs
            ctx.chunk = chunk
        return y, h

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dh: Tensor | None) -> tuple[Tensor | None, ...]:
        x, dt, At, B, C, D, ck = ctx.saved_tensors
        batch, _, dim = x.shape
        n = At.shape[0]
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dh = x.new_zeros((batch, dim, n)) if dh is None else dh.contiguous()
        grads = ops().backward(x, dt, At, B, C, D, ctx.resets, ck, dy, dh, ctx.chunk)
        need = ctx.needs_input_grad
        return (*(g if need[i] else None for i, g in enumerate(grads)), None, None)


def selective_scan_cpp(
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
    """The selective scan by the native loops (float32 or float64, CPU); same arguments and
    results as :func:`~rnnkit.kernels.selective.reference.selective_scan_reference`
    (``x, dt: (B, T, D)``, ``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``;
    returns ``y: (B, T, D)`` and ``h: (B, D, N)``).

    Raises:
        rnnkit.kernels.native.BuildError: the library cannot be built here.
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    out: tuple[Tensor, Tensor] = _SelectiveScan.apply(  # type: ignore[no-untyped-call]
        x, dt, A, B, C, D, h0, resets, chunk
    )
    return out


def available() -> str | None:
    """Why the native library cannot be used here (``None`` when it can); never compiles."""
    return LIBRARY.why_unavailable()


def supports(call: KernelCall) -> str | None:
    """Why ``selective_cpp`` cannot run ``call`` (``None`` when it can)."""
    gap = protocol_gap(call)
    if gap is not None:
        return gap
    x = call.x
    if x.device.type != "cpu":
        return f"CPU only (input is on {x.device}; use 'selective_triton' or '{TORCH_BACKEND}')"
    if x.dtype not in _DTYPES:
        return (
            f"dtype {x.dtype} is not supported (float32, float64; '{TORCH_BACKEND}' runs "
            "16-bit inputs with the scan in float32)"
        )
    for p in call.cell.parameters():
        if p.dtype != x.dtype:
            return f"parameter dtype {p.dtype} differs from input dtype {x.dtype}"
    return None


def priority(call: KernelCall) -> Priority:
    """``BEATS_PORTABLE`` (measured against ``selective_torch``, ``docs/kernels.md``); under
    ``torch.export`` ``BELOW_REFERENCE``, so that exported programs hold plain ATen ops."""
    if torch.compiler.is_exporting():
        return Priority.BELOW_REFERENCE
    return Priority.BEATS_PORTABLE


def _scan_or_fallback(
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
    try:
        ops()  # compiles or loads the library on first use
    except BuildError as e:
        # A failed build must not break a model: the failure is recorded, so later calls
        # see it through `available` and `auto` skips this backend.
        warnings.warn(
            f"rnnkit {BACKEND}: {e}; running '{TORCH_BACKEND}' instead",
            RuntimeWarning,
            stacklevel=4,
        )
        return selective_scan_torch(x, dt, A, B, C, D, h0, resets=resets)
    return selective_scan_cpp(x, dt, A, B, C, D, h0, resets=resets)


def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(B, T, input_size) -> (B, T, output_size)`` and the final state."""
    return run_selective(call, _scan_or_fallback)


def kernels() -> list[Kernel]:
    """The ``selective_cpp`` kernel for every cell of the selective diagonal form."""
    return [
        Kernel(
            backend=BACKEND,
            target=Form.SELECTIVE_DIAGONAL.value,
            run=run,
            description="selective scan, C++ lanes over time, backward by recomputation (CPU)",
            priority=priority,
            available=available,
            supports=supports,
        )
    ]
