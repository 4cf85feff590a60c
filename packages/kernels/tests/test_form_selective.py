"""The selective diagonal form: every backend against the plain recurrence, on odd shapes.

Two levels:

- the scan ops (``selective_scan_torch``, ``selective_scan_cpp``, ``selective_scan_triton``:
  without a GPU in Triton's interpreter, ``TRITON_INTERPRET=1`` set by the conftest) against
  :data:`rnnkit.kernels.selective.REFERENCE` on raw inputs, float64 and float32, values and
  the gradients of every input (``x, dt, A, B, C, D, h0``), with short chunks so that the
  checkpoints and partial last chunks are hit, channel counts that are no multiple of the lane
  blocks, ``N`` of 1 and 16, with and without resets;
- every registered backend of the form on :class:`TinySelective`, a small
  :class:`SelectiveDiagonalCell` defined here (the kernels' tests do not import
  rnnkit-models), against the float64 loop over ``recur`` through the shared form helpers
  (fresh buffers poisoned to NaN, B=3, T of 1, 7 and 13, initial state and resets).

Plus NaN in -> NaN out, empty batches and sequences, and a memory test: the recomputing
backends' forward keeps, and their backward allocates, far less than the ``(B, T, D, N)``
states a materialising implementation holds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from _form_helpers import (
    DTYPE_IDS,
    DTYPES,
    ReferenceRuns,
    backends_for,
    check_backend,
    check_nan_propagates,
    poisoned,
)
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.selective import SelectiveDiagonalCell, SelectiveInputs, selective_step
from rnnkit.core.state import StateField
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.kernels import selective
from rnnkit.kernels.selective import (
    REFERENCE,
    cpp,
    selective_scan_cpp,
    selective_scan_torch,
    selective_scan_triton,
    triton,
)

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

INPUT, CHANNELS, NSTATE = 5, 11, 4


class TinyState(NamedTuple):
    h: Tensor


class TinySelective(SelectiveDiagonalCell[TinyState]):
    """The smallest selective cell: ``x, dt, B, C`` linear in the input (``dt`` through a
    softplus), ``A = -exp(A_log)``, a skip ``D``; ``y`` is the scan's output."""

    kind = "tiny_selective"
    state_type = TinyState

    def __init__(self, input_size: int, hidden_size: int, *, nstate: int = NSTATE) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.nstate = nstate
        self.projected_size = 2 * hidden_size + 2 * nstate
        self.proj = nn.Linear(input_size, self.projected_size)
        self.A_log = nn.Parameter(torch.log(torch.linspace(0.3, 2.0, hidden_size * nstate)))
        self.D = nn.Parameter(torch.linspace(-1.0, 1.0, hidden_size))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size, self.nstate)),)

    def project(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def _parts(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H, N = self.hidden_size, self.nstate
        x, dt_raw, B, C = px.split((H, H, N, N), -1)
        return x, F.softplus(dt_raw), B, C

    def _decays(self) -> Tensor:
        return -torch.exp(self.A_log).reshape(self.hidden_size, self.nstate)

    def recur(self, px_t: Tensor, state: TinyState) -> tuple[Tensor, TinyState]:
        x, dt, B, C = self._parts(px_t)
        y, h = selective_step(state.h, x, dt, self._decays(), B, C, self.D)
        return y, TinyState(h)

    def selective_inputs(
        self, x: Tensor, state: TinyState | None, resets: Tensor | None
    ) -> SelectiveInputs:
        h0 = (state or self.init_state(x.shape[0], device=x.device, dtype=x.dtype)).h
        u, dt, B, C = self._parts(self.project(x))
        return SelectiveInputs(u, dt, self._decays(), B, C, self.D, h0, ())

    def selective_outputs(
        self, y: Tensor, h: Tensor, inputs: SelectiveInputs
    ) -> tuple[Tensor, TinyState]:
        return y, TinyState(h)


# --- the scan ops -----------------------------------------------------------------------------

ScanOp = Callable[..., tuple[Tensor, Tensor]]


def _cpp_op(*args: Tensor, **kw: Any) -> tuple[Tensor, Tensor]:
    reason = cpp.available()
    if reason is not None:
        pytest.skip(f"selective_cpp: {reason}")
    return selective_scan_cpp(*args, **kw)


def _triton_op(*args: Tensor, **kw: Any) -> tuple[Tensor, Tensor]:
    reason = triton.unavailable_reason(args[0].device)
    if reason is not None:
        pytest.skip(f"selective_triton: {reason}")
    return selective_scan_triton(*args, **kw)


#: name -> (op, chunk lengths to run it with).
OPS: dict[str, tuple[ScanOp, tuple[int, ...]]] = {
    "selective_torch": (selective_scan_torch, (4, 64)),
    "selective_cpp": (_cpp_op, (4, 32)),
    "selective_triton": (_triton_op, (4,)),
}
#: The ops the memory test measures on the CPU (Triton's interpreter allocates as the GPU
#: would, but at T = 256 it takes minutes).
MEMORY_OPS = ("selective_torch", "selective_cpp")


def _raw(batch: int, time: int, dim: int, n: int, seed: int) -> tuple[list[Tensor], Tensor]:
    """``[x, dt, A, B, C, D, h0]`` in float64 (``dt`` positive, ``A`` negative, some decays
    near 0 and some near 1) and resets ``(B, T)``."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x, B, C = randn(batch, time, dim), randn(batch, time, n), randn(batch, time, n)
    dt = F.softplus(randn(batch, time, dim))
    A = -torch.exp(2 * randn(dim, n))
    return [x, dt, A, B, C, randn(dim), randn(batch, dim, n)], torch.rand(batch, time) < 0.25


NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


def _run(op: ScanOp, inputs: list[Tensor], resets: Tensor | None, dtype: torch.dtype, **kw: Any):
    leaves = [t.to(dtype).requires_grad_() for t in inputs]
    y, h = op(*leaves, resets=resets, **kw)
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    loss = (y.double() * dy).sum() + (h.double() * dh).sum()
    grads = torch.autograd.grad(loss, leaves)
    return y.detach().double(), h.detach().double(), [gr.double() for gr in grads]


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("time", "dim", "n"), [(1, 11, 16), (7, 11, 1), (13, 9, 16), (13, 70, 5)])
@pytest.mark.parametrize("with_resets", [False, True])
def test_op_equals_the_recurrence(
    name: str, dtype: torch.dtype, time: int, dim: int, n: int, with_resets: bool
) -> None:
    """Values and the gradient of every input against the float64 recurrence (B=3; 9, 11 and
    70 channels: a partial last SIMD vector in the C++ kernel)."""
    op, chunks = OPS[name]
    inputs, resets = _raw(3, time, dim, n, seed=time * 100 + dim + n)
    rs = resets if with_resets else None
    want = _run(REFERENCE, inputs, rs, torch.float64)
    tol = tolerance(dtype)
    for chunk in chunks:
        with poisoned():
            got = _run(op, inputs, rs, dtype, chunk=chunk)
        errs = {"y": rel_rms(got[0], want[0]), "h": rel_rms(got[1], want[1])}
        errs.update(
            {f"grad {k}": rel_rms(a, b) for k, a, b in zip(NAMES, got[2], want[2], strict=True)}
        )
        bad = {k: f"{e:.1e}" for k, e in errs.items() if not e <= tol}
        assert not bad, f"{name} chunk={chunk}: {bad}"


@pytest.mark.parametrize("threads", [1, 4])
def test_cpp_channel_blocks_equal_the_recurrence(threads: int) -> None:
    """``selective_cpp`` cuts the channels into blocks so that every thread gets two (batch
    row, block) units: with 4 threads, 70 channels and B=3 go in blocks of 24 (two full, one
    partial), whose partial sums of the gradients of ``B`` and ``C`` torch adds up; with 1
    thread one block. Both against the float64 recurrence, in float32."""
    inputs, resets = _raw(3, 13, 70, 16, seed=11)
    want = _run(REFERENCE, inputs, resets, torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with poisoned():
            got = _run(_cpp_op, inputs, resets, torch.float32, chunk=4)
    finally:
        torch.set_num_threads(before)
    errs = {"y": rel_rms(got[0], want[0]), "h": rel_rms(got[1], want[1])}
    errs.update(
        {f"grad {k}": rel_rms(a, b) for k, a, b in zip(NAMES, got[2], want[2], strict=True)}
    )
    tol = tolerance(torch.float32)
    assert all(e <= tol for e in errs.values()), errs


@pytest.mark.parametrize("chunk", [5, 32])
def test_cpp_checkpoints_across_time_tiles_equal_the_recurrence(chunk: int) -> None:
    """The C++ forward walks time in tiles of 16 steps and saves the state entering every
    ``chunk``-th step for the backward: 40 steps (three tiles) with checkpoints that fall
    inside a later tile (chunk 5: steps 20, 35) or on a tile's start (32), float64 values and
    gradients against the recurrence."""
    inputs, resets = _raw(2, 40, 9, 4, seed=13)
    want = _run(REFERENCE, inputs, resets, torch.float64)
    with poisoned():
        got = _run(_cpp_op, inputs, resets, torch.float64, chunk=chunk)
    errs = {"y": rel_rms(got[0], want[0]), "h": rel_rms(got[1], want[1])}
    errs.update(
        {f"grad {k}": rel_rms(a, b) for k, a, b in zip(NAMES, got[2], want[2], strict=True)}
    )
    assert all(e <= tolerance(torch.float64) for e in errs.values()), errs


def test_cpp_float32_decays_are_exact_to_a_few_ulps() -> None:
    """The float32 decays ``exp(dt A)`` (a polynomial for ``2^y`` in the C++ kernel) on one
    step from ``h0`` with ``x = 0``, so ``h_1 = exp(dt A) h0`` entry by entry: within ``1e-6``
    relative (about 8 ulps; rounding ``dt A`` to float32 alone costs about 3) of float64's
    exp of the same float32 inputs for ``dt A`` in ``[-6, 0]``; and from the smallest normal
    number down to 0, never above it or garbage, for ``dt A`` in ``[-300, -90]`` (where
    ``2^y`` leaves float32's exponent range)."""
    reason = cpp.available()
    if reason is not None:
        pytest.skip(f"selective_cpp: {reason}")
    g = torch.Generator().manual_seed(7)
    batch, dim, n = 2, 40, 16
    f32 = torch.float32
    dt = 0.1 + 0.9 * torch.rand(batch, 1, dim, generator=g)
    x, D = torch.zeros(batch, 1, dim), torch.randn(dim, generator=g)
    B, C = torch.randn(batch, 1, n, generator=g), torch.randn(batch, 1, n, generator=g)
    h0 = torch.randn(batch, dim, n, generator=g)
    for lo, hi in ((-6.0, 0.0), (-300.0, -90.0)):
        A = lo + (hi - lo) * torch.rand(dim, n, generator=g)
        # dt A in [lo, 0] for the first range (A scaled by the largest dt of its channel), at
        # most hi for the second (by the smallest)
        pick = torch.amax if hi == 0.0 else torch.amin
        A = A / pick(dt, (0, 1))[:, None]
        _, h = selective_scan_cpp(x, dt, A, B, C, D, h0)
        assert h.dtype == f32
        decay = torch.exp(dt.double()[:, 0, :, None] * A.double())
        if hi < -80:
            # float32's smallest normal number: the kernel's floor of 2^y
            assert torch.isfinite(h).all()
            assert (h.abs() <= 2.0**-126 * h0.abs()).all()
        else:
            err = (h.double() / h0.double() - decay).abs() / decay
            assert err.max() < 1e-6, err.max()


def test_cpp_float32_spreads_a_nan_decay_rate() -> None:
    """A NaN in ``A`` or ``dt`` gives NaN decays in float32 as well (the clamps of the kernel's
    ``2^y`` keep NaN): exactly the reference's outputs and final state are NaN."""
    reason = cpp.available()
    if reason is not None:
        pytest.skip(f"selective_cpp: {reason}")
    base, resets = _raw(2, 9, 10, 3, seed=12)
    resets[:] = False
    resets[:, 6] = True
    for where, index in (("A", (4, 1)), ("dt", (1, 7, 3))):
        inputs = [t.clone() for t in base]
        inputs[NAMES.index(where)][index] = float("nan")
        want_y, want_h = REFERENCE(*inputs, resets=resets)
        with torch.no_grad():
            y, h = selective_scan_cpp(*(t.float() for t in inputs), resets=resets, chunk=4)
        assert torch.isnan(want_y).any() and torch.isnan(want_h).any(), where
        assert torch.equal(torch.isnan(y), torch.isnan(want_y)), where
        assert torch.equal(torch.isnan(h), torch.isnan(want_h)), where


@pytest.mark.parametrize("name", list(OPS))
def test_op_spreads_non_finite_values_as_the_recurrence(name: str) -> None:
    """A NaN in one input (per input in turn) makes exactly the reference's outputs and final
    state non-finite: forward in time, within its example."""
    op, chunks = OPS[name]
    base, resets = _raw(3, 9, 10, 3, seed=5)
    resets[:, :3] = False  # so that a NaN of h0 reaches some outputs
    resets[:, 6] = True  # and one of the others stops at a reset in every example
    for i, where in enumerate(NAMES):
        inputs = [t.clone() for t in base]
        t = inputs[i]
        t.view(-1)[t.numel() // 2] = float("nan")
        want_y, want_h = REFERENCE(*inputs, resets=resets)
        with torch.no_grad():
            y, h = op(*inputs, resets=resets, chunk=chunks[0])
        assert torch.isnan(want_y).any(), where
        assert torch.equal(torch.isnan(y), torch.isnan(want_y)), where
        assert torch.equal(torch.isnan(h), torch.isnan(want_h)), where


@pytest.mark.parametrize("name", list(OPS))
def test_op_empty_batch_and_sequence(name: str) -> None:
    op, _ = OPS[name]
    inputs, _ = _raw(0, 5, 6, 3, seed=0)
    leaves = [t.requires_grad_() for t in inputs]
    y, h = op(*leaves)
    assert y.shape == (0, 5, 6) and h.shape == (0, 6, 3)
    grads = torch.autograd.grad(y.sum() + h.sum(), leaves, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    inputs, _ = _raw(2, 0, 6, 3, seed=0)
    y, h = op(*inputs)
    assert y.shape == (2, 0, 6) and torch.equal(h, inputs[-1])


def _held_and_largest(fn: Callable[[], None]) -> tuple[int, int]:
    """Bytes allocated and not freed by ``fn`` (what it keeps, on the CPU), and the largest
    single allocation made while it runs (in torch's own ops and in the native ops' ATen
    calls), from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.events()
    held = sum(e.self_cpu_memory_usage for e in events)
    largest = max((e.self_cpu_memory_usage for e in events if e.name != "[memory]"), default=0)
    return held, largest


@pytest.mark.parametrize("name", MEMORY_OPS)
def test_recomputing_backward_never_holds_the_states(name: str) -> None:
    """Forward with gradients keeps ``y``, ``h`` and checkpoints, and no op of the forward or
    backward allocates more than the scan's inputs and outputs: both far below the
    ``(B, T, D, N)`` states, which the plain loop's autograd keeps (checked, so that the
    measurement itself is shown to catch them)."""
    op, _ = OPS[name]
    batch, time, dim, n = 2, 256, 64, 16
    inputs, _ = _raw(batch, time, dim, n, seed=2)
    inputs = [t.float() for t in inputs]
    states = batch * time * dim * n * 4
    io = sum(t.numel() * 4 for t in inputs[:5]) + batch * time * dim * 4  # with y
    assert states >= 4 * io  # the shape makes the bound below a real test
    out: list[Tensor] = []

    def forward(fn: ScanOp) -> Callable[[], None]:
        def run() -> None:
            leaves = [t.detach().requires_grad_() for t in inputs]
            out[:] = [*fn(*leaves), *leaves]

        return run

    def backward() -> None:
        y, h = out[0], out[1]
        (y.sum() + h.sum()).backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        op(*inputs)  # build and load a native library outside the measurement
        kept_ref, _ = _held_and_largest(forward(REFERENCE))
        assert kept_ref > states, "the measurement does not see what the plain loop keeps"
        out.clear()  # frees the loop's graph before the next measurement
        kept, largest_fwd = _held_and_largest(forward(op))
        _, largest_bwd = _held_and_largest(backward)
    finally:
        torch.set_num_threads(threads)
    assert 0 < kept <= io, (kept, io, states)
    assert max(largest_fwd, largest_bwd) <= io, (largest_fwd, largest_bwd, io, states)


# --- the registered backends on a cell of the form ---------------------------------------------


@cache
def _reference(nstate: int) -> ReferenceRuns:
    return ReferenceRuns(lambda: TinySelective(INPUT, CHANNELS, nstate=nstate), seed=7)


BACKENDS = backends_for([TinySelective(INPUT, CHANNELS)])


def test_the_form_has_its_backends() -> None:
    assert {"selective_torch", "selective_cpp", "selective_triton"} <= set(BACKENDS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("nstate", [1, 16])
@pytest.mark.parametrize("use_resets", [False, True])
def test_backend_equals_reference_loop(
    monkeypatch: pytest.MonkeyPatch, backend: str, dtype: torch.dtype, nstate: int, use_resets: bool
) -> None:
    """Output, final state and every gradient (input, initial state, parameters) against the
    float64 loop over ``recur``, with chunks of 4 steps (13 steps: three checkpoints and a
    partial chunk)."""
    monkeypatch.setattr(selective.torch_loop, "CHUNK", 4)
    monkeypatch.setattr(selective.cpp, "CHUNK", 4)
    monkeypatch.setattr(selective.triton, "CHUNK", 4)
    check_backend(_reference(nstate), backend, dtype, use_resets=use_resets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend: str) -> None:
    check_nan_propagates(TinySelective(INPUT, CHANNELS).double(), backend, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence_keeps_the_state(backend: str) -> None:
    cell = TinySelective(3, 4)
    h0 = torch.randn(2, 4, NSTATE)
    y, (h,) = cell(torch.randn(2, 0, 3), TinyState(h0), backend=backend)
    assert y.shape == (2, 0, 4) and torch.equal(h, h0)


def test_auto_picks_the_native_scan_on_cpu() -> None:
    call = KernelCall(TinySelective(3, 4), torch.randn(2, 5, 3), None, None, needs_grad=True)
    want = "selective_cpp" if cpp.available() is None else "selective_torch"
    assert select(call).backend == want


def test_cpp_refuses_16_bit_naming_the_backend_that_runs_it() -> None:
    cell = TinySelective(3, 4).to(torch.bfloat16)
    call = KernelCall(cell, torch.randn(2, 5, 3, dtype=torch.bfloat16), None, None, True)
    reason = cpp.supports(call)
    assert reason is not None and "selective_torch" in reason
    y, _ = cell(call.x, backend="selective_torch")
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_cpp_build_failure_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that cannot be built runs ``selective_torch`` instead, with a warning."""
    from rnnkit.kernels.native import BuildError

    def fail() -> None:
        raise BuildError("no compiler (simulated)")

    monkeypatch.setattr(cpp, "ops", fail)
    cell = TinySelective(3, 4).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="running 'selective_torch' instead"):
        y, (h,) = cell(x, backend="selective_cpp")
    want_y, (want_h,) = cell(x, backend="reference")
    assert rel_rms(y, want_y) < 1e-12 and rel_rms(h, want_h) < 1e-12
