"""The conformance kit fails on wrong backends and broken cells: a kit that cannot fail is none."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from rnnkit.core import LSTM, Form, Kernel, KernelCall, ProtocolGap, StateField
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.reference import reference_forward
from rnnkit.core.testing import CHECKS, check_cell
from rnnkit.core.testing import checks as kit
from rnnkit.core.testing.checks import (
    check_backends,
    check_bad_input,
    check_chunking,
    check_compile,
    check_nan_propagation,
    check_recur,
    check_resets,
    check_state_spec,
    check_step_matches_forward,
)


def _host(kernel: Kernel) -> PluginHost:
    hook = module_plugin("bad", rnnkit_register_kernels=lambda register: register(kernel))
    return PluginHost(load_entry_points=False, plugins=[("core", core_plugin), ("bad", hook)])


def _make() -> LSTM:
    return LSTM(input_size=5, hidden_size=6)


def test_a_backend_off_by_a_little_is_caught() -> None:
    def slightly_off(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y * (1 + 1e-4), s

    with (
        use_host(_host(Kernel("off", "lstm", slightly_off))),
        pytest.raises(AssertionError, match=r"backend=off torch.float64 .* y: relative RMS"),
    ):
        check_backends(_make)


def test_a_backend_with_a_wrong_gradient_is_caught() -> None:
    def no_state_grad(call: KernelCall) -> Any:
        state = None if call.state is None else type(call.state)(*(s.detach() for s in call.state))
        return reference_forward(KernelCall(call.cell, call.x, state, call.resets, call.needs_grad))

    with (
        use_host(_host(Kernel("nograd", "lstm", no_state_grad))),
        pytest.raises(AssertionError, match=r"grad state\.h"),
    ):
        check_backends(_make)


def test_a_backend_ignoring_resets_is_caught() -> None:
    def ignore_resets(call: KernelCall) -> Any:
        return reference_forward(KernelCall(call.cell, call.x, call.state, None, call.needs_grad))

    with (
        use_host(_host(Kernel("noreset", "lstm", ignore_resets, priority=99))),
        pytest.raises(AssertionError, match="resets"),
    ):
        check_resets(_make)


class _LeakyStep(LSTM):
    """step() that differs from forward: a broken cell."""

    def step(self, x_t: torch.Tensor, state: Any = None) -> Any:
        y, s = super().step(x_t, state)
        return y + 1e-6, s


def test_a_cell_whose_step_differs_is_caught() -> None:
    with pytest.raises(AssertionError, match="step vs forward"):
        check_step_matches_forward(lambda: _LeakyStep(input_size=5, hidden_size=6))
    with pytest.raises(AssertionError):
        check_cell(lambda: _LeakyStep(input_size=5, hidden_size=6))


def test_checks_build_the_same_cell_whatever_ran_before() -> None:
    """A check's cell does not depend on the global RNG's state (test order), and building it
    leaves that state untouched."""
    from rnnkit.core.testing.checks import _f64

    torch.manual_seed(1)
    first = _f64(_make)
    torch.randn(100)  # whatever other tests draw in between
    before = torch.random.get_rng_state()
    second = _f64(_make)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
        assert p.dtype == torch.float64, name
        assert torch.equal(p, q), name


# --- what the kit checked (issue 14 item 16) ------------------------------------------------


def test_a_check_reports_what_ran_and_what_was_skipped_and_why() -> None:
    def never(call: KernelCall) -> str | None:
        return "needs a quantum computer"

    host = _host(Kernel("qpu", "lstm", reference_forward, supports=never))
    with use_host(host):
        report = check_backends(_make, dtypes=(torch.float64,))
    assert report.check == "backends" and report.cell == "LSTM"
    assert sorted(report.ran["reference"]) == sorted(
        f"float64 cpu {s}{r}{g}"
        for s in ("state", "no state")
        for r in ("", " resets")
        for g in ("", " no grad")
    )
    assert report.skipped == {"qpu": {"needs a quantum computer": report.ran["reference"]}}
    line = report.summary()
    assert line.startswith("backends on LSTM: ran reference x8")
    assert "skipped qpu x8 (needs a quantum computer)" in line


def test_check_cell_returns_every_check_s_report() -> None:
    reports = check_cell(_make, skip=("backends", "compile", "nan_propagation"))
    assert [r.check for r in reports] == [
        "state_spec", "recur", "step_matches_forward", "chunking", "resets", "empty_batch",
        "bad_input", "lengths",
    ]  # fmt: skip
    assert all(r.ran or r.notes for r in reports)


class _JacobianLSTM(LSTM):
    """Declares the diagonal-Jacobian form without implementing its protocol."""

    forms = frozenset({Form.GATED, Form.DIAGONAL_JACOBIAN})


def test_a_form_kernel_refusing_the_cell_for_a_missing_protocol_method_fails() -> None:
    def gap(call: KernelCall) -> str | None:
        return ProtocolGap(f"{type(call.cell).__name__} lacks jacobian_diag")

    host = _host(Kernel("solver", "diagonal_jacobian", reference_forward, supports=gap))
    make = lambda: _JacobianLSTM(input_size=5, hidden_size=6)  # noqa: E731
    with (
        use_host(host),
        pytest.raises(
            AssertionError,
            match=r"backend solver \(its kernel for 'diagonal_jacobian'.*lacks jacobian_diag",
        ),
    ):
        check_backends(make, dtypes=(torch.float64,))
    # a plain reason only skips
    plain = _host(Kernel("solver", "diagonal_jacobian", reference_forward, supports=str))
    with use_host(plain):
        report = check_backends(make, dtypes=(torch.float64,))
    assert "solver" in report.skipped and "solver" not in report.ran


class _TupleState(LSTM):
    """recur returns a plain tuple instead of the state_type."""

    def recur(self, px_t: torch.Tensor, state: Any) -> Any:
        y, s = super().recur(px_t, state)
        return y, tuple(s)


class _WideC(LSTM):
    """recur returns a c one unit too wide."""

    def recur(self, px_t: torch.Tensor, state: Any) -> Any:
        y, s = super().recur(px_t, state)
        return y, s._replace(c=torch.cat([s.c, s.c[:, :1]], 1))


def test_recur_s_state_is_checked_against_state_spec() -> None:
    with pytest.raises(AssertionError, match=r"_TupleState.recur\(\) .* not the cell's state_type"):
        check_recur(lambda: _TupleState(input_size=5, hidden_size=6))
    with pytest.raises(
        AssertionError, match=r"_WideC.recur\(\) .* state.c of shape \(3, 7\); state_spec says"
    ):
        check_recur(lambda: _WideC(input_size=5, hidden_size=6))
    check_recur(_make)


class _WideSpec(LSTM):
    """state_spec declares h one unit wider than recur takes."""

    def state_spec(self) -> tuple[StateField, ...]:
        c = super().state_spec()[1]
        return (StateField("h", (self.hidden_size + 1,)), c)


class _WideProjection(LSTM):
    """projected_size says one unit less than project returns."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.projected_size -= 1


