"""The ``fused`` backend: pure-torch time loops for gated cells with a hand-written backward.

For Elman (tanh and ReLU), LSTM, GRU and sLSTM with any number of heads, on any device, in
float32 and float64. The input projection of all steps is one GEMM (``cell.project``, differentiated
by ordinary autograd); the time loop then runs under ``no_grad`` with in-place pointwise work into
preallocated buffers, so no per-step autograd graph is built. A custom
:class:`torch.autograd.Function` per cell saves the gate activations and states and runs the
backward in reverse time, with the recurrent-weight gradient as one batched GEMM over all steps
after the loop. Heads are independent blocks: each step is one ``bmm`` over heads.

The autograd functions and kernels take their forward and reverse time loops from a small
"loops" object per cell kind (:class:`ElmanLoops`, :class:`LSTMLoops`, :class:`GRULoops`,
:class:`SLSTMLoops`): the pure-torch loops here (``*_LOOPS``, the defaults) and the native ones
of :mod:`rnnkit.kernels.gated.fused_cpp`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.kernel import is_exporting
from rnnkit.kernels.gated.fused._elman import ELMAN_LOOPS, ElmanLoops, run_elman
from rnnkit.kernels.gated.fused._gru import GRU_LOOPS, GRULoops, run_gru
from rnnkit.kernels.gated.fused._lstm import LSTM_LOOPS, LSTMLoops, run_lstm
from rnnkit.kernels.gated.fused._slstm import SLSTM_LOOPS, SLSTMLoops, run_slstm

__all__ = [
    "COMPILE_PRIORITY",
    "ELMAN_LOOPS",
    "EXPORT_PRIORITY",
    "FUSED_PRIORITY",
    "GRU_LOOPS",
    "LSTM_LOOPS",
    "SLSTM_LOOPS",
    "ElmanLoops",
    "GRULoops",
    "LSTMLoops",
    "SLSTMLoops",
    "kernels",
    "priority",
    "run_elman",
    "run_gru",
    "run_lstm",
    "run_slstm",
]

#: ``auto`` tier of every fused kernel: the gated form's portable kernel.
FUSED_PRIORITY = Priority.PORTABLE
#: ``auto`` tier under ``torch.export``: below ``reference``. The loops write into preallocated
#: tensors (``out=`` ops), which an exported program cannot run while autograd records (its
#: parameters require gradients); ``reference`` and ``torch`` export to plain ATen ops.
EXPORT_PRIORITY = Priority.BELOW_REFERENCE
#: ``auto`` tier under ``torch.compile``: below ``reference``. The loops write with ``out=`` into
#: slices of their buffers (a gate's columns, a head's rows), and dynamo refuses an ``out=``
#: tensor that is not contiguous: every LSTM, GRU and sLSTM call and every multi-head call broke
#: the graph (an error with ``fullgraph=True``). Where the loops do trace (one-head Elman) they
#: unroll over time with every ``out=`` write functionalised: measured slower to compile and to
#: run than both ``fused_cpp`` (one opaque op per call) and the ``reference`` loop
#: (``docs/kernels.md``, "torch.compile, torch.export and autocast"). ``auto`` runs compiled calls
#: on ``fused_cpp`` (CPU, float64 included), ``torch``, ``triton`` or ``reference``.
COMPILE_PRIORITY = Priority.BELOW_REFERENCE


def priority(call: KernelCall) -> Priority:
    """:data:`FUSED_PRIORITY`; :data:`EXPORT_PRIORITY` while ``torch.export`` traces and
    :data:`COMPILE_PRIORITY` while ``torch.compile`` does."""
    if is_exporting():
        return EXPORT_PRIORITY
    if torch.compiler.is_compiling():
        return COMPILE_PRIORITY
    return FUSED_PRIORITY


# 16-bit inputs are refused: the loops would keep their state and gradients in 16 bits (a
# bfloat16 input gradient came out 0.3 off in relative RMS on one machine). The triton backend
# runs 16-bit inputs with float32 state and accumulation.
_DTYPES = (torch.float32, torch.float64)


def supports(call: KernelCall) -> str | None:
    """Why the fused loops cannot run ``call`` (``None`` when they can)."""
    dtype = call.x.dtype
    if dtype not in _DTYPES:
        return (
            f"dtype {dtype} is not supported (supported: float32, float64; for 16-bit inputs "
            "use backend 'triton' on CUDA)"
        )
    for p in call.cell.parameters():
        if p.dtype != dtype:
            return f"parameter dtype {p.dtype} differs from input dtype {dtype}"
    return None


def _kernel(kind: str, run: Callable[[KernelCall], tuple[Tensor, tuple[Tensor, ...]]]) -> Kernel:
    return Kernel(
        backend="fused",
        target=kind,
        run=run,
        description=(
            f"pure-torch {kind} time loop with a hand-written backward, any heads, CPU and GPU"
        ),
        priority=priority,
        supports=supports,
    )


def kernels() -> list[Kernel]:
    """The fused kernels: one per gated cell kind (elman, lstm, gru, slstm)."""
    return [
        _kernel("elman", run_elman),
        _kernel("lstm", run_lstm),
        _kernel("gru", run_gru),
        _kernel("slstm", run_slstm),
    ]
