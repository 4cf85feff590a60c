"""The conformance kit, as a user runs it, fails on deliberately broken kernels.

Each test registers one fake kernel for LSTM beside core's reference loop and runs the check
that must see the fault: a kit that passes a wrong kernel certifies nothing
(``test_kit_catches_errors.py`` has the first of these; these cover the faults a hand-made
mutation pass over the kit found unguarded).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor

from rnnkit.core import LSTM, Cell, Kernel, KernelCall, StateField
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.cells.lstm import LSTMState
from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.reference import reference_forward
from rnnkit.core.testing import CHECKS, CellConformance, rel_rms, tolerance
from rnnkit.core.testing import checks as kit
from rnnkit.core.testing.checks import (
    TIME,
    check_backends,
    check_chunking,
    check_empty_batch,
    check_lengths,
    check_nan_propagation,
    check_recur,
    check_resets,
    check_step_matches_forward,
)
from rnnkit.core.testing.lengths import LENGTHS

F64 = (torch.float64,)


def _host(kernel: Kernel) -> PluginHost:
    hook = module_plugin("bad", rnnkit_register_kernels=lambda register: register(kernel))
    return PluginHost(load_entry_points=False, plugins=[("core", core_plugin), ("bad", hook)])


def _make() -> LSTM:
    return LSTM(input_size=5, hidden_size=6)


def _map_state(state: Any, fn: Any) -> Any:
    return type(state)(*(fn(s) for s in state))


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward scales the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        return g * ctx.factor, None


def _scale_grad(t: Tensor, factor: float) -> Tensor:
    out: Tensor = _ScaleGrad.apply(t, factor)  # type: ignore[no-untyped-call]
    return out


def _recurrent_grad_off(call: KernelCall) -> Any:
    """The reference loop, but the gradient of the recurrent weights is 1 % too large."""
    params: dict[str, Tensor] = dict(call.cell.named_parameters())
    params["recurrent"] = _scale_grad(params["recurrent"], 1.01)
    kwargs = {"resets": call.resets, "backend": "reference"}
    return torch.func.functional_call(call.cell, params, (call.x, call.state), kwargs)


def test_a_recurrent_weight_gradient_off_by_one_percent_is_caught() -> None:
    with (
        use_host(_host(Kernel("wgrad", "lstm", _recurrent_grad_off))),
        pytest.raises(AssertionError, match=r"backend=wgrad .*: grad param\.recurrent: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_lengths_compare_the_recurrent_weight_gradient() -> None:
    with (
        use_host(_host(Kernel("wgrad", "lstm", _recurrent_grad_off))),
        pytest.raises(AssertionError, match=r"backend=wgrad .*: grad param\.recurrent: relative"),
    ):
        check_lengths(_make)


def _ignore_resets(call: KernelCall) -> Any:
    return reference_forward(KernelCall(call.cell, call.x, call.state, None, call.needs_grad))


def test_a_named_only_kernel_ignoring_resets_fails_the_backends_check() -> None:
    """Below the reference loop, ``auto`` never picks it, so ``check_resets`` (which runs
    ``auto``) cannot see it: ``check_backends`` must run every backend with resets."""
    kernel = Kernel("noreset", "lstm", _ignore_resets, priority=-100)
    with (
        use_host(_host(kernel)),
        pytest.raises(AssertionError, match=r"backend=noreset .* resets=True: y: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_the_lengths_check_runs_resets() -> None:
    kernel = Kernel("noreset", "lstm", _ignore_resets, priority=-100)
    with (
        use_host(_host(kernel)),
        pytest.raises(AssertionError, match=r"backend=noreset .* resets=True: y: relative"),
    ):
        check_lengths(_make)


def test_a_kernel_refusing_resets_is_skipped_not_run_with_them() -> None:
    def run(call: KernelCall) -> Any:
        assert call.resets is None, "ran with resets although supports refused them"
        return reference_forward(call)

    def supports(call: KernelCall) -> str | None:
        return None if call.resets is None else "no resets"

    with use_host(_host(Kernel("plain", "lstm", run, supports=supports))):
        report = check_backends(_make, dtypes=F64)
    assert sorted(report.ran["plain"]) == [
        "float64 cpu no state",
        "float64 cpu no state no grad",
        "float64 cpu state",
        "float64 cpu state no grad",
    ]
    assert sorted(report.skipped["plain"]["no resets"]) == [
        "float64 cpu no state resets",
        "float64 cpu no state resets no grad",
        "float64 cpu state resets",
        "float64 cpu state resets no grad",
    ]


def test_a_kernel_wrong_only_without_gradients_is_caught() -> None:
    """Kernels take another path for an inference call (``needs_grad=False``: no autograd
    function, nothing saved); a kernel that ``auto`` does not pick there is checked only by
    ``check_backends`` running it under ``torch.no_grad()``."""

    def wrong_inference(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return (y if call.needs_grad else y * 1.01), s

    with (
        use_host(_host(Kernel("infer", "lstm", wrong_inference, priority=-100))),
        pytest.raises(AssertionError, match=r"backend=infer .* no grad: y: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_kernel_refusing_inference_calls_is_skipped_for_them() -> None:
    def supports(call: KernelCall) -> str | None:
        return None if call.needs_grad else "training calls only"

    with use_host(_host(Kernel("train", "lstm", reference_forward, supports=supports))):
        report = check_backends(_make, dtypes=F64)
    assert len(report.ran["train"]) == 4
    assert sorted(report.skipped["train"]["training calls only"]) == sorted(
        f"{c} no grad" for c in report.ran["train"]
    )


def test_a_final_state_off_by_a_constant_is_caught() -> None:
    """The final state's value is wrong while every gradient is right (a shift has gradient
    one): only comparing the final state itself sees it."""

    def shifted(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y, _map_state(s, lambda t: t + 1e-6)

    with (
        use_host(_host(Kernel("shift", "lstm", shifted))),
        pytest.raises(AssertionError, match=r"backend=shift .*: final state\.h: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_stale_final_state_is_caught() -> None:
    """The final state is the one before the last step (an off-by-one in the kernel's loop)."""

    def stale(call: KernelCall) -> Any:
        y, _ = reference_forward(call)
        resets = None if call.resets is None else call.resets[:, :-1]
        _, s = reference_forward(
            KernelCall(call.cell, call.x[:, :-1], call.state, resets, call.needs_grad)
        )
        return y, s

    with (
        use_host(_host(Kernel("stale", "lstm", stale))),
        pytest.raises(AssertionError, match=r"backend=stale .*: final state\.h: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_final_state_without_gradient_is_caught() -> None:
    """The final state is right in value but detached: training through a chunk boundary
    (truncated BPTT carrying the state with its graph) would silently lose its gradient."""

    def detached(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y, _map_state(s, Tensor.detach)

    with (
        use_host(_host(Kernel("detached", "lstm", detached))),
        pytest.raises(AssertionError, match=r"backend=detached .*: grad"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_wrong_gradient_through_the_second_state_field_is_caught() -> None:
    """LSTM's final ``c`` carries a gradient 10 % too large (the state's second field)."""

    def c_grad_off(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        h, c = s
        return y, LSTMState(h, _scale_grad(c, 1.1))

    with (
        use_host(_host(Kernel("cgrad", "lstm", c_grad_off))),
        pytest.raises(AssertionError, match=r"backend=cgrad .*: grad"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_kernel_wrong_without_an_initial_state_is_caught() -> None:
    def bad_default(call: KernelCall) -> Any:
        if call.state is None:
            state = call.cell.init_state(call.x.shape[0], dtype=call.x.dtype)
            call = KernelCall(
                call.cell, call.x, _map_state(state, lambda t: t + 0.1), call.resets, True
            )
        return reference_forward(call)

    with (
        use_host(_host(Kernel("nostate", "lstm", bad_default))),
        pytest.raises(AssertionError, match=r"backend=nostate .* state=False"),
    ):
        check_backends(_make, dtypes=F64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_kernel_off_by_five_times_the_tolerance_is_caught(dtype: torch.dtype) -> None:
    """The bound is the dtype's own tolerance, not a looser one."""
    factor = 1 + 5 * tolerance(dtype)

    def off(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return (y * factor if y.dtype == dtype else y), s

    with (
        use_host(_host(Kernel("off", "lstm", off))),
        pytest.raises(AssertionError, match=rf"backend=off {dtype} .*: y: relative"),
    ):
        check_backends(_make)


@pytest.mark.parametrize("check", [check_backends, check_lengths], ids=["backends", "lengths"])
def test_a_float32_kernel_off_by_1e_4_is_caught(check: Any) -> None:
    """float32's tolerance is the documented 1e-5 (docs/cell-abi.md, section 6): a float32
    kernel rounding like float16 somewhere (an error near 1e-4) fails, and the lengths check
    runs float32 too."""

    def off(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return (y * (1 + 1e-4) if y.dtype == torch.float32 else y), s

    with (
        use_host(_host(Kernel("off", "lstm", off))),
        pytest.raises(AssertionError, match=r"backend=off torch.float32 .*: y: relative"),
    ):
        check(_make)


def test_a_float64_kernel_computing_in_float32_is_caught() -> None:
    def downcast(call: KernelCall) -> Any:
        if call.x.dtype != torch.float64:
            return reference_forward(call)
        cell = type(call.cell)(input_size=5, hidden_size=6).float()
        cell.load_state_dict(call.cell.state_dict())
        state = None if call.state is None else _map_state(call.state, Tensor.float)
        resets = call.resets
        y, s = reference_forward(KernelCall(cell, call.x.float(), state, resets, False))
        return y.double(), _map_state(s, Tensor.double)

    with (
        use_host(_host(Kernel("downcast", "lstm", downcast))),
        pytest.raises(AssertionError, match=r"backend=downcast torch.float64 .*: y: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_a_bfloat16_kernel_off_by_six_percent_is_caught() -> None:
    """In 16-bit dtypes the bound is the tolerance (3e-2) or twice the reference loop's own
    error, whichever is larger; LSTM's loop is accurate in bfloat16 (about 5e-3), so 6 % is
    out, as it would not be with ten times the loop's error."""

    def off(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return (y * 1.06 if y.dtype == torch.bfloat16 else y), s

    with (
        use_host(_host(Kernel("off", "lstm", off))),
        pytest.raises(AssertionError, match=r"backend=off torch.bfloat16 .*: y: relative"),
    ):
        check_backends(_make, dtypes=(torch.bfloat16,))


class _Bf16Garbage(LSTM):
    """A cell whose recurrence is garbage in bfloat16: its reference loop there is no floor."""

    def recur(self, px_t: Tensor, state: Any) -> Any:
        y, s = super().recur(px_t, state)
        if y.dtype == torch.bfloat16:
            y = y + 10
        return y, s


def test_a_garbage_16_bit_reference_loop_fails_instead_of_loosening_the_bound() -> None:
    with pytest.raises(AssertionError, match=r"reference loop in torch.bfloat16 on cpu is off"):
        check_backends(lambda: _Bf16Garbage(input_size=5, hidden_size=6), (torch.bfloat16,))


def test_the_chunking_check_sees_a_kernel_that_ignores_the_initial_state() -> None:
    def fresh(call: KernelCall) -> Any:
        return reference_forward(KernelCall(call.cell, call.x, None, call.resets, True))

    with (
        use_host(_host(Kernel("fresh", "lstm", fresh, priority=99))),
        pytest.raises(AssertionError, match=r"chunked vs whole"),
    ):
        check_chunking(_make)


# --- lengths ------------------------------------------------------------------------------------


def _lengths_kernel(run: Any) -> Kernel:
    return Kernel("len", "lstm", run, supports_lengths=True)


def test_the_lengths_are_the_documented_mix() -> None:
    """docs/cell-abi.md section 6: unsorted, tied, 0 and ``T`` (the check's ``T = 7``)."""
    assert 0 in LENGTHS and TIME in LENGTHS
    assert len(set(LENGTHS)) < len(LENGTHS) and list(LENGTHS) != sorted(LENGTHS)


def test_a_lengths_kernel_writing_past_the_lengths_is_caught() -> None:
    def garbage_tail(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y + 1.0 * (y == 0), s

    with (
        use_host(_host(_lengths_kernel(garbage_tail))),
        pytest.raises(AssertionError, match=r"backend=len .*: y is not zero past the lengths"),
    ):
        check_lengths(_make)


def test_a_lengths_kernel_returning_the_state_at_t_is_caught() -> None:
    """The final state is the one after all ``T`` steps (the padding run through), not the one
    after step ``lengths[b] - 1``; ``y`` is right."""

    def full_state(call: KernelCall) -> Any:
        y, _ = reference_forward(call)
        whole = KernelCall(call.cell, call.x, call.state, call.resets, call.needs_grad)
        _, s = reference_forward(whole)
        return y, s

    with (
        use_host(_host(_lengths_kernel(full_state))),
        pytest.raises(AssertionError, match=r"backend=len .*: final state\.h"),
    ):
        check_lengths(_make)


def test_a_lengths_kernel_wrong_only_without_gradients_is_caught() -> None:
    def wrong_inference(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return (y if call.needs_grad else y * 1.01), s

    with (
        use_host(_host(_lengths_kernel(wrong_inference))),
        pytest.raises(AssertionError, match=r"backend=len .* no grad: y: relative"),
    ):
        check_lengths(_make)


# --- NaN propagation ----------------------------------------------------------------------------


def test_a_kernel_writing_zeros_for_a_nan_final_state_is_caught() -> None:
    def clean_state(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y, _map_state(s, lambda t: t.nan_to_num(nan=0.0))

    with (
        use_host(_host(Kernel("tidy", "lstm", clean_state))),
        pytest.raises(
            AssertionError, match=r"backend=tidy .*final state\.h: \d+ finite where the reference"
        ),
    ):
        check_nan_propagation(_make)


def test_a_kernel_hiding_a_nan_parameter_is_caught() -> None:
    """Finite outputs whenever the input is finite, however NaN the weights: only the
    parameter cases of the check see it."""

    def hide(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        if torch.isnan(call.x).any():
            return y, s
        return y.nan_to_num(nan=0.0), _map_state(s, lambda t: t.nan_to_num(nan=0.0))

    with (
        use_host(_host(Kernel("hide", "lstm", hide))),
        pytest.raises(AssertionError, match=r"backend=hide NaN in weight_ih\[0\].* finite where"),
    ):
        check_nan_propagation(_make)


def test_a_kernel_leaking_a_nan_across_examples_is_caught() -> None:
    def leak(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y + 0 * y.sum(0, keepdim=True), s

    with (
        use_host(_host(Kernel("leak", "lstm", leak))),
        pytest.raises(AssertionError, match=r"backend=leak .*y: \d+ NaN where the reference is"),
    ):
        check_nan_propagation(_make)


# --- the kit's own plumbing ---------------------------------------------------------------------


def test_cell_conformance_has_one_test_per_check_running_that_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    for name in CHECKS:
        monkeypatch.setattr(kit, f"check_{name}", lambda make, name=name: ran.append(name))

    class Suite(CellConformance):
        def make_cell(self) -> LSTM:
            return _make()

    tests = sorted(t for t in dir(Suite) if t.startswith("test_"))
    assert tests == sorted(f"test_{name}" for name in CHECKS)
    for name in CHECKS:
        getattr(Suite(), f"test_{name}")()
    assert ran == list(CHECKS)


def test_rel_rms_is_the_relative_root_mean_square_error() -> None:
    x = torch.tensor([3.0, -4.0], dtype=torch.float64)
    dx = torch.tensor([0.3, 0.4], dtype=torch.float64)
    assert rel_rms(x * 1.01, x) == pytest.approx(0.01, rel=1e-9)
    assert rel_rms(x + dx, x) == pytest.approx(0.1, rel=1e-9)
    # against an all-zero expectation the error is the plain RMS, not zero
    assert rel_rms(x, torch.zeros(2).double()) == pytest.approx(12.5**0.5)
    assert rel_rms(torch.tensor([1.0, float("nan")]), x) == float("inf")
    assert rel_rms(torch.tensor([1.0, float("inf")]), x) == float("inf")


def test_tolerances_are_the_documented_ones_and_unknown_dtypes_have_none() -> None:
    """docs/cell-abi.md, section 6: float64 1e-10, float32 1e-5, float16 5e-3, bfloat16 3e-2."""
    assert [tolerance(d) for d in (torch.float64, torch.float32)] == [1e-10, 1e-5]
    assert [tolerance(d) for d in (torch.float16, torch.bfloat16)] == [5e-3, 3e-2]
    with pytest.raises(ValueError, match=r"no tolerance defined for dtype torch\.int32"):
        tolerance(torch.int32)


# --- the kit runs the state the cell declares ----------------------------------------------------


class _Rotation(DiagonalLinearCell):
    """``h_t = a_t * h_{t-1} + b_t`` with a complex state (as LRU and S5 have)."""

    kind = "rotation_test"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = self.projected_size = hidden_size
        self.weight = torch.nn.Parameter(torch.randn(hidden_size, input_size) / 3)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,), complex=True),)

    def project(self, x: Tensor) -> Tensor:
        return x @ self.weight.t()

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        return torch.polar(torch.sigmoid(px), px), torch.complex(px, -px)

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        return h.real


def test_supports_sees_the_complex_state_the_kernel_runs_with() -> None:
    """The backends check asked ``supports`` with the state cast to the real compute dtype
    (dropping the imaginary part, with a warning) while it ran the kernel with the complex
    state: a kernel refusing real states for a complex cell was skipped."""

    def complex_only(call: KernelCall) -> str | None:
        if call.state is not None and not all(s.is_complex() for s in call.state):
            return "the state must be complex"
        return None

    kernel = Kernel("cplx", "rotation_test", reference_forward, supports=complex_only)
    with use_host(_host(kernel)), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "Casting complex values to real ..."
        report = check_backends(lambda: _Rotation(5, 6), dtypes=(torch.float64, torch.float32))
    assert "cplx" not in report.skipped
    assert len(report.ran["cplx"]) == 16


class _CountState(NamedTuple):
    h: Tensor
    n: Tensor


class _Counting(Cell[_CountState]):
    """An Elman-like cell whose second state field has a fixed dtype (a float64 step count,
    whatever the compute dtype: ``StateField(dtype=...)``, docs/cell-abi.md section 2)."""

    state_type = _CountState

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = self.projected_size = hidden_size
        self.w = torch.nn.Parameter(torch.randn(hidden_size, input_size) / 3)
        self.u = torch.nn.Parameter(torch.randn(hidden_size, hidden_size) / 3)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)), StateField("n", (1,), dtype=torch.float64))

    def project(self, x: Tensor) -> Tensor:
        return x @ self.w.t()

    def recur(self, px_t: Tensor, state: _CountState) -> tuple[Tensor, _CountState]:
        h = torch.tanh(px_t + state.h @ self.u.t() + 0.01 * state.n.to(px_t.dtype))
        return h, _CountState(h, state.n + 1)


def test_a_state_field_of_fixed_dtype_keeps_it_in_every_configuration() -> None:
    """The backends and lengths checks cast every floating state field to the compute dtype,
    so a cell with a fixed-dtype field failed them in float32 with the forward's own
    ``TypeError`` (state.n must have dtype torch.float64)."""
    report = check_backends(lambda: _Counting(5, 6))
    assert len(report.ran["reference"]) == 24
    check_lengths(lambda: _Counting(5, 6))


# --- cells that break the ABI in ways only one check sees ---------------------------------------


class _Tally(_Counting):
    """``n`` counts steps and never reaches ``y`` (like sLSTM's stabiliser ``m``, which ``y`` is
    invariant to); its ``step_unchecked`` (a "faster equivalent") counts twice."""

    def recur(self, px_t: Tensor, state: _CountState) -> tuple[Tensor, _CountState]:
        h = torch.tanh(px_t + state.h @ self.u.t())
        return h, _CountState(h, state.n + 1)

    def step_unchecked(self, x_t: Tensor, state: _CountState) -> tuple[Tensor, _CountState]:
        y, s = self.recur(self.project(x_t), state)
        return y, s._replace(n=s.n + 1)


def test_a_step_wrong_only_in_a_state_field_y_does_not_read_is_caught() -> None:
    with pytest.raises(AssertionError, match=r"step vs forward: state\.n"):
        check_step_matches_forward(lambda: _Tally(5, 6))


class _OneRow(LSTM):
    """``recur`` returns ``y_t`` for the first example only."""

    def recur(self, px_t: Tensor, state: Any) -> Any:
        y, s = super().recur(px_t, state)
        return y[:1], s


def test_recur_s_output_batch_is_checked() -> None:
    with pytest.raises(AssertionError, match=r"returned y_t of shape \(1, 6\), expected \(3, 6\)"):
        check_recur(lambda: _OneRow(input_size=5, hidden_size=6))


class _LeadingAxis(_Rotation):
    """``coefficients`` gives ``a`` an extra leading axis: it broadcasts, but to a bigger
    shape than the state's."""

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        a, b = super().coefficients(px)
        return a.unsqueeze(0), b


def test_coefficients_with_an_extra_leading_axis_are_refused() -> None:
    with pytest.raises(AssertionError, match=r"returned a of shape \(1, 3, 6\), which does not"):
        check_recur(lambda: _LeadingAxis(5, 6))


def test_a_kernel_wrong_for_all_false_resets_is_caught() -> None:
    """A kernel whose reset path breaks when no example resets anywhere (say it finds the
    segment starts with ``nonzero()`` and mishandles none): the backends check's resets all
    have a reset, so only the resets check's all-false case sees it."""

    def bad_empty_mask(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        if call.resets is not None and not bool(call.resets.any()):
            y = y * 1.01
        return y, s

    with (
        use_host(_host(Kernel("mask", "lstm", bad_empty_mask, priority=99))),
        pytest.raises(AssertionError, match=r"all-false resets vs none"),
    ):
        check_resets(_make)


class _GradInto(torch.autograd.Function):
    """Identity on ``y`` whose backward also hands ``w`` a gradient of ones (a custom backward
    that accumulates a parameter gradient whatever the batch)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, w: Tensor) -> Tensor:
        ctx.w_like = torch.empty_like(w)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        return g, torch.ones_like(ctx.w_like)


def test_an_empty_batch_with_a_parameter_gradient_is_caught() -> None:
    def grad_into_bias(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        bias = call.cell.get_parameter("bias")
        out: Tensor = _GradInto.apply(y, bias)  # type: ignore[no-untyped-call]
        return out, s

    with (
        use_host(_host(Kernel("bias", "lstm", grad_into_bias))),
        pytest.raises(
            AssertionError, match=r"empty batch, backend=bias: non-zero gradient of bias"
        ),
    ):
        check_empty_batch(_make)
