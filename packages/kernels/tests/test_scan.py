"""Tests of ``rnnkit.kernels.linear.scan``: the op, its gradients, resets, packed sequences, the
Triton kernels and the registered ``scan`` kernels.

Every result is compared with a float64 sequential loop by relative RMS error (fp32 1e-5,
16-bit 1e-2). Without a GPU the Triton kernels run under the Triton interpreter, switched on
here before triton is imported (tiny shapes: the interpreter is slow); with a GPU every test
that takes ``device`` also runs on CUDA.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from torch import Tensor, nn

from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.linear import DiagonalLinearCell, LinearState
from rnnkit.core.state import StateField
from rnnkit.core.testing.numerics import tolerance
from rnnkit.kernels.linear.scan import _torch as scan_torch
from rnnkit.kernels.linear.scan import _triton as scan_triton
from rnnkit.kernels.linear.scan import linear_scan, linear_scan_reference, set_poison

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {
    torch.float64: 1e-12,
    torch.complex128: 1e-12,
    torch.float32: 1e-5,
    torch.complex64: 1e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 1e-2,
}
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TRITON_REASON = scan_triton.unavailable_reason(torch.device(TRITON_DEVICE))
F = TypeVar("F", bound=Callable[..., None])


def needs_triton(fn: F) -> F:
    """Skip without a usable Triton; silence the interpreter's numpy deprecation warning."""
    fn = pytest.mark.skipif(_TRITON_REASON is not None, reason=str(_TRITON_REASON))(fn)
    return pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")(fn)


@pytest.fixture(autouse=True)
def _poison() -> Iterator[None]:
    """Every buffer the scan allocates starts as NaN: unwritten outputs fail the comparison."""
    previous = set_poison(True)
    yield
    set_poison(previous)


def rel_rms(x: Tensor, ref: Tensor) -> float:
    x, ref = x.detach().to(ref.dtype), ref.detach()
    assert not torch.isnan(x).any(), "NaN in result"
    scale = ref.abs().pow(2).mean().sqrt().item()
    return (x - ref).abs().pow(2).mean().sqrt().item() / max(scale, 1e-30)


def wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


