"""Shared machinery of the form tests (``test_form_<form>.py``): every registered backend of a
form against the form's float64 reference, on odd shapes, with fresh buffers poisoned to NaN.

The backends come from the dispatch registry (:func:`rnnkit.core.dispatch.kernels_for`), so a
backend registered later for a form is tested by that form's module with no edit here; a case a
backend cannot run on this machine is skipped with its kernel's own ``why_not`` reason.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
import torch
from _gated_helpers import make_cell
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, kernels_for, targets_of
from rnnkit.core.reference import REFERENCE_KERNEL
from rnnkit.core.testing.checks import Problem, RunResult, make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms, tolerance

#: Odd shapes: batch 3; a single step, and lengths that are no multiple of a power of two, so
#: that chunked and tiled kernels meet partial last chunks.
BATCH = 3
TIMES = (1, 7, 13)
DTYPES = (torch.float64, torch.float32)
DTYPE_IDS = ("f64", "f32")
#: ``cpu``, and ``cuda`` where a GPU is present (the reference always runs on the CPU).
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
#: The reference loop's backend name (the oracle, not a backend under test).
REFERENCE = REFERENCE_KERNEL.backend


def backends_for(cells: Iterable[Cell[Any]]) -> list[str]:
    """Every registered backend with a kernel for at least one of ``cells``, but the reference
    loop, sorted by name."""
    names = {k.backend for cell in cells for k in kernels_for(cell)}
    names.discard(REFERENCE)
    return sorted(names)


def cast_state(s: Tensor, dtype: torch.dtype) -> Tensor:
    """A state field in the precision of ``dtype`` (a complex field stays complex)."""
    if s.is_complex():
        return s.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    return s.to(dtype)


def why_not(
    cell: Cell[Any],
    backend: str,
    x: Tensor,
    state: Sequence[Tensor] | None,
    resets: Tensor | None,
    dtype: torch.dtype,
    device: str = "cpu",
) -> str | None:
    """Why ``backend`` cannot run ``cell`` on ``x`` (cast to ``dtype``, on ``device``) with
    gradients, from its kernels' own ``why_not`` (``None`` when one of them can)."""
    probe = copy.deepcopy(cell).to(device=device, dtype=dtype)
    st = None if state is None else tuple(cast_state(s, dtype).to(device) for s in state)
    rs = None if resets is None else resets.to(device)
    call = KernelCall(probe, x.to(device=device, dtype=dtype), st, rs, needs_grad=True)
    kernels = [k for k in kernels_for(probe) if k.backend == backend]
    if not kernels:
        return f"no {backend!r} kernel for targets {', '.join(targets_of(probe))}"
    reasons = [k.why_not(call) for k in kernels]
    if any(r is None for r in reasons):
        return None
    return "; ".join(sorted({str(r) for r in reasons}))


@contextmanager
def poisoned() -> Iterator[None]:
    """Every ``torch.empty`` inside starts as NaN (the outputs and saved buffers of the torch,
    C++ and Triton kernels included), so a value a kernel forgets to write, or reads before
    writing, shows up in the comparison; one thread (tiny shapes)."""
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
        torch.use_deterministic_algorithms(det, warn_only=warn)


class ReferenceRuns:
    """The float64 reference runs of one cell: ``runs(time, use_state, use_resets) -> (problem,
    result)``, memoised, so that every backend and dtype of a case shares one reference run."""

    def __init__(self, make: Callable[[], Cell[Any]], seed: int) -> None:
        self.cell = make().to(torch.float64)
        self.seed = seed
        self._memo: dict[tuple[int, bool, bool], tuple[Problem, RunResult]] = {}

    def __call__(self, time: int, use_state: bool, use_resets: bool) -> tuple[Problem, RunResult]:
        key = (time, use_state, use_resets)
        if key not in self._memo:
            p = make_problem(self.cell, batch=BATCH, time=time, seed=self.seed + time)
            kw = {"use_state": use_state, "use_resets": use_resets}
            self._memo[key] = (
                p,
                run_cell(self.cell, p, backend=REFERENCE, dtype=torch.float64, **kw),
            )
        return self._memo[key]


#: Input and hidden size of the gated cells of the form tests: odd, and 9 = 3 heads of 3.
GATED_INPUT, GATED_HIDDEN = 5, 9


