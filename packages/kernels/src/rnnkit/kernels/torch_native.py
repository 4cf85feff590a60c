"""The ``torch`` backend: dense gated cells delegated to torch's native RNN ops.

``torch._VF.rnn_tanh / rnn_relu / lstm / gru`` (what ``torch.nn.RNN/LSTM/GRU`` call: oneDNN on
CPU where torch uses it, cuDNN on CUDA) run one layer, one direction, batch-first, with the
cell's own parameters passed as the flat weights, so autograd reaches ``weight_ih``,
``recurrent``, ``bias``, ``bias_hn`` and the initial state directly.

Weight mapping (``heads == 1`` only, where ``recurrent`` is one dense matrix per gate):
``weight_ih_l0 = weight_ih``, ``weight_hh_l0 = recurrent.reshape(G * H, H)``,
``bias_ih_l0 = bias`` (the merged bias) and ``bias_hh_l0 = 0``, except the GRU, whose
``bias_hh_l0 = [0, 0, bias_hn]`` because ``r`` multiplies ``b_hn``.

Not supported (``supports`` says so, and ``auto`` falls back to ``fused``): ``heads > 1``
(torch's ops are dense), ``resets`` (torch has no per-step state restart) and dtypes other
than float16, bfloat16, float32 and float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import _VF, Tensor

from rnnkit.core.dispatch import Kernel, KernelCall

__all__ = ["FALLBACK", "PREFERRED", "kernels", "run_torch", "supports", "torch_priority"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KINDS = ("elman", "lstm", "gru")


def supports(call: KernelCall) -> str | None:
    """Why torch's native ops cannot run ``call`` (``None`` when they can)."""
    cell: Any = call.cell
    if cell.kind not in _KINDS:
        return f"torch has no native {cell.kind!r} op (supported: elman, lstm, gru)"
    if int(cell.heads) != 1:
        return (
            f"heads={cell.heads} is not supported: torch's RNN ops are dense "
            "(supported: heads=1; use backend='fused' for block-diagonal recurrences)"
        )
    if call.resets is not None:
        return "resets are not supported (supported: resets=None; use backend='fused')"
    dtype = call.x.dtype
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not supported (supported: float16, bfloat16, float32, float64)"
    if call.x.device.type == "cpu" and dtype == torch.float16 and call.needs_grad:
        return "float16 training on CPU is not supported (supported: float32, float64, bfloat16)"
    return None


def _flat_weights(cell: Any) -> list[Tensor]:
    G, H = int(cell.num_gates), int(cell.hidden_size)
    weights = [cell.weight_ih, cell.recurrent.reshape(G * H, H)]
    if cell.bias is None:
        return weights
    if cell.kind == "gru":
        bias_hh = torch.cat((cell.bias.new_zeros(2 * H), cell.bias_hn))
    else:
        bias_hh = cell.bias.new_zeros(G * H)
    return [*weights, cell.bias, bias_hh]


def run_torch(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run ``call`` with ``torch._VF``; see :class:`~rnnkit.core.dispatch.Kernel`."""
    cell: Any = call.cell
    x = call.x
    B = x.shape[0]
    state = call.state
    if state is None:
        state = cell.init_state(B, device=x.device, dtype=x.dtype)
    if x.shape[1] == 0:
        return x.new_empty(B, 0, cell.output_size), state
    weights = _flat_weights(cell)
    has_bias = cell.bias is not None
    train = torch.is_grad_enabled()
    # torch's ops take (layers * directions, B, H) states; unsqueeze keeps autograd's view.
    h0 = state[0].unsqueeze(0)
    args = (weights, has_bias, 1, 0.0, train, False, True)
    # cuDNN runs float32 RNNs in TF32 by default; rnnkit's float32 means IEEE float32.
    with torch.backends.cudnn.flags(allow_tf32=False):
        return _run_vf(cell, x, h0, state, args)


def _run_vf(
    cell: Any, x: Tensor, h0: Tensor, state: tuple[Tensor, ...], args: tuple[Any, ...]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    if cell.kind == "lstm":
        y, h, c = _VF.lstm(x, (h0, state[1].unsqueeze(0)), *args)
        return y, cell.state_type(h[0], c[0])
    if cell.kind == "gru":
        y, h = _VF.gru(x, h0, *args)
    elif cell.nonlinearity == "relu":
        y, h = _VF.rnn_relu(x, h0, *args)
    else:
        y, h = _VF.rnn_tanh(x, h0, *args)
    return y, cell.state_type(h[0])


#: ``auto`` priority where torch's op is the faster choice (``fused`` has 10).
PREFERRED = 20
#: ``auto`` priority where ``fused`` is faster (torch's op stays a fallback above reference).
FALLBACK = 5


def torch_priority(call: KernelCall) -> int:
    """``auto`` priority: :data:`PREFERRED` where torch's op measured faster than ``fused``.

    Measured with ``tools/bench/gated.py`` (B=16, T=512, input 128, hidden 256, fp32; see
    ``docs/kernels-fused.md``):

    - CUDA: always (cuDNN runs the whole sequence in a few kernels; a torch loop cannot).
    - CPU LSTM: always. torch uses oneDNN's fused LSTM layer, with and without gradients.
    - CPU GRU and Elman: for inference only. torch runs these as a per-step loop and records an
      autograd graph when training; ``fused``'s hand-written backward is faster there.
    """
    cell: Any = call.cell
    if call.x.device.type != "cpu" or cell.kind == "lstm":
        return PREFERRED
    return FALLBACK if call.needs_grad else PREFERRED


def _kernel(kind: str) -> Kernel:
    return Kernel(
        backend="torch",
        target=kind,
        run=run_torch,
        description=f"torch's native {kind} op (oneDNN/cuDNN), dense (heads=1), no resets",
        priority=torch_priority,
        supports=supports,
    )


def kernels() -> list[Kernel]:
    """The torch-native kernels: elman, lstm, gru."""
    return [_kernel(kind) for kind in _KINDS]
