"""The native (C++) CPU scan behind ``linear_scan``: ``backend="cpp"`` and ``"auto"`` on CPU.

Values and gradients (``a``, ``b``, ``h0``) against a float64 sequential reference by relative
RMS error (fp32 1e-5, fp64 1e-12, 16-bit 1e-2), with every buffer the op allocates poisoned
with NaN; resets, packed sequences, broadcast and strided views, the reverse scan the Newton
solver uses, long sequences, the fallback when the library cannot be built, and the native
op's own argument checks.

The library is built once (through its cache; the first build takes 15 to 25 s). Without a
compiler or ninja these tests skip with the reason, unless ``RNNKIT_REQUIRE_CPP=1`` (CI),
where they fail.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_scan import TOL, _per_sequence, check, make, rel_rms
from torch import Tensor

from rnnkit.core.errors import BackendUnavailableError
from rnnkit.kernels.linear.scan import _native, linear_scan, linear_scan_reference, set_poison
from rnnkit.kernels.linear.scan import _torch as scan_torch
from rnnkit.kernels.linear.scan import op as scan_op
from rnnkit.kernels.native import BuildError
from rnnkit.kernels.newton._solve import scan_diag

#: Set to 1 where the toolchain is known to exist (CI): a missing build then fails the tests.
REQUIRE_ENV = "RNNKIT_REQUIRE_CPP"
CPU = torch.device("cpu")
NATIVE_DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.fixture(scope="module")
def native_ops() -> Any:
    """``torch.ops.rnnkit_scan_cpp``, built (or loaded from the cache) once."""
    reason = _native.unavailable_reason()
    if reason is None:
        try:
            _native.LIBRARY.build()
        except BuildError as e:
            reason = str(e)
    if reason is not None:
        if os.environ.get(REQUIRE_ENV, "").strip() == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the rnnkit_scan_cpp library cannot be used: {reason}")
        pytest.skip(f"rnnkit_scan_cpp library unavailable: {reason}")
    return _native.LIBRARY.ops()


@pytest.fixture(autouse=True)
def _poisoned(native_ops: Any) -> Iterator[Any]:
    """Every buffer the scan op allocates starts as NaN: unwritten outputs fail the checks."""
    previous = set_poison(True)
    yield native_ops
    set_poison(previous)


def cpp(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    return linear_scan(*args, backend="cpp", **kwargs)


# --- values and gradients ------------------------------------------------------------------------

SHAPES = [
    (1, 1, 1),
    (2, 1, 5),
    (3, 37, 19),  # odd T and width: one lane group per row, run inline (small)
    (1, 700, 100),  # one row cut into 4 feature blocks (32, 32, 32, 4), in parallel
    (5, 301, 33),  # several rows in parallel
]


@pytest.mark.parametrize("dtype", NATIVE_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    a, b, h0 = make(*shape, dtype)
    check(cpp, linear_scan_reference, (a, b, h0), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_upcast(dtype: torch.dtype) -> None:
    a, b, h0 = make(2, 90, 7, dtype)
    check(cpp, linear_scan_reference, (a, b, h0), dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads: int) -> None:
    """The lane split depends on the thread count; every split gives the same bits."""
    a, b, h0 = make(2, 400, 70, torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = cpp(a, b, h0)[0]
        torch.set_num_threads(threads)
        got = cpp(a, b, h0)[0]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)


def test_auto_picks_native_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scan_op._check_backend("auto", CPU, torch.float32) == "cpp"
    assert scan_op._check_backend("auto", CPU, torch.bfloat16) == "cpp"  # computed in fp32
    assert scan_op._check_backend("auto", CPU, torch.float32, chunk=8) == "torch"
    calls: list[bool] = []
    real = _native.scan_into

    def counting(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(_native, "scan_into", counting)
    a, b, h0 = make(2, 30, 3, torch.float32)
    h, _ = linear_scan(a.float(), b.float(), h0.float())
    assert calls and rel_rms(h, linear_scan_reference(a, b, h0)[0]) < 1e-5


def test_disabled_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_native.DISABLE_ENV, "0")
    assert scan_op._check_backend("auto", CPU, torch.float32) == "torch"
    with pytest.raises(BackendUnavailableError, match="RNNKIT_SCAN_CPP=0"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), backend="cpp")


def test_build_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that fails to build: ``auto`` warns once and runs the torch scan (same
    result), an explicit ``cpp`` raises BackendUnavailableError with the reason."""

    def broken() -> Any:
        raise BuildError("building the rnnkit_scan_cpp library failed: scan.cpp:1: error: boom")

    monkeypatch.setattr(_native.LIBRARY, "ops", broken)
    monkeypatch.setattr(_native, "_warned", False)
    a, b, h0 = make(2, 40, 3, torch.float64)
    with pytest.warns(RuntimeWarning, match="native CPU scan is unavailable.*boom"):
        h, h_last = linear_scan(a, b, h0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the first failure warns
        linear_scan(a, b, h0)
    rh, rhl = linear_scan_reference(a, b, h0)
    assert rel_rms(h, rh) < 1e-12 and rel_rms(h_last, rhl) < 1e-12
    with pytest.raises(BackendUnavailableError, match="boom"):
        linear_scan(a, b, h0, backend="cpp")
    # the Newton solver's CPU scans fall back the same way
    out = scan_diag(a, b, h0)
    assert rel_rms(out, rh) < 1e-12


def test_cuda_tensor_refused() -> None:
    assert _native.unavailable_reason(torch.device("cuda"), torch.float32) is not None
    assert _native.unavailable_reason(CPU, torch.bfloat16) is not None  # upcast by the op


# --- broadcast, strided and conjugated inputs -----------------------------------------------


def test_broadcast_gates_and_inputs() -> None:
    """Expanded gates (stride 0 in batch, time or features: the strided kernel variant),
    inputs expanded in time, ``h0`` broadcast over the batch; gradients reduce to the
    broadcast shapes."""
    a, b, _ = make(3, 40, 6, torch.float64)
    gates = (a[0, 0], a[:, :1], a[:1], a[:1, :1], a[:, :, :1])  # (D,) ... (B,T,1)
    for a_in in gates:
        leaf = a_in.clone().requires_grad_()
        h, h_last = cpp(leaf, b)
        rh, rhl = linear_scan_reference(a_in, b)
        assert rel_rms(h, rh) < 1e-12 and rel_rms(h_last, rhl) < 1e-12
        h.sum().backward()
        ref_leaf = a_in.clone().requires_grad_()
        linear_scan_reference(ref_leaf, b)[0].sum().backward()
        assert leaf.grad is not None and ref_leaf.grad is not None
        assert leaf.grad.shape == a_in.shape and rel_rms(leaf.grad, ref_leaf.grad) < 1e-12
    h, _ = cpp(a, b[:, :1], b[0, 0])
    rh, _ = linear_scan_reference(a, b[:, :1], b[0, 0].expand(3, 6))
    assert rel_rms(h, rh) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
def test_non_contiguous_inputs(dtype: torch.dtype) -> None:
    """Transposed storage (feature stride != 1) and a lazily conjugated complex gate."""
    a, b, h0 = make(2, 50, 9, dtype)
    a_t = a.transpose(1, 2).contiguous().transpose(1, 2)  # strides (T*D, 1, T)
    b_t = b.transpose(0, 1).contiguous().transpose(0, 1)  # time-major storage
    assert a_t.stride(2) != 1 and not b_t.is_contiguous()
    gate = a_t
    if dtype.is_complex:
        gate = a_t.conj_physical().conj()  # a lazy conj view of conj(a): its values are a
        assert gate.is_conj()
    assert torch.equal(gate.resolve_conj(), a)
    check(cpp, linear_scan_reference, (gate, b_t, h0), dtype)


# --- resets and packed sequences -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
def test_resets(dtype: torch.dtype) -> None:
    a, b, h0 = make(3, 45, 4, dtype)
    g = torch.Generator().manual_seed(3)
    resets = torch.rand(3, 45, generator=g) < 0.1
    resets[0, 0] = True
    resets[1, -1] = True
    check(
        lambda a_, b_, h_: cpp(a_, b_, h_, resets=resets),
        lambda a_, b_, h_: linear_scan_reference(a_, b_, h_, resets=resets),
        (a, b, h0),
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64], ids=str)
def test_cu_seqlens(dtype: torch.dtype) -> None:
    offsets = [0, 9, 9, 50, 51, 97]  # includes an empty and a one-step sequence
    a, b, _ = make(1, 97, 5, dtype)
    _, _, h0 = make(len(offsets) - 1, 1, 5, dtype, seed=5)
    cu = torch.tensor(offsets, dtype=torch.int32)
    check(
        lambda a_, b_, h_: cpp(a_, b_, h_, cu_seqlens=cu),
        lambda a_, b_, h_: _per_sequence(a_, b_, h_, offsets),
        (a, b, h0),
        dtype,
    )


