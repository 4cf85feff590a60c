"""The ``cuda`` backend: persistent CUDA kernels for Elman, LSTM, GRU and sLSTM (compile-checked
only).

One cooperative launch per direction runs the whole sequence: each block owns a few hidden units
of one head, keeps the recurrent weights they need in shared memory for all steps, and the blocks
meet at one grid-wide barrier per step (``csrc/gated_cuda.cu``; the cut is
:mod:`._plan`; the per-element step math, shared with a host-compiled test, ``csrc/gated_cell.h``).
Where the weights do not fit (more heads than SMs, or too many bytes per block) the same kernels
stream them from L2 each step through a shared-memory tile instead, each block looping over
several groups of units; :func:`explain` says which a call gets.
float32 state and accumulation; float32, bfloat16 and float16 inputs (16-bit ones are converted
to float32 for the recurrence). The backward reads the gates the forward stored. Resets and
initial/final states as every gated backend; sLSTM with the ``fused`` loop's conventions
(exponential input gate, stabiliser ``m``, normaliser ``n``). ``lengths`` are handled in the same
single launch: a sequence's state is held past its length (``supports_lengths``). The
recurrent products run as float32 FMAs, or, for bfloat16 and float16 calls on sm_80 and later,
on the tensor cores with the weights and staged vectors in the call's dtype (float32 sums)
where the cut's shapes allow (per direction; :func:`explain` says).

**Status: these kernels compile (CI checks them with ``nvcc -arch=sm_90``) but have not run on
a GPU yet.** ``auto`` therefore picks them only for call shapes where a measurement on the
GPU in use names them the fastest (:mod:`rnnkit.kernels.gated.measured`; no such measurement
exists yet), else never (tier :attr:`~rnnkit.core.kernel.Priority.BELOW_REFERENCE`); they run
when named (``backend="cuda"``). ``tools/gpu/cuda_check.sh`` runs the tests and a benchmark on a
GPU.

The library is compiled with ``torch.utils.cpp_extension`` on first use and cached by
:mod:`rnnkit.kernels.native` under a key of the sources, torch, CUDA, nvcc and the GPU
architecture (never per shape), unless the wheel ships it prebuilt for the running torch, CUDA
and GPU architecture (``packages/kernels/hatch_build.py``, with ``pip install
--no-build-isolation``); ``rnnkit kernels status`` shows which, or why it is unavailable (no
CUDA torch, no device, no nvcc, a failed build). If the build fails on first use, the call runs the
pure-torch ``fused`` loops (in float32) with a warning. ``RNNKIT_GATED_CUDA=0`` turns it off.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import fill_restart_refusal
from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.varlen import run_by_segments
from rnnkit.kernels.gated.cuda._native import (
    DISABLE_ENV,
    LIBRARY,
    CompileCheckError,
    compile_check,
    nvcc,
    ops,
)
from rnnkit.kernels.gated.cuda._plan import GATES, Tiling, plan
from rnnkit.kernels.gated.measured import cuda_tier
from rnnkit.kernels.native import BuildError

__all__ = [
    "BACKEND",
    "DISABLE_ENV",
    "KINDS",
    "LIBRARY",
    "PRIORITY",
    "CompileCheckError",
    "Tiling",
    "available",
    "compile_check",
    "explain",
    "kernels",
    "nvcc",
    "ops",
    "plan",
    "supports",
]

#: Backend name (``backend="cuda"``).
BACKEND = "cuda"
#: ``auto`` tier of a call no measurement covers: below the reference loop, so ``auto`` never
#: picks them unmeasured (on CPU they cannot run at all). Where ``auto_table.json`` names
#: ``cuda`` the fastest for a call's shape they rank first (:mod:`rnnkit.kernels.gated.measured`).
PRIORITY = Priority.BELOW_REFERENCE
#: Cell kinds with a CUDA kernel.
KINDS = tuple(GATES)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available() -> str | None:
    """Why the CUDA kernels cannot be used on this machine (``None`` when they can); never
    compiles."""
    return LIBRARY.why_unavailable()


def supports(call: KernelCall) -> str | None:
    """Why ``cuda`` cannot run ``call`` (``None`` when it can), naming what runs it instead."""
    cell: Any = call.cell
    kind = str(cell.kind)
    if kind not in GATES:
        return f"no CUDA kernel for {kind} cells (use backend 'triton' or 'fused')"
    x = call.x
    if x.device.type != "cuda":
        return f"CUDA only (input is on {x.device}; use 'fused' or 'fused_cpp' there)"
    if x.dtype not in _DTYPES:
        return (
            f"dtype {x.dtype} is not supported (float32, bfloat16, float16; 'fused' runs float64)"
        )
    for p in cell.parameters():
        if p.dtype != x.dtype:
            return f"parameter dtype {p.dtype} differs from input dtype {x.dtype}"
        if p.device != x.device:
            return f"parameters are on {p.device}, the input on {x.device}"
    if kind == "elman" and cell.nonlinearity not in ("tanh", "relu"):
        return f"Elman nonlinearity {cell.nonlinearity!r} (tanh and relu only)"
    refusal = fill_restart_refusal(call, "fused")  # the kernels take fill values only
    if refusal is not None:
        return refusal
    cut = _cut(call)
    if isinstance(cut, str):
        return f"{cut}; use backend 'triton' (small heads) or 'torch'/'fused' (dense) instead"
    return None


def _cut(call: KernelCall) -> Tiling | str:
    """The planner's cut of ``call`` on its CUDA device (or why there is none)."""
    from rnnkit.kernels.gated.cuda._loops import TENSOR_CORE_DTYPES, plan_on

    cell: Any = call.cell
    x = call.x
    mma = TENSOR_CORE_DTYPES.get(x.dtype)
    return plan_on(str(cell.kind), int(cell.heads), int(cell.head_dim), x.shape[0], x.device, mma)


