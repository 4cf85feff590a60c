"""Backend selection: auto, named backends, RNNKIT_BACKEND and the errors that say why."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core import LSTM, BackendUnavailableError, Kernel, KernelCall, create_cell
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.dispatch import select
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.reference import reference_forward
from rnnkit.core.testing import assert_close


def _host_with(*kernels: Kernel) -> PluginHost:
    def hook(register: Any) -> None:
        for k in kernels:
            register(k)

    # only core's own plugin besides the test kernels: installed backends must not interfere
    return PluginHost(
        load_entry_points=False,
        plugins=[
            ("core", core_plugin),
            ("extra", module_plugin("extra", rnnkit_register_kernels=hook)),
        ],
    )


def _tagged(tag: str) -> Any:
    def run(call: KernelCall) -> Any:
        y, s = reference_forward(call)
        run.calls.append(tag)  # type: ignore[attr-defined]
        return y, s

    run.calls = []  # type: ignore[attr-defined]
    return run


def test_auto_prefers_the_highest_priority_kernel_that_can_run() -> None:
    fast, never = _tagged("fast"), _tagged("never")
    host = _host_with(
        Kernel("fast", "gated", fast, priority=5),
        Kernel("never", "lstm", never, priority=9, available=lambda: "needs a GPU"),
    )
    with use_host(host):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        x = torch.randn(2, 5, 3)
        y, _ = cell(x)
        assert fast.calls == ["fast"] and never.calls == []
        assert_close("y", y, cell(x, backend="reference")[0], 1e-7)


def test_named_backend_that_cannot_run_says_why_and_what_auto_would_use() -> None:
    host = _host_with(
        Kernel("gpuonly", "lstm", reference_forward, priority=9, available=lambda: "no CUDA device")
    )
    with use_host(host):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        with pytest.raises(
            BackendUnavailableError,
            match=r"backend 'gpuonly' cannot run cell 'lstm' here: no CUDA device; "
            r"backend='auto' would use 'reference'",
        ):
            cell(torch.randn(2, 5, 3), backend="gpuonly")


def test_supports_reason_is_reported() -> None:
    host = _host_with(
        Kernel(
            "picky",
            "gated",
            reference_forward,
            supports=lambda c: (
                None if c.x.dtype == torch.float16 else f"supports float16 only, got {c.x.dtype}"
            ),
        )
    )
    with use_host(host):
        cell = create_cell("gru", input_size=3, hidden_size=4)
        with pytest.raises(
            BackendUnavailableError, match=r"supports float16 only, got torch\.float32"
        ):
            cell(torch.randn(2, 5, 3), backend="picky")


def test_backend_without_kernel_for_this_cell() -> None:
    host = _host_with(Kernel("lstmonly", "lstm", reference_forward))
    with use_host(host):
        cell = create_cell("gru", input_size=3, hidden_size=4)
        with pytest.raises(
            BackendUnavailableError, match=r"'lstmonly' has no kernel for cell 'gru'"
        ):
            cell(torch.randn(2, 5, 3), backend="lstmonly")


def test_unknown_backend_suggests_close_names() -> None:
    cell = LSTM(3, 4)
    with pytest.raises(ValueError, match=r"unknown backend 'refrence'; did you mean 'reference'"):
        cell(torch.randn(2, 5, 3), backend="refrence")


def test_rnnkit_backend_env_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    tagged = _tagged("t")
    host = _host_with(Kernel("other", "lstm", tagged, priority=-1))
    with use_host(host):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        cell(torch.randn(1, 2, 3))
        assert tagged.calls == []  # reference has the higher priority
        monkeypatch.setenv("RNNKIT_BACKEND", "other")
        cell(torch.randn(1, 2, 3))
        assert tagged.calls == ["t"]
        monkeypatch.setenv("RNNKIT_BACKEND", "nope")
        with pytest.raises(ValueError, match="unknown backend 'nope'"):
            cell(torch.randn(1, 2, 3))


def test_needs_grad_is_reported_to_kernels() -> None:
    seen: list[bool] = []

    def record(call: KernelCall) -> Any:
        seen.append(call.needs_grad)
        return reference_forward(call)

    host = _host_with(Kernel("rec", "lstm", record, priority=50))
    with use_host(host):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        cell(torch.randn(1, 2, 3))
        with torch.no_grad():
            cell(torch.randn(1, 2, 3))
        cell.requires_grad_(False)
        cell(torch.randn(1, 2, 3))
        cell(torch.randn(1, 2, 3, requires_grad=True))
    assert seen == [True, False, False, True]


def test_select_returns_the_kernel() -> None:
    cell = LSTM(3, 4)
    k = select(KernelCall(cell, torch.randn(1, 2, 3), None, None, False), "reference")
    assert k.backend == "reference"


def test_empty_sequence_returns_the_initial_state() -> None:
    cell = LSTM(3, 4)
    state = cell.init_state(2)
    state = state._replace(h=torch.randn(2, 4))
    y, final = cell(torch.randn(2, 0, 3), state, backend="reference")
    assert y.shape == (2, 0, 4)
    assert torch.equal(final.h, state.h)