class _LastStepProjection(LSTM):
    """project keeps only the last step: the right width, the wrong number of steps."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return super().project(x)[:, -1:]


def test_a_state_spec_recur_cannot_take_is_named_as_such() -> None:
    """recur raising on the state built from state_spec (a shape error deep in torch) fails
    with what init_state held and what to fix, the original error chained."""
    with pytest.raises(
        AssertionError,
        match=r"_WideSpec.recur\(\) from init_state raised RuntimeError\(.*\)\. init_state\(3\) "
        r"is built from state_spec \(h: \(3, 7\), c: \(3, 6\)\): if recur takes other shapes, "
        r"state_spec is what to fix",
    ) as caught:
        check_recur(lambda: _WideSpec(input_size=5, hidden_size=6))
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(AssertionError, match=r"from init_state raised .* \(test_recur, or check_"):
        check_state_spec(lambda: _WideSpec(input_size=5, hidden_size=6))
    with pytest.raises(
        AssertionError,
        match=r"project\(x\) of x \(4, 2, 5\) returned shape \(4, 2, 24\); the cell's "
        r"projected_size is 23",
    ):
        check_state_spec(lambda: _WideProjection(input_size=5, hidden_size=6))
    with pytest.raises(
        AssertionError, match=r"project\(x\) of x \(4, 2, 5\) returned shape \(4, 1, 24\)"
    ):
        check_state_spec(lambda: _LastStepProjection(input_size=5, hidden_size=6))


class _Float32C(LSTM):
    """state_spec gives c the fixed dtype float32, which recur does not return in float64."""

    def state_spec(self) -> tuple[StateField, ...]:
        h, c = super().state_spec()
        return (h, dataclasses.replace(c, dtype=torch.float32))


class _OneField(LSTM):
    """state_spec lists h only; the state_type has h and c."""

    def state_spec(self) -> tuple[StateField, ...]:
        return super().state_spec()[:1]


#: The checks that run the cell on the state its state_spec describes: all but state_spec and
#: recur, which say what is wrong, and bad_input, which runs no recurrence.
RUN_ON_THE_STATE = [c for c in CHECKS if c not in ("state_spec", "recur", "bad_input")]


@pytest.mark.parametrize("check", RUN_ON_THE_STATE)
def test_after_a_wrong_state_spec_the_other_checks_point_at_it(check: str) -> None:
    """They failed with torch's raw error ("mat1 and mat2 shapes cannot be multiplied"); now
    with one line naming the check that says what is wrong, their own error chained."""
    with pytest.raises(AssertionError) as caught:
        CHECKS[check](lambda: _WideSpec(input_size=5, hidden_size=6))
    message = str(caught.value)
    assert message.startswith(
        f"{check} cannot be checked while check_state_spec (test_state_spec) fails on this "
        "cell: forward(x, backend='reference') from init_state raised RuntimeError('mat1 and "
        "mat2 shapes cannot be multiplied"
    ), message
    assert "\n" not in message
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize("check", [c for c in RUN_ON_THE_STATE if c != "compile"])
def test_after_a_state_spec_recur_disagrees_with_the_other_checks_point_at_recur(
    check: str,
) -> None:
    """A dtype that only recur's state shows to be wrong: state_spec passes, recur fails (and
    compile, which casts no state, passes: a check that can run is not failed)."""
    if check in ("nan_propagation", "empty_batch"):
        # with the reference loop alone (rnnkit-core without rnnkit-kernels) these two compare
        # no second backend, so the state's dtype never meets a kernel and the check can run
        pytest.importorskip("rnnkit.kernels", reason=f"{check} fails here only beside a kernel")
    make = lambda: _Float32C(input_size=5, hidden_size=6)  # noqa: E731
    check_state_spec(make)
    with pytest.raises(
        AssertionError,
        match=rf"^{check} cannot be checked while check_recur \(test_recur\) fails on this cell: "
        r"_Float32C.recur\(\) from init_state returned state.c of dtype torch.float64; "
        r"state_spec says torch.float32$",
    ):
        CHECKS[check](make)


def test_a_state_spec_missing_a_field_is_named_by_every_check() -> None:
    """recur and bad_input failed with "Expected 2 arguments, got 1" (state_type._make)."""
    make = lambda: _OneField(input_size=5, hidden_size=6)  # noqa: E731
    names = r"state_spec names \['h'\] != state_type fields \('h', 'c'\)"
    for check in ("state_spec", "recur"):
        with pytest.raises(AssertionError, match=rf"^{names}"):
            CHECKS[check](make)
    with pytest.raises(
        AssertionError,
        match=rf"^bad_input cannot be checked while check_state_spec \(test_state_spec\) fails "
        rf"on this cell: {names}$",
    ):
        check_bad_input(make)


def test_a_check_failing_on_its_own_keeps_its_message_and_passing_costs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """state_spec and recur pass on _LeakyStep: its step_matches_forward failure is its own.
    A passing check never looks at state_spec and recur again."""
    with pytest.raises(AssertionError, match=r"^step vs forward: y: relative RMS"):
        check_step_matches_forward(lambda: _LeakyStep(input_size=5, hidden_size=6))

    def never(make: Any) -> None:
        raise AssertionError("a passing check re-ran state_spec and recur")

    monkeypatch.setattr(kit, "_foundation_failure", never)
    check_chunking(_make)


class _Decay(DiagonalLinearCell):
    """``h_t = sigmoid(px_t) * h_{t-1} + px_t``; ``bad`` gives ``a`` an extra axis."""

    kind = "decay_test"

    def __init__(self, input_size: int, hidden_size: int, bad: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = self.projected_size = hidden_size
        self.weight = torch.nn.Parameter(torch.randn(hidden_size, input_size) / 3)
        self.bad = bad

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)),)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    def coefficients(self, px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(px)
        return (a.unsqueeze(-2) if self.bad else a), px

    def readout(self, h: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        return h


def test_coefficients_must_broadcast_to_the_state() -> None:
    report = check_recur(lambda: _Decay(5, 6))
    assert "coefficients() broadcasts to the state" in report.notes
    with pytest.raises(
        AssertionError,
        match=r"_Decay.coefficients\(\) of one step px \(3, 6\) returned a of shape \(3, 1, 6\), "
        r"which does not broadcast to the state's shape \(3, 6\)",
    ):
        check_recur(lambda: _Decay(5, 6, bad=True))


def test_compile_is_checked_with_inputs_that_do_not_require_grad() -> None:
    def wrong_when_compiled_on_data(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        if torch.compiler.is_compiling() and not call.x.requires_grad:
            y = y * 1.5
        return y, s

    host = _host(Kernel("odd", "lstm", wrong_when_compiled_on_data, priority=99))
    with (
        use_host(host),
        pytest.raises(AssertionError, match=r"inputs do not require grad: y: relative RMS"),
    ):
        check_compile(_make)
    report = check_compile(_make)
    assert {c.split(" (")[0] for cs in report.ran.values() for c in cs} == {
        "inputs require grad",
        "inputs do not require grad",
    }


# --- NaN in, NaN out (issue 14 item 9) ----------------------------------------------------------


def test_a_backend_that_turns_nan_into_numbers_is_caught() -> None:
    def nan_to_num(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        return y.nan_to_num(), type(s)(*(t.nan_to_num() for t in s))

    with (
        use_host(_host(Kernel("tidy", "lstm", nan_to_num))),
        pytest.raises(
            AssertionError,
            match=r"backend=tidy NaN in x\[1, 2, 0\].*y: 18 finite where the reference is NaN",
        ),
    ):
        check_nan_propagation(_make)


class _NanFreeGrad(torch.autograd.Function):
    """Identity whose backward replaces NaN gradients by 0."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.nan_to_num(nan=0.0)


def test_a_backend_whose_backward_loses_the_nan_is_caught() -> None:
    def clean_backward(call: KernelCall) -> Any:
        x: torch.Tensor = _NanFreeGrad.apply(call.x)  # type: ignore[no-untyped-call]
        return reference_forward(KernelCall(call.cell, x, call.state, call.resets, True))

    with (
        use_host(_host(Kernel("clean", "lstm", clean_backward))),
        pytest.raises(
            AssertionError, match=r"grad x \(examples with a NaN\): 1 finite where the reference"
        ),
    ):
        check_nan_propagation(_make)


def test_the_nan_check_reports_each_case() -> None:
    report = check_nan_propagation(_make)
    cases = {c.rsplit(", ", 1)[0] for c in report.ran["reference"]}
    assert cases == {f"NaN in {n}[0]" for n, _ in _make().named_parameters()} | {
        "NaN in x[1, 2, 0]"
    }