def explain(call: KernelCall) -> str:
    """How ``cuda`` would run ``call``: ``"resident: ..."`` (the recurrent weights stay in
    shared memory) or ``"streamed: ..."`` (read from L2 each step, and why), then whether the
    products use the tensor cores (16-bit calls), or why it cannot run it at all."""
    why = supports(call)
    if why is not None:
        return f"cannot run: {why}"
    cut = _cut(call)
    return cut if isinstance(cut, str) else cut.reason


def _run(kind: str) -> Any:
    def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(B, T, I) -> (B, T, H)`` and the final state, by the CUDA loops (or, when the
        library cannot be built, the pure-torch ``fused`` loops in float32, with a warning;
        by segments when the call has lengths)."""
        from rnnkit.kernels.gated.cuda._loops import RUNS

        x = call.x
        with torch.cuda.device(x.device):
            try:
                ops()  # compiles or loads the library on first use
            except BuildError as e:
                warnings.warn(
                    f"rnnkit cuda: {e}; running the pure-torch 'fused' loop instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                from rnnkit.kernels.gated import fused

                loops = {
                    "elman": fused.ELMAN_LOOPS,
                    "lstm": fused.LSTM_LOOPS,
                    "gru": fused.GRU_LOOPS,
                    "slstm": fused.SLSTM_LOOPS,
                }[kind]
                if call.lengths is not None:  # the pure-torch loops cannot hold a state
                    return run_by_segments(lambda c: RUNS[kind](c, loops), call)
                return RUNS[kind](call, loops)
            return RUNS[kind](call)

    return run


def _priority(call: KernelCall) -> Priority:
    return cuda_tier(call, PRIORITY)


def _kernel(kind: str) -> Kernel:
    return Kernel(
        backend=BACKEND,
        target=kind,
        run=_run(kind),
        description=(
            f"persistent CUDA {kind} loops, weights in shared memory or streamed from L2 "
            "where they do not fit (JIT-compiled; compile-checked, untested on a GPU)"
        ),
        priority=_priority,
        available=available,
        supports=supports,
        supports_lengths=True,
    )


def kernels() -> list[Kernel]:
    """The CUDA kernels: one per supported gated cell kind (elman, lstm, gru, slstm)."""
    return [_kernel(kind) for kind in KINDS]