def test_cu_seqlens_with_resets() -> None:
    offsets = [0, 20, 64]
    a, b, _ = make(1, 64, 3, torch.float32)
    _, _, h0 = make(2, 1, 3, torch.float32, seed=2)
    resets = torch.zeros(1, 64, dtype=torch.bool)
    resets[0, [5, 33]] = True

    def ref(a_: Tensor, b_: Tensor, h_: Tensor) -> tuple[Tensor, Tensor]:
        hs, lasts = [], []
        for s in range(2):
            lo, hi = offsets[s], offsets[s + 1]
            h, hl = linear_scan_reference(
                a_[:, lo:hi], b_[:, lo:hi], h_[s : s + 1], resets=resets[:, lo:hi]
            )
            hs.append(h)
            lasts.append(hl)
        return torch.cat(hs, 1), torch.cat(lasts, 0)

    cu = torch.tensor(offsets)
    check(
        lambda a_, b_, h_: cpp(a_, b_, h_, cu_seqlens=cu, resets=resets),
        ref,
        (a, b, h0),
        torch.float32,
    )


# --- the reverse scan and the native op directly -------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_scan_into_strided_views(reverse: bool) -> None:
    """``scan_into`` on time-major views (the Newton solver's layout: batch stride ``D``, time
    stride ``B * D``) writing into a slice of a NaN-filled buffer: equal to the float64 step
    loop, and nothing outside the slice written."""
    a, b, h0 = make(3, 64, 5, torch.float64)
    tm_a = a.transpose(0, 1).contiguous().transpose(0, 1)
    tm_b = b.transpose(0, 1).contiguous().transpose(0, 1)
    want = torch.empty(3, 64, 5, dtype=torch.float64)
    scan_torch.sequential_scan_into(a, b, h0, want, reverse=reverse)
    buf = torch.full((66, 3, 5), math.nan, dtype=torch.float64)
    out = buf[1:-1].transpose(0, 1)
    _native.scan_into(tm_a, tm_b, h0, out, reverse=reverse)
    assert torch.isnan(buf[0]).all() and torch.isnan(buf[-1]).all()
    assert rel_rms(out, want) < 1e-13
    # the Newton solver's CPU scan runs it, and matches the chunked torch scan
    got = scan_diag(tm_a, tm_b, h0, reverse=reverse)
    assert rel_rms(got, want) < 1e-13


