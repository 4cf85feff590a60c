"""The conformance kit fails on wrong backends and broken cells: a kit that cannot fail is none."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core import LSTM, Kernel, KernelCall
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.reference import reference_forward
from rnnkit.core.testing import check_cell
from rnnkit.core.testing.checks import check_backends, check_resets, check_step_matches_forward


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
