"""The ``fused_cpp`` backend: the ``fused`` loops with both time loops in C++ (CPU).

For Elman (tanh and ReLU), LSTM, GRU and sLSTM with any number of heads, float32 and float64,
on CPU. The autograd functions and kernels of :mod:`rnnkit.kernels.gated.fused` (same layouts, saved
buffers and autograd structure) run with native loops (``_cells``): the forward and the reverse
time loops are one native call each. In float32 they are team loops: each thread owns blocks of
hidden units, keeps their weights packed in its cache and computes their products with
register-tiled AVX-512/AVX2 kernels and their gates, with one barrier per step; otherwise one
GEMM per head per step (the BLAS torch ships) and one vectorised pass over the gates. Large
outputs come from a cache of freed buffers (:func:`set_memory_limit`, :func:`release_memory`).

The library (``csrc/``) is compiled by :mod:`rnnkit.kernels.native` on first use (about 20 to
60 s) and cached; ``rnnkit kernels build`` compiles it ahead of time. Without a C++ compiler or
ninja the kernels report why through ``available`` and ``auto`` uses another backend; if a
build fails on first use the call falls back to the pure-torch ``fused`` loop with a warning,
and later calls report the failure. ``RNNKIT_FUSED_CPP=0`` (or ``RNNKIT_CPP=0``) turns the
backend off.

See ``docs/kernels-fused.md`` for the measurements behind the ``auto`` priorities.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import fill_restart_refusal
from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.kernel import is_exporting
from rnnkit.kernels.gated.fused import run_elman as _py_elman
from rnnkit.kernels.gated.fused import run_gru as _py_gru
from rnnkit.kernels.gated.fused import run_lstm as _py_lstm
from rnnkit.kernels.gated.fused import run_slstm as _py_slstm
from rnnkit.kernels.gated.fused_cpp._native import DISABLE_ENV, LIBRARY, ops
from rnnkit.kernels.native import BuildError

__all__ = [
    "BACKEND",
    "DISABLE_ENV",
    "EXPORT_PRIORITY",
    "FLOAT64_PRIORITY",
    "LIBRARY",
    "LOOP_PHASES",
    "PREFERRED",
    "PRIORITY",
    "available",
    "cached_memory",
    "info",
    "kernels",
    "loop_phases",
    "priority",
    "release_memory",
    "set_memory_limit",
    "supports",
]

#: Backend name (``backend="fused_cpp"``).
BACKEND = "fused_cpp"
#: ``auto`` tier on CPU: above ``fused``, below ``torch`` where torch's op is the best one.
PRIORITY = Priority.BEATS_PORTABLE
#: ``auto`` tier where the native loop measured faster than torch's native op too.
PREFERRED = Priority.BEATS_DEVICE_BEST
#: ``auto`` tier for float64: below ``fused``, above ``reference``. float64 is the validation
#: dtype; eager ``auto`` keeps it on the pure-torch loop (which the existing tests and the
#: conformance kit expect there). Under ``torch.compile`` ``fused`` ranks below ``reference``
#: (:data:`rnnkit.kernels.gated.fused.COMPILE_PRIORITY`: its loops break the graph), so compiled
#: float64 calls run here, traced as opaque calls. ``backend="fused_cpp"`` runs float64 natively.
FLOAT64_PRIORITY = Priority.FALLBACK

#: ``auto`` tier under ``torch.export``: below ``reference``. An exported program that calls
#: this library's ops runs only where the library is built and loaded, and ONNX has no
#: translation for them; ``torch`` and ``reference`` export to standard ATen ops.
#: ``backend="fused_cpp"`` still exports (the ops have fake kernels, ``_fake.py``).
EXPORT_PRIORITY = Priority.BELOW_REFERENCE

#: (cell kind, needs_grad) of the dense (one-head) calls where the native loop measured faster
#: than torch's own op (``docs/kernels-fused.md``, "auto"): GRU and Elman inference, LSTM
#: training. Everywhere else :data:`PRIORITY` is enough: torch either wins (dense LSTM
#: inference: oneDNN's fused layer) or does not run the call (heads > 1, resets, sLSTM), or
#: ranks below already (GRU and Elman training, where torch records a per-step graph).
_BEATS_TORCH: frozenset[tuple[str, bool]] = frozenset(
    {("gru", False), ("elman", False), ("lstm", True)}
)
#: The shortest sequence from which those calls prefer the native loop: a call has a fixed
#: cost (packing the weights, starting the thread team), so torch's op wins short sequences
#: (the crossover lengths are measured in ``docs/kernels-fused.md``).
_BEATS_TORCH_FROM_T: dict[tuple[str, bool], int] = {
    ("gru", False): 16,
    ("elman", False): 16,
    ("lstm", True): 256,
}

#: A kernel's ``run``: ``call -> (y (B, T, H), final state)``.
Run = Callable[[KernelCall], tuple[Tensor, tuple[Tensor, ...]]]

_DTYPES = (torch.float32, torch.float64)
_PYTHON: dict[str, Run] = {
    "elman": _py_elman,
    "lstm": _py_lstm,
    "gru": _py_gru,
    "slstm": _py_slstm,
}


def available() -> str | None:
    """Why the native library cannot be used here (``None`` when it can); never compiles."""
    return LIBRARY.why_unavailable()


def supports(call: KernelCall) -> str | None:
    """Why ``fused_cpp`` cannot run ``call`` (``None`` when it can)."""
    x = call.x
    if x.device.type != "cpu":
        return f"CPU only (input is on {x.device}; use 'fused', 'torch' or 'triton' there)"
    if x.dtype not in _DTYPES:
        return (
            f"dtype {x.dtype} is not supported (supported: float32, float64 on CPU; for "
            "16-bit inputs use backend 'triton' on CUDA)"
        )
    for p in call.cell.parameters():
        if p.dtype != x.dtype:
            return f"parameter dtype {p.dtype} differs from input dtype {x.dtype}"
        if p.device.type != "cpu":
            return f"parameters must be on CPU (found {p.device})"
    # the native loops take fill values only (the pure-torch loops take init_state's rows)
    return fill_restart_refusal(call, "fused")


def priority(call: KernelCall) -> Priority:
    """``auto`` tier, from ``tools/bench/gated.py`` (see ``docs/kernels-fused.md``).

    :data:`EXPORT_PRIORITY` while ``torch.export`` traces (float64 included);
    :data:`FLOAT64_PRIORITY` for float64 (eager ``auto`` uses ``fused`` there, compiled
    ``auto`` this backend); for float32 :data:`PREFERRED` (above ``torch``) for the dense calls
    listed in ``_BEATS_TORCH`` with sequences of at least ``_BEATS_TORCH_FROM_T`` steps, and
    :data:`PRIORITY` (above ``fused``, below a preferred ``torch``) otherwise.
    """
    if is_exporting():
        return EXPORT_PRIORITY
    if call.x.dtype == torch.float64:
        return FLOAT64_PRIORITY
    cell: Any = call.cell
    heads = int(getattr(cell, "heads", 1))
    key = (str(cell.kind), call.needs_grad)
    if heads == 1 and key in _BEATS_TORCH and call.x.shape[1] >= _BEATS_TORCH_FROM_T[key]:
        return PREFERRED
    return PRIORITY


def _with_fallback(kind: str) -> Run:
    from rnnkit.kernels.gated.fused_cpp._cells import RUNS

    native, python = RUNS[kind], _PYTHON[kind]

    def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(B, T, I) -> (B, T, H)`` and the final state, natively or by the ``fused`` loop."""
        try:
            ops()  # compiles or loads the library on first use
        except BuildError as e:
            # A failed build must not break a model: run the pure-torch loop instead. The
            # failure is recorded, so later calls see it through `available` and `auto` skips
            # this backend.
            warnings.warn(
                f"rnnkit fused_cpp: {e}; running the pure-torch 'fused' loop instead",
                RuntimeWarning,
                stacklevel=3,
            )
            return python(call)
        return native(call)

    return run