def make(
    batch: int, time: int, width: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Gates with |a| in [0.5, 1.05] (random sign or phase), inputs and h0, float64/complex128."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + 0.55 * torch.rand(batch, time, width, generator=g, dtype=torch.float64)
    b = torch.randn(batch, time, width, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, width, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        phase = 2 * math.pi * torch.rand(batch, time, width, generator=g, dtype=torch.float64)
        a = torch.polar(mag, phase)
        b = torch.complex(b, torch.randn(batch, time, width, generator=g, dtype=torch.float64))
        h0 = torch.complex(h0, torch.randn(batch, width, generator=g, dtype=torch.float64))
    else:
        sign = torch.where(torch.rand(batch, time, width, generator=g) < 0.2, -1.0, 1.0)
        a = mag * sign.double()
    return a.to(device), b.to(device), h0.to(device)


def grads(
    fn: Any, inputs: tuple[Tensor, ...], dtype: torch.dtype, seed: int = 1
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run ``fn`` on ``inputs`` cast to ``dtype``; return h, h_last and the input gradients of
    a fixed random linear loss of both outputs (computed in the inputs' wide dtype)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    h, h_last = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    w = wide(dtype)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.device, w)
    dl = torch.randn(h_last.shape, generator=g, dtype=torch.float64).to(h.device, w)
    loss = (h.to(w) * dh.conj()).real.sum() + (h_last.to(w) * dl.conj()).real.sum()
    out = torch.autograd.grad(loss, leaves)
    return h, h_last, list(out)


def check(
    fn: Any, ref_fn: Any, inputs: tuple[Tensor, ...], dtype: torch.dtype, tol: float | None = None
) -> None:
    """Compare values and gradients of ``fn`` in ``dtype`` with ``ref_fn`` in float64 on the
    same (rounded to ``dtype``) inputs."""
    tol = tol if tol is not None else TOL[dtype]
    rounded = tuple(t.to(dtype).to(wide(dtype)) for t in inputs)
    h, hl, g = grads(fn, inputs, dtype)
    rh, rhl, rg = grads(ref_fn, rounded, wide(dtype))
    assert h.dtype == dtype and hl.dtype == dtype
    errs = {"h": rel_rms(h, rh), "h_last": rel_rms(hl, rhl)}
    errs.update({f"grad{i}": rel_rms(x, y) for i, (x, y) in enumerate(zip(g, rg, strict=True))})
    assert all(x.dtype == dtype for x in g)
    assert max(errs.values()) < tol, errs


# --- values and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "sequential"])
@pytest.mark.parametrize(
    ("shape", "chunk"), [((2, 37, 5), 4), ((3, 200, 7), None), ((1, 1, 3), None), ((2, 64, 1), 8)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
def test_matches_reference(
    device: str, backend: str, shape: tuple[int, int, int], chunk: int | None, dtype: torch.dtype
) -> None:
    inputs = make(*shape, dtype, device)
    check(
        lambda a, b, h0: linear_scan(a, b, h0, backend=backend, chunk=chunk),
        linear_scan_reference,
        inputs,
        dtype,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit(device: str, dtype: torch.dtype) -> None:
    inputs = make(2, 77, 9, dtype, device)
    check(
        lambda a, b, h0: linear_scan(a, b, h0, backend="torch", chunk=8),
        linear_scan_reference,
        inputs,
        dtype,
    )


@pytest.mark.parametrize(("time", "chunk"), [(19, None), (19, 4), (24, 4)])
def test_gradcheck_complex128(time: int, chunk: int | None) -> None:
    # T = 24 with chunks of 4: the backward reuses the forward's chunk gate products
    a, b, h0 = make(2, time, 3, torch.complex128)
    leaves = tuple(t.clone().requires_grad_() for t in (a, b, h0))
    assert torch.autograd.gradcheck(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="torch", chunk=chunk), leaves
    )


def test_gradcheck_log_a_and_resets() -> None:
    a, b, h0 = make(2, 21, 3, torch.complex128)
    log_a = a.log().requires_grad_()
    resets = torch.zeros(2, 21, dtype=torch.bool)
    resets[0, [0, 5, 6]] = True
    resets[1, 20] = True
    leaves = (log_a, b.clone().requires_grad_(), h0.clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda la, b_, h_: linear_scan(la, b_, h_, log_a=True, resets=resets, chunk=4),
        leaves,
        fast_mode=True,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_log_a(dtype: torch.dtype) -> None:
    a, b, h0 = make(2, 50, 4, dtype)
    log_a = a.log()  # complex log for negative real gates would be complex: keep real gates > 0
    if not dtype.is_complex:
        log_a = a.abs().log()
    check(
        lambda la, b_, h_: linear_scan(la, b_, h_, log_a=True, chunk=8),
        lambda la, b_, h_: linear_scan_reference(la.exp(), b_, h_),
        (log_a, b, h0),
        dtype,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_chunked_scan_partial_chunks(reverse: bool) -> None:
    """The chunked torch scan against its step loop when the chunk does not divide ``T`` (the
    partial chunk is the last in time, or the first reversed), on strided and broadcast views,
    writing into a slice of a NaN-filled buffer."""
    a, b, h0 = make(2, 101, 3, torch.float64)
    for time in (16, 17, 31, 33, 40, 63, 64, 65, 101):
        for chunk in (2, 3, 4, 7, 8):
            for gates in (a[:, :time], a[:1, :1, :].expand(2, time, 3)):
                want = torch.empty(2, time, 3, dtype=torch.float64)
                last_want = scan_torch.sequential_scan_into(
                    gates, b[:, :time], h0, want, reverse=reverse
                )
                buf = torch.full((2, time + 2, 3), math.nan, dtype=torch.float64)
                last = scan_torch.chunked_scan_into(
                    gates, b[:, :time], h0, buf[:, 1:-1], reverse=reverse, chunk=chunk
                )
                assert torch.isnan(buf[:, 0]).all() and torch.isnan(buf[:, -1]).all()
                assert rel_rms(buf[:, 1:-1], want) < 1e-13, (time, chunk)
                assert rel_rms(last, last_want) < 1e-13, (time, chunk)


def test_chunk_products_round_trip() -> None:
    """``products_out`` receives the chunk gate products, and a scan given them as
    ``products`` (the local pass then skips them) gives the same result."""
    a, b, h0 = make(2, 48, 3, torch.float64)
    prods = torch.full((2, 6, 3), math.nan, dtype=torch.float64)
    out = torch.empty(2, 48, 3, dtype=torch.float64)
    scan_torch.chunked_scan_into(a, b, h0, out, reverse=False, chunk=8, products_out=prods)
    assert rel_rms(prods, a.view(2, 6, 8, 3).prod(2)) < 1e-14
    for reverse in (False, True):
        want = torch.empty_like(out)
        scan_torch.chunked_scan_into(a, b, h0, want, reverse=reverse, chunk=8)
        got = torch.empty_like(out)
        scan_torch.chunked_scan_into(a, b, h0, got, reverse=reverse, chunk=8, products=prods)
        assert rel_rms(got, want) < 1e-14


def test_no_h0_and_broadcast_gates() -> None:
    a, b, _ = make(3, 40, 6, torch.float64)
    for a_in in (a[0, 0], a[:, :1], a[:1], a[:1, :1]):  # (D,), (B,1,D), (1,T,D), (1,1,D)
        leaf = a_in.clone().requires_grad_()
        h, h_last = linear_scan(leaf, b, chunk=4)
        rh, rhl = linear_scan_reference(a_in, b)
        assert rel_rms(h, rh) < 1e-12 and rel_rms(h_last, rhl) < 1e-12
        h.sum().backward()
        ref_leaf = a_in.clone().requires_grad_()
        linear_scan_reference(ref_leaf, b)[0].sum().backward()
        assert leaf.grad is not None and ref_leaf.grad is not None
        assert leaf.grad.shape == a_in.shape and rel_rms(leaf.grad, ref_leaf.grad) < 1e-12
    # b broadcast in time (a constant input), h0 broadcast over the batch
    h, _ = linear_scan(a, b[:, :1], b[0, 0])
    rh, _ = linear_scan_reference(a, b[:, :1], b[0, 0].expand(3, 6))
    assert rel_rms(h, rh) < 1e-12


def test_empty_time() -> None:
    a = torch.rand(2, 0, 3)
    h0 = torch.randn(2, 3, requires_grad=True)
    h, h_last = linear_scan(a, torch.randn(2, 0, 3), h0)
    assert h.shape == (2, 0, 3) and torch.equal(h_last, h0)
    h_last.sum().backward()
    assert h0.grad is not None and torch.equal(h0.grad, torch.ones(2, 3))


def test_output_is_not_an_alias() -> None:
    a, b, h0 = make(2, 70, 3, torch.float32)
    a0, b0 = a.clone(), b.clone()
    h, h_last = linear_scan(a, b, h0, chunk=8)
    assert torch.equal(a, a0) and torch.equal(b, b0)  # inputs untouched
    h_last.add_(1.0)  # the final state is its own tensor
    assert not torch.equal(h[:, -1], h_last)


# --- resets and packed sequences -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_resets(device: str, dtype: torch.dtype) -> None:
    a, b, h0 = make(3, 45, 4, dtype, device)
    g = torch.Generator().manual_seed(3)
    resets = (torch.rand(3, 45, generator=g) < 0.1).to(device)
    resets[0, 0] = True
    resets[1, -1] = True
    check(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, resets=resets, chunk=8),
        lambda a_, b_, h_: linear_scan_reference(a_, b_, h_, resets=resets),
        (a, b, h0),
        dtype,
    )


_TRITON_MARKS = [
    pytest.mark.skipif(_TRITON_REASON is not None, reason=str(_TRITON_REASON)),
    pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning"),
]
#: how the tests of non-finite values at resets run the scan: eagerly on every backend that runs
#: on the CPU (Triton in its interpreter where it can run), compiled on the torch and native
#: scans, and exported (the backend is moot there: the program holds the doubling scan)
RESET_RUNS = [
    ("eager", "torch"),
    ("eager", "sequential"),
    ("eager", "cpp"),
    pytest.param("eager", "triton", marks=_TRITON_MARKS),
    ("compile", "torch"),
    ("compile", "cpp"),
    ("export", "auto"),
]
#: the compiled and exported runs alone (the eager ones of a test run in ``RESET_RUNS``)
TRACED_RUNS = [("compile", "torch"), ("compile", "cpp"), ("export", "auto")]


class _Scan(nn.Module):
    """A scan as a module, for ``torch.export``."""

    def __init__(self, scan: Callable[..., tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.scan = scan

    def forward(self, a: Tensor, b: Tensor, h0: Tensor, resets: Tensor) -> tuple[Tensor, Tensor]:
        return self.scan(a, b, h0, resets)


def run_scan(
    mode: str, backend: str, *, fullgraph: bool = True, **kwargs: Any
) -> Callable[..., tuple[Tensor, Tensor]]:
    """``(a, b, h0, resets) -> linear_scan(a, b, h0, resets=resets, backend=backend, **kwargs)``
    run as ``mode`` says: ``"eager"``; ``"compile"``: ``torch.compile`` with ``aot_eager`` (and
    ``fullgraph``), dynamo's caches reset first; ``"export"``: ``torch.export`` at the first
    call with its arguments, the exported program run under autograd on every call."""
    if backend == "cpp":
        pytest.importorskip("rnnkit.kernels.linear.scan._native")

    def scan(a: Tensor, b: Tensor, h0: Tensor, resets: Tensor | None) -> tuple[Tensor, Tensor]:
        return linear_scan(a, b, h0, resets=resets, backend=backend, **kwargs)

    if mode == "eager":
        return scan
    if mode == "compile":
        torch._dynamo.reset()
        compiled: Callable[..., tuple[Tensor, Tensor]]
        compiled = torch.compile(scan, backend="aot_eager", fullgraph=fullgraph)  # type: ignore[assignment]
        return compiled
    assert mode == "export", mode
    programs: list[Callable[..., tuple[Tensor, Tensor]]] = []

    def exported(a: Tensor, b: Tensor, h0: Tensor, resets: Tensor) -> tuple[Tensor, Tensor]:
        if not programs:
            example = (a.detach(), b.detach(), h0.detach(), resets)
            programs.append(torch.export.export(_Scan(scan), example).module())
        return programs[0](a, b, h0, resets)

    return exported


@pytest.mark.parametrize(("mode", "backend"), TRACED_RUNS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.complex64])
def test_traced_resets_match_the_reference(mode: str, backend: str, dtype: torch.dtype) -> None:
    """With finite inputs the compiled scan with resets (an opaque op with its own backward)
    and the exported one (the doubling scan with selects) equal the float64 loop, values and
    the gradients of ``a``, ``b`` and ``h0``, at the conformance kit's tolerances."""
    a, b, h0 = make(3, 45, 4, dtype)
    g = torch.Generator().manual_seed(3)
    resets = torch.rand(3, 45, generator=g) < 0.1
    resets[0, 0] = resets[1, -1] = True
    scan = run_scan(mode, backend)
    check(
        lambda a_, b_, h_: scan(a_, b_, h_, resets),
        lambda a_, b_, h_: linear_scan_reference(a_, b_, h_, resets=resets),
        (a, b, h0),
        dtype,
        TOL[dtype] if dtype.is_complex else tolerance(dtype),
    )


@pytest.mark.parametrize(("mode", "backend"), RESET_RUNS)
def test_a_reset_drops_a_nan_before_it(mode: str, backend: str) -> None:
    """A NaN in ``h0`` (row 0) or in an input (row 1, step 2) poisons the states up to the
    row's reset (step 5) and none after it, values and gradients, as the cells' reference
    loops restart (row 2: no NaN, a reset; row 3: NaN and no reset, NaN to the end). The
    scans multiply the state before a reset by ``a = 0``, and ``0 * NaN`` is NaN: eagerly,
    compiled (where a rescan cannot be traced) and exported alike."""
    a, b, h0 = make(4, 11, 3, torch.float64, "cpu")
    h0 = h0.detach().clone()
    b = b.detach().clone()
    h0[0, 1] = math.nan
    b[1, 2, 0] = math.nan
    b[3, 1, 2] = math.nan
    resets = torch.zeros(4, 11, dtype=torch.bool)
    resets[:3, 5] = True
    inputs = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    want_in = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    h, last = run_scan(mode, backend, chunk=4)(*inputs, resets)
    want, want_last = linear_scan_reference(*want_in, resets=resets)
    assert torch.isnan(want[:3, :5]).any(-1).any(-1).tolist()[:2] == [True, True]
    assert not torch.isnan(want[:3, 5:]).any() and torch.isnan(want[3, -1]).any()
    assert torch.equal(torch.isnan(h), torch.isnan(want))
    assert rel_rms(h[:3, 5:], want[:3, 5:]) < 1e-12
    assert rel_rms(last[:3], want_last[:3]) < 1e-12
    # gradients of what follows the resets: the loop's autograd gives NaN only for the gates
    # multiplying a NaN state (0 * NaN in a's gradient); every other entry is finite and equal
    h[:3, 5:].sum().backward()
    want[:3, 5:].sum().backward()
    for got_t, want_t in zip(inputs, want_in, strict=True):
        assert got_t.grad is not None and want_t.grad is not None
        nan = torch.isnan(want_t.grad)
        assert torch.equal(torch.isnan(got_t.grad), nan)
        assert rel_rms(got_t.grad[~nan], want_t.grad[~nan]) < 1e-12
    assert torch.isfinite(want_in[1].grad).all() and torch.isfinite(want_in[2].grad).all()


@pytest.mark.parametrize(("mode", "backend"), RESET_RUNS)
def test_a_reset_at_step_0_drops_a_nan_initial_state(mode: str, backend: str) -> None:
    """A NaN or an infinity in ``h0`` with the row's only reset at step 0 (rows 0 and 1: no
    later reset sees the poisoned state) is dropped there, as the reference loop drops it, in
    values and gradients; a row without a reset keeps its NaN to the end (row 2). Compiled and
    exported, a NaN gate after a reset at step 0 (row 3) gives ``h0`` no NaN gradient across
    that reset (eager scans let a NaN gradient through a reset, 0 * NaN: see
    :func:`test_a_traced_reset_stops_a_nan_gradient_after_it`)."""
    a, b, h0 = make(4, 6, 3, torch.float64, "cpu")
    a, h0 = a.detach().clone(), h0.detach().clone()
    h0[0, 1] = math.nan
    h0[1, 0] = math.inf
    h0[2, 2] = math.nan
    if mode != "eager":
        a[3, 3, 1] = math.nan
    resets = torch.zeros(4, 6, dtype=torch.bool)
    resets[[0, 1, 3], 0] = True
    inputs = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    want_in = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    h, last = run_scan(mode, backend, chunk=4)(*inputs, resets)
    want, want_last = linear_scan_reference(*want_in, resets=resets)
    assert torch.isfinite(want[:2]).all() and torch.isnan(want[2, -1]).any()
    assert torch.equal(torch.isnan(h), torch.isnan(want))
    assert rel_rms(h[:2], want[:2]) < 1e-12
    assert rel_rms(last[:2], want_last[:2]) < 1e-12
    h[[0, 1, 3]].sum().backward()
    want[[0, 1, 3]].sum().backward()
    assert torch.isnan(want_in[0].grad[3]).any() == (mode != "eager")  # gates before it
    assert torch.isfinite(want_in[2].grad).all()
    for got_t, want_t in zip(inputs, want_in, strict=True):
        assert got_t.grad is not None and want_t.grad is not None
        nan = torch.isnan(want_t.grad)
        assert torch.equal(torch.isnan(got_t.grad), nan)
        assert rel_rms(got_t.grad[~nan], want_t.grad[~nan]) < 1e-12


@pytest.mark.parametrize(
    ("mode", "backend"),
    [("eager", "torch"), ("eager", "sequential"), ("eager", "cpp"), *TRACED_RUNS],
)
def test_the_last_reset_drops_any_non_finite_value_before_it(mode: str, backend: str) -> None:
    """The rows whose states the scans leave stale: a NaN between two resets (row 0: NaN at
    step 4, resets at 3 and 7; only the last reset restarts from a finite state), a NaN ``h0``
    with a reset at step 0 (row 1: nothing of it survives), an infinity before a reset (row 2:
    ``0 * inf`` is NaN as well); row 3 has resets and nothing non-finite. Every value equals
    the reference loop's, non-finite exactly where the loop's are."""
    a, b, h0 = make(4, 10, 3, torch.float64, "cpu", seed=4)
    b, h0 = b.detach().clone(), h0.detach().clone()
    resets = torch.zeros(4, 10, dtype=torch.bool)
    resets[0, 3] = resets[0, 7] = True
    b[0, 4, 1] = math.nan
    h0[1, 2] = math.nan
    resets[1, 0] = True
    b[2, 2, 0] = math.inf
    resets[2, 5] = resets[3, 6] = True
    h, last = run_scan(mode, backend, chunk=4)(a.detach(), b, h0, resets)
    want, want_last = linear_scan_reference(a.detach(), b, h0, resets=resets)
    bad = ~torch.isfinite(want)
    assert bad[0, 4:7].any() and not bad[0, 7:].any() and not bad[1].any()
    assert bad[2, 2:5].any() and not bad[2, 5:].any()
    assert torch.equal(~torch.isfinite(h), bad)
    assert rel_rms(h[~bad], want[~bad]) < 1e-12
    assert torch.isfinite(want_last).all() and rel_rms(last, want_last) < 1e-12


@pytest.mark.parametrize(("mode", "backend"), RESET_RUNS)
def test_a_nan_gate_at_a_reset_step_stays_nan(mode: str, backend: str) -> None:
    """The reference loop computes ``a_t * 0`` at a reset, NaN for a NaN or infinite gate: row
    0 (NaN gate at its reset, step 4) and row 1 (infinite gate at its reset) are NaN from the
    reset to the end, not restarted clean; row 2 (NaN gate at a step without reset) as well;
    row 3 has a reset and finite gates. Values equal the loop's, NaN exactly where its are."""
    a, b, h0 = make(4, 9, 3, torch.float64, "cpu", seed=6)
    a = a.detach().clone()
    resets = torch.zeros(4, 9, dtype=torch.bool)
    resets[:, 4] = True
    a[0, 4, 1] = math.nan
    a[1, 4, 2] = math.inf
    a[2, 6, 0] = math.nan
    h, last = run_scan(mode, backend, chunk=4)(a, b, h0, resets)
    want, want_last = linear_scan_reference(a, b, h0, resets=resets)
    bad = ~torch.isfinite(want)
    assert bad[0, 4:].any(-1).all() and bad[1, 4:].any(-1).all() and not bad[:2, :4].any()
    assert bad[2, 6:].any(-1).all() and not bad[3].any()
    assert torch.equal(~torch.isfinite(h), bad)
    assert rel_rms(h[~bad], want[~bad]) < 1e-12
    assert torch.equal(~torch.isfinite(last), ~torch.isfinite(want_last))


@pytest.mark.parametrize(("mode", "backend"), TRACED_RUNS)
def test_a_traced_reset_stops_a_nan_gradient_after_it(mode: str, backend: str) -> None:
    """A NaN gate after the last reset (row 0: step 7, reset at 5) makes the gradient of the
    states from the reset to it NaN, and the loop's select stops it at the reset; a NaN ``h0``
    under a reset at step 0 (row 1) gets no gradient and gives its gate none. Compiled and
    exported, every gradient equals the loop's, NaN exactly where the loop's is, and those of
    what comes before row 0's reset are finite. (Eager mode's scan multiplies that gradient by
    the zero gate and lets it through, 0 * NaN: NaN spreads within gradients are not compared
    across backends, see docs/cell-abi.md.)"""
    a, b, h0 = make(2, 10, 3, torch.float64, seed=13)
    a, h0 = a.clone(), h0.clone()
    a[0, 7, 1] = math.nan
    h0[1, 2] = math.nan
    resets = torch.zeros(2, 10, dtype=torch.bool)
    resets[:, 5] = resets[1, 0] = True
    inputs = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    want_in = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    h, _ = run_scan(mode, backend)(*inputs, resets)
    want, _ = linear_scan_reference(*want_in, resets=resets)
    bad = ~torch.isfinite(want)
    assert torch.equal(~torch.isfinite(h), bad) and bad[0, 7:].any(-1).all()
    weights = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=h.dtype)
    torch.where(bad, 0.0, h * weights).sum().backward()
    torch.where(bad, 0.0, want * weights).sum().backward()
    for got_t, want_t in zip(inputs, want_in, strict=True):
        assert got_t.grad is not None and want_t.grad is not None
        nan = torch.isnan(want_t.grad)
        assert torch.equal(torch.isnan(got_t.grad), nan)
        assert rel_rms(got_t.grad[~nan], want_t.grad[~nan]) < 1e-12
    assert want_in[1].grad is not None and torch.isfinite(want_in[1].grad[:, :5]).all()
    assert want_in[2].grad is not None and torch.equal(want_in[2].grad[1], torch.zeros(3).double())


#: the packed-sequence runs: eager and compiled (not ``fullgraph``: reading ``cu_seqlens``
#: breaks the graph; ``torch.export`` cannot trace that read at all)
PACKED_RUNS = [(m, b) for m in ("eager", "compile") for b in ("torch", "cpp")]


@pytest.mark.parametrize(("mode", "backend"), PACKED_RUNS)
def test_a_nan_in_one_packed_sequence_stays_in_it(mode: str, backend: str) -> None:
    """With ``cu_seqlens``, a NaN input in sequence 1 and a NaN ``h0`` of sequence 3 leave
    sequences 0, 2 and 4 (and their gradients) exactly as their own reference loops compute
    them; one scan over the packed row would carry each NaN into every later sequence as
    ``0 * NaN`` at the zeroed gate of each start."""
    offsets = [0, 7, 15, 20, 29, 36]
    a, b, _ = make(1, 36, 3, torch.float64, "cpu", seed=7)
    _, _, h0 = make(5, 1, 3, torch.float64, "cpu", seed=8)
    b, h0 = b.detach().clone(), h0.detach().clone()
    b[0, 9, 1] = math.nan
    h0[3, 0] = math.nan
    cu = torch.tensor(offsets)
    inputs = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    want_in = [t.clone().requires_grad_(True) for t in (a, b, h0)]
    scan = run_scan(mode, backend, fullgraph=False, cu_seqlens=cu, chunk=4)
    h, last = scan(*inputs, None)
    want, want_last = _per_sequence(*want_in, offsets)
    bad = ~torch.isfinite(want)
    assert bad[0, 9:15].any(-1).all() and bad[0, 20:29].any(-1).all()
    assert torch.equal(~torch.isfinite(h), bad)
    assert rel_rms(h[~bad], want[~bad]) < 1e-12
    clean = [0, 2, 4]
    assert rel_rms(last[clean], want_last[clean]) < 1e-12
    spans = torch.zeros(36, dtype=torch.bool)
    for s in clean:
        spans[offsets[s] : offsets[s + 1]] = True
    h[0, spans].sum().backward()
    want[0, spans].sum().backward()
    # inside the poisoned sequences the loop's gates get 0 * NaN gradients; the clean
    # sequences' gradients must be finite and equal
    (ga, gb, gh0), (wa, wb, wh0) = ([t.grad for t in ts] for ts in (inputs, want_in))
    assert ga is not None and gb is not None and gh0 is not None
    assert wa is not None and wb is not None and wh0 is not None
    for got_g, want_g in ((ga[0, spans], wa[0, spans]), (gb[0, spans], wb[0, spans])):
        assert torch.isfinite(want_g).all() and rel_rms(got_g, want_g) < 1e-12
    assert torch.isfinite(wh0[clean]).all() and rel_rms(gh0[clean], wh0[clean]) < 1e-12


@pytest.mark.parametrize("case", ["inf_input", "nan_gate_at_reset"])
@pytest.mark.parametrize(("mode", "backend"), PACKED_RUNS)
def test_packed_sequences_keep_an_inf_or_a_nan_gate_at_a_reset_to_themselves(
    mode: str, backend: str, case: str
) -> None:
    """With ``cu_seqlens``: an infinite input in sequence 3 of 5 (the one poisoned sequence, so
    a single cut at the next start; ``0 * inf`` there is NaN, so the check must catch
    infinities, not only NaN), or a NaN gate at a reset inside the last sequence (the loop's
    ``a_t * 0`` keeps it NaN from the reset on, not a clean restart). Each sequence equals its
    own reference loop, non-finite exactly where the loop's are, and the others stay finite."""
    offsets = [0, 6, 13, 19, 27, 32]
    a, b, _ = make(1, 32, 3, torch.float64, "cpu", seed=11)
    _, _, h0 = make(5, 1, 3, torch.float64, "cpu", seed=12)
    a, b = a.clone(), b.clone()
    resets = torch.zeros(1, 32, dtype=torch.bool)
    resets[0, 3] = True  # a reset before the poison, in sequence 0
    if case == "inf_input":
        a[0, 20:27] = a[0, 20:27].abs()  # one sign for the infinity: no inf - inf
        b[0, 20, 1] = math.inf
        poisoned = slice(20, 27)
    else:
        resets[0, 29] = True
        a[0, 29, 0] = math.nan
        poisoned = slice(29, 32)
    scan = run_scan(mode, backend, fullgraph=False, cu_seqlens=torch.tensor(offsets), chunk=4)
    h, last = scan(a, b, h0, resets)
    want_h, want_last = _per_sequence(a, b, h0, offsets, resets)
    bad = ~torch.isfinite(want_h)
    # non-finite from the poison to its sequence's end and nowhere else
    assert bad[0, poisoned].any(-1).all() and not bad[0, : poisoned.start].any()
    assert torch.equal(~torch.isfinite(h), bad)
    assert rel_rms(h[~bad], want_h[~bad]) < 1e-12
    assert torch.equal(~torch.isfinite(last), ~torch.isfinite(want_last))
    clean = torch.isfinite(want_last).all(-1)
    assert int(clean.sum()) == 4 and rel_rms(last[clean], want_last[clean]) < 1e-12


def test_a_stale_bfloat16_row_is_rescanned_in_float32() -> None:
    """bfloat16 inputs are scanned in float32 and rounded once; a row rescanned for a NaN
    before its reset (row 0: NaN ``h0``, reset at step 1) as well: over 200 slowly decaying
    steps its relative RMS error is that of the one rounding (about 1e-3; stepping in
    bfloat16 itself gives about 6e-3), like the row the scan ran (row 1)."""
    g = torch.Generator().manual_seed(0)
    a = (0.9 + 0.1 * torch.rand(2, 200, 16, generator=g, dtype=torch.float64)).bfloat16()
    b = torch.randn(2, 200, 16, generator=g, dtype=torch.float64).bfloat16()
    h0 = torch.randn(2, 16, generator=g, dtype=torch.float64).bfloat16()
    h0[0, 0] = math.nan
    resets = torch.zeros(2, 200, dtype=torch.bool)
    resets[:, 1] = True
    h, _ = linear_scan(a, b, h0, resets=resets, backend="torch")
    want, _ = linear_scan_reference(a.double(), b.double(), h0.double(), resets=resets)
    assert h.dtype == torch.bfloat16 and torch.isnan(h[0, 0]).any()
    for row in (0, 1):
        assert rel_rms(h[row, 1:].double(), want[row, 1:]) < 3e-3, row


def _per_sequence(
    a: Tensor, b: Tensor, h0: Tensor, offsets: list[int], resets: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The reference loop run on each packed sequence alone (with its slice of ``resets``)."""
    hs, lasts = [], []
    for s in range(len(offsets) - 1):
        lo, hi = offsets[s], offsets[s + 1]
        r = None if resets is None else resets[:, lo:hi]
        h, h_last = linear_scan_reference(a[:, lo:hi], b[:, lo:hi], h0[s : s + 1], resets=r)
        hs.append(h)
        lasts.append(h_last)
    return torch.cat(hs, 1), torch.cat(lasts, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_cu_seqlens(device: str, dtype: torch.dtype) -> None:
    offsets = [0, 9, 9, 50, 51, 97]  # includes an empty and a one-step sequence
    a, b, _ = make(1, 97, 5, dtype, device)
    _, _, h0 = make(len(offsets) - 1, 1, 5, dtype, device, seed=5)
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    check(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, cu_seqlens=cu, chunk=8),
        lambda a_, b_, h_: _per_sequence(a_, b_, h_, offsets),
        (a, b, h0),
        dtype,
    )


def test_cu_seqlens_without_h0() -> None:
    a, b, _ = make(1, 30, 2, torch.float64)
    cu = torch.tensor([0, 10, 30])
    h, h_last = linear_scan(a, b, cu_seqlens=cu)
    rh, rhl = _per_sequence(a, b, torch.zeros(2, 2, dtype=torch.float64), [0, 10, 30])
    assert rel_rms(h, rh) < 1e-12 and rel_rms(h_last, rhl) < 1e-12


@pytest.mark.parametrize("backend", ["torch", "sequential", "cpp"])
def test_a_reset_at_a_packed_start_starts_from_zero(backend: str) -> None:
    """A reset on the first step of a packed sequence drops its ``h0`` (and the gradient to
    it), as running that sequence alone with its resets does: the packed scan took ``h0[s]``
    there (sequence 1 starts at 10 with a reset; sequence 0 has a reset inside and keeps
    its ``h0``; a NaN ``h0`` under the reset leaves no NaN)."""
    if backend == "cpp":
        pytest.importorskip("rnnkit.kernels.linear.scan._native")
    offsets = [0, 10, 25]
    a, b, _ = make(1, 25, 3, torch.float64, seed=3)
    _, _, h0 = make(2, 1, 3, torch.float64, seed=4)
    resets = torch.zeros(1, 25, dtype=torch.bool)
    resets[0, [4, 10]] = True
    h0 = h0.detach().requires_grad_()
    h, h_last = linear_scan(
        a, b, h0, resets=resets, cu_seqlens=torch.tensor(offsets), backend=backend
    )
    for s, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        alone, alone_last = linear_scan_reference(
            a[:, lo:hi], b[:, lo:hi], h0[s : s + 1].detach(), resets=resets[:, lo:hi]
        )
        assert rel_rms(h[:, lo:hi], alone) < 1e-12
        assert rel_rms(h_last[s], alone_last[0]) < 1e-12
    (grad,) = torch.autograd.grad(h.sum() + h_last.sum(), h0)
    assert grad[0].abs().min() > 0 and torch.equal(grad[1], torch.zeros(3, dtype=grad.dtype))
    nan_h0 = h0.detach().clone()
    nan_h0[1] = float("nan")
    h, _ = linear_scan(
        a, b, nan_h0, resets=resets, cu_seqlens=torch.tensor(offsets), backend=backend
    )
    assert torch.isfinite(h).all()


# --- stability at long T -------------------------------------------------------------------------


def _long_check(a: Tensor, b: Tensor, h0: Tensor) -> None:
    """fp32 chunked scan (values and gradients) against the float64 step loop."""
    check(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="torch"),
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="sequential"),
        (a, b, h0),
        torch.float32,
    )


def test_long_gates_near_one() -> None:
    time = 2**16
    g = torch.Generator().manual_seed(0)
    a = 1.0 - 1e-3 * torch.rand(1, time, 3, generator=g, dtype=torch.float64)
    b = torch.randn(1, time, 3, generator=g, dtype=torch.float64)
    _long_check(a, b, torch.randn(1, 3, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("chunk", [None, 64])
def test_long_gates_near_one_random_signs(chunk: int | None) -> None:
    """Gates ``+-(1 - 1e-4 u)``: the state wanders for thousands of steps, so every rounding
    of the chunk products adds up (float32 products missed 1e-5 by 2-6x here)."""
    time = 2**16
    g = torch.Generator().manual_seed(2)
    sign = torch.where(torch.rand(1, time, 4, generator=g) < 0.5, -1.0, 1.0).double()
    a = sign * (1.0 - 1e-4 * torch.rand(1, time, 4, generator=g, dtype=torch.float64))
    b = torch.randn(1, time, 4, generator=g, dtype=torch.float64)
    check(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="torch", chunk=chunk),
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="sequential"),
        (a, b, torch.randn(1, 4, generator=g, dtype=torch.float64)),
        torch.float32,
    )


def test_long_gates_above_one_bounded_product() -> None:
    # log|a_t| telescopes (a difference of a bounded sequence), so every span product stays in
    # [e^-6, e^6] although many gates exceed 1; signs flip at random.
    time = 2**16
    g = torch.Generator().manual_seed(1)
    u = 3.0 * torch.sin(torch.arange(time + 1, dtype=torch.float64) * 0.0123)
    u = u + 0.5 * torch.rand(time + 1, generator=g, dtype=torch.float64)
    log_mag = (u[1:] - u[:-1]).view(1, time, 1).expand(1, time, 2)
    sign = torch.where(torch.rand(1, time, 2, generator=g) < 0.3, -1.0, 1.0).double()
    a = sign * log_mag.exp()
    assert (a.abs() > 1).float().mean() > 0.3
    b = torch.randn(1, time, 2, generator=g, dtype=torch.float64)
    _long_check(a, b, torch.randn(1, 2, generator=g, dtype=torch.float64))


# --- Triton kernels ------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize(
    ("backend", "chunk"), [("triton", 8), ("triton", None), ("triton_sequential", None)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton(backend: str, chunk: int | None, dtype: torch.dtype) -> None:
    inputs = make(2, 37, 5, dtype, TRITON_DEVICE)
    check(
        lambda a, b, h0: linear_scan(a, b, h0, backend=backend, chunk=chunk),
        linear_scan_reference,
        inputs,
        dtype,
    )


@needs_triton
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((2, 37, 5), torch.float32),
        ((2, 37, 5), torch.bfloat16),
        ((2, 37, 5), torch.float64),
        ((1, 300, 3), torch.float32),
        ((1, 300, 3), torch.bfloat16),
        ((1, 300, 3), torch.float64),
    ],
)
def test_triton_stream(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    """The single-pass kernel, forward and backward (its reverse scan), with h0 and resets;
    T=300 walks many tiles (16 steps each under the interpreter) and ends in a partial one."""
    batch, time, _ = shape
    a, b, h0 = make(*shape, dtype, TRITON_DEVICE)
    g = torch.Generator().manual_seed(3)
    resets = (torch.rand(batch, time, generator=g) < 0.05).to(TRITON_DEVICE)
    resets[0, 0] = True
    resets[-1, -1] = True
    check(
        lambda a_, b_, h_: linear_scan(a_, b_, h_, resets=resets, backend="triton_stream"),
        lambda a_, b_, h_: linear_scan_reference(a_, b_, h_, resets=resets),
        (a, b, h0),
        dtype,
    )


def test_triton_kernel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_triton, "sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert scan_triton.prefers_stream(8, 65536, 1536, cuda)  # 384 programs >= 2 * 132
    assert not scan_triton.prefers_stream(8, 4096, 256, cuda)  # 64 programs
    assert not scan_triton.prefers_stream(1, 2**20, 16, cuda)  # 1 program
    assert not scan_triton.prefers_stream(64, 256, 4096, cuda)  # one chunk: single pass anyway
    calls: list[str] = []
    monkeypatch.setattr(scan_triton, "stream_scan_into", lambda *a, **k: calls.append("stream"))
    monkeypatch.setattr(scan_triton, "chunked_scan_into", lambda *a, **k: calls.append("chunk"))
    monkeypatch.setattr(scan_triton, "prefers_stream", lambda *a: True)
    x = torch.zeros(1, 2, 1)
    scan_triton.scan_into(x, x, x[:, 0], x, reverse=False)
    scan_triton.scan_into(x, x, x[:, 0], x, reverse=True, chunk=8)  # a chunk asks for chunks
    scan_triton.scan_into(x, x, x[:, 0], x, reverse=False, kernel="chunked")
    monkeypatch.setattr(scan_triton, "prefers_stream", lambda *a: False)
    scan_triton.scan_into(x, x, x[:, 0], x, reverse=False)
    scan_triton.scan_into(x, x, x[:, 0], x, reverse=False, kernel="stream")
    assert calls == ["stream", "chunk", "chunk", "chunk", "stream"]


@needs_triton
@pytest.mark.parametrize(("backend", "chunk"), [("triton", 4), ("triton_stream", None)])
def test_triton_broadcast_resets_and_varlen(backend: str, chunk: int | None) -> None:
    a, b, h0 = make(1, 29, 3, torch.float32, TRITON_DEVICE)
    resets = torch.zeros(1, 29, dtype=torch.bool, device=TRITON_DEVICE)
    resets[0, 13] = True
    offsets = [0, 7, 29]
    cu = torch.tensor(offsets, device=TRITON_DEVICE)
    h0s = torch.cat([h0, -h0])
    check(
        lambda a_, b_, h_: linear_scan(
            a_[0, 0], b_, h_, resets=resets, cu_seqlens=cu, backend=backend, chunk=chunk
        ),
        lambda a_, b_, h_: _per_sequence(
            torch.where(resets[..., None], 0.0, a_[0, 0].expand(1, 29, 3)), b_, h_, offsets
        ),
        (a, b, h0s),
        torch.float32,
    )


def test_triton_reports_why_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_triton, "_IMPORT_ERROR", "triton is not importable (test)")
    with pytest.raises(BackendUnavailableError, match="not importable"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), backend="triton")
    a = torch.rand(1, 3, 2, dtype=torch.complex64)
    assert "complex" not in str(scan_triton.unavailable_reason(None, torch.float32))
    monkeypatch.setattr(scan_triton, "_IMPORT_ERROR", None)
    # the refusal names the backend that runs the call instead
    with pytest.raises(BackendUnavailableError, match=r"complex64.*'auto' would use '(cpp|torch)'"):
        linear_scan(a, a, backend="triton")
    with pytest.raises(BackendUnavailableError, match=r"'auto' would use '(cpp|torch)'"):
        linear_scan(a, a, backend="triton_stream")


# --- bad input -----------------------------------------------------------------------------------


def test_bad_shapes() -> None:
    a = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="do not broadcast"):
        linear_scan(a, torch.rand(2, 5, 4))
    with pytest.raises(ValueError, match="3 dimensions"):
        linear_scan(torch.rand(5, 3), torch.rand(5, 3))
    with pytest.raises(ValueError, match="at most 3"):
        linear_scan(a[None], a[None])
    with pytest.raises(ValueError, match=r"h0 must broadcast to \(B, D\)"):
        linear_scan(a, a, torch.rand(2, 4))
    with pytest.raises(TypeError, match="same dtype"):
        linear_scan(a, a.double())
    with pytest.raises(TypeError, match="h0 must have the dtype"):
        linear_scan(a, a, torch.rand(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        linear_scan(a, [1.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="supports"):
        linear_scan(a.int(), a.int())
    with pytest.raises(ValueError, match="backend must be one of"):
        linear_scan(a, a, backend="nope")


def test_bad_resets() -> None:
    a = torch.rand(2, 5, 3)
    with pytest.raises(TypeError, match=r"torch\.bool"):
        linear_scan(a, a, resets=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"resets must have shape \(B, T\)"):
        linear_scan(a, a, resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"resets must be a torch\.Tensor"):
        linear_scan(a, a, resets=[[True]])  # type: ignore[arg-type]


def test_bad_cu_seqlens() -> None:
    a = torch.rand(1, 10, 3)
    with pytest.raises(ValueError, match="start at 0"):
        linear_scan(a, a, cu_seqlens=torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="increasing"):
        linear_scan(a, a, cu_seqlens=torch.tensor([0, 6, 4, 10]))
    with pytest.raises(ValueError, match="end at the packed length"):
        linear_scan(a, a, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(TypeError, match="integer"):
        linear_scan(a, a, cu_seqlens=torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match="at least 2 entries"):
        linear_scan(a, a, cu_seqlens=torch.tensor([0]))
    with pytest.raises(ValueError, match="batch of 1"):
        linear_scan(torch.rand(2, 10, 3), torch.rand(2, 10, 3), cu_seqlens=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\(S, D\)"):
        linear_scan(a, a, torch.rand(3, 3), cu_seqlens=torch.tensor([0, 4, 10]))


# --- the registered kernels ----------------------------------------------------------------------


class TinyLRU(DiagonalLinearCell):
    """A minimal diagonal linear cell: gate and input from a linear map, complex optional."""

    kind: ClassVar[str] = ""

    def __init__(
        self, input_size: int, hidden_size: int, *, complex_state: bool = False, init: float = 0.0
    ):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.output_size, self.projected_size = hidden_size, 2 * hidden_size
        self.complex_state, self.init = complex_state, init
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        self.theta = nn.Parameter(torch.linspace(0.1, 1.0, hidden_size))

    def project(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        gate, u = px.chunk(2, dim=-1)
        a = torch.sigmoid(gate)
        if self.complex_state:
            return torch.polar(a, self.theta.expand_as(a)), torch.complex(u, -u)
        return a, u

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        return h.real * torch.tanh(px[..., : self.hidden_size]) if h.is_complex() else h * 2.0

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), complex=self.complex_state, init=self.init),)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("complex_state", [False, True])
def test_registered_kernel_matches_reference(device: str, complex_state: bool) -> None:
    torch.manual_seed(0)
    cell = TinyLRU(4, 6, complex_state=complex_state).double().to(device)
    x = torch.randn(3, 41, 4, dtype=torch.float64, device=device)
    state = LinearState(cell.init_state(3, device=device, dtype=torch.float64).h + 0.5)
    resets = torch.zeros(3, 41, dtype=torch.bool, device=device)
    resets[1, 17] = True
    results = {}
    for backend in ("scan", "reference"):
        cell.zero_grad()
        y, final = cell(x, state, backend=backend, resets=resets)
        (y.square().sum() + final.h.abs().square().sum()).backward()
        results[backend] = (
            y,
            final.h,
            [p.grad.clone() for p in cell.parameters() if p.grad is not None],
        )
    (y, h, gs), (ry, rh, rgs) = results["scan"], results["reference"]
    assert isinstance(results["scan"][1], Tensor)
    assert rel_rms(y, ry) < 1e-12 and rel_rms(h, rh) < 1e-12
    assert len(gs) == len(rgs) and all(rel_rms(g, r) < 1e-10 for g, r in zip(gs, rgs, strict=True))
    y_auto, _ = cell(x, state, resets=resets)  # auto picks a scan kernel for this form
    assert rel_rms(y_auto, ry) < 1e-12


def test_registered_kernel_restarts_from_a_nonzero_init() -> None:
    """The scans restart from zero; the kernel runs a nonzero fill with ``b_t + a_t h_init``
    at the resets (as it does for a cell overriding ``init_state``)."""
    torch.manual_seed(0)
    cell = TinyLRU(2, 3, init=1.0).double()
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    resets = torch.tensor([[0, 0, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    y, final = cell(x, backend="scan", resets=resets)
    ry, rfinal = cell(x, backend="reference", resets=resets)
    assert rel_rms(y, ry) < 1e-12 and rel_rms(final.h, rfinal.h) < 1e-12


@needs_triton
def test_registered_triton_kernel() -> None:
    torch.manual_seed(0)
    cell = TinyLRU(3, 5).to(TRITON_DEVICE)
    x = torch.randn(2, 19, 3, device=TRITON_DEVICE)
    y, final = cell(x, backend="scan_triton")
    ry, rfinal = cell(x, backend="reference")
    assert rel_rms(y, ry.double()) < 1e-5 and rel_rms(final.h, rfinal.h.double()) < 1e-5
    with pytest.raises(BackendUnavailableError, match="complex"):
        TinyLRU(3, 5, complex_state=True).to(TRITON_DEVICE)(x, backend="scan_triton")


@pytest.mark.parametrize("time", [1, 2, 5, 13, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_doubling_scan_matches_reference(time: int, dtype: torch.dtype) -> None:
    """The recursive-doubling scan (what an exported program holds) equals the step loop in
    value and, through autograd alone, in the gradients of ``a``, ``b`` and ``h0``."""
    a, b, h0 = (t.to(dtype).requires_grad_() for t in make(3, time, 4, dtype))
    h = scan_torch.doubling_scan(a, b, h0)
    want, _ = linear_scan_reference(a, b, h0)
    assert rel_rms(h, want) < 1e-12
    weights = torch.randn(h.shape, dtype=h.dtype)
    got_grads = torch.autograd.grad((h * weights).real.sum(), (a, b, h0))
    want_grads = torch.autograd.grad((want * weights).real.sum(), (a, b, h0))
    for g, w in zip(got_grads, want_grads, strict=True):
        assert rel_rms(g, w) < 1e-12


@pytest.mark.parametrize("time", [1, 2, 5, 13, 64])
def test_doubling_scan_with_restarts_selects(time: int) -> None:
    """With ``restart`` the doubling scan (an exported program's scan with resets) equals the
    step loop that selects, in value and gradient: a NaN ``h0`` under a reset at step 0 (row
    1) and a NaN input before a reset (row 2) reach nothing past their reset; row 0 is finite."""
    a, b, h0 = (t.detach().clone() for t in make(3, time, 4, torch.float64, seed=2))
    resets = torch.rand(3, time, generator=torch.Generator().manual_seed(4)) < 0.3
    resets[1, 0] = True
    h0[1, 0] = math.nan
    b[2, 0, 1] = math.nan
    resets[2, time // 2] = time > 1
    a, b, h0 = (t.requires_grad_() for t in (a, b, h0))
    gates = torch.where(resets.unsqueeze(-1), a * 0, a)
    h = scan_torch.doubling_scan(gates, b, h0, restart=resets)
    want, _ = linear_scan_reference(a, b, h0, resets=resets)
    bad = ~torch.isfinite(want)
    assert not bad[:2].any() and bad[2, 0].any() and (time == 1 or not bad[2, time // 2 :].any())
    assert torch.equal(~torch.isfinite(h), bad)
    assert rel_rms(h[~bad], want[~bad]) < 1e-12
    weights = torch.where(bad, 0.0, torch.randn(h.shape, dtype=h.dtype))
    got_grads = torch.autograd.grad((torch.where(bad, 0.0, h) * weights).sum(), (a, b, h0))
    want_grads = torch.autograd.grad((torch.where(bad, 0.0, want) * weights).sum(), (a, b, h0))
    for g, w in zip(got_grads, want_grads, strict=True):
        nan = torch.isnan(w)
        assert torch.equal(torch.isnan(g), nan)
        assert rel_rms(g[~nan], w[~nan]) < 1e-12
