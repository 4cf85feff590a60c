"""The ``fused_cpp`` backend (C++ time loops) against ``reference``, its fallback and its CLI.

The library is built once per session through its cache (the first build takes 20 to 60 s and
is not part of these tests' own run time). Without a compiler or ninja the native tests skip
with the reason, unless ``RNNKIT_REQUIRE_CPP=1`` (set by the CI session), where they fail.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _gated_helpers import KINDS, TOL, compare, make_cell, make_inputs, rel_rms
from torch import Tensor

from rnnkit.core import cli
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.plugins import get_host
from rnnkit.kernels import native
from rnnkit.kernels._plugin import BACKEND_MODULES
from rnnkit.kernels.gated import fused_cpp
from rnnkit.kernels.native import BuildError, NativeLibrary

#: Set to 1 where the toolchain is known to exist (CI): a missing build then fails the tests.
REQUIRE_ENV = "RNNKIT_REQUIRE_CPP"
HEADS = (1, 3)
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["f64", "f32"]
# The library's defaults (grain, BLAS on, MKL packing on, widest tile kernels), restored after
# tests that change them.
DEFAULT_OPTIONS = (1 << 15, True, True, "auto")
#: Tile kernels of the float team loops, by block width (head sizes must be multiples of it).
TILE_WIDTHS = {"avx512": 16, "avx2": 8, "generic": 4}


def _require() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() == "1"


@pytest.fixture(scope="session")
def native_ops() -> Any:
    """``torch.ops.rnnkit_fused_cpp``, built (or loaded from the cache) once per session."""
    reason = fused_cpp.LIBRARY.why_unavailable()
    if reason is None:
        try:
            fused_cpp.LIBRARY.build()
        except BuildError as e:
            reason = str(e)
    if reason is not None:
        if _require():
            pytest.fail(f"{REQUIRE_ENV}=1 but the fused_cpp library cannot be used: {reason}")
        pytest.skip(f"fused_cpp library unavailable: {reason}")
    return fused_cpp.LIBRARY.ops()


@pytest.fixture
def poisoned(native_ops: Any) -> Iterator[Any]:
    """Every ``torch.empty`` (the C++ outputs and saved buffers included) starts as NaN, so a
    value the loops forget to write, or read before writing, shows up in the comparison."""
    det, warn = (
        torch.are_deterministic_algorithms_enabled(),
        (torch.is_deterministic_algorithms_warn_only_enabled()),
    )
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: OpenMP fork/join only slows a loaded machine
    try:
        yield native_ops
    finally:
        torch.set_num_threads(before)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
        torch.use_deterministic_algorithms(det, warn_only=warn)
        native_ops.set_options(*DEFAULT_OPTIONS)


def test_poison_is_on(poisoned: Any) -> None:
    """The NaN poison is really on (the C++ ops allocate through the same ``aten::empty``)."""
    assert torch.isnan(torch.empty(4)).all()
    assert torch.isnan(torch.empty(2, 3, dtype=torch.float64)).all()


# --- values and gradients against the float64 reference -------------------------------------


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to `fused` would be a failure
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("resets", [False, True], ids=["noreset", "resets"])
@pytest.mark.parametrize("state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(
    poisoned: Any, kind: str, heads: int, state: bool, resets: bool, dtype: torch.dtype
) -> None:
    """Output, final state and the gradients of x, every parameter and every initial-state field
    within ``TOL[dtype]`` (relative RMS) of the float64 reference (B=3, T=7, I=5, H=6)."""
    cell = make_cell(kind, heads)
    x, st, rs, cot = make_inputs(cell, state=state, resets=resets)
    compare(cell, "fused_cpp", dtype, x, st, rs, cot)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(
    "options",
    [(64, True, True), (1 << 15, False, False), (1 << 15, True, False)],
    ids=["parallel-rows", "aten-gemm", "blas-unpacked"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_code_paths(
    poisoned: Any, kind: str, dtype: torch.dtype, options: tuple[int, bool, bool]
) -> None:
    """The other GEMM routes (ATen ``mm``, plain BLAS) and pointwise rows split over threads
    give the same results; odd sizes B=5, T=9, I=7, H=2x5."""
    poisoned.set_options(*options)
    torch.set_num_threads(2)
    cell = make_cell(kind, 2, seed=3, inputs=7, hidden=10)
    x, st, rs, cot = make_inputs(cell, batch=5, time=9, state=True, resets=True)
    compare(cell, "fused_cpp", dtype, x, st, rs, cot)


def _tile_isas() -> list[str]:
    """Every tile kernel set this machine runs (builds the library at collection)."""
    if fused_cpp.LIBRARY.why_unavailable() is not None:
        return ["generic"]  # the tests then skip (or fail under RNNKIT_REQUIRE_CPP) with why
    try:
        return [str(isa) for isa in fused_cpp.LIBRARY.ops().tile_isas()]
    except BuildError:
        return ["generic"]  # likewise: the native_ops fixture reports the build error


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("isa", _tile_isas())
@pytest.mark.parametrize("kind", KINDS)
def test_team_loops(poisoned: Any, kind: str, isa: str, heads: int, threads: int) -> None:
    """The float team loops (register tiles, one block of units per thread) against the float64
    reference, for every tile kernel set this CPU runs: head size 16 (a multiple of every tile
    width), batch 7 (row tiles with a remainder), resets, initial state, 1 and 2 threads; the
    run counter proves that the team loops ran, forward and backward."""
    poisoned.set_options(1 << 15, True, True, isa)
    torch.set_num_threads(threads)
    cell = make_cell(kind, heads, seed=5, inputs=5, hidden=16 * heads)
    x, st, rs, cot = make_inputs(cell, batch=7, time=6, state=True, resets=True)
    before = int(poisoned.team_loops_run())
    compare(cell, "fused_cpp", torch.float32, x, st, rs, cot)
    assert int(poisoned.team_loops_run()) - before == 2


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("isa", _tile_isas())
@pytest.mark.parametrize("kind", KINDS)
def test_team_loops_uneven_split(poisoned: Any, kind: str, isa: str) -> None:
    """3 heads of 48 units on 2 threads (blocks split unevenly, runs of blocks cut at head
    boundaries) and a batch of 20 (a second slice of rows after the first 18, three tiles of
    6), T=5."""
    poisoned.set_options(1 << 15, True, True, isa)
    torch.set_num_threads(2)
    cell = make_cell(kind, 3, seed=8, inputs=4, hidden=144)
    x, st, rs, cot = make_inputs(cell, batch=20, time=5, state=True, resets=True)
    before = int(poisoned.team_loops_run())
    compare(cell, "fused_cpp", torch.float32, x, st, rs, cot)
    assert int(poisoned.team_loops_run()) - before == 2


def test_team_loops_skip_odd_heads_and_double(poisoned: Any) -> None:
    """Head sizes that are not a multiple of the tile width, and float64, take the per-head
    loops (the counter does not move) and still match the reference."""
    width = TILE_WIDTHS[str(poisoned.info()).split("float team loops: ")[1].split(" ")[0]]
    cell = make_cell("lstm", 1, seed=6, hidden=width + 2)
    x, st, rs, cot = make_inputs(cell, batch=3, time=4, state=True, resets=True)
    before = int(poisoned.team_loops_run())
    compare(cell, "fused_cpp", torch.float32, x, st, rs, cot)
    cell = make_cell("lstm", 1, seed=6, hidden=width)
    x, st, rs, cot = make_inputs(cell, batch=3, time=4, state=True, resets=True)
    compare(cell, "fused_cpp", torch.float64, x, st, rs, cot)
    assert int(poisoned.team_loops_run()) == before


@pytest.mark.parametrize("isa", _tile_isas())
def test_tile_product_every_shape(native_ops: Any, isa: str) -> None:
    """One tile kernel call against a float64 product for every count of output vectors
    (1 to 16: full groups of the kernel's vectors, then the remainder), 1 to 13 rows (full row
    tiles and every remainder), reductions within one chunk and across several (K = 1, 37,
    1100), with the rows of the weights packed and spaced apart. The output is NaN-filled
    before the call, so a vector or row the kernel skips shows."""
    width = TILE_WIDTHS[isa]
    gen = torch.Generator().manual_seed(3)
    for K in (1, 37, 1100):
        for nv in range(1, 17):
            wide = torch.randn(K, 2 * nv * width, generator=gen)[:, : nv * width]
            # Rows 2 nv width apart (as the interleaved forward panels), then packed rows.
            for w in (wide, wide.contiguous()):
                for rows in (1, 5, 6, 7, 13):
                    a = torch.randn(rows, K, generator=gen)
                    out = native_ops.tile_product(isa, w, a)
                    ref = a.double() @ w.double()
                    assert not out.isnan().any(), (K, nv, rows)
                    assert rel_rms(out, ref) < TOL[torch.float32], (K, nv, rows)
    with pytest.raises(RuntimeError, match="at least one reduction step"):
        native_ops.tile_product(isa, torch.zeros(0, width), torch.zeros(2, 0))
    with pytest.raises(RuntimeError, match="1 to 16 vectors"):
        native_ops.tile_product(isa, torch.zeros(3, 17 * width), torch.zeros(2, 3))


def test_loop_phases_time_team_loops_only(native_ops: Any) -> None:
    """Inside ``loop_phases`` a training call's team loops add time to the products and
    pointwise passes of both directions; outside it the timers are off (a second call adds
    nothing), and float64 loops (not team loops) are never timed."""
    cell = make_cell("lstm", 1, seed=2, hidden=16).float()
    x = torch.randn(3, 6, 5, requires_grad=True)
    with fused_cpp.loop_phases() as phases:
        y, _ = cell(x, backend="fused_cpp")
        y.sum().backward()
    assert set(phases) == {"forward", "reverse"}
    for direction in ("forward", "reverse"):
        assert set(phases[direction]) == set(fused_cpp.LOOP_PHASES)
        assert phases[direction]["product"] > 0 and phases[direction]["pointwise"] > 0
        assert all(v >= 0 for v in phases[direction].values())
    y, _ = cell(x, backend="fused_cpp")
    y.sum().backward()
    assert all(v == 0 for v in native_ops.phase_times(False))
    cell64 = make_cell("lstm", 1, seed=2, hidden=16)
    with fused_cpp.loop_phases() as phases:
        cell64(x.detach().double(), backend="fused_cpp")
    assert all(v == 0 for d in phases.values() for v in d.values())


def test_tiles_option_errors(native_ops: Any) -> None:
    """An unknown tile kernel set is refused with the choices; "off" switches the team off;
    every CPU runs the generic kernels."""
    assert "generic" in list(native_ops.tile_isas())
    with pytest.raises(RuntimeError, match="choose auto, avx512, avx2, generic or off"):
        native_ops.set_options(1 << 15, True, True, "sse9")
    try:
        native_ops.set_options(1 << 15, True, True, "off")
        assert "float team loops: off" in str(native_ops.info())
    finally:
        native_ops.set_options(*DEFAULT_OPTIONS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time", [1, 2, 7, 8])
@pytest.mark.parametrize("heads", HEADS)
def test_inference_path(poisoned: Any, kind: str, heads: int, time: int) -> None:
    """Without gradients the loops keep two state slots instead of T+1 (the final state comes
    from slot ``T % 2``): odd and even T, with resets and an initial state."""
    cell = make_cell(kind, heads)
    x, st, rs, _ = make_inputs(cell, time=time, state=True, resets=time > 1)
    with torch.no_grad():
        y, final = cell(x, st, backend="fused_cpp", resets=rs)
        y_ref, final_ref = cell(x, st, backend="reference", resets=rs)
    assert rel_rms(y, y_ref) <= TOL[torch.float64]
    for a, e in zip(final, final_ref, strict=True):
        assert rel_rms(a, e) <= TOL[torch.float64]


@pytest.mark.parametrize("kind", KINDS)
def test_strided_input_and_no_bias(poisoned: Any, kind: str) -> None:
    """A non-contiguous input (every other step of a time-major buffer), cells without bias."""
    cell = make_cell(kind, 3, bias=False)
    x, st, rs, cot = make_inputs(cell, time=14, state=True, resets=True)
    x_strided = x.transpose(0, 1).contiguous().transpose(0, 1)[:, ::2]
    assert not x_strided.is_contiguous()
    cot = [cot[0][:, ::2], *cot[1:]]
    rs = None if rs is None else rs[:, ::2]
    compare(cell, "fused_cpp", torch.float32, x_strided, st, rs, cot)


def test_final_state_does_not_alias_output(poisoned: Any) -> None:
    cell = make_cell("gru", 1)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    y, (h,) = cell(x, backend="fused_cpp")
    h.add_(1.0)
    assert rel_rms(y[:, -1], h - 1.0) < 1e-15


# --- registration, auto, fallback ------------------------------------------------------------


def test_registered() -> None:
    assert "gated.fused_cpp" in BACKEND_MODULES
    ks = fused_cpp.kernels()
    assert sorted(k.target for k in ks) == ["elman", "gru", "lstm", "slstm"]
    assert "rnnkit_fused_cpp" in native.libraries()


@pytest.mark.parametrize(("kind", "heads"), [("lstm", 2), ("slstm", 3), ("gru", 1), ("elman", 1)])
def test_auto_prefers_native_where_faster(native_ops: Any, kind: str, heads: int) -> None:
    """Where it measured fastest (docs/kernels-fused.md): multi-head LSTM/sLSTM, and training
    of dense GRU and Elman (torch records a per-step autograd graph there)."""
    cell = make_cell(kind, heads).float()
    x = torch.randn(2, 3, 5)
    assert select(KernelCall(cell, x, None, None, True), "auto").backend == "fused_cpp"


@pytest.mark.parametrize("kind", ["gru", "elman", "relu"])
def test_auto_runs_dense_gru_and_elman_inference_natively(native_ops: Any, kind: str) -> None:
    """Dense GRU and Elman inference: the team loop measured 1.2-2x torch's op
    (docs/kernels-fused.md) from 16 steps; shorter sequences stay on torch's op (the native
    call's fixed cost)."""
    cell = make_cell(kind, 1).float()
    call = KernelCall(cell, torch.randn(2, 16, 5), None, None, False)
    assert select(call, "auto").backend == "fused_cpp"
    call = KernelCall(cell, torch.randn(2, 15, 5), None, None, False)
    assert select(call, "auto").backend == "torch"


