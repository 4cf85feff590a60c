"""The diagonal linear form: every registered backend against the form's references, on odd shapes.

Cell: :class:`TinyDiagonal`, a small :class:`DiagonalLinearCell` defined here (the kernels' tests
do not import rnnkit-models), with a real and with a complex state (input 5, state 7). Backends:
every one the dispatch registry has for it (``kernels_for``), each in float64 and float32,
against

- the loop over ``recur`` run in float64: output, final state and the gradients of the input,
  the initial state and every parameter, for lengths 1, 7 and 13, with and without an initial
  state and resets;
- :data:`rnnkit.kernels.linear.REFERENCE`, the sequential scan, applied to the cell's own
  ``coefficients`` and ``readout`` (values);

with every fresh buffer poisoned to NaN (``torch.empty`` and the scans' own allocations), and a
NaN in the input makes exactly its own example's later outputs and final state NaN. A case a
backend refuses here (complex states for the Triton scan) is skipped with its kernel's reason.

Without a GPU ``scan_triton`` runs in Triton's CPU interpreter (the conftest sets
``TRITON_INTERPRET=1``): there it runs a few cases only (see :data:`INTERPRETED`);
``test_scan.py`` tests the Triton scan further.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import cache
from typing import ClassVar

import pytest
import torch
from _form_helpers import (
    BATCH,
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    REFERENCE,
    ReferenceRuns,
    backends_for,
    cast_state,
    check_backend,
    check_nan_propagates,
    poisoned,
    why_not,
)
from torch import Tensor, nn

from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.state import StateField
from rnnkit.core.testing.checks import make_problem
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.kernels import linear
from rnnkit.kernels.linear.scan import set_poison

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

INPUT, STATE = 5, 7


class TinyDiagonal(DiagonalLinearCell):
    """``a = sigmoid(g)`` (times ``exp(i theta)`` for a complex state), ``b = u`` (``u + i v``),
    ``y = c * Re h * tanh(g) + Im h``: every parameter reaches the output."""

    kind: ClassVar[str] = "tiny_diagonal"

    def __init__(self, input_size: int, hidden_size: int, *, complex_state: bool = False):
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.complex_state = complex_state
        self.projected_size = (3 if complex_state else 2) * hidden_size
        self.proj = nn.Linear(input_size, self.projected_size)
        self.theta = nn.Parameter(torch.linspace(0.2, 2.5, hidden_size))
        self.c = nn.Parameter(torch.linspace(-1.0, 1.5, hidden_size))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), complex=self.complex_state),)

    def project(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        g, u, *v = px.chunk(3 if self.complex_state else 2, dim=-1)
        a = torch.sigmoid(g)
        if self.complex_state:
            return torch.polar(a, self.theta.expand_as(a)), torch.complex(u, v[0])
        return a, u

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        y = self.c * h.real * torch.tanh(px[..., : self.hidden_size])
        return y + h.imag if h.is_complex() else y


CELLS = [False, True]
CELL_IDS = ["real", "complex"]
BACKENDS = backends_for(TinyDiagonal(INPUT, STATE, complex_state=c) for c in CELLS)
#: Backends that run in Triton's CPU interpreter here, and the cases they run there: one length
#: with an initial state, float32 with resets and float64 without (there a call is slow whatever
#: the length: the interpreter runs the kernels' in-chunk scan element by element over a whole
#: chunk); float32 only in the forward-only tests.
INTERPRETED = () if torch.cuda.is_available() else ("scan_triton",)
INTERPRETED_CASES = {"times": (7,), "states": (True,)}


def _interpreted_skip(backend: str, dtype: torch.dtype, resets: bool | None = None) -> None:
    if backend not in INTERPRETED:
        return
    wanted = dtype == torch.float32 if resets is None else resets == (dtype == torch.float32)
    if not wanted:
        pytest.skip("Triton interpreter (slow): float32 with resets, float64 without")


@pytest.fixture(autouse=True)
def _poison_scans() -> Iterator[None]:
    """The scans' own output buffers start as NaN too (their allocator, not ``torch.empty``)."""
    previous = set_poison(True)
    yield
    set_poison(previous)


@cache
def _reference(complex_state: bool) -> ReferenceRuns:
    return ReferenceRuns(lambda: TinyDiagonal(INPUT, STATE, complex_state=complex_state), seed=5)


def test_backends_come_from_the_registry() -> None:
    assert "scan" in BACKENDS and REFERENCE not in BACKENDS


