"""The ``triton`` backend: fused gated-cell kernels that keep ``R`` on-chip across time steps.

One kernel per cell kind (``elman``, ``lstm``, ``gru``, ``slstm``) is registered under the
backend name ``"triton"``. Importing this module never imports triton: availability is checked
when dispatch asks, and a missing dependency is reported as a reason, not a traceback.

On CUDA the kernels rank in the :attr:`~rnnkit.core.kernel.Priority.FUSED_ON_CHIP` tier
(``backend="auto"`` prefers them where they support the call). Without a GPU they run only under the
Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported), and then only when named
(``backend="triton"``): their CPU priority is below the reference loop so ``auto`` never picks the
interpreter.

With ``lengths`` the valid steps are packed along time and run by
:func:`~rnnkit.kernels.gated.triton.ops.triton_gated_varlen` (one launch, no padding computed).

See ``docs/kernels-triton.md`` for the design and limits.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import fill_restart_refusal
from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.varlen import step_mask
from rnnkit.kernels.gated.measured import triton_tier
from rnnkit.kernels.gated.triton.ops import (
    CELLS,
    MAX_HEAD_DIM,
    SUPPORTED_DTYPES,
    GatedBackward,
    GatedForward,
    LaunchConfig,
    TritonGatedFunction,
    gated_backward,
    gated_forward,
    interpreting,
    launch_config,
    max_head_dim,
    triton_gated,
    triton_gated_varlen,
)

__all__ = [
    "GatedBackward",
    "GatedForward",
    "LaunchConfig",
    "TritonGatedFunction",
    "available",
    "gated_backward",
    "gated_forward",
    "kernels",
    "launch_config",
    "max_head_dim",
    "triton_gated",
    "triton_gated_varlen",
]

#: ``auto`` tier on CUDA (above ``fused``, ``torch`` and the reference loop), unless
#: :mod:`rnnkit.kernels.gated.measured` has a measurement of the call's shape naming another
#: backend the fastest.
CUDA_PRIORITY = Priority.FUSED_ON_CHIP
#: Tier off CUDA (interpreter only): below the reference loop, so ``auto`` skips it.
CPU_PRIORITY = Priority.BELOW_REFERENCE


def available() -> str | None:
    """Why the triton backend cannot run on this machine at all (``None`` when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install rnnkit-kernels[triton])"
    if interpreting():
        return None
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU, slowly)"
    return None


def _supports(call: KernelCall) -> str | None:
    cell: Any = call.cell
    kind = cell.kind
    if kind not in CELLS or not hasattr(cell, "recurrent"):
        return f"no triton kernel for cell kind {kind!r}"
    x = call.x
    if x.device.type != "cuda" and not interpreting():
        return (
            f"input on {x.device.type}: the triton kernels need a CUDA tensor "
            "(or TRITON_INTERPRET=1 for the CPU interpreter)"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (float32, bfloat16, float16)"
    D = int(cell.head_dim)
    top = max_head_dim(kind, x.dtype)
    if not 1 <= D <= top:
        return (
            f"head_dim {D} (hidden_size {cell.hidden_size} / heads {cell.heads}) is outside "
            f"the supported range 1..{top} for {kind} in {x.dtype} (the recurrent weights of a "
            f"head must fit on-chip; up to {MAX_HEAD_DIM} for elman in 16-bit); use more heads"
        )
    if kind == "elman" and getattr(cell, "nonlinearity", "tanh") not in ("tanh", "relu"):
        return f"nonlinearity {cell.nonlinearity!r} is not supported (tanh, relu)"
    if any(f.init != 0.0 for f in cell.state_spec()):
        return "the kernels reset states to zeros, but this cell's init_state is not zero"
    return fill_restart_refusal(call, "fused")  # they reset to zeros


def _priority(call: KernelCall) -> Priority:
    # on CUDA: CUDA_PRIORITY, unless a measurement of the call's shape names another backend
    return triton_tier(call, CUDA_PRIORITY) if call.x.device.type == "cuda" else CPU_PRIORITY


def _run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    cell: Any = call.cell
    x = call.x
    B, T = x.shape[0], x.shape[1]
    state = call.state
    if state is None:
        state = cell.init_state(B, device=x.device, dtype=x.dtype)
    if T == 0:
        return x.new_empty(B, 0, cell.output_size), state
    px = cell.project(x)
    if call.lengths is not None:
        return _run_varlen(call, px, tuple(state))
    y, final = triton_gated(
        cell.kind,
        px,
        cell.recurrent,
        tuple(state),
        bias_hn=getattr(cell, "bias_hn", None) if cell.kind == "gru" else None,
        resets=call.resets,
        nonlinearity=getattr(cell, "nonlinearity", "tanh"),
    )
    return y, cell.state_type._make(final)


def _run_varlen(
    call: KernelCall, px: Tensor, state: tuple[Tensor, ...]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`_run` with ``call.lengths``: the valid steps of ``px (B, T, G * H)`` packed
    sequence after sequence, ``y`` scattered back into zeros ``(B, T, H)``."""
    cell: Any = call.cell
    assert call.lengths is not None
    B, T = px.shape[0], px.shape[1]
    valid = step_mask(call.lengths, T, px.device).reshape(B * T)
    rows = valid.nonzero().squeeze(1)
    cu = torch.zeros(B + 1, dtype=torch.int64)
    torch.cumsum(call.lengths, 0, out=cu[1:])
    resets = None
    if call.resets is not None:
        resets = call.resets.reshape(B * T).index_select(0, rows)
    y, final = triton_gated_varlen(
        cell.kind,
        px.reshape(B * T, px.shape[2]).index_select(0, rows),
        cell.recurrent,
        state,
        cu.to(px.device),
        max_seqlen=T,
        bias_hn=getattr(cell, "bias_hn", None) if cell.kind == "gru" else None,
        resets=resets,
        nonlinearity=getattr(cell, "nonlinearity", "tanh"),
    )
    out = y.new_zeros(B * T, y.shape[1]).index_copy(0, rows, y)
    return out.view(B, T, y.shape[1]), cell.state_type._make(final)


_DESCRIPTIONS = {
    "elman": "fused Triton Elman (tanh/relu) loop, R on-chip, hand-written backward",
    "lstm": "fused Triton LSTM loop, R on-chip, hand-written backward",
    "gru": "fused Triton GRU loop (torch's b_hn convention), R on-chip, hand-written backward",
    "slstm": "fused Triton sLSTM loop (stabilised exponential gating), hand-written backward",
}


def kernels() -> list[Kernel]:
    """The triton backend's kernels: one per gated cell kind."""
    return [
        Kernel(
            backend="triton",
            target=kind,
            run=_run,
            description=_DESCRIPTIONS[kind],
            priority=_priority,
            available=available,
            supports=_supports,
            supports_lengths=True,
        )
        for kind in CELLS
    ]