def test_backward_without_gate_gradient() -> None:
    """When ``a`` needs no gradient the backward neither reads ``h`` nor writes ``da``."""
    a, b, h0 = make(2, 33, 4, torch.float32)
    bl, hl = b.float().requires_grad_(), h0.float().requires_grad_()
    h, h_last = cpp(a.float(), bl, hl)
    (h.sum() + h_last.sum()).backward()
    rb, rh0 = b.clone().requires_grad_(), h0.clone().requires_grad_()
    rh, rhl = linear_scan_reference(a, rb, rh0)
    (rh.sum() + rhl.sum()).backward()
    assert bl.grad is not None and hl.grad is not None
    assert rb.grad is not None and rh0.grad is not None
    assert rel_rms(bl.grad, rb.grad) < TOL[torch.float32]
    assert rel_rms(hl.grad, rh0.grad) < TOL[torch.float32]


def test_native_op_checks(native_ops: Any) -> None:
    a = torch.rand(2, 5, 3)
    out = torch.empty(2, 5, 3)
    h0 = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="b has shape"):
        native_ops.scan(a, torch.rand(2, 4, 3), h0, out, False)
    with pytest.raises(RuntimeError, match="dtype"):
        native_ops.scan(a.double(), a, h0, out, False)
    with pytest.raises(RuntimeError, match="h0 must be"):
        native_ops.scan(a, a, torch.zeros(3, 2), out, False)
    with pytest.raises(RuntimeError, match="expanded"):
        native_ops.scan(a, a, h0, torch.empty(1, 5, 3).expand(2, 5, 3), False)
    with pytest.raises(RuntimeError, match="float32, float64"):
        native_ops.scan(a.half(), a.half(), h0.half(), out.half(), False)
    with pytest.raises(RuntimeError, match="da has shape"):
        native_ops.scan_backward(a, a, h0, a, h0, out, torch.empty(2, 4, 3), h0.clone(), True)


