"""The conformance kit on a cell whose initial state is learnable: an ``nn.Parameter`` that
``init_state`` expands over the batch, so not the constant fill ``StateField.init``.

Such a cell passes every check (the kit used to demand the fill in ``state_spec`` and dropped
the parameter's gradient from the ``lengths`` oracle), and the kit still fails the ways such
a cell or a backend goes wrong: a backend that restarts from the fill, one that loses the
parameter's gradient, an ``init_state`` that ignores or detaches its parameter, ignores
``dtype`` or ``device``, or starts the examples from different states. A backend that would
start from the fill when given no state runs right: ``forward`` hands kernels ``init_state``'s
state for such a cell.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from rnnkit.core import Cell, Kernel, KernelCall, StateField
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.reference import reference_forward
from rnnkit.core.state import apply_resets
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.checks import check_backends, check_lengths, check_state_spec

F64 = (torch.float64,)


class _StartState(NamedTuple):
    h: Tensor
    c: Tensor


class _LearnedStart(Cell[_StartState]):
    """``h_t = c_{t-1} tanh(W x_t + U h_{t-1})``, ``c_t = 0.9 c_{t-1} + 0.1 h_t``: ``h`` starts
    from the learnable ``h0`` (drawn at random, so not the fill 0), ``c`` from the fill 1."""

    kind = "learned_start_test"
    state_type = _StartState

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = self.projected_size = hidden_size
        self.w = nn.Parameter(torch.randn(hidden_size, input_size) / 3)
        self.u = nn.Parameter(torch.randn(hidden_size, hidden_size) / 3)
        self.h0 = nn.Parameter(torch.randn(hidden_size))

    def state_spec(self) -> tuple[StateField, ...]:
        n = (self.hidden_size,)
        return (StateField("h", n), StateField("c", n, init=1.0))

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> _StartState:
        fill = super().init_state(batch, device=device, dtype=dtype)
        h0 = self.h0.to(device=fill.h.device, dtype=fill.h.dtype)
        return fill._replace(h=h0.expand(batch, -1))

    def project(self, x: Tensor) -> Tensor:
        return x @ self.w.t()

    def recur(self, px_t: Tensor, state: _StartState) -> tuple[Tensor, _StartState]:
        h = state.c * torch.tanh(px_t + state.h @ self.u.t())
        return h, _StartState(h, 0.9 * state.c + 0.1 * h)


def _make() -> _LearnedStart:
    return _LearnedStart(5, 6)


class TestLearnedStart(CellConformance):
    """Every check passes (state_spec and lengths failed before)."""

    def make_cell(self) -> _LearnedStart:
        return _make()


def _host(kernel: Kernel) -> PluginHost:
    hook = module_plugin("bad", rnnkit_register_kernels=lambda register: register(kernel))
    return PluginHost(load_entry_points=False, plugins=[("core", core_plugin), ("bad", hook)])


# --- backends that get the learnable initial state wrong --------------------------------------


def _from_the_fill(where: str) -> Kernel:
    """The reference loop, but the state starts (``where="start"``, no state given) or restarts
    (``"resets"``) from the fill ``StateField.init``, as a kernel does that reads the initial
    state from ``state_spec`` instead of calling ``init_state``."""

    def run(call: KernelCall) -> Any:
        cell, x = call.cell, call.x
        batch, device, dtype = x.shape[0], x.device, x.dtype
        fill: Any = Cell.init_state(cell, batch, device=device, dtype=dtype)  # StateField.init
        initial: Any = cell.init_state(batch, device=device, dtype=dtype)
        start, restart = (fill, initial) if where == "start" else (initial, fill)
        state = start if call.state is None else call.state
        ys = []
        for t, px_t in enumerate(cell.project(x).unbind(1)):
            if call.resets is not None:
                state = apply_resets(state, restart, call.resets[:, t])
            y_t, state = cell.recur(px_t, state)
            ys.append(y_t)
        return torch.stack(ys, 1), state

    return Kernel("fill", "learned_start_test", run)


def test_a_backend_restarting_from_the_fill_is_caught() -> None:
    with (
        use_host(_host(_from_the_fill("resets"))),
        pytest.raises(AssertionError, match=r"backend=fill .*resets=True: y: relative"),
    ):
        check_backends(_make, dtypes=F64)


def test_the_lengths_check_sees_a_backend_restarting_from_the_fill() -> None:
    with (
        use_host(_host(_from_the_fill("resets"))),
        pytest.raises(AssertionError, match=r"backend=fill .* state=False resets=True: y: rel"),
    ):
        check_lengths(_make)


def test_a_backend_that_would_start_from_the_fill_is_handed_init_state() -> None:
    """``forward`` never hands such a cell's kernels ``state=None``: one that would start from
    the fill then (a kernel written for cells with the base ``init_state``) runs right."""
    with use_host(_host(_from_the_fill("start"))):
        assert "fill" in check_backends(_make, dtypes=F64).ran
        assert "fill" in check_lengths(_make).ran


def _detached_restart(call: KernelCall) -> Any:
    """The reference loop restarting from ``init_state`` detached: right values, no gradient
    for h0 from the resets."""
    cell, x = call.cell, call.x
    assert call.state is not None  # forward hands a learnable initial state (with its grad)
    if call.resets is None or x.shape[1] == 0:
        return reference_forward(call)
    start = cell.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    restart = type(start)(*(s.detach() for s in start))
    state, ys = call.state, []
    for t, px_t in enumerate(cell.project(x).unbind(1)):
        state = apply_resets(state, restart, call.resets[:, t])
        y_t, state = cell.recur(px_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("check", [check_backends, check_lengths], ids=["backends", "lengths"])
def test_a_backend_losing_the_initial_state_s_gradient_is_caught(check: Any) -> None:
    with (
        use_host(_host(Kernel("nograd", "learned_start_test", _detached_restart))),
        pytest.raises(AssertionError, match=r"backend=nograd .* resets=True: grad param\.h0"),
    ):
        check(_make)


# --- cells whose init_state gets it wrong -----------------------------------------------------


class _IgnoredStart(_LearnedStart):
    """``init_state`` ignores its parameter (the fill) or detaches it: h0 is never learnt."""

    def __init__(self, input_size: int, hidden_size: int, how: str) -> None:
        super().__init__(input_size, hidden_size)
        self.how = how

    def init_state(self, batch: int, **kwargs: Any) -> _StartState:
        state = super().init_state(batch, **kwargs)
        if self.how == "ignores":
            return Cell.init_state(self, batch, **kwargs)
        return state._replace(h=state.h.detach())


@pytest.mark.parametrize("how", ["ignores", "detaches"])
def test_an_init_state_ignoring_its_parameter_is_caught(how: str) -> None:
    make = lambda: _IgnoredStart(5, 6, how)  # noqa: E731
    check_state_spec(make)  # a constant fill or a detached h0: a valid initial state ...
    with pytest.raises(  # ... but h0 is no parameter of the computation
        AssertionError,
        match=r"parameter h0 of _IgnoredStart gets no gradient from the reference loop, with or "
        r"without an initial state and resets: forward does not use it",
    ):
        check_backends(make, dtypes=F64)


class _CarelessStart(_LearnedStart):
    """``init_state`` expands h0 as it is, whatever ``dtype`` or ``device`` asks (``fault``),
    or gives each example another start (``"rows"``)."""

    def __init__(self, input_size: int, hidden_size: int, fault: str) -> None:
        super().__init__(input_size, hidden_size)
        self.fault = fault

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> _StartState:
        fill = Cell.init_state(self, batch, device=device, dtype=dtype)
        h0 = self.h0.expand(batch, -1)
        if self.fault == "device":
            h0 = h0.to(dtype=fill.h.dtype)
        elif self.fault == "rows":
            h0 = h0.to(fill.h) + torch.arange(batch).to(fill.h).unsqueeze(1)
        return _StartState(h0, fill.c)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "dtype",
            r"init_state\(4, dtype=torch.float32\).h has dtype torch.float64; state_spec says "
            r"torch.float32",
        ),
        ("device", r"init_state\(2, device='meta'\).h is on cpu: init_state must put the state"),
        ("rows", r"init_state\(4, dtype=torch.float64\).h differs between examples"),
    ],
    ids=["dtype", "device", "rows"],
)
def test_an_init_state_ignoring_dtype_device_or_batch_is_caught(fault: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_state_spec(lambda: _CarelessStart(5, 6, fault))


class _FrozenAndEmpty(_LearnedStart):
    """A learnable start besides a frozen parameter (``requires_grad=False``: autograd gives
    it no gradient, however ``forward`` uses it) and a parameter of size 0 (no entry to get a
    nonzero gradient): neither is a parameter ``forward`` leaves unused."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.scale = nn.Parameter(torch.full((hidden_size,), 0.8), requires_grad=False)
        self.nothing = nn.Parameter(torch.empty(0))

    def project(self, x: Tensor) -> Tensor:
        return super().project(x) * self.scale


def test_frozen_and_empty_parameters_are_not_taken_for_unused_ones() -> None:
    report = check_backends(lambda: _FrozenAndEmpty(5, 6), dtypes=F64)
    assert report.ran["reference"], report.summary()