def test_auto_dense_lstm_torch_for_inference_native_for_training(native_ops: Any) -> None:
    """oneDNN's fused LSTM layer measured fastest for dense LSTM inference; for training the
    team loop measured faster than torch's op from 256 steps (docs/kernels-fused.md)."""
    cell = make_cell("lstm", 1).float()
    x = torch.randn(2, 256, 5)
    assert select(KernelCall(cell, x, None, None, False), "auto").backend == "torch"
    assert select(KernelCall(cell, x, None, None, True), "auto").backend == "fused_cpp"
    short = torch.randn(2, 255, 5)
    assert select(KernelCall(cell, short, None, None, True), "auto").backend == "torch"


def test_auto_keeps_float64_on_fused(native_ops: Any) -> None:
    """float64 (the validation dtype) stays on the pure-torch loop under ``auto``."""
    cell = make_cell("slstm", 2)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    call = KernelCall(cell, x, None, None, True)
    assert select(call, "auto").backend == "fused"
    assert select(call, "fused_cpp").backend == "fused_cpp"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("resets", [False, True])
def test_torch_compile_traces_the_native_ops(poisoned: Any, kind: str, resets: bool) -> None:
    """The ops have fake kernels: ``torch.compile(fullgraph=True)`` traces the native loops
    into one graph, forward and backward (x without a gradient, as a first layer's input);
    outputs and gradients equal eager mode's."""
    get_host()  # the plugin host loads outside the graph (a first call breaks it there)
    torch._dynamo.reset()
    cell = make_cell(kind, 2).float()
    x = torch.randn(2, 5, 5)
    r = torch.rand(2, 5) < 0.3 if resets else None
    compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
    y, final = compiled(x, backend="fused_cpp", resets=r)
    y_ref, final_ref = cell(x, backend="fused_cpp", resets=r)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, e) for a, e in zip(final, final_ref, strict=True))
    params = list(cell.parameters())
    got = torch.autograd.grad(y.sum() + final[0].sum(), params)
    want = torch.autograd.grad(y_ref.sum() + final_ref[0].sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_inductor_default_backend(native_ops: Any, kind: str) -> None:
    """The default compiler (inductor) runs a dense cell on ``auto`` with ``fullgraph=True``
    when ``x`` needs no gradient (an LSTM failed: torch's oneDNN LSTM under compile)."""
    get_host()
    torch._dynamo.reset()
    cell = make_cell(kind, 1).float()
    x = torch.randn(2, 20, 5)
    y, final = torch.compile(cell, fullgraph=True)(x)
    y_ref, final_ref = cell(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final[0], final_ref[0], rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(y.sum(), list(cell.parameters()))
    want = torch.autograd.grad(y_ref.sum(), list(cell.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_torch_backend_refuses_the_failing_compiled_lstm() -> None:
    """Under torch.compile, ``backend="torch"`` refuses the LSTM calls torch cannot compile
    (x without a gradient, weights with one) with the reason; ``auto`` runs another backend."""
    from rnnkit.kernels.gated import torch_native

    cell = make_cell("lstm", 1).float()
    call = KernelCall(cell, torch.randn(2, 4, 5), None, None, True)
    assert torch_native.supports(call) is None  # eager

    # the reason is asserted outside the traced function: torch 2.11's dynamo cannot trace
    # the locals() call of pytest's rewritten asserts
    reasons: list[str | None] = []

    def check(x: Tensor) -> Tensor:
        reasons.append(torch_native.supports(KernelCall(cell, x, None, None, True)))
        return x + 1

    torch._dynamo.reset()
    torch.compile(check, backend="eager", fullgraph=True)(torch.randn(2, 4, 5))
    assert len(reasons) == 1 and reasons[0] is not None and "torch.compile" in reasons[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_export_prefers_portable_backends(native_ops: Any, dtype: torch.dtype) -> None:
    """``auto`` under torch.export ranks ``fused_cpp`` below ``reference``, float64 included
    (its float64 tier was once decided before the export one): the exported program holds
    plain ATen ops; ``backend="fused_cpp"`` still exports (fake kernels)."""
    cell = make_cell("slstm", 1).to(dtype)
    x = torch.randn(2, 6, 5, dtype=dtype)
    ep = torch.export.export(cell, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("rnnkit_fused_cpp" in t for t in targets), targets
    torch.testing.assert_close(ep.module()(x)[0], cell(x)[0], rtol=1e-5, atol=1e-6)

    class Named(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x: Tensor) -> Tensor:
            with torch.no_grad():
                return self.cell(x, backend="fused_cpp")[0]

    ep = torch.export.export(Named(), (x,))
    assert "rnnkit_fused_cpp.slstm_forward" in ep.graph_module.print_readable(False)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), cell(x)[0], rtol=1e-5, atol=1e-6)


_FRESH_PROCESS = """
import sys, torch
from rnnkit.core.cells import LSTM
from rnnkit.core.plugins import get_host
from rnnkit.kernels.gated import fused_cpp
get_host()
cell = LSTM(5, 8, heads=2)
x = torch.randn(2, 5, 5)
if sys.argv[1] == "eager":
    y0, _ = cell(x, backend="fused_cpp")
    assert "torch._dynamo" not in sys.modules, "an eager call imported torch._dynamo"
else:
    assert fused_cpp.LIBRARY.last_build() is None
y, _ = torch.compile(cell, backend="aot_eager", fullgraph=True)(x, backend="fused_cpp")
assert fused_cpp.LIBRARY.last_build() is not None
torch.testing.assert_close(y, cell(x, backend="fused_cpp")[0], rtol=0, atol=0)
print("ok")
"""


@pytest.mark.parametrize("first", ["eager", "compiled"])
def test_first_call_under_compile(native_ops: Any, first: str) -> None:
    """An eager call does not import ``torch._dynamo`` (seconds of start-up); the library
    loads on a first call made under ``torch.compile(fullgraph=True)`` (its loader runs
    outside the traced code), and a compiled call after an eager one traces as well."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, first], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.parametrize("env", ["RNNKIT_FUSED_CPP", "RNNKIT_CPP"])
def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    """``=0`` switches the backend off: ``available`` says why, ``auto`` picks another backend
    and naming it raises an error that gives the reason and the alternative."""
    monkeypatch.setenv(env, "0")
    assert fused_cpp.available() == f"disabled by {env}=0"
    cell = make_cell("slstm", 2).float()
    x = torch.randn(2, 3, 5)
    call = KernelCall(cell, x, None, None, True)
    assert select(call, "auto").backend == "fused"
    with pytest.raises(BackendUnavailableError, match=f"disabled by {env}=0.*would use 'fused'"):
        select(call, "fused_cpp")
    y, _ = cell(x)  # the model keeps working
    assert torch.isfinite(y).all()


def test_failed_build_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the library cannot be built when a kernel first runs, the call runs the pure-torch
    ``fused`` loop instead, with a warning that says why (same result)."""

    def broken() -> Any:
        raise BuildError("simulated compiler failure")

    monkeypatch.setattr(fused_cpp, "ops", broken)
    cell = make_cell("lstm", 2)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    kernel = next(k for k in fused_cpp.kernels() if k.target == "lstm")
    with pytest.warns(RuntimeWarning, match="simulated compiler failure.*'fused' loop"):
        y, final = kernel.run(KernelCall(cell, x, None, None, False))
    with torch.no_grad():
        y_ref, final_ref = cell(x, backend="fused")
    assert rel_rms(y, y_ref) == 0.0
    assert all(rel_rms(a, e) == 0.0 for a, e in zip(final, final_ref, strict=True))


def test_every_source_file_is_in_the_build_key() -> None:
    """Every ``.cpp`` in ``csrc/`` is compiled and every header takes part in the build key: a
    header left out of the list would let an edit to it load a stale cached library."""
    lib = fused_cpp.LIBRARY
    assert sorted(lib.sources) == sorted(p.name for p in lib.csrc.glob("*.cpp"))
    assert sorted(lib.headers) == sorted(p.name for p in lib.csrc.glob("*.h"))


def test_broken_source_is_reported_and_recorded(
    native_ops: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A compile error becomes a ``BuildError`` with the compiler's diagnostic, is recorded in
    the cache (so ``available`` reports it without compiling again) and retried by ``force``;
    a compile is announced (it takes long enough to look like a hang)."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_REGISTRY", dict(native.libraries()))
    (tmp_path / "broken.cpp").write_text("#error deliberately broken for a test\n")
    lib = NativeLibrary(name="rnnkit_test_broken", csrc=tmp_path, sources=("broken.cpp",))
    assert lib.why_unavailable() is None  # nothing known yet: a build would be tried
    with (
        caplog.at_level("WARNING", logger="rnnkit.kernels.native"),
        pytest.raises(BuildError, match="deliberately broken"),
    ):
        lib.build()
    assert any(
        "compiling the native library rnnkit_test_broken" in r.message for r in caplog.records
    )
    assert (lib.cache_dir() / "FAILED").exists()
    fresh = NativeLibrary(name="rnnkit_test_broken", csrc=tmp_path, sources=("broken.cpp",))
    reason = fresh.why_unavailable()
    assert reason is not None and "earlier build failed" in reason
    with pytest.raises(BuildError, match="earlier build failed"):
        fresh.build()
    # force retries instead of reporting the recorded failure (in this process torch does not
    # recompile an extension name it has seen, so the retry fails at loading).
    with pytest.raises(BuildError) as retried:
        fresh.build(force=True)
    assert "earlier build failed" not in str(retried.value)


# --- bad input -------------------------------------------------------------------------------


def test_unsupported_dtype_names_what_is_supported(native_ops: Any) -> None:
    cell = make_cell("lstm", 3).to(torch.bfloat16)
    x = torch.randn(2, 3, 5, dtype=torch.bfloat16)
    with pytest.raises(BackendUnavailableError, match=r"supported: float32, float64.*would use"):
        cell(x, backend="fused_cpp")


def test_unsupported_device_says_cpu_only(native_ops: Any) -> None:
    cell = make_cell("gru", 2).to("meta")
    x = torch.empty(2, 3, 5, dtype=torch.float64, device="meta")
    reason = fused_cpp.supports(KernelCall(cell, x, None, None, False))
    assert reason is not None and "CPU only" in reason and "meta" in reason


def test_mixed_dtypes_refused(native_ops: Any) -> None:
    cell = make_cell("gru", 2)  # float64 parameters
    x = torch.randn(2, 3, 5)
    reason = fused_cpp.supports(KernelCall(cell, x, None, None, False))
    assert reason is not None and "differs from input dtype" in reason


def test_native_ops_check_their_arguments(native_ops: Any) -> None:
    """The C++ entry points refuse wrong shapes and dtypes with a message, not a crash."""
    W = torch.zeros(1, 6, 24)
    h = torch.zeros(1, 2, 6)
    with pytest.raises(RuntimeError, match=r"px must be \(N, T, B, G\*D\)"):
        native_ops.lstm_forward(torch.zeros(3, 2, 24), W, None, h, h, 0.0, 0.0, False)
    with pytest.raises(RuntimeError, match="float"):
        native_ops.lstm_forward(
            torch.zeros(1, 3, 2, 24, dtype=torch.int32), W, None, h, h, 0.0, 0.0, False
        )
    mask = torch.zeros(2, 3, dtype=torch.bool)  # (B, T) instead of (T, B)
    with pytest.raises(RuntimeError, match="mask"):
        native_ops.lstm_forward(torch.zeros(1, 3, 2, 24), W, mask, h, h, 0.0, 0.0, False)


def test_float64_copy_of_parameters_is_not_mutated(poisoned: Any) -> None:
    """The loops read the weights in place: they must not write to them."""
    cell = make_cell("slstm", 3)
    before = copy.deepcopy(cell.state_dict())
    x, st, rs, cot = make_inputs(cell, state=True, resets=True)
    compare(cell, "fused_cpp", torch.float64, x, st, rs, cot)
    for name, value in cell.state_dict().items():
        assert torch.equal(value, before[name]), name


# --- CLI -------------------------------------------------------------------------------------


def test_cli_status_and_build(native_ops: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kernels", "status"]) == 0
    out = capsys.readouterr().out
    assert "rnnkit_fused_cpp" in out and "available" in out and "cache" in out
    assert cli.main(["kernels", "build", "rnnkit_fused_cpp"]) == 0  # cached: a load
    out = capsys.readouterr().out
    assert "rnnkit_fused_cpp" in out
    # the configuration this CPU got: the tile kernels of the team loops among it
    assert "float team loops: " + str(native_ops.tile_isas()[0]) + " tiles" in out


def test_cli_build_reports_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library that cannot be built makes ``build`` exit with 1 and say why; ``status``
    shows the reason; an unknown name is a usage error."""
    monkeypatch.setattr(native, "_REGISTRY", {})
    lib = fused_cpp.LIBRARY  # a fresh definition of it, not loaded in this process
    NativeLibrary(
        name=lib.name,
        csrc=lib.csrc,
        sources=lib.sources,
        headers=lib.headers,
        disable_env=lib.disable_env,
    )
    monkeypatch.setenv("RNNKIT_FUSED_CPP", "0")
    assert cli.main(["kernels", "build"]) == 1
    assert "FAILED: disabled by RNNKIT_FUSED_CPP=0" in capsys.readouterr().err
    assert cli.main(["kernels", "status", "rnnkit_fused_cpp"]) == 0
    assert "disabled by RNNKIT_FUSED_CPP=0" in capsys.readouterr().out
    assert cli.main(["kernels", "status", "no-such-library"]) == 2
    assert "unknown native library" in capsys.readouterr().err


# --- buffer cache -------------------------------------------------------------------------------


def test_buffer_cache_reuses_freed_blocks(native_ops: Any) -> None:
    """A freed block of >= 1 MiB is kept and handed out again for the same byte size; smaller
    ones are plain ``torch.empty``; ``release_memory`` empties the cache; limit 0 keeps none."""
    from rnnkit.kernels.gated.fused_cpp._cells import pooled_empty

    fused_cpp.release_memory()
    a = pooled_empty((1024, 512), torch.float32)
    ptr = a.data_ptr()
    del a
    assert fused_cpp.cached_memory() == 2 << 20
    b = pooled_empty((512, 1024), torch.float32)  # same bytes, other shape
    assert b.data_ptr() == ptr
    assert fused_cpp.cached_memory() == 0
    small = pooled_empty((16, 16), torch.float32)
    del small, b
    assert fused_cpp.cached_memory() == 2 << 20
    fused_cpp.release_memory()
    assert fused_cpp.cached_memory() == 0
    try:
        fused_cpp.set_memory_limit(0)
        c = pooled_empty((1024, 512), torch.float32)
        del c
        assert fused_cpp.cached_memory() == 0
    finally:
        fused_cpp.set_memory_limit(1024)
    with pytest.raises(ValueError, match=">= 0 MiB"):
        fused_cpp.set_memory_limit(-1)


def test_buffer_cache_poisons_reused_blocks(poisoned: Any) -> None:
    """Under the NaN poison a cached block comes back as NaN again, like ``torch.empty``, so
    a loop that reads a buffer before writing it cannot pass on last step's values."""
    from rnnkit.kernels.gated.fused_cpp._cells import pooled_empty

    a = pooled_empty((1024, 512), torch.float32)
    assert torch.isnan(a).all()
    a.fill_(1.0)
    del a
    b = pooled_empty((1024, 512), torch.float32)
    assert torch.isnan(b).all()


def test_training_steps_match_with_cached_buffers(native_ops: Any) -> None:
    """Two identical training steps through the cache (the second one on reused blocks) give
    identical results, and equal a run with the cache off."""
    torch.manual_seed(7)
    cell = make_cell("lstm", 2).float()
    x = torch.randn(64, 40, 5)  # px and the saved buffers are over 1 MiB

    def step() -> tuple[Tensor, ...]:
        cell.zero_grad()
        y, _ = cell(x, backend="fused_cpp")
        y.square().sum().backward()
        return (y.detach().clone(), *(p.grad.clone() for p in cell.parameters()))

    first = step()
    assert fused_cpp.cached_memory() > 0
    second = step()
    try:
        fused_cpp.set_memory_limit(0)
        uncached = step()
    finally:
        fused_cpp.set_memory_limit(1024)
    for a, b, c in zip(first, second, uncached, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