@pytest.mark.parametrize("resets", [False, True], ids=["noresets", "resets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("complex_state", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_reference(
    backend: str, complex_state: bool, device: str, dtype: torch.dtype, resets: bool
) -> None:
    _interpreted_skip(backend, dtype, resets)
    cases = INTERPRETED_CASES if backend in INTERPRETED else {}
    reference = _reference(complex_state)
    check_backend(reference, backend, dtype, use_resets=resets, device=device, **cases)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("complex_state", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", [REFERENCE, *BACKENDS])
def test_backend_equals_the_scan_reference(
    backend: str, complex_state: bool, dtype: torch.dtype
) -> None:
    """Output and final state against ``readout(REFERENCE(coefficients(project(x))))`` in
    float64, T=13 from an initial state with resets (the loop over ``recur`` included: the two
    references agree)."""
    _interpreted_skip(backend, dtype)
    cell = _reference(complex_state).cell
    p = make_problem(cell, batch=BATCH, time=13, seed=1)
    (h0,) = p.state
    reason = why_not(cell, backend, p.x, p.state, p.resets, dtype)
    if reason is not None:
        pytest.skip(f"{backend} cannot run this case here: {reason}")
    with torch.no_grad():
        px = cell.project(p.x)
        a, b = cell.coefficients(px)
        h, want_h = linear.REFERENCE(a, b, h0, resets=p.resets)
        want_y = cell.readout(h, px)
        run = TinyDiagonal(INPUT, STATE, complex_state=complex_state).to(dtype)
        run.load_state_dict(cell.state_dict())
        state = cell.state_type(cast_state(h0, dtype))
        with poisoned():
            y, final = run(p.x.to(dtype), state, resets=p.resets, backend=backend)
    tol = tolerance(dtype)
    assert y.dtype == dtype and rel_rms(y, want_y) <= tol, rel_rms(y, want_y)
    assert rel_rms(final.h, want_h) <= tol, rel_rms(final.h, want_h)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("complex_state", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(
    backend: str, complex_state: bool, device: str, dtype: torch.dtype
) -> None:
    _interpreted_skip(backend, dtype)
    check_nan_propagates(_reference(complex_state).cell, backend, dtype, device)


class _Outputs(nn.Module):
    """``cell(x, resets=resets)`` on the ``scan`` backend as a module (for ``torch.export``)."""

    def __init__(self, cell: TinyDiagonal) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, resets: Tensor) -> tuple[Tensor, Tensor]:
        y, final = self.cell(x, resets=resets, backend="scan")
        return y, final.h


@pytest.mark.parametrize("mode", ["compile", "export"])
@pytest.mark.parametrize("complex_state", CELLS, ids=CELL_IDS)
def test_a_traced_scan_restarts_clean_after_a_nan(mode: str, complex_state: bool) -> None:
    """A NaN input in the first episode of example 0 (step 1) and a reset at step 4 of both
    examples: compiled (``aot_eager``, ``fullgraph=True``) or exported, the ``scan`` backend
    gives after the reset the outputs, final state and input gradients of the second episode
    run alone (the scan multiplies the state before a reset by a zero gate, and ``0 * NaN`` is
    NaN: compiled and exported programs must not let it through)."""
    torch.manual_seed(0)
    cell = TinyDiagonal(INPUT, STATE, complex_state=complex_state).double()
    x = torch.randn(2, 9, INPUT, dtype=torch.float64)
    x[0, 1] = math.nan
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[:, 4] = True
    model = _Outputs(cell)
    run: Callable[..., tuple[Tensor, Tensor]]
    if mode == "compile":
        torch._dynamo.reset()
        run = torch.compile(model, backend="aot_eager", fullgraph=True)  # type: ignore[assignment]
    else:
        run = torch.export.export(model, (x, resets)).module()
    x = x.requires_grad_()
    y, h = run(x, resets)
    clean = x.detach()[:, 4:].requires_grad_()
    want_y, want_final = cell(clean, backend="reference")
    assert torch.isnan(y[0, 1:4]).all(-1).all() and torch.isfinite(y[:, 4:]).all()
    assert rel_rms(y[:, 4:], want_y) < 1e-10 and rel_rms(h, want_final.h) < 1e-10
    weights = torch.randn(want_y.shape, dtype=torch.float64)
    (got,) = torch.autograd.grad((y[:, 4:] * weights).sum() + h.real.sum(), x)
    (want,) = torch.autograd.grad((want_y * weights).sum() + want_final.h.real.sum(), clean)
    assert torch.isfinite(got[:, 4:]).all() and rel_rms(got[:, 4:], want) < 1e-10