@cache
def gated_reference(kind: str, heads: int) -> ReferenceRuns:
    """The reference runs of core's gated cell ``kind`` (``"relu"``: the ReLU Elman) with
    ``heads`` heads, shared by the gated and the analog form tests."""
    return ReferenceRuns(
        lambda: make_cell(kind, heads, inputs=GATED_INPUT, hidden=GATED_HIDDEN), seed=3
    )


def errors(got: RunResult, want: RunResult) -> dict[str, float]:
    """Relative RMS error of the output, every final-state field and every gradient."""
    assert got.grads.keys() == want.grads.keys(), (sorted(got.grads), sorted(want.grads))
    errs = {"y": rel_rms(got.y, want.y)}
    for i, (a, b) in enumerate(zip(got.state, want.state, strict=True)):
        errs[f"final state[{i}]"] = rel_rms(a, b)
    errs.update({f"grad {k}": rel_rms(got.grads[k], want.grads[k]) for k in want.grads})
    return errs


def check_backend(
    reference: ReferenceRuns,
    backend: str,
    dtype: torch.dtype,
    *,
    use_resets: bool,
    times: Sequence[int] = TIMES,
    states: Sequence[bool] = (False, True),
    cell: Cell[Any] | None = None,
    tol: float | None = None,
    device: str = "cpu",
) -> None:
    """``backend`` in ``dtype`` equals the float64 reference loop within ``tol`` (default
    ``tolerance(dtype)``): output, final state and the gradients of the input, the initial state
    (when given) and every parameter, for every length in ``times``, with and without an initial
    state. ``cell``: the cell the backend runs, if not the reference's own (the same parameters,
    e.g. a copy converted to analog), run on ``device``. A ``RuntimeWarning`` (a fallback to
    another path) fails. Skips with the kernel's reasons when it can run none of these cases."""
    cell = reference.cell if cell is None else cell
    tol = tolerance(dtype) if tol is None else tol
    ran, refused = 0, set()
    # A backend that falls back to another path (fused_cpp to fused when its build fails,
    # newton to the loop when a solve does not converge) warns: that must fail here.
    with poisoned(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for time in times:
            for use_state in states:
                p, want = reference(time, use_state, use_resets)
                assert "x" in want.grads and any(k.startswith("param.") for k in want.grads)
                assert use_state == any(k.startswith("state.") for k in want.grads)
                reason = why_not(
                    cell, backend, p.x, p.state if use_state else None,
                    p.resets if use_resets else None, dtype, device,
                )  # fmt: skip
                if reason is not None:
                    refused.add(reason)
                    continue
                got = run_cell(
                    cell, p, backend=backend, dtype=dtype, device=device,
                    use_state=use_state, use_resets=use_resets,
                )  # fmt: skip
                bad = {k: f"{e:.2e}" for k, e in errors(got, want).items() if not e <= tol}
                label = f"{backend} {dtype} {device} T={time} state={use_state} resets={use_resets}"
                assert not bad, f"{label}: relative RMS error above {tol:.0e}: {bad}"
                ran += 1
    if not ran:
        pytest.skip(f"{backend} cannot run these cases here: {'; '.join(sorted(refused))}")


def check_nan_propagates(
    cell: Cell[Any], backend: str, dtype: torch.dtype, device: str = "cpu"
) -> None:
    """A NaN in one input element of example 1 at step 2 makes that example's output NaN from
    step 2 on and its final state NaN, and leaves everything else finite (B=3, T=7)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(BATCH, 7, cell.input_size, generator=gen, dtype=torch.float64)
    x[1, 2, 0] = float("nan")
    reason = why_not(cell, backend, x, None, None, dtype, device)
    if reason is not None:
        pytest.skip(f"{backend} cannot run this case here: {reason}")
    run = copy.deepcopy(cell).to(device=device, dtype=dtype)
    with poisoned(), torch.no_grad():
        y, final = run(x.to(device=device, dtype=dtype), backend=backend)
    assert y.dtype == dtype and y.shape == (BATCH, 7, cell.output_size)
    assert torch.isnan(y[1, 2:]).all(), "NaN input did not reach every later output"
    assert torch.isfinite(y[1, :2]).all() and torch.isfinite(y[[0, 2]]).all(), "NaN leaked"
    for name, s in zip(type(final)._fields, final, strict=True):
        assert torch.isnan(s[1]).all(), f"final state.{name} of the NaN example is not NaN"
        assert torch.isfinite(s[[0, 2]]).all(), f"final state.{name}: NaN leaked across the batch"
