"""The ``torch`` backend: dense gated cells delegated to torch's native RNN ops.

``torch._VF.rnn_tanh / rnn_relu / lstm / gru`` (what ``torch.nn.RNN/LSTM/GRU`` call: oneDNN on
CPU where torch uses it, cuDNN on CUDA) run one layer, one direction, batch-first, with the
cell's own parameters passed as the flat weights, so autograd reaches ``weight_ih``,
``recurrent``, ``bias``, ``bias_hn`` and the initial state directly.

Weight mapping (``heads == 1`` only, where ``recurrent`` is one dense matrix per gate):
``weight_ih_l0 = weight_ih``, ``weight_hh_l0 = recurrent.reshape(G * H, H)``,
``bias_ih_l0 = bias`` (the merged bias) and ``bias_hh_l0 = 0``, except the GRU, whose
``bias_hh_l0 = [0, 0, bias_hn]`` because ``r`` multiplies ``b_hn``.

With ``lengths`` on CUDA the batch runs as a ``PackedSequence`` through the ops' packed variants
(the ones ``torch.nn.LSTM`` uses for packed input, cuDNN's), so no padding step is computed. On
CPU torch runs packed input with a per-step loop, which measured slower than running the padded
op once per distinct length on the sequences still running (``run_by_segments``; figures in
``docs/cell-abi.md``), so the CPU takes that path.

Not supported (``supports`` says so, and ``auto`` falls back to ``fused``): ``heads > 1``
(torch's ops are dense), ``resets`` (torch has no per-step state restart), dtypes other
than float16, bfloat16, float32 and float64, and bfloat16 ReLU Elman training on CUDA (cuDNN's
backward measured wrong; see :func:`cudnn_known_issue`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.kernel import is_exporting
from rnnkit.core.varlen import run_by_segments

__all__ = [
    "FALLBACK",
    "PREFERRED",
    "cudnn_known_issue",
    "kernels",
    "run_torch",
    "supports",
    "torch_priority",
]

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
    if _compiled_onednn_lstm_fails(cell.kind, call):
        return (
            "torch.compile of torch's oneDNN LSTM fails on CPU when x needs no gradient but "
            "the weights or state do (supported under torch.compile: x.requires_grad, or "
            "torch.no_grad(); or backend 'fused_cpp' or 'fused')"
        )
    return cudnn_known_issue(cell.kind, getattr(cell, "nonlinearity", None), call, dtype)


def _compiled_onednn_lstm_fails(kind: str, call: KernelCall) -> bool:
    """Whether torch.compile would fail on this call of torch's LSTM.

    On CPU torch lowers ``lstm`` to oneDNN's ``mkldnn_rnn_layer``, whose traced backward saves
    an undefined tensor when the input needs no gradient: the compiled call fails (``aot_eager``:
    an AssertionError about saved tensors; ``inductor``: a TypeError in ``mkldnn_rnn_layer``;
    torch 2.13). That is the common case of a first layer fed data while training.
    ``torch.export`` does not run that code, and ``torch.nn.LSTM`` avoids it only because
    dynamo does not trace ``torch.nn`` RNN modules (it breaks the graph there).
    """
    return (
        kind == "lstm"
        and call.x.device.type == "cpu"
        and call.needs_grad
        and not call.x.requires_grad
        and torch.compiler.is_compiling()
        and not is_exporting()
    )


def cudnn_known_issue(
    kind: str, nonlinearity: str | None, call: KernelCall, dtype: torch.dtype
) -> str | None:
    """Calls whose cuDNN results were measured wrong, with the reason (``None`` otherwise).

    bfloat16 ReLU Elman training on CUDA: cuDNN's backward deviates from the float64 reference
    far beyond bfloat16 rounding for some weights (relative RMS up to 0.85 in the gradients,
    while the forward and ``reference`` / ``triton`` in bfloat16 stay near 0.005; H100, cuDNN
    9.19, torch 2.11, the conformance kit's backends check over 8 seeds; float16 and tanh were
    fine). ``auto`` then uses ``triton`` there.
    """
    if (
        kind == "elman"
        and nonlinearity == "relu"
        and call.x.device.type == "cuda"
        and dtype == torch.bfloat16
        and call.needs_grad
    ):
        return (
            "bfloat16 ReLU Elman training on CUDA is not supported: cuDNN's backward was measured "
            "wrong for it (supported there: float16, float32, float64, or tanh; or backend "
            "'triton')"
        )
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
    if call.lengths is not None and not packed_preferred(x):
        return run_by_segments(run_torch, call)
    weights = _flat_weights(cell)
    has_bias = cell.bias is not None
    train = torch.is_grad_enabled()
    # torch's ops take (layers * directions, B, H) states; unsqueeze keeps autograd's view.
    h0 = state[0].unsqueeze(0)
    args = (weights, has_bias, 1, 0.0, train, False, True)
    lengths = call.lengths
    if not _needs_ieee_backward(x, state, weights):
        with _ieee_fp32_cudnn(x):
            return _run_vf(cell, x, h0, state, args, lengths)
    return _run_ieee_backward(cell, x, state, args, lengths)


def packed_preferred(x: Tensor) -> bool:
    """Whether ``lengths`` run through torch's packed ops (CUDA) rather than by segments."""
    return x.device.type == "cuda"


