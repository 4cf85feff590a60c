"""torch.export and ONNX of every registered cell on its default backend (``auto``).

``auto`` under ``torch.export`` picks backends that export to plain ATen ops (see
``docs/kernels.md``, "torch.compile, torch.export and autocast"): the exported program runs
without rnnkit's native libraries, and ONNX Runtime runs the ONNX model (where ONNX has the
operators the cell needs). Runs where onnx, onnxscript and onnxruntime are installed (nox's
``integration`` session).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from rnnkit.core.plugins import get_host
from rnnkit.core.testing.suite import HIDDEN_SIZE, INPUT_SIZE

#: Cells whose computation ONNX cannot express, with the reason.
ONNX_UNSUPPORTED = {
    "lru": "a complex-valued recurrence (ONNX has no complex dtypes)",
    "s4d": "a complex-valued recurrence (ONNX has no complex dtypes)",
    "s5": "a complex-valued recurrence (ONNX has no complex dtypes)",
    "deltanet": "a triangular solve (aten.linalg_solve_triangular has no ONNX operator)",
    "lssl": "the bilinear discretisation's linear solve (aten.linalg_solve has no ONNX operator)",
    "gated_deltanet": "a triangular solve (aten.linalg_solve_triangular has no ONNX operator)",
    # the chunked kernel multiplies signed transitions exactly (zero and negative values
    # included), which a log-space sum cannot; the exporter has no function for the product
    "plstm": "a product of the transitions (prims.prod has no ONNX function)",
}


def _cases() -> list[Any]:
    """Every registered cell and test configuration. Each export costs seconds on 2 cores:
    the default run exports each cell's first configuration, the others run with the
    ``experiment`` marker (``nox -s experiments``)."""
    return [
        pytest.param(e.name, kw, id=f"{e.name}-{i}", marks=() if i == 0 else pytest.mark.experiment)
        for e in get_host().cells
        for i, kw in enumerate(e.obj.test_configs)
    ]


def _cell(name: str, kw: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    # a test configuration may set its own sizes (qrnn's 3 qubits), as the conformance kit allows
    sizes = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, **kw}
    cell: torch.nn.Module = get_host().cells.get(name).obj.cls(**sizes)
    return cell


class _Outputs(torch.nn.Module):
    """``y`` and the final state as a flat tuple (what ONNX sessions return)."""

    def __init__(self, cell: torch.nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, final = self.cell(x)
        return (y, *final)


def _loss(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    squares = ((o.abs() if o.is_complex() else o).square().sum() for o in outputs)
    return sum(squares, torch.zeros(()))


@pytest.mark.parametrize(("name", "kw"), _cases())
def test_export_runs_like_eager(name: str, kw: dict[str, Any]) -> None:
    """The exported program of ``cell(x)`` (exported with ``x`` without a gradient, the
    parameters with) gives eager's outputs, and runs under autograd: the gradients of its
    parameters and of ``x`` equal eager's."""
    model = _Outputs(_cell(name, kw))
    x = torch.randn(2, 7, INPUT_SIZE)
    want = model(x)
    ep = torch.export.export(model, (x,))
    assert "rnnkit_" not in ep.graph_module.print_readable(False), "a native op was exported"
    with torch.no_grad():
        got = ep.module()(x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)

    exported = ep.module()
    xg = x.clone().requires_grad_()
    got_grads = torch.autograd.grad(_loss(exported(xg)), [xg, *exported.parameters()])
    xe = x.clone().requires_grad_()
    want_grads = torch.autograd.grad(_loss(model(xe)), [xe, *model.parameters()])
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


class _Step(torch.nn.Module):
    """One step, ``(x_t, *state fields) -> (y_t, *new state fields)``: what a streaming server
    exports (an exported program holds one sequence length; a step has none)."""

    def __init__(self, cell: torch.nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x_t: torch.Tensor, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y_t, state = self.cell.step(x_t, self.cell.state_type(*fields))
        return (y_t, *state)


@pytest.mark.parametrize(("name", "kw"), _cases())
def test_an_exported_step_streams_like_eager(name: str, kw: dict[str, Any]) -> None:
    """``cell.step`` exports with a dynamic batch; the program, run for a few steps on a batch
    of another size, gives eager's outputs and states (how docs/kernels.md says to serve
    sequences of any length)."""
    step = _Step(_cell(name, kw)).eval()
    batch = torch.export.Dim("batch", min=2)
    example = step.cell.init_state(3)
    with torch.no_grad():
        ep = torch.export.export(
            step,
            (torch.randn(3, INPUT_SIZE), *example),
            dynamic_shapes={"x_t": {0: batch}, "fields": tuple({0: batch} for _ in example)},
        )
    exported = ep.module()
    want: list[torch.Tensor] = list(step.cell.init_state(5))
    got = list(want)
    with torch.no_grad():
        for _ in range(3):
            x_t = torch.randn(5, INPUT_SIZE)
            want_y, *want = step(x_t, *want)
            got_y, *got = exported(x_t, *got)
            for g, w in zip([got_y, *got], [want_y, *want], strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "kw"), _cases())
def test_onnx_runtime_matches_eager(name: str, kw: dict[str, Any]) -> None:
    """``torch.onnx.export(dynamo=True)`` of the cell runs on ONNX Runtime like eager."""
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    ort = pytest.importorskip("onnxruntime")
    if name in ONNX_UNSUPPORTED:
        pytest.skip(f"{name}: {ONNX_UNSUPPORTED[name]}")
    model = _Outputs(_cell(name, kw))
    x = torch.randn(2, 7, INPUT_SIZE)
    with torch.no_grad():
        want = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notices about optional packages
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    assert program is not None
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-5)
