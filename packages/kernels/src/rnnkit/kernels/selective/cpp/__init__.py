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

import torch
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.kernel import is_exporting
from rnnkit.kernels.native import BuildError
from rnnkit.kernels.selective._run import protocol_gap
from rnnkit.kernels.selective._shell import (
    ScanInputs,
    autograd_scan,
    scan_function,
    selective_kernel,
)
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


def _forward(
    inputs: ScanInputs, resets: Tensor | None, chunk: int, save: bool
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    x, dt, A, B, C, D, h0 = inputs
    x, dt, B, C, D, h0 = (t.contiguous() for t in (x, dt, B, C, D, h0))
    At = A.t().contiguous()
    y, h, ck = ops().forward(x, dt, At, B, C, D, h0, resets, chunk, save)
    return y, h, (x, dt, At, B, C, D, ck)


def _backward(
    saved: tuple[Tensor, ...], resets: Tensor | None, chunk: int, dy: Tensor, dh: Tensor
) -> tuple[Tensor, ...]:
    x, dt, At, B, C, D, ck = saved
    grads: tuple[Tensor, ...] = ops().backward(x, dt, At, B, C, D, resets, ck, dy, dh, chunk)
    return grads


selective_scan_cpp = scan_function(
    "selective_scan_cpp",
    autograd_scan("_SelectiveScan", _forward, _backward),
    default_chunk=lambda: CHUNK,
    summary="The selective scan by the native loops (float32 or float64, CPU).",
    raises="    rnnkit.kernels.native.BuildError: the library cannot be built here.\n",
)


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
    if is_exporting():
        return Priority.BELOW_REFERENCE
    return Priority.BEATS_PORTABLE


def _scan_or_fallback(*inputs: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
        return selective_scan_torch(*inputs, resets=resets)
    return selective_scan_cpp(*inputs, resets=resets)


def kernels() -> list[Kernel]:
    """The ``selective_cpp`` kernel for every cell of the selective diagonal form."""
    return [
        selective_kernel(
            BACKEND,
            _scan_or_fallback,
            description="selective scan, C++ lanes over time, backward by recomputation (CPU)",
            priority=priority,
            available=available,
            supports=supports,
        )
    ]