def _run_ieee_backward(
    cell: Any,
    x: Tensor,
    state: tuple[Tensor, ...],
    args: tuple[Any, ...],
    lengths: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`_run_vf` whose backward also runs under :func:`_ieee_fp32_cudnn`.

    For float32 training on CUDA: cuDNN reads the TF32 switch again when autograd runs the
    backward, outside any context entered in the forward.
    """
    n_state = len(state)
    weights: list[Tensor] = args[0]

    def run(*ts: Tensor) -> tuple[Tensor, ...]:
        xs, st, ws = ts[0], ts[1 : 1 + n_state], list(ts[1 + n_state :])
        y, final = _run_vf(cell, xs, st[0].unsqueeze(0), st, (ws, *args[1:]), lengths)
        return (y, *final)

    y, *final = _IEEEFloat32.apply(run, x, *state, *weights)  # type: ignore[no-untyped-call]
    return y, cell.state_type(*final)


def _needs_ieee_backward(x: Tensor, state: tuple[Tensor, ...], weights: list[Tensor]) -> bool:
    if x.device.type != "cuda" or x.dtype != torch.float32 or not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in (x, *state, *weights))


@contextmanager
def _ieee_fp32_cudnn(x: Tensor) -> Iterator[None]:
    """Run cuDNN's float32 RNNs in IEEE float32 (cuDNN's default is TF32) for the block.

    Only the TF32 switch changes: ``torch.backends.cudnn.flags`` would also reset ``enabled``
    and ``benchmark`` to its own defaults (it disables cuDNN unless told otherwise).
    """
    if x.device.type != "cuda" or x.dtype != torch.float32:
        yield
        return
    rnn_precision = getattr(torch.backends.cudnn, "rnn", None)
    if rnn_precision is not None and hasattr(rnn_precision, "fp32_precision"):
        before = rnn_precision.fp32_precision
        rnn_precision.fp32_precision = "ieee"
        try:
            yield
        finally:
            rnn_precision.fp32_precision = before
        return
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = allowed


class _IEEEFloat32(torch.autograd.Function):
    """Forward and backward of a torch RNN op, both under :func:`_ieee_fp32_cudnn`.

    The forward records the op's own autograd graph on detached inputs; the backward runs
    ``torch.autograd.grad`` through it inside the IEEE context. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, run: Callable[..., tuple[Tensor, ...]], *inputs: Tensor
    ) -> tuple[Tensor, ...]:
        leaves = tuple(t.detach().requires_grad_(t.requires_grad) for t in inputs)
        with torch.enable_grad(), _ieee_fp32_cudnn(inputs[0]):
            outputs = run(*leaves)
        ctx.leaves, ctx.outputs = leaves, outputs
        return tuple(o.detach() for o in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        pairs = [(o, g) for o, g in zip(ctx.outputs, grads, strict=True) if g is not None]
        wanted = [t for t in ctx.leaves if t.requires_grad]
        with _ieee_fp32_cudnn(ctx.leaves[0]):
            found = torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True
            )
        it = iter(found)
        out = [next(it) if t.requires_grad else None for t in ctx.leaves]
        del ctx.leaves, ctx.outputs
        return (None, *out)


