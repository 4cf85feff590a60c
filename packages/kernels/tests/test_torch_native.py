"""The ``torch`` backend (torch's native RNN ops) against ``reference``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _gated_helpers import compare, make_cell, make_inputs, rel_rms

from rnnkit.core.dispatch import KernelCall, Priority, select
from rnnkit.core.errors import BackendUnavailableError
from rnnkit.kernels.gated.torch_native import kernels, supports

KINDS = ("elman", "relu", "lstm", "gru")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These shapes are tiny: one thread avoids OpenMP fork/join stalls on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind: str, state: bool, dtype: torch.dtype) -> None:
    cell = make_cell(kind, 1)
    x, st, _, cot = make_inputs(cell, state=state, resets=False)
    compare(cell, "torch", dtype, x, st, None, cot)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time", [1, 2])
def test_short_sequences(kind: str, time: int) -> None:
    cell = make_cell(kind, 1)
    x, st, _, cot = make_inputs(cell, time=time, state=True, resets=False)
    compare(cell, "torch", torch.float64, x, st, None, cot)


@pytest.mark.parametrize("kind", KINDS)
def test_without_bias_and_strided(kind: str) -> None:
    cell = make_cell(kind, 1, bias=False)
    x, st, _, cot = make_inputs(cell, time=14, state=True, resets=False)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)[:, ::2]
    assert not x.is_contiguous()
    compare(cell, "torch", torch.float64, x, st, None, [cot[0][:, ::2], *cot[1:]])


@pytest.mark.parametrize("kind", KINDS)
def test_inference(kind: str) -> None:
    cell = make_cell(kind, 1)
    x, st, _, _ = make_inputs(cell, state=True, resets=False)
    with torch.no_grad():
        y, final = cell(x, st, backend="torch")
        y_ref, final_ref = cell(x, st, backend="reference")
    assert rel_rms(y, y_ref) <= 1e-12
    for a, e in zip(final, final_ref, strict=True):
        assert rel_rms(a, e) <= 1e-12


def test_unsupported_calls_say_what_is_supported() -> None:
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    multi = make_cell("lstm", 2)
    reason = supports(KernelCall(multi, x, None, None, needs_grad=False))
    assert reason is not None and "heads=1" in reason
    dense = make_cell("gru", 1)
    resets = torch.zeros(2, 3, dtype=torch.bool)
    reason = supports(KernelCall(dense, x, None, resets, needs_grad=False))
    assert reason is not None and "resets=None" in reason
    with pytest.raises(BackendUnavailableError, match="heads=1"):
        multi(x, backend="torch")
    slstm = make_cell("slstm", 1)
    with pytest.raises(BackendUnavailableError, match="no kernel"):
        slstm(x, backend="torch")


def test_auto_falls_back_to_fused() -> None:
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    for heads, resets in ((2, None), (1, torch.zeros(2, 3, dtype=torch.bool))):
        cell = make_cell("lstm", heads)
        for grad in (False, True):
            call = KernelCall(cell, x, None, resets, needs_grad=grad)
            assert select(call, "auto").backend == "fused"


def test_registration() -> None:
    assert sorted(k.target for k in kernels()) == ["elman", "gru", "lstm"]
    assert {k.backend for k in kernels()} == {"torch"}


@pytest.mark.parametrize("kind", KINDS)
def test_auto_choice_on_cpu(kind: str) -> None:
    """LSTM always goes to torch (oneDNN); GRU and Elman only for inference."""
    cell = make_cell(kind, 1)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    assert select(KernelCall(cell, x, None, None, needs_grad=False), "auto").backend == "torch"
    train = select(KernelCall(cell, x, None, None, needs_grad=True), "auto").backend
    assert train == ("torch" if kind == "lstm" else "fused")


@pytest.mark.parametrize("kind", KINDS)
def test_ieee_backward_wrapper_matches_direct_autograd(kind: str) -> None:
    """The float32-on-CUDA path (backward re-run under the IEEE switch), checked on CPU."""
    from rnnkit.kernels.gated.torch_native import _flat_weights, _run_ieee_backward

    cell = make_cell(kind, 1)
    x, st, _, _ = make_inputs(cell, state=True, resets=False)
    assert st is not None
    x = x.requires_grad_()
    st = tuple(s.requires_grad_() for s in st)
    args = (_flat_weights(cell), True, 1, 0.0, True, False, True)
    y, final = _run_ieee_backward(cell, x, st, args)
    y_ref, final_ref = cell(x, st, backend="torch")
    assert rel_rms(y, y_ref) <= 1e-12
    outs, refs = (y, *final), (y_ref, *final_ref)
    grads_of = [x, *st, *cell.parameters()]
    cots = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, grads_of, cots)
    want = torch.autograd.grad(refs, grads_of, cots)
    for g, w in zip(got, want, strict=True):
        assert rel_rms(g, w) <= 1e-12


def test_cudnn_bf16_relu_elman_training_is_refused() -> None:
    """cuDNN's bf16 ReLU Elman backward was measured wrong on an H100: ``supports`` must refuse
    exactly that combination (CUDA, bfloat16, ReLU, gradients) and nothing next to it."""
    from types import SimpleNamespace
    from typing import cast

    from rnnkit.kernels.gated.torch_native import cudnn_known_issue

    def call(device: str, grad: bool) -> KernelCall:
        # a stand-in: the rule reads only the input's device and whether gradients are needed
        x = SimpleNamespace(device=torch.device(device))
        return cast(KernelCall, SimpleNamespace(x=x, needs_grad=grad))

    bf16, f16 = torch.bfloat16, torch.float16
    reason = cudnn_known_issue("elman", "relu", call("cuda", True), bf16)
    assert reason is not None and "triton" in reason and "float16" in reason
    for kind, nl, dev, grad, dt in (
        ("elman", "tanh", "cuda", True, bf16),
        ("elman", "relu", "cuda", False, bf16),
        ("elman", "relu", "cuda", True, f16),
        ("elman", "relu", "cpu", True, bf16),
        ("gru", None, "cuda", True, bf16),
    ):
        assert cudnn_known_issue(kind, nl, call(dev, grad), dt) is None, (kind, nl, dev, grad, dt)


def test_gated_priorities_rank_compiled_calls_apart_from_exported_ones() -> None:
    """``fused_cpp`` and ``torch`` rank a call under ``torch.compile`` as eagerly and give the
    export ranking only under ``torch.export`` (torch 2.11's ``torch.compiler.is_exporting()``
    said ``True`` under every compile); ``fused`` ranks below ``reference`` under both (its
    ``out=`` loops break dynamo's graph). Recorded inside the traced functions, compared
    outside them."""
    from rnnkit.kernels.gated import fused, fused_cpp, torch_native

    cell = make_cell("gru", 1).float()
    seen: list[tuple[int, int, int]] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            call = KernelCall(cell, x, None, None, True)
            ranks = (fused.priority(call), fused_cpp.priority(call))
            seen.append((*ranks, torch_native.torch_priority(call)))
            return x + 1

    x = torch.randn(2, 4, 5)
    Probe()(x)
    torch._dynamo.reset()
    torch.compile(Probe(), backend="eager", fullgraph=True)(x)
    torch.export.export(Probe(), (x,))
    native = fused_cpp.priority(KernelCall(cell, x, None, None, True))
    eager = (fused.FUSED_PRIORITY, native, torch_native.FALLBACK)
    compiled = (fused.COMPILE_PRIORITY, native, torch_native.FALLBACK)
    exported = (fused.EXPORT_PRIORITY, fused_cpp.EXPORT_PRIORITY, torch_native.PREFERRED)
    assert seen == [eager, compiled, exported]
    assert native != fused_cpp.EXPORT_PRIORITY
    assert fused.COMPILE_PRIORITY < Priority.REFERENCE < fused.FUSED_PRIORITY
