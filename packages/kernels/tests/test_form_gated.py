"""The gated form: every registered backend against the form's reference, on odd shapes.

Cells: core's Elman (tanh and ReLU), LSTM, GRU and sLSTM with 1 and 3 heads (input 5, hidden 9,
so head sizes 9 and 3). Backends: every one the dispatch registry has for these cells
(``kernels_for``), each in float64 and float32, against :data:`rnnkit.kernels.gated.REFERENCE`
(the loop over ``recur``) run in float64: output, final state and the gradients of the input,
the initial state and every parameter, for lengths 1, 7 and 13, with and without an initial
state and resets, every fresh buffer poisoned to NaN; and a NaN in the input makes exactly its
own example's later outputs and final state NaN. A case a backend refuses here (a dtype, heads,
resets, no GPU, a cell not converted to analog) is skipped with its kernel's own reason.

Without a GPU the ``triton`` kernels run in Triton's CPU interpreter (the conftest sets
``TRITON_INTERPRET=1``), which is slow: there they run one length (5) with an initial state,
one head without resets and three heads with resets; ``test_triton_gated.py`` tests them
further.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _form_helpers import (
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    GATED_HIDDEN,
    GATED_INPUT,
    REFERENCE,
    backends_for,
    check_backend,
    check_nan_propagates,
    gated_reference,
    why_not,
)
from _gated_helpers import KINDS, make_cell

from rnnkit.core.reference import reference_forward
from rnnkit.core.testing.checks import Problem, make_problem, run_cell
from rnnkit.kernels import gated

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

CELLS = [(kind, heads) for kind in KINDS for heads in (1, 3)]
CELL_IDS = [f"{kind}-h{heads}" for kind, heads in CELLS]
BACKENDS = backends_for(
    make_cell(kind, 1, inputs=GATED_INPUT, hidden=GATED_HIDDEN) for kind in KINDS
)
#: Backends that run in Triton's CPU interpreter here, and the cases they run there: one length
#: with an initial state, one head without resets and three heads with resets.
INTERPRETED = () if torch.cuda.is_available() else ("triton",)
INTERPRETED_CASES = {"times": (5,), "states": (True,)}


def test_reference_is_the_recur_loop() -> None:
    assert gated.REFERENCE is reference_forward


def test_backends_come_from_the_registry() -> None:
    """The fused loops are registered for every cell of the form (the list is not hand-written,
    so a backend registered later is tested here too)."""
    assert "fused" in BACKENDS and REFERENCE not in BACKENDS


@pytest.mark.parametrize("resets", [False, True], ids=["noresets", "resets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("kind", "heads"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_reference(
    backend: str, kind: str, heads: int, device: str, dtype: torch.dtype, resets: bool
) -> None:
    cases = {}
    if backend in INTERPRETED:
        if resets != (heads == 3):
            pytest.skip("Triton interpreter (slow): 1 head without resets, 3 heads with resets")
        cases = INTERPRETED_CASES
    reference = gated_reference(kind, heads)
    check_backend(reference, backend, dtype, use_resets=resets, device=device, **cases)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend: str, kind: str, device: str, dtype: torch.dtype) -> None:
    check_nan_propagates(gated_reference(kind, 3).cell, backend, dtype, device)


@pytest.mark.parametrize("resets", [False, True], ids=["noresets", "resets"])
@pytest.mark.parametrize(("kind", "heads"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_pattern_of_outputs_and_every_gradient_is_the_reference_s(
    backend: str, kind: str, heads: int, resets: bool
) -> None:
    """Stricter than the conformance kit's ``nan_propagation`` check, which compares where a NaN
    goes in the forward and only which examples' input gradients have one: a gated backend
    runs the loop's steps, so in float64 the NaN pattern of ``y``, the final state and every
    gradient (input, initial state, parameters) equals the reference loop's element for
    element, for a NaN in one input element and for one in each parameter, with resets too (a
    reset cuts the gradient off exactly, even a NaN one, as the loop's select does)."""
    cell = make_cell(kind, heads, inputs=GATED_INPUT, hidden=GATED_HIDDEN).to(torch.float64)
    p = make_problem(cell, batch=3, time=6, seed=5)
    x = p.x.clone()
    x[1, 2, 0] = float("nan")
    cases = [("NaN in x[1, 2, 0]", cell, dataclasses.replace(p, x=x))]
    for name, param in cell.named_parameters():
        poisoned = copy.deepcopy(cell)
        with torch.no_grad():
            poisoned.get_parameter(name)[(0,) * param.dim()] = float("nan")
        cases.append((f"NaN in {name}[0]", poisoned, p))
    runs = 0
    problem: Problem
    for case, poisoned, problem in cases:
        state = cell.state_type._make(problem.state)
        if why_not(poisoned, backend, problem.x, state, problem.resets, torch.float64) is not None:
            continue
        f64 = torch.float64
        want = run_cell(poisoned, problem, backend="reference", dtype=f64, use_resets=resets)
        got = run_cell(poisoned, problem, backend=backend, dtype=f64, use_resets=resets)
        pairs = {"y": (got.y, want.y)}
        pairs |= {f"state {i}": ab for i, ab in enumerate(zip(got.state, want.state, strict=True))}
        pairs |= {f"grad {k}": (got.grads[k], want.grads[k]) for k in want.grads}
        for name, (a, b) in pairs.items():
            assert torch.equal(torch.isnan(a), torch.isnan(b)), (
                f"{case}: {name}: {int(torch.isnan(a).sum())} NaN, the reference "
                f"{int(torch.isnan(b).sum())}"
            )
        runs += 1
    if runs == 0:
        pytest.skip(f"{backend} cannot run {kind} with {heads} heads in float64 here")