# --- long sequences ------------------------------------------------------------------------------


def test_long_sequence_fp32() -> None:
    """T = 2^17 with gates near 1 (the state carries over the whole sequence): fp32 values and
    gradients within 1e-5 of the float64 step loop; the forward carries no cumulative products
    or logs, so nothing under- or overflows."""
    time = 2**17
    g = torch.Generator().manual_seed(0)
    a = 1.0 - 1e-4 * torch.rand(1, time, 3, generator=g, dtype=torch.float64)
    b = torch.randn(1, time, 3, generator=g, dtype=torch.float64) * 1e-2
    h0 = torch.randn(1, 3, generator=g, dtype=torch.float64)
    check(
        cpp,
        lambda a_, b_, h_: linear_scan(a_, b_, h_, backend="sequential"),
        (a, b, h0),
        torch.float32,
    )


def test_torch_compile() -> None:
    """The ops have Meta kernels, so torch.compile traces them with fake tensors (and
    functionalises their writes); values and gradients equal eager mode."""
    a, b, h0 = make(2, 20, 5, torch.float32)
    leaves = [t.float().requires_grad_() for t in (a, b, h0)]
    compiled = torch.compile(cpp, backend="aot_eager", fullgraph=False)
    h, h_last = compiled(*leaves)
    got = torch.autograd.grad((h.sum() + 2 * h_last.sum()), leaves)
    eager = [t.float().requires_grad_() for t in (a, b, h0)]
    rh, rhl = cpp(*eager)
    want = torch.autograd.grad((rh.sum() + 2 * rhl.sum()), eager)
    assert torch.allclose(h, rh, rtol=1e-6, atol=1e-6)
    assert torch.allclose(h_last, rhl, rtol=1e-6, atol=1e-6)
    for x, y in zip(got, want, strict=True):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_inductor_compiles_the_scan(dtype: torch.dtype) -> None:
    """The default compiler (inductor) runs the native scan, complex dtypes included: the
    traced graph holds functional ops (inductor failed to remove the functionalisation wrapper
    of the buffer-writing ops for complex buffers), and values and gradients equal eager."""
    a, b, h0 = make(2, 20, 5, dtype)
    leaves = [t.to(dtype).requires_grad_() for t in (a, b, h0)]
    compiled = torch.compile(cpp)
    h, h_last = compiled(*leaves)
    got = torch.autograd.grad((h.abs().sum() + 2 * h_last.abs().sum()), leaves)
    eager = [t.detach().clone().requires_grad_() for t in leaves]
    rh, rhl = cpp(*eager)
    want = torch.autograd.grad((rh.abs().sum() + 2 * rhl.abs().sum()), eager)
    torch.testing.assert_close(h, rh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h_last, rhl, rtol=1e-6, atol=1e-6)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


_FIRST_CALL_COMPILED = """
import torch
from rnnkit.kernels.linear.scan import _native, linear_scan
assert _native.LIBRARY.last_build() is None
a, b, h0 = torch.rand(2, 6, 3), torch.randn(2, 6, 3), torch.randn(2, 3)
run = torch.compile(lambda *t: linear_scan(*t, backend="cpp"), backend="aot_eager", fullgraph=True)
h, _ = run(a, b, h0)
assert _native.LIBRARY.last_build() is not None
torch.testing.assert_close(h, linear_scan(a, b, h0, backend="sequential")[0])
print("ok")
"""


def test_first_call_under_compile_fullgraph() -> None:
    """A process's first native scan may be traced with ``fullgraph=True``: the library is
    loaded outside the traced code (its loader hashes files, which dynamo cannot trace)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL_COMPILED], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