def _kernel(kind: str) -> Kernel:
    return Kernel(
        backend=BACKEND,
        target=kind,
        run=_with_fallback(kind),
        description=f"C++ {kind} time loops (JIT-compiled, cached), any heads, CPU",
        priority=priority,
        available=available,
        supports=supports,
    )


def kernels() -> list[Kernel]:
    """The native kernels: one per gated cell kind (elman, lstm, gru, slstm)."""
    return [_kernel(kind) for kind in ("elman", "lstm", "gru", "slstm")]


def info() -> dict[str, str]:
    """The library's status (:meth:`NativeLibrary.status`) plus, once loaded, its GEMM, tile and
    SIMD configuration and its buffer cache."""
    out = LIBRARY.status()
    if LIBRARY.last_build() is not None:
        out["config"] = str(ops().info())
        cached, limit = (int(v) for v in ops().pool_info())
        out["buffer cache"] = f"{cached / 2**20:.1f} MiB cached, limit {limit / 2**20:.0f} MiB"
    return out


# The buffer cache: the large outputs and saved tensors of the native loops (and the input
# projection) come from a cache of freed CPU blocks, so that a training step reuses the pages
# of the previous one instead of faulting in fresh ones (see csrc/buffer_pool.h). Default
# limit 1 GiB of free blocks, or $RNNKIT_CPU_POOL_MB MiB (0 switches the cache off).