def _final(h: Tensor) -> Tensor:
    """The ``(B, H)`` final state of torch's one-layer ``(1, B, H)`` one. A reshape, not
    ``h[0]``: torch 2.11 traces the batch-first ops' final state as ``(1, 1, B, H)``, so under
    AOTAutograd ``h[0]`` kept a dimension too many."""
    return h.reshape(h.shape[-2:])


def _run_vf(
    cell: Any,
    x: Tensor,
    h0: Tensor,
    state: tuple[Tensor, ...],
    args: tuple[Any, ...],
    lengths: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    if lengths is not None:
        return _run_vf_packed(cell, x, state, args, lengths)
    if cell.kind == "lstm":
        y, h, c = _VF.lstm(x, (h0, state[1].unsqueeze(0)), *args)
        return y, cell.state_type(_final(h), _final(c))
    if cell.kind == "gru":
        y, h = _VF.gru(x, h0, *args)
    elif cell.nonlinearity == "relu":
        y, h = _VF.rnn_relu(x, h0, *args)
    else:
        y, h = _VF.rnn_tanh(x, h0, *args)
    return y, cell.state_type(_final(h))


def _run_vf_packed(
    cell: Any, x: Tensor, state: tuple[Tensor, ...], args: tuple[Any, ...], lengths: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`_run_vf` on ``x`` packed by ``lengths`` (int64 ``(B,)``, CPU, all ``>= 1``).

    The packed ops take the batch sorted longest first (``sorted_indices``) and answer in
    that order; ``y`` is padded back with zeros to ``x``'s length.
    """
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    assert order is not None and back is not None
    hx = [s.index_select(0, order).unsqueeze(0) for s in state]
    flat = (packed.data, packed.batch_sizes)
    rest = args[:-1]  # the packed variants have no batch_first argument
    if cell.kind == "lstm":
        data, h, c = _VF.lstm(*flat, (hx[0], hx[1]), *rest)
        finals = [h, c]
    else:
        op = _VF.gru if cell.kind == "gru" else _VF.rnn_relu
        if cell.kind == "elman" and cell.nonlinearity != "relu":
            op = _VF.rnn_tanh
        data, h = op(*flat, hx[0], *rest)
        finals = [h]
    out = PackedSequence(data, packed.batch_sizes, order, back)
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return y, cell.state_type(*(_final(f).index_select(0, back) for f in finals))


#: ``auto`` tier where torch's op is the faster choice: the device's best op.
PREFERRED = Priority.DEVICE_BEST
#: ``auto`` tier where ``fused`` is faster (torch's op stays a fallback above reference).
FALLBACK = Priority.FALLBACK


def torch_priority(call: KernelCall) -> Priority:
    """``auto`` tier: :data:`PREFERRED` where torch's op measured faster than ``fused``.

    Measured with ``tools/bench/gated.py`` (figures in ``docs/kernels-fused.md``):

    - CUDA: always (cuDNN runs the whole sequence in a few kernels; a torch loop cannot).
    - CPU LSTM: always. torch uses oneDNN's fused LSTM layer, with and without gradients.
    - CPU GRU and Elman: for inference only. torch runs these as a per-step loop and records an
      autograd graph when training; ``fused``'s hand-written backward is faster there.
    - Under ``torch.export``: always. One ATen RNN op per layer exports compactly (ONNX has
      RNN, GRU and LSTM operators); the ``fused`` loops do not export (see
      :data:`rnnkit.kernels.gated.fused.EXPORT_PRIORITY`).
    """
    cell: Any = call.cell
    if call.x.device.type != "cpu" or cell.kind == "lstm" or is_exporting():
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
        supports_lengths=True,
    )


def kernels() -> list[Kernel]:
    """The torch-native kernels: elman, lstm, gru."""
    return [_kernel(kind) for kind in _KINDS]
