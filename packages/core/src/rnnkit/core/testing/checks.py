"""The conformance checks (docs/cell-abi.md, section 6) as plain functions raising AssertionError.

Every check takes a zero-argument factory returning a fresh cell in float64 on the CPU and
builds the copies it needs (other dtypes, devices) itself. Inputs are small odd shapes. Every
check returns a :class:`~rnnkit.core.testing.report.CheckReport` saying which backends ran
which configurations and which were skipped and why, and publishes it to the ``rnnkit`` pytest
plugin when it runs inside a test (see :mod:`rnnkit.core.testing.report`).

A backend that refuses a configuration with a plain reason (a dtype, a device, no GPU) is
skipped and the reason reported; one that refuses the cell with a
:class:`~rnnkit.core.kernel.ProtocolGap` (the cell declares the kernel's form but lacks a
method the form requires) fails the check.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec

import pytest
import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, kernels_for, select
from rnnkit.core.forms import Form
from rnnkit.core.kernel import ProtocolGap
from rnnkit.core.state import StateField
from rnnkit.core.testing.lengths import LENGTHS, check_lengths_on, state_dtypes
from rnnkit.core.testing.numerics import assert_close, rel_rms, tolerance
from rnnkit.core.testing.report import CheckReport, publish

CellFactory = Callable[[], Cell[Any]]

BATCH, TIME = 3, 7


@dataclass(frozen=True)
class Problem:
    """A random input and initial state for one cell, plus cotangents for the backward."""

    x: Tensor
    state: tuple[Tensor, ...]
    dy: Tensor
    dstate: tuple[Tensor, ...]
    resets: Tensor


def make_problem(
    cell: Cell[Any], *, batch: int = BATCH, time: int = TIME, seed: int = 0
) -> Problem:
    """Random float64 inputs for ``cell``; the initial state is a valid state reached by running
    the cell on a random prefix (arbitrary random states may be invalid, e.g. sLSTM's ``n``)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        prefix = rand(batch, 3, cell.input_size)
        _, state = cell(prefix, backend="reference")
    x = rand(batch, time, cell.input_size)
    dy = rand(batch, time, cell.output_size)
    dstate = tuple(
        torch.randn(s.shape, generator=gen, dtype=s.dtype if s.is_complex() else torch.float64)
        for s in state
    )
    resets = torch.rand(batch, time, generator=gen) < 0.25
    resets[0, 0] = True
    return Problem(x, tuple(s.detach() for s in state), dy, dstate, resets)


#: Seed of the global RNG while a check builds its cell (see :func:`_f64`).
CELL_SEED = 0


def _f64(make: CellFactory) -> Cell[Any]:
    # Cells draw their initial parameters from the global RNG. Seeding it here makes every
    # check see the same parameters whatever ran before it (test order, other test files), so
    # a failure reproduces; fork_rng leaves the caller's RNG state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CELL_SEED)
        cell = make()
    cell.to(torch.float64)
    return cell


@dataclass
class RunResult:
    """Outputs and gradients of one forward/backward run."""

    y: Tensor
    state: tuple[Tensor, ...]
    grads: dict[str, Tensor]


def run_cell(
    cell: Cell[Any],
    p: Problem,
    *,
    backend: str,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    use_state: bool = True,
    use_resets: bool = False,
    compile_backend: str | None = None,
    grad: Literal["all", "params", "none"] = "all",
) -> RunResult:
    """Run forward and backward in ``dtype`` on ``device``; gradients are returned in float64.

    With ``compile_backend``, the cell is run through ``torch.compile(cell, backend=...)``.
    ``grad`` says what requires grad: ``"all"`` (input, initial state and parameters) or
    ``"params"`` (parameters only: the input and state are plain tensors, whose gradients are
    then reported as zeros); ``"none"`` runs the forward alone under ``torch.no_grad()`` (the
    inference call, ``needs_grad=False``) and returns no gradients.
    """
    cell = copy.deepcopy(cell).to(device=device, dtype=dtype)
    fn: Callable[..., Any] = cell
    if compile_backend is not None:
        torch._dynamo.reset()
        fn = torch.compile(cell, backend=compile_backend)
    leaf = _leaf if grad == "all" else _plain
    x = leaf(p.x.to(device=device, dtype=dtype))
    state = None
    if use_state:
        dtypes = state_dtypes(cell, dtype)
        state = cell.state_type._make(
            leaf(s.to(device=device, dtype=d)) for s, d in zip(p.state, dtypes, strict=True)
        )
    resets = p.resets.to(device) if use_resets else None
    if grad == "none":
        with torch.no_grad():
            y, final = fn(x, state, backend=backend, resets=resets)
        return RunResult(y.to(torch.float64).cpu(), tuple(_as_real(s).cpu() for s in final), {})
    y, final = fn(x, state, backend=backend, resets=resets)
    # random cotangents on y and on every field of the final state
    loss = (y.to(torch.float64) * p.dy.to(device)).sum()
    for s, ds in zip(final, p.dstate, strict=True):
        loss = loss + (_as_real(s) * _as_real(ds.to(device))).sum()
    loss.backward()
    grads = {"x": _grad(x)}
    if state is not None:
        for name, s in zip(state._fields, state, strict=True):
            grads[f"state.{name}"] = _grad(s)
    for name, param in cell.named_parameters():
        grads[f"param.{name}"] = _grad(param)
    return RunResult(
        y.detach().to(torch.float64).cpu(),
        tuple(_as_real(s.detach()).cpu() for s in final),
        grads,
    )


def _as_real(t: Tensor) -> Tensor:
    """float64 view of a real or complex tensor (complex as a trailing (re, im) pair)."""
    if t.is_complex():
        return torch.view_as_real(t.to(torch.complex128))
    return t.to(torch.float64)


def _leaf(t: Tensor) -> Tensor:
    """A fresh leaf copy that requires grad (never alias the shared problem tensors)."""
    return t.detach().clone().requires_grad_(True)


def _plain(t: Tensor) -> Tensor:
    """A fresh copy that does not require grad."""
    return t.detach().clone()


def _grad(t: Tensor) -> Tensor:
    if t.grad is None:
        return _as_real(torch.zeros_like(t)).cpu()
    return _as_real(t.grad.detach()).cpu()


def _config(
    dtype: torch.dtype, device: str, use_state: bool | None = None, use_resets: bool = False
) -> str:
    """A configuration's label for reports: ``"float32 cpu state resets"``."""
    words = [str(dtype).removeprefix("torch."), device]
    if use_state is not None:
        words.append("state" if use_state else "no state")
    if use_resets:
        words.append("resets")
    return " ".join(words)


def _kernel_reasons(cell: Cell[Any], call: KernelCall) -> Iterator[tuple[str, str | None]]:
    """``(backend, why it cannot run call or None)`` for every kernel targeting ``cell``.

    Raises AssertionError when a kernel refuses the cell with a :class:`ProtocolGap`: the cell
    declares the kernel's form but does not implement it, so skipping would hide the gap.
    """
    for kernel in kernels_for(cell):
        reason = kernel.why_not(call)
        if isinstance(reason, ProtocolGap):
            raise AssertionError(
                f"backend {kernel.backend} (its kernel for {kernel.target!r}, a form "
                f"{type(cell).__name__} declares) refuses the cell for a missing part of the "
                f"form's protocol: {reason}"
            )
        yield kernel.backend, reason


def _auto_backend(
    cell: Cell[Any], x: Tensor, state: Any, resets: Tensor | None, needs_grad: bool
) -> str:
    """The backend ``backend="auto"`` picks for this call (for reports)."""
    return select(KernelCall(cell, x, state, resets, needs_grad), "auto").backend


def _errors(got: RunResult, want: RunResult, fields: tuple[str, ...]) -> dict[str, float]:
    """Relative RMS error of every output and gradient of ``got`` against ``want``."""
    assert got.grads.keys() == want.grads.keys(), "different gradient sets"
    errs = {"y": rel_rms(got.y, want.y)}
    for name, a, b in zip(fields, got.state, want.state, strict=True):
        errs[f"final state.{name}"] = rel_rms(a, b)
    for key in want.grads:
        errs[f"grad {key}"] = rel_rms(got.grads[key], want.grads[key])
    return errs


def _compare(
    label: str,
    got: RunResult,
    want: RunResult,
    tol: float,
    fields: tuple[str, ...],
    floor: dict[str, float] | None = None,
) -> None:
    """Assert every error is within ``tol``, or within ``LOW_PRECISION_SLACK`` times the
    reference loop's own error in the same dtype (``floor``) where that is larger."""
    for key, err in _errors(got, want, fields).items():
        bound = tol if floor is None else max(tol, LOW_PRECISION_SLACK * floor[key])
        assert err <= bound, f"{label}: {key}: relative RMS error {err:.3e} > bound {bound:.1e}"


#: In 16-bit dtypes the error against float64 depends on the problem (a ReLU recurrence
#: amplifies rounding); a backend may then be off by this factor times the error of the
#: reference loop run in the same dtype, if that exceeds the dtype's tolerance.
LOW_PRECISION_SLACK = 2.0


# --- the checks ------------------------------------------------------------------------------


def _spec_shapes(spec: tuple[StateField, ...], batch: int) -> str:
    """``init_state(B)``'s fields as ``state_spec`` describes them: ``h: (3, 6), c: (3, 6)``."""
    return ", ".join(f"{f.name}: {f.full_shape(batch)}" for f in spec)


def check_state_spec(make: CellFactory) -> CheckReport:
    """``state_spec`` matches ``state_type`` and ``init_state`` (names, shapes, dtypes, the
    ``device`` asked for); ``init_state`` gives every example the same state; ``project``
    has ``projected_size``'s width; ``forward`` runs from ``init_state``."""
    cell = _f64(make)
    report = CheckReport("state_spec", type(cell).__name__)
    _state_spec_on(cell, report)
    report.add_run("reference", _config(torch.float64, "cpu"))
    return publish(report)


def _state_spec_on(cell: Cell[Any], report: CheckReport) -> None:
    """The assertions of :func:`check_state_spec` on a float64 ``cell``."""
    spec = cell.state_spec()
    _assert_state_names(cell, spec)
    for dtype in (torch.float64, torch.float32):
        state = cell.init_state(4, dtype=dtype)
        assert isinstance(state, cell.state_type), f"init_state returned {type(state).__name__}"
        for field, value in zip(spec, state, strict=True):
            where = f"init_state(4, dtype={dtype}).{field.name}"
            assert tuple(value.shape) == field.full_shape(4), (
                f"{where} has shape {tuple(value.shape)}; state_spec says {field.full_shape(4)}"
            )
            assert value.dtype == field.resolve_dtype(dtype), (
                f"{where} has dtype {value.dtype}; state_spec says {field.resolve_dtype(dtype)}"
            )
            # Not necessarily the fill field.init (a learnable initial state is not), but one
            # state for every example: resets restart each example from it, and variable
            # lengths and resets run sub-batches, whose init_state must hold the same rows.
            assert torch.equal(value, value[:1].expand_as(value)), (
                f"{where} differs between examples: every sequence must start from the same state"
            )
    # the meta device holds no data: a check of the device argument that needs no GPU
    for field, value in zip(spec, cell.init_state(2, device="meta"), strict=True):
        assert value.device.type == "meta", (
            f"init_state(2, device='meta').{field.name} is on {value.device}: init_state must "
            "put the state on the device asked for (a learnable initial state too)"
        )
    x = torch.randn(4, 2, cell.input_size, dtype=torch.float64)
    px_shape = tuple(cell.project(x).shape)
    assert px_shape == (4, 2, cell.projected_size), (
        f"project(x) of x {tuple(x.shape)} returned shape {px_shape}; the cell's "
        f"projected_size is {cell.projected_size}"
    )
    try:
        y, final = cell(x, backend="reference")
    except Exception as exc:
        raise AssertionError(
            f"forward(x, backend='reference') from init_state raised {exc!r}. The first step "
            f"gets init_state(4), built from state_spec ({_spec_shapes(spec, 4)}), the second "
            "the state recur returned: one of them is not what recur takes (test_recur, or "
            "check_recur, checks recur's state against state_spec)"
        ) from exc
    assert tuple(y.shape) == (4, 2, cell.output_size), f"y has shape {tuple(y.shape)}"
    assert isinstance(final, cell.state_type), f"forward returned state {type(final).__name__}"


def _assert_state_names(cell: Cell[Any], spec: tuple[StateField, ...]) -> None:
    assert tuple(f.name for f in spec) == tuple(cell.state_type._fields), (
        f"state_spec names {[f.name for f in spec]} != state_type fields {cell.state_type._fields}"
    )


def check_recur(make: CellFactory) -> CheckReport:
    """``recur(px_t, state)`` returns ``(y_t: (B, output_size), state)`` with the state an
    instance of ``state_type`` whose fields have ``state_spec``'s shapes and dtypes, from the
    initial state and from a state reached by running the cell. For a cell of the diagonal
    linear form, ``coefficients(px)`` returns ``a`` and ``b`` that broadcast to the state's
    shape, for one step ``(B, projected_size)`` and for a sequence ``(B, T, projected_size)``.
    """
    cell = _f64(make)
    report = CheckReport("recur", type(cell).__name__)
    _recur_on(cell, report)
    report.add_run("recur", _config(torch.float64, "cpu"))
    return publish(report)


def _recur_on(cell: Cell[Any], report: CheckReport) -> None:
    """The assertions of :func:`check_recur` on a float64 ``cell``; notes go to ``report``."""
    spec = cell.state_spec()
    _assert_state_names(cell, spec)
    name = type(cell).__name__
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, TIME, cell.input_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        px = cell.project(x)
        # coefficients first: a wrong broadcast there shows up in recur as a wrong shape
        coefficients = getattr(cell, "coefficients", None)
        if Form.DIAGONAL_LINEAR in cell.forms and callable(coefficients):
            h = spec[0].full_shape(BATCH)
            inputs = {"one step": (px[:, 0], h), "a sequence": (px, (BATCH, TIME, *h[1:]))}
            for label, (px_in, target) in inputs.items():
                for coef, t in zip("ab", coefficients(px_in), strict=True):
                    assert _broadcasts_to(tuple(t.shape), target), (
                        f"{name}.coefficients() of {label} px {tuple(px_in.shape)} returned "
                        f"{coef} of shape {tuple(t.shape)}, which does not broadcast to the "
                        f"state's shape {target}"
                    )
            report.notes.append("coefficients() broadcasts to the state")
        # from init_state first: reaching another state runs recur (make_problem)
        for label in ("init_state", "a reached state"):
            if label == "init_state":
                start: Any = cell.init_state(BATCH)
            else:
                start = cell.state_type._make(make_problem(cell).state)
            where = f"{name}.recur() from {label}"
            try:
                out: Any = cell.recur(px[:, 0], start)
            except Exception as exc:
                hint = (
                    f" init_state({BATCH}) is built from state_spec ({_spec_shapes(spec, BATCH)}):"
                    " if recur takes other shapes, state_spec is what to fix"
                    if label == "init_state"
                    else ""
                )
                raise AssertionError(f"{where} raised {exc!r}.{hint}") from exc
            assert isinstance(out, tuple) and len(out) == 2, f"{where} must return (y_t, state)"
            y_t, state = out
            assert tuple(y_t.shape) == (BATCH, cell.output_size), (
                f"{where} returned y_t of shape {tuple(y_t.shape)}, expected "
                f"{(BATCH, cell.output_size)} (batch, output_size)"
            )
            assert isinstance(state, cell.state_type), (
                f"{where} returned a state of type {type(state).__name__}, not the cell's "
                f"state_type {cell.state_type.__name__}"
            )
            for field, value in zip(spec, state, strict=True):
                want_shape, want_dtype = field.full_shape(BATCH), field.resolve_dtype(torch.float64)
                assert tuple(value.shape) == want_shape, (
                    f"{where} returned state.{field.name} of shape {tuple(value.shape)}; "
                    f"state_spec says {want_shape}"
                )
                assert value.dtype == want_dtype, (
                    f"{where} returned state.{field.name} of dtype {value.dtype}; state_spec "
                    f"says {want_dtype}"
                )


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (and leaves it unchanged)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


#: The checks every other one builds on (each runs the cell from the state ``state_spec``
#: describes), with their assertions on a float64 cell.
_FOUNDATION: dict[str, Callable[[Cell[Any], CheckReport], None]] = {
    "state_spec": _state_spec_on,
    "recur": _recur_on,
}


def _foundation_failure(make: CellFactory) -> tuple[str, str] | None:
    """``(check, its message)`` for the first check of :data:`_FOUNDATION` that fails on the
    cell ``make`` builds, or ``None`` when they pass (or the cell cannot be built at all)."""
    try:
        cell = _f64(make)
    except Exception:
        return None  # the factory's own error is the one to see
    for name, assertions in _FOUNDATION.items():
        try:
            assertions(cell, CheckReport(name, type(cell).__name__))
        except Exception as exc:
            # the kit's messages are one line; under pytest, which rewrites the kit's asserts,
            # the lines after it explain the assert
            message = str(exc).split("\n", 1)[0] if isinstance(exc, AssertionError) else ""
            return name, message or repr(exc)
    return None


_P = ParamSpec("_P")


def _after_foundation(
    check: Callable[Concatenate[CellFactory, _P], CheckReport],
) -> Callable[Concatenate[CellFactory, _P], CheckReport]:
    """Make ``check`` fail with one line naming the failing :data:`_FOUNDATION` check when it
    fails on a cell that fails one (a ``state_spec`` that is not the state ``recur`` runs
    makes every check fail, most with a raw torch error such as "mat1 and mat2 shapes cannot
    be multiplied"); its own error is chained. Costs nothing while ``check`` passes."""
    label = check.__name__.removeprefix("check_")

    @functools.wraps(check)
    def run(make: CellFactory, /, *args: _P.args, **kwargs: _P.kwargs) -> CheckReport:
        try:
            return check(make, *args, **kwargs)
        except Exception as exc:
            failure = _foundation_failure(make)
            if failure is None:
                raise
            name, message = failure
            raise AssertionError(
                f"{label} cannot be checked while check_{name} (test_{name}) fails on this "
                f"cell: {message}"
            ) from exc

    return run


@_after_foundation
def check_step_matches_forward(make: CellFactory) -> CheckReport:
    """Stepping with ``step`` gives the outputs and final state of ``forward``."""
    cell = _f64(make)
    report = CheckReport("step_matches_forward", type(cell).__name__)
    p = make_problem(cell)
    with torch.no_grad():
        y, final = cell(p.x, cell.state_type._make(p.state), backend="reference")
        state: Any = cell.state_type._make(p.state)
        ys = []
        for x_t in p.x.unbind(1):
            y_t, state = cell.step(x_t, state)
            ys.append(y_t)
    assert_close("step vs forward: y", torch.stack(ys, 1), y, tolerance(torch.float64))
    for name, a, b in zip(final._fields, state, final, strict=True):
        assert_close(f"step vs forward: state.{name}", a, b, tolerance(torch.float64))
    report.add_run("reference", _config(torch.float64, "cpu", True))
    return publish(report)


@_after_foundation
def check_chunking(make: CellFactory) -> CheckReport:
    """A sequence cut in chunks, with the state carried across, equals the whole sequence."""
    cell = _f64(make)
    report = CheckReport("chunking", type(cell).__name__)
    p = make_problem(cell)
    with torch.no_grad():
        y, final = cell(p.x, cell.state_type._make(p.state))
        state: Any = cell.state_type._make(p.state)
        parts = []
        for chunk in torch.tensor_split(p.x, [1, 5], dim=1):
            y_c, state = cell(chunk, state)
            parts.append(y_c)
    tol = tolerance(torch.float64)
    assert_close("chunked vs whole: y", torch.cat(parts, 1), y, tol)
    for name, a, b in zip(final._fields, state, final, strict=True):
        assert_close(f"chunked vs whole: state.{name}", a, b, tol)
    auto = _auto_backend(cell, p.x, cell.state_type._make(p.state), None, False)
    report.add_run(auto, _config(torch.float64, "cpu", True) + " (auto)")
    return publish(report)


@_after_foundation
def check_resets(make: CellFactory) -> CheckReport:
    """``resets`` restart the state: equal to running each episode on its own from init."""
    cell = _f64(make)
    report = CheckReport("resets", type(cell).__name__)
    p = make_problem(cell)
    tol = tolerance(torch.float64)
    with torch.no_grad():
        y, final = cell(p.x, cell.state_type._make(p.state), resets=p.resets)
        for b in range(BATCH):
            starts = [0, *[t for t in range(1, TIME) if p.resets[b, t]], TIME]
            state: Any = cell.state_type._make(s[b : b + 1] for s in p.state)
            for lo, hi in itertools.pairwise(starts):
                if p.resets[b, lo]:
                    state = None
                y_seg, state = cell(p.x[b : b + 1, lo:hi], state)
                assert_close(f"resets: y[{b}, {lo}:{hi}]", y_seg[0], y[b, lo:hi], tol)
            for name, a, s in zip(final._fields, final, state, strict=True):
                assert_close(f"resets: final state.{name}[{b}]", s[0], a[b], tol)
    # no reset anywhere equals no resets at all
    with torch.no_grad():
        y0, _ = cell(p.x, cell.state_type._make(p.state))
        y1, _ = cell(
            p.x, cell.state_type._make(p.state), resets=torch.zeros(BATCH, TIME, dtype=torch.bool)
        )
    assert_close("all-false resets vs none", y1, y0, tol)
    auto = _auto_backend(cell, p.x, cell.state_type._make(p.state), p.resets, False)
    report.add_run(auto, _config(torch.float64, "cpu", True, True) + " (auto)")
    return publish(report)


def devices() -> list[str]:
    """``cpu``, and ``cuda`` when a CUDA device is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _backend_reasons(
    cell: Cell[Any],
    p: Problem,
    device: str,
    dtype: torch.dtype,
    use_state: bool,
    use_resets: bool,
    needs_grad: bool = True,
) -> Iterator[tuple[str, str | None]]:
    """``(backend, why it cannot run this exact configuration or None)`` for every backend of
    the cell (device, dtype, state, resets, gradients); a :class:`ProtocolGap` fails (see
    :func:`_kernel_reasons`)."""
    probe = copy.deepcopy(cell).to(device=device, dtype=dtype)
    x = p.x.to(device=device, dtype=dtype)
    state = None
    if use_state:
        # the dtypes run_cell gives the state (a complex field stays complex)
        dtypes = state_dtypes(cell, dtype)
        state = tuple(s.to(device=device, dtype=d) for s, d in zip(p.state, dtypes, strict=True))
    resets = p.resets.to(device) if use_resets else None
    call = KernelCall(probe, x, state, resets, needs_grad=needs_grad)
    yield from _kernel_reasons(probe, call)


@_after_foundation
def check_backends(
    make: CellFactory,
    dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.bfloat16),
) -> CheckReport:
    """Every backend that can run the cell equals ``reference`` (run in float64) in value and in
    every gradient, within the dtype's tolerance, with and without initial state and resets,
    on every device present; and in value when run without gradients (``torch.no_grad()``,
    ``needs_grad=False``: kernels take another path there). In 16-bit dtypes the bound is the
    larger of the tolerance and ``LOW_PRECISION_SLACK`` times the reference loop's own error
    in that dtype. Every parameter (of a nonzero size, requiring grad) must get a nonzero
    gradient from the float64 reference loop in one of the four configurations: one that
    gets none is one ``forward`` does not use (a learnable initial state that ``init_state``
    ignores or detaches)."""
    cell = _f64(make)
    report = CheckReport("backends", type(cell).__name__)
    p = make_problem(cell)
    fields = tuple(cell.state_type._fields)
    unused = {n for n, w in cell.named_parameters() if w.requires_grad and w.numel() > 0}
    for use_state in (True, False):
        for use_resets in (False, True):
            want = run_cell(
                cell,
                p,
                backend="reference",
                dtype=torch.float64,
                use_state=use_state,
                use_resets=use_resets,
            )
            unused = {n for n in unused if not want.grads[f"param.{n}"].any()}
            for device in devices():
                for dtype in dtypes:
                    floor = None
                    if tolerance(dtype) > tolerance(torch.float32):
                        # the reference loop in this dtype sets the achievable accuracy; it
                        # must itself be sane (finite, not garbage)
                        ref = run_cell(
                            cell, p, backend="reference", dtype=dtype, device=device,
                            use_state=use_state, use_resets=use_resets,
                        )  # fmt: skip
                        floor = _errors(ref, want, fields)
                        bad = {k: e for k, e in floor.items() if not e < 0.5}
                        assert not bad, f"reference loop in {dtype} on {device} is off: {bad}"
                    config = _config(dtype, device, use_state, use_resets)
                    for backend, reason in _backend_reasons(
                        cell, p, device, dtype, use_state, use_resets
                    ):
                        if reason is not None:
                            report.add_skip(backend, reason, config)
                            continue
                        label = (
                            f"backend={backend} {dtype} {device} state={use_state} "
                            f"resets={use_resets}"
                        )
                        got = run_cell(
                            cell,
                            p,
                            backend=backend,
                            dtype=dtype,
                            device=device,
                            use_state=use_state,
                            use_resets=use_resets,
                        )
                        _compare(label, got, want, tolerance(dtype), fields, floor)
                        report.add_run(backend, config)
                    # the inference call: forward only, compared in value
                    values = dataclasses.replace(want, grads={})
                    for backend, reason in _backend_reasons(
                        cell, p, device, dtype, use_state, use_resets, needs_grad=False
                    ):
                        if reason is not None:
                            report.add_skip(backend, reason, f"{config} no grad")
                            continue
                        label = (
                            f"backend={backend} {dtype} {device} state={use_state} "
                            f"resets={use_resets} no grad"
                        )
                        got = run_cell(
                            cell,
                            p,
                            backend=backend,
                            dtype=dtype,
                            device=device,
                            use_state=use_state,
                            use_resets=use_resets,
                            grad="none",
                        )
                        _compare(label, got, values, tolerance(dtype), fields, floor)
                        report.add_run(backend, f"{config} no grad")
    if unused:
        several = len(unused) > 1
        raise AssertionError(
            f"parameter{'s' if several else ''} {', '.join(sorted(unused))} of "
            f"{type(cell).__name__} get{'' if several else 's'} no gradient from the reference "
            "loop, with or without an initial state and resets: forward does not use "
            f"{'them' if several else 'it'} (an init_state that ignores or detaches a learnable "
            "initial state?)"
        )
    return publish(report)


#: Sequence length of :func:`check_nan_propagation` (the NaN goes in at step 2).
NAN_TIME = 5
#: Where :func:`check_nan_propagation` puts the NaN of its input case: ``x[1, 2, 0]``.
NAN_AT = (1, 2, 0)


def _nan_cases(cell: Cell[Any], p: Problem) -> Iterator[tuple[str, Cell[Any], Problem]]:
    """``(label, cell, problem)``: a NaN in one input element, then one in the first element of
    each parameter in turn (each in a copy of the cell)."""
    x = p.x.clone()
    x[NAN_AT] = float("nan")
    yield f"NaN in x{list(NAN_AT)}", cell, dataclasses.replace(p, x=x)
    for name, param in cell.named_parameters():
        if param.numel() == 0:
            continue
        poisoned = copy.deepcopy(cell)
        with torch.no_grad():
            poisoned.get_parameter(name)[(0,) * param.dim()] = float("nan")
        yield f"NaN in {name}[0]", poisoned, p


def _nan_mismatch(name: str, g: Tensor, w: Tensor) -> str | None:
    """Why the NaN mask ``g`` (bool, the backend's) is not ``w`` (the reference's), or
    ``None`` when they are equal."""
    if torch.equal(g, w):
        return None
    lost, extra = w & ~g, g & ~w
    parts = []
    if lost.any():
        first = tuple(int(i) for i in lost.nonzero()[0])
        parts.append(f"{int(lost.sum())} finite where the reference is NaN (first at {first})")
    if extra.any():
        first = tuple(int(i) for i in extra.nonzero()[0])
        parts.append(f"{int(extra.sum())} NaN where the reference is finite (first at {first})")
    return f"{name}: " + " and ".join(parts)


def _compare_nan(label: str, got: RunResult, want: RunResult, fields: tuple[str, ...]) -> None:
    """Assert the NaN requirements of :func:`check_nan_propagation`."""
    problems = [_nan_mismatch("y", torch.isnan(got.y), torch.isnan(want.y))]
    for field, a, b in zip(fields, got.state, want.state, strict=True):
        problems.append(_nan_mismatch(f"final state.{field}", torch.isnan(a), torch.isnan(b)))
    # The gradient of x, per example: which examples have a NaN somewhere.
    gx, wx = (torch.isnan(r.grads["x"]).flatten(1).any(1) for r in (got, want))
    problems.append(_nan_mismatch("grad x (examples with a NaN)", gx, wx))
    want_nan = sorted(k for k, g in want.grads.items() if torch.isnan(g).any())
    got_nan = sorted(k for k, g in got.grads.items() if torch.isnan(g).any())
    if want_nan and not got_nan:
        problems.append(
            f"every gradient is finite, but the reference has NaN in {', '.join(want_nan)}"
        )
    bad = [m for m in problems if m is not None]
    assert not bad, f"{label}: NaN propagation differs from the reference loop: " + "; ".join(bad)


@_after_foundation
def check_nan_propagation(make: CellFactory) -> CheckReport:
    """NaN in gives NaN out on every backend that can run the cell, as on the ``reference``
    loop (float64, with an initial state, no resets, ``T = 5``), for a NaN in one input element
    ``x[1, 2, 0]`` and, separately, in the first element of each parameter:

    - ``y`` and every final state field are NaN exactly where the reference's are (a lost NaN
      makes a diverged run look healthy; an extra one is a NaN leaking across examples or
      backwards in time);
    - the gradient of ``x`` has a NaN in exactly the examples where the reference's has one;
    - if any gradient of the reference (``x``, initial state, parameters) has a NaN, some
      gradient of the backend has one.

    Where a NaN spreads *within* a gradient is not compared: a backward that multiplies
    different intermediate values than the loop's (a chunked or parallel algorithm) spreads it
    differently, since ``0 * NaN`` is NaN, while computing the same finite gradients. Resets
    are not used: a scan's products treat a NaN at a reset differently from the loop's select
    in places (a NaN decay at the reset step), see docs/cell-abi.md section 6.
    """
    cell = _f64(make)
    report = CheckReport("nan_propagation", type(cell).__name__)
    p = make_problem(cell, time=NAN_TIME)
    fields = tuple(cell.state_type._fields)
    for case, poisoned, problem in _nan_cases(cell, p):
        want = run_cell(poisoned, problem, backend="reference", dtype=torch.float64)
        for device in devices():
            config = f"{case}, {_config(torch.float64, device)}"
            for backend, reason in _backend_reasons(
                poisoned, problem, device, torch.float64, True, False
            ):
                if reason is not None:
                    report.add_skip(backend, reason, config)
                    continue
                with warnings.catch_warnings():
                    # a solver that does not converge on NaN may warn before falling back
                    warnings.simplefilter("ignore", RuntimeWarning)
                    got = run_cell(
                        poisoned, problem, backend=backend, dtype=torch.float64, device=device
                    )
                _compare_nan(f"backend={backend} {config}", got, want, fields)
                report.add_run(backend, config)
    return publish(report)


#: What requires grad in each run of :func:`check_compile`: everything, or the parameters only
#: (a training call on data, whose input and initial state do not require grad).
COMPILE_VARIANTS: dict[str, Literal["all", "params"]] = {
    "inputs require grad": "all",
    "inputs do not require grad": "params",
}


@_after_foundation
def check_compile(make: CellFactory, compile_backend: str = "aot_eager") -> CheckReport:
    """``torch.compile`` (default: the ``aot_eager`` compiler, which traces with dynamo and
    AOTAutograd without code generation) does not change outputs or gradients: with the input
    and initial state requiring grad, with only the parameters requiring grad (the common
    training call: data does not require grad)."""
    cell = _f64(make)
    report = CheckReport("compile", type(cell).__name__)
    p = make_problem(cell, time=4)
    state = cell.state_type._make(p.state)
    for variant, grad in COMPILE_VARIANTS.items():
        want = run_cell(cell, p, backend="auto", dtype=torch.float64, grad=grad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dynamo's graph-break notices are not failures
            got = run_cell(
                cell,
                p,
                backend="auto",
                dtype=torch.float64,
                compile_backend=compile_backend,
                grad=grad,
            )
        _compare(
            f"torch.compile({compile_backend}), {variant}",
            got,
            want,
            tolerance(torch.float64),
            tuple(cell.state_type._fields),
        )
        auto = _auto_backend(cell, p.x, state, None, needs_grad=True)
        report.add_run(auto, f"{variant} (auto, compiled with {compile_backend})")
    return publish(report)


@_after_foundation
def check_empty_batch(make: CellFactory) -> CheckReport:
    """A batch of zero sequences runs forward and backward on every backend that can run the
    cell: ``y`` and the final state have batch 0, every gradient is zero."""
    cell = _f64(make)
    report = CheckReport("empty_batch", type(cell).__name__)
    x = torch.zeros(0, 5, cell.input_size, dtype=torch.float64, requires_grad=True)
    call = KernelCall(cell, x, None, None, needs_grad=True)
    config = _config(torch.float64, "cpu", False)
    for backend, reason in _kernel_reasons(cell, call):
        if reason is not None:
            report.add_skip(backend, reason, config)
            continue
        label = f"empty batch, backend={backend}"
        y, final = cell(x, backend=backend)
        assert tuple(y.shape) == (0, 5, cell.output_size), f"{label}: y {tuple(y.shape)}"
        for name, s in zip(cell.state_type._fields, final, strict=True):
            assert s.shape[0] == 0, f"{label}: state.{name} {tuple(s.shape)}"
        loss = y.real.sum() if y.is_complex() else y.sum()
        for s in final:  # .real/.imag: view_as_real refuses some empty complex layouts
            loss = loss + (s.real.sum() + s.imag.sum() if s.is_complex() else s.sum())
        if loss.requires_grad:
            names, params = zip(*cell.named_parameters(), strict=True)
            # allow_unused: an unused parameter's gradient is None (the stubs do not say so)
            grads: list[Tensor | None] = list(
                torch.autograd.grad(loss, [x, *params], allow_unused=True)
            )
            assert grads[0] is not None and grads[0].shape == x.shape, f"{label}: grad of x"
            for name, g in zip(names, grads[1:], strict=True):
                assert g is None or not g.any(), f"{label}: non-zero gradient of {name}"
        report.add_run(backend, config)
    return publish(report)


@_after_foundation
def check_bad_input(make: CellFactory) -> CheckReport:
    """Bad input raises ``ValueError``/``TypeError`` naming the argument at fault."""
    cell = _f64(make)
    report = CheckReport("bad_input", type(cell).__name__)
    width = cell.input_size
    x = torch.randn(2, 3, width, dtype=torch.float64)
    good = cell.init_state(2)
    first = cell.state_type._fields[0]

    raised: list[str] = []

    def expect(exc: type[Exception], match: str, fn: Callable[[], object]) -> None:
        with pytest.raises(exc, match=match):
            fn()
        raised.append(match)

    expect(ValueError, "x must have 3 dimensions", lambda: cell(x[0]))
    expect(
        ValueError,
        f"input_size={width}",
        lambda: cell(torch.randn(2, 3, width + 1, dtype=torch.float64)),
    )
    expect(TypeError, "x must be a torch.Tensor", lambda: cell([[1.0]]))
    expect(TypeError, "dtype", lambda: cell(x.float()))
    expect(TypeError, "floating", lambda: cell(x.long()))
    bad_shape = good._replace(**{first: getattr(good, first)[:1]})
    expect(ValueError, f"state.{first} must have shape", lambda: cell(x, bad_shape))
    bad_dtype = good._replace(**{first: getattr(good, first).float()})
    expect(TypeError, f"state.{first} must have dtype", lambda: cell(x, bad_dtype))
    expect(ValueError, "state must have", lambda: cell(x, tuple(good)[:-1] or (good[0], good[0])))
    expect(
        TypeError, "resets must have dtype torch.bool", lambda: cell(x, resets=torch.zeros(2, 3))
    )
    expect(
        ValueError,
        "resets must have shape",
        lambda: cell(x, resets=torch.zeros(2, 4, dtype=torch.bool)),
    )
    expect(ValueError, "unknown backend", lambda: cell(x, backend="no-such-backend"))
    expect(ValueError, "x_t must have 2 dimensions", lambda: cell.step(x))
    report.notes.append(f"{len(raised)} kinds of bad input raised the documented errors")
    return publish(report)


@_after_foundation
def check_lengths(make: CellFactory) -> CheckReport:
    """``forward(x, state, lengths=n, resets=r)`` on every backend that can run the cell, in
    float64 and float32, equals running each sequence ``x[b, :n[b]]`` alone on ``reference``
    in float64: ``y`` on the valid steps and exactly zero past them, the final state, and the
    gradients of ``x``, the initial state and every parameter; with and without an initial
    state and resets; ``y`` and the final state also without gradients (``torch.no_grad()``,
    as in :func:`check_backends`). See :mod:`rnnkit.core.testing.lengths`."""
    cell = _f64(make)
    report = CheckReport("lengths", type(cell).__name__)
    check_lengths_on(cell, make_problem(cell, batch=len(LENGTHS)), report)
    return publish(report)


#: name -> check, in the order the kit runs them.
CHECKS: dict[str, Callable[[CellFactory], CheckReport]] = {
    "state_spec": check_state_spec,
    "recur": check_recur,
    "step_matches_forward": check_step_matches_forward,
    "chunking": check_chunking,
    "resets": check_resets,
    "backends": check_backends,
    "nan_propagation": check_nan_propagation,
    "compile": check_compile,
    "empty_batch": check_empty_batch,
    "bad_input": check_bad_input,
    "lengths": check_lengths,
}


def check_cell(make: CellFactory, *, skip: tuple[str, ...] = ()) -> list[CheckReport]:
    """Run every conformance check on the cell ``make()`` builds; raises on the first failure,
    else returns every check's report (what ran, what was skipped and why).

    Example::

        from rnnkit.core.testing import check_cell
        for report in check_cell(lambda: MyCell(input_size=5, hidden_size=6)):
            print(report.summary())
    """
    return [check(make) for name, check in CHECKS.items() if name not in skip]


__all__ = ["CHECKS", "CheckReport", "check_cell", "make_problem", "rel_rms", "run_cell"]