def cached_memory() -> int:
    """Bytes of freed buffers the ``fused_cpp`` cache holds for reuse (0 before first use)."""
    if LIBRARY.last_build() is None:
        return 0
    return int(ops().pool_info()[0])


def release_memory() -> None:
    """Return every cached buffer to the system (tensors in use are not affected)."""
    if LIBRARY.last_build() is not None:
        ops().pool_release()


def set_memory_limit(mib: int) -> None:
    """Cache at most ``mib`` MiB of freed buffers (0: no cache; blocks over the limit are freed).

    Raises:
        ValueError: ``mib`` is negative.
        rnnkit.kernels.native.BuildError: the library cannot be built.
    """
    if mib < 0:
        raise ValueError(f"the memory limit must be >= 0 MiB, got {mib}")
    ops().pool_set_limit(int(mib) << 20)


#: Phases of the float team loops timed by :func:`loop_phases`, in the library's order.
LOOP_PHASES = ("pack", "prefetch", "product", "pointwise", "barrier")


@contextmanager
def loop_phases() -> Iterator[dict[str, dict[str, float]]]:
    """Time the phases of the float team loops that run inside the ``with`` block.

    On exit the yielded dict holds ``{"forward": {phase: seconds}, "reverse": {...}}`` for the
    phases of :data:`LOOP_PHASES` (weight packing, the per-step prefetch, the register-tiled
    products, the pointwise row passes, waiting at the step barrier), in seconds summed over the
    threads of every team loop of the block (a loop on two threads for 10 ms adds about 20 ms).
    Loops that are not team loops (float64, head sizes off the tile width) are not timed. The
    timers read a clock a few times per step while the block runs; outside it they are off.

    Raises:
        rnnkit.kernels.native.BuildError: the library cannot be built.
    """
    lib = ops()
    lib.phase_times(True)
    out: dict[str, dict[str, float]] = {"forward": {}, "reverse": {}}
    lib.set_phase_timing(True)
    try:
        yield out
    finally:
        lib.set_phase_timing(False)
        sums = [float(v) for v in lib.phase_times(True)]
        n = len(LOOP_PHASES)
        out["forward"].update(zip(LOOP_PHASES, sums[:n], strict=True))
        out["reverse"].update(zip(LOOP_PHASES, sums[n:], strict=True))
