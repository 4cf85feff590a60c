"""The matrix-state form's ``chunked_triton`` backend (without a GPU in Triton's interpreter,
``TRITON_INTERPRET=1`` set by the conftest), against the float64 step recurrence.

- the op :func:`delta_rule_triton` on raw inputs: values, final memory and the gradients of
  every input (``q, k, v, beta, S0, log_alpha``; the Triton backward, which never runs the
  ``chunked`` torch path), ``T`` no multiple of the chunk or below it, both rules,
  with and without a decay (alpha exactly 0 at every fourth step included) and resets, in
  fresh buffers poisoned to NaN (the kernels' workspaces) and results that start as NaN;
- non-finite inputs spoil exactly what the recurrence spoils;
- the conformance kit's backend and NaN checks on a small cell of the form, which run every
  backend of the form, this one included;
- refusals: head sizes, dtypes and chunks it does not run, each naming ``chunked``.

The interpreter runs a kernel program in seconds' fractions, so the shapes are tiny: chunks
of 16 tokens (the smallest a GPU's ``tl.dot`` takes) and ``T`` of 11, 19, 21 or 37 (larger
shapes under ``-m experiment``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _form_helpers import poisoned
from test_form_matrix_state import TinyMemory, _log_alpha, _raw
from torch import Tensor

from rnnkit.core.dispatch import KernelCall, Priority, kernels_for, select
from rnnkit.core.matrix_state import MEMORY_RULES
from rnnkit.core.testing.checks import check_backends, check_nan_propagation
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.kernels.matrix_state import REFERENCE, delta_rule_triton
from rnnkit.kernels.matrix_state import chunked as ms_chunked
from rnnkit.kernels.matrix_state import triton as ms_triton

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array:DeprecationWarning")

NAMES = ("q", "k", "v", "beta", "S0", "log_alpha")
#: Where the kernels run: compiled on a GPU where one is present (``tools/gpu``), else in the
#: interpreter on the CPU. The reference always runs on the CPU in float64.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _needs_triton() -> None:
    reason = ms_triton.unavailable_reason(torch.device(DEVICE))
    if reason is not None:
        pytest.skip(f"chunked_triton: {reason}")


def _run(
    fn: object,
    inputs: list[Tensor],
    dtype: torch.dtype,
    rule: str,
    resets: Tensor | None,
    device: str = "cpu",
    **kw: object,
) -> list[Tensor]:
    """``[o, S, grad of each input]`` in float64 on the CPU, the op run in ``dtype`` on
    ``device``."""
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in inputs]
    la = leaves[5] if len(leaves) > 5 else None
    rs = None if resets is None else resets.to(device)
    o, S = fn(*leaves[:5], log_alpha=la, rule=rule, resets=rs, **kw)  # type: ignore[operator]
    g = torch.Generator().manual_seed(1)
    w_o = torch.randn(o.shape, generator=g, dtype=torch.float64)
    w_S = torch.randn(S.shape, generator=g, dtype=torch.float64)
    loss = (o.double() * w_o).sum() + (S.double() * w_S).sum()
    grads = torch.autograd.grad(loss, leaves)
    return [t.detach().double().cpu() for t in (o, S, *grads)]


@pytest.mark.parametrize(
    ("rule", "decay", "with_resets", "T", "dtype"),
    [
        ("delta", None, False, 37, torch.float64),
        ("delta", "holes", True, 37, torch.float64),
        ("delta", "random", False, 21, torch.float64),
        ("linear", None, True, 21, torch.float64),
        ("linear", "holes", False, 21, torch.float64),
        ("delta", "mixed", True, 21, torch.float32),
        ("linear", "random", True, 21, torch.float32),
        ("delta", "tiny", True, 11, torch.float64),
    ],
)
def test_op_equals_the_recurrence(
    rule: str, decay: str | None, with_resets: bool, T: int, dtype: torch.dtype
) -> None:
    """Values, final memory and every input's gradient (the Triton backward) against the
    float64 recurrence (``d_k = 3``, ``d_v = 5``: padded lanes; two sequences; chunks of 16,
    the last partial; ``T = 11``: one chunk longer than the sequence, with alpha from
    ``e^-300`` to ``e^-20``, where the decay gradient's sums must not cancel)."""
    q, k, v, beta, S0, resets = _raw(2, 1, T, 3, 5, seed=T)
    la = _log_alpha(decay, (2, 1, T), seed=T)
    inputs = [q, k, v, beta, S0, *([] if la is None else [la])]
    rs = resets if with_resets else None
    want = _run(REFERENCE, inputs, torch.float64, rule, rs)
    with poisoned():
        got = _run(delta_rule_triton, inputs, dtype, rule, rs, DEVICE, chunk=16)
    names = ("o", "S", *(f"grad {n}" for n in NAMES))
    errs = {n: rel_rms(a, b) for n, a, b in zip(names, got, want, strict=False)}
    tol = 1e-12 if dtype == torch.float64 else tolerance(dtype)
    bad = {n: f"{e:.1e}" for n, e in errs.items() if not e <= tol}
    assert len(errs) == len(inputs) + 2 and not bad, bad


def test_op_chunk_of_64_and_defaults() -> None:
    """The default chunk (64) with ``T`` below it: one padded chunk; values and gradients."""
    q, k, v, beta, S0, resets = _raw(1, 2, 19, 4, 4, seed=3)
    la = _log_alpha("random", (1, 2, 19), seed=3)
    assert la is not None
    inputs = [q, k, v, beta, S0, la]
    want = _run(REFERENCE, inputs, torch.float64, "delta", resets)
    with poisoned():
        got = _run(delta_rule_triton, inputs, torch.float64, "delta", resets, DEVICE)
    errs = [rel_rms(a, b) for a, b in zip(got, want, strict=True)]
    assert len(errs) == 8 and max(errs) < 1e-12, errs


def test_backward_runs_in_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward runs the Triton kernels, never the ``chunked`` torch path (patched to
    fail here), and loops over blocks of value columns and rows: blocks of 16 with ``d_v =
    20`` (two blocks, the second partial) and ``d_k = 18`` (padded to 32); gradients of every
    input against the float64 recurrence, delta rule (the linear rule's blocks run under ``-m
    experiment``), with a decay and resets, in fresh buffers poisoned to NaN."""
    q, k, v, beta, S0, resets = _raw(1, 1, 21, 18, 20, seed=5)
    la = _log_alpha("mixed", (1, 1, 21), seed=5)
    assert la is not None
    inputs = [q, k, v, beta, S0, la]
    want = _run(REFERENCE, inputs, torch.float64, "delta", resets)

    def torch_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("chunked_triton's backward ran the chunked torch path")

    monkeypatch.setattr(ms_chunked, "_chunked", torch_path)
    monkeypatch.setattr(ms_chunked._ChunkedMemory, "apply", torch_path)
    for name in ("BLOCK_V_GRAD", "BLOCK_V_OUT", "BLOCK_V_STATE"):
        monkeypatch.setattr(ms_triton, name, 16)
    with poisoned():
        got = _run(delta_rule_triton, inputs, torch.float64, "delta", resets, DEVICE, chunk=16)
    errs = [rel_rms(a, b) for a, b in zip(got, want, strict=True)]
    assert len(errs) == 8 and max(errs) < 1e-12, errs


@pytest.mark.experiment
@pytest.mark.parametrize("rule", MEMORY_RULES)
@pytest.mark.parametrize("decay", [None, "random", "tiny", "mixed", "one", "zero", "holes"])
def test_backward_larger_shapes(rule: str, decay: str | None) -> None:
    """Larger shapes (about 20 s each in the interpreter): two sequences of 2 heads, ``T = 150``
    (chunks of 32: four full, one partial; chunks of 64: two full, one partial), ``d_k = 40``,
    ``d_v = 72`` (two blocks of value columns), every kind of decay, with and without resets;
    float64 within 1e-12 and float32 within its tolerance of the float64 recurrence."""
    q, k, v, beta, S0, resets = _raw(2, 2, 150, 40, 72, seed=11)
    la = _log_alpha(decay, (2, 2, 150), seed=11)
    inputs = [q, k, v, beta, S0, *([] if la is None else [la])]
    for rs, chunk, dtype in ((None, 32, torch.float64), (resets, 64, torch.float32)):
        want = _run(REFERENCE, inputs, torch.float64, rule, rs)
        got = _run(delta_rule_triton, inputs, dtype, rule, rs, DEVICE, chunk=chunk)
        tol = 1e-12 if dtype == torch.float64 else tolerance(dtype)
        errs = [rel_rms(a, b) for a, b in zip(got, want, strict=True)]
        assert max(errs) <= tol, (chunk, dtype, [f"{e:.1e}" for e in errs])


def test_non_finite_inputs_spoil_what_the_recurrence_spoils() -> None:
    """A NaN in a key of chunk 2 and an ``+inf`` log decay of chunk 1: the NaN masks of the
    outputs and the final memory equal the recurrence's (forward in time only; the chunk's
    earlier tokens stay finite), and the finite outputs agree. (The masks are the ``chunked``
    backend's, tested for every input and both rules in ``test_form_matrix_state.py``.)"""
    rule = "delta"
    q, k, v, beta, S0, resets = _raw(2, 1, 37, 3, 4, seed=7)
    la = _log_alpha("random", (2, 1, 37), seed=7)
    assert la is not None
    k[1, 0, 20, 1] = float("nan")
    la[0, 0, 9] = float("inf")
    resets[:, :] = False
    resets[0, 30] = True
    want_o, want_S = REFERENCE(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=resets)
    ins = [t.to(DEVICE) for t in (q, k, v, beta, S0)]
    o, S = delta_rule_triton(
        *ins, log_alpha=la.to(DEVICE), rule=rule, resets=resets.to(DEVICE), chunk=16
    )
    o, S = o.cpu(), S.cpu()
    assert torch.isnan(want_o[1, 0, 20:]).all() and torch.isfinite(want_o[1, 0, :20]).all()
    assert torch.equal(~torch.isfinite(o), ~torch.isfinite(want_o))
    assert torch.equal(~torch.isfinite(S), ~torch.isfinite(want_S))
    ok = torch.isfinite(want_o)
    assert rel_rms(o[ok], want_o[ok]) < 1e-12


def test_empty_inputs() -> None:
    q, k, v, beta, S0, _ = (t.to(DEVICE) for t in _raw(2, 1, 0, 3, 4, seed=0))
    o, S = delta_rule_triton(q, k, v, beta, S0, chunk=16)
    assert o.shape == (2, 1, 0, 4) and torch.equal(S, S0)
    q, k, v, beta, S0, _ = (t.to(DEVICE) for t in _raw(0, 2, 5, 3, 4, seed=0))
    o, S = delta_rule_triton(q, k, v, beta, S0, chunk=16)
    assert o.shape == (0, 2, 5, 4) and S.shape == (0, 2, 4, 3)


def test_op_refuses_what_it_does_not_run() -> None:
    q, k, v, beta, S0, _ = (t.to(DEVICE) for t in _raw(1, 1, 5, 3, 4, seed=0))
    with pytest.raises(ValueError, match="chunk must be 16, 32 or 64"):
        delta_rule_triton(q, k, v, beta, S0, chunk=8)
    with pytest.raises(ValueError, match="rule must be"):
        delta_rule_triton(q, k, v, beta, S0, rule="gated")
    half = [t.half() for t in (q, k, v, beta, S0)]
    with pytest.raises(TypeError, match="`chunked` backend runs any dtype"):
        delta_rule_triton(*half)
    wide = torch.zeros(1, 1, 5, 129, dtype=torch.float64, device=DEVICE)
    S_wide = torch.zeros(1, 1, 4, 129, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="`chunked` backend runs any size"):
        delta_rule_triton(wide, wide, v, beta, S_wide)


# --- the registered kernel --------------------------------------------------------------------


def _kernel() -> object:
    (kernel,) = [k for k in kernels_for(TinyMemory(3, 4)) if k.backend == ms_triton.BACKEND]
    return kernel


def test_registered_with_its_tiers() -> None:
    """Registered for the form; ``auto`` keeps ``chunked`` off CUDA (the interpreter ranks
    below the reference loop) and takes this kernel on CUDA, for inference and for training
    (forward and backward both run as kernels)."""
    kernel = _kernel()
    x = torch.randn(2, 5, 3, device=DEVICE)
    picked = DEVICE != "cpu"
    tier = Priority.DEVICE_BEST if picked else Priority.BELOW_REFERENCE
    for needs_grad in (True, False):
        call = KernelCall(TinyMemory(3, 4).to(DEVICE), x, None, None, needs_grad=needs_grad)
        assert kernel.why_not(call) is None  # type: ignore[attr-defined]
        assert kernel.rank(call) == tier  # type: ignore[attr-defined]
        assert select(call).backend == (ms_triton.BACKEND if picked else "chunked")
    # the tier reads the input's device only (no CUDA tensor can be made here)
    cuda = SimpleNamespace(device=torch.device("cuda"))
    for needs_grad in (False, True):
        on_gpu = SimpleNamespace(x=cuda, needs_grad=needs_grad)
        assert kernel.rank(on_gpu) == Priority.DEVICE_BEST  # type: ignore[attr-defined]


def test_kernel_refuses_large_heads_naming_chunked() -> None:
    x = torch.randn(2, 5, 3, device=DEVICE)
    call = KernelCall(TinyMemory(3, 130).to(DEVICE), x, None, None, needs_grad=True)
    reason = _kernel().why_not(call)  # type: ignore[attr-defined]
    assert reason is not None and "d_k=130" in reason and "`chunked`" in reason
    assert select(call).backend == "chunked"


def test_without_a_gpu_or_the_interpreter_it_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms_triton, "interpreting", lambda: False)
    reason = ms_triton.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason


def test_conformance_kit_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit's backend check (every backend of the form against the float64 loop over
    ``recur``, values and every gradient, with and without an initial state and resets) runs
    this backend too: a decaying cell in float64 here; without a decay too and in every dtype
    under ``-m experiment``."""
    monkeypatch.setattr(ms_triton, "CHUNK", 16)
    report = check_backends(lambda: TinyMemory(5, 6, decay=True), (torch.float64,))
    # four configurations (state, resets), each with gradients and once without
    assert len(report.ran[ms_triton.BACKEND]) == 8


@pytest.mark.experiment
def test_conformance_kit_backends_every_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """As above in float64, float32 and bfloat16, two heads, with and without a decay (some
    seconds per cell in the interpreter)."""
    monkeypatch.setattr(ms_triton, "CHUNK", 16)
    for decay in (False, True):
        report = check_backends(lambda decay=decay: TinyMemory(5, 6, heads=2, decay=decay))
        assert len(report.ran[ms_triton.BACKEND]) == 24


def test_conformance_kit_nan_in_gives_nan_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit's NaN check (a NaN in the input, then in the parameter): outputs and final
    state NaN exactly where the reference loop's are."""
    monkeypatch.setattr(ms_triton, "CHUNK", 16)
    report = check_nan_propagation(lambda: TinyMemory(5, 6, decay=True))
    assert len(report.ran[ms_triton.BACKEND]) == 2


def test_cell_in_16_bit_runs_in_float32() -> None:
    cell = TinyMemory(3, 4, heads=2, decay=True)
    x = torch.randn(2, 9, 3)
    want, (want_S,) = cell(x, backend="chunked")
    run = cell.to(device=DEVICE, dtype=torch.bfloat16)
    y, (S,) = run(x.to(device=DEVICE, dtype=torch.bfloat16), backend=ms_triton.BACKEND)
    assert y.dtype == torch.bfloat16 and S.dtype == torch.bfloat16
    assert rel_rms(y.float().cpu(), want) < tolerance(torch.bfloat16)
    assert rel_rms(S.float().cpu(), want_S) < tolerance(torch.bfloat16)
