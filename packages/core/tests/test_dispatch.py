"""Backend selection: auto, named backends, RNNKIT_BACKEND and the errors that say why."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from rnnkit.core import (
    LSTM,
    BackendUnavailableError,
    Elman,
    Kernel,
    KernelCall,
    create_cell,
    dispatch,
)
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.cells.elman import ElmanState
from rnnkit.core.dispatch import Priority, cell_method_kernel, ranking, select
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


def test_equal_tiers_go_by_key_not_by_registration_order() -> None:
    """docs/kernels.md: ``auto`` takes equal tiers in the order of the kernels' keys, so which
    one runs does not depend on the order plugins load in."""
    for order in ((0, 1), (1, 0)):
        pair = (Kernel("zzz", "lstm", _tagged("zzz")), Kernel("aaa", "lstm", _tagged("aaa")))
        with use_host(_host_with(*(replace(pair[i], priority=5) for i in order))):
            call = KernelCall(LSTM(3, 4), torch.randn(1, 2, 3), None, None, False)
            assert [k.backend for k in ranking(call)] == ["aaa", "zzz", "reference"]
            assert select(call).backend == "aaa"


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


def test_rnnkit_backend_env_leaves_a_named_backend_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """It replaces ``"auto"`` only: a call naming its backend runs that backend."""
    tagged = _tagged("t")
    with use_host(_host_with(Kernel("other", "lstm", tagged, priority=-1))):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        monkeypatch.setenv("RNNKIT_BACKEND", "other")
        cell(torch.randn(1, 2, 3), backend="reference")
        assert tagged.calls == []


def test_a_cell_s_backend_priority_replaces_the_kernel_s_tier() -> None:
    """``set_backend_priority`` (docs/kernels.md) wins over the kernel's own priority, also
    when it sets the tier 0 (``Priority.REFERENCE``): then the tie goes by key, and
    ``reference/*`` sorts before ``zfast/lstm``."""
    zfast = _tagged("zfast")
    with use_host(_host_with(Kernel("zfast", "lstm", zfast, priority=Priority.PORTABLE))):
        cell = create_cell("lstm", input_size=3, hidden_size=4)
        call = KernelCall(cell, torch.randn(1, 2, 3), None, None, False)
        assert select(call).backend == "zfast"
        for tier, picked in ((Priority.BELOW_REFERENCE, "reference"), (0, "reference")):
            cell.set_backend_priority("zfast", tier)
            assert select(call).backend == picked, tier
        cell.set_backend_priority("zfast", None)
        assert select(call).backend == "zfast"


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


class _OwnLoop(Elman):
    """An Elman cell with its own whole-sequence method (the reference loop, recording what
    it was given), the shape of a cell-owned kernel such as pLSTM's ``chunked``."""

    kind = "own_loop"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.seen: list[tuple[str, ElmanState | None, Tensor | None]] = []

    def loop_forward(
        self, x: Tensor, state: ElmanState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, ElmanState]:
        self.seen.append(("base", state, resets))
        y, final = reference_forward(KernelCall(self, x, state, resets, False))
        return y, ElmanState(*final)


class _Override(_OwnLoop):
    def loop_forward(
        self, x: Tensor, state: ElmanState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, ElmanState]:
        self.seen.append(("override", state, resets))
        y, final = reference_forward(KernelCall(self, x, state, resets, False))
        return y, ElmanState(*final)


class _Kindless(_OwnLoop):
    kind = ""


def _no_resets(cell: _OwnLoop, call: KernelCall) -> str | None:
    assert call.cell is cell
    return "no resets here" if call.resets is not None else None


def _own_kernel(**kw: Any) -> Kernel:
    return cell_method_kernel(
        _OwnLoop,
        _OwnLoop.loop_forward,
        backend="own",
        description="the cell's own loop",
        priority=Priority.PORTABLE,
        **kw,
    )


def test_cell_method_kernel_refuses_other_cells_as_the_hand_written_wrappers_did() -> None:
    kernel, labelled = _own_kernel(), _own_kernel(label="Own")
    assert (kernel.backend, kernel.target, kernel.priority) == ("own", "own_loop", 10)
    lstm = LSTM(3, 4)
    call = KernelCall(lstm, torch.randn(1, 2, 3), None, None, False)
    assert kernel.supports(call) == "runs _OwnLoop cells only, not LSTM"
    assert labelled.supports(call) == "runs Own cells only, not LSTM"
    with pytest.raises(TypeError, match=r"^the own backend runs _OwnLoop cells, got LSTM$"):
        kernel.run(call)
    with pytest.raises(TypeError, match=r"^the own backend runs Own cells, got LSTM$"):
        labelled.run(call)


def test_cell_method_kernel_rebuilds_the_state_and_calls_the_method() -> None:
    kernel = _own_kernel()
    cell = _OwnLoop(3, 4)
    x, h0 = torch.randn(2, 5, 3), torch.randn(2, 4)
    y, final = kernel.run(KernelCall(cell, x, (h0,), None, False))  # a plain tuple of fields
    ((who, state, resets),) = cell.seen
    assert who == "base" and resets is None
    assert type(state) is ElmanState and state.h is h0
    assert type(final) is ElmanState
    want = reference_forward(KernelCall(cell, x, ElmanState(h0), None, False))
    assert torch.equal(y, want[0]) and torch.equal(final.h, want[1][0])
    marks = torch.zeros(2, 5, dtype=torch.bool)
    kernel.run(KernelCall(cell, x, None, marks, False))
    assert cell.seen[1] == ("base", None, marks)  # no state stays None; resets passed on
    # a subclass's override of the method runs
    sub = _Override(3, 4)
    kernel.run(KernelCall(sub, x, None, None, False))
    assert [s[0] for s in sub.seen] == ["override"]


def test_cell_method_kernel_asks_supports_extra_after_the_type_check() -> None:
    kernel = _own_kernel(supports_extra=_no_resets)
    cell = _OwnLoop(3, 4)
    x = torch.randn(1, 2, 3)
    assert kernel.supports(KernelCall(cell, x, None, None, False)) is None
    marks = torch.zeros(1, 2, dtype=torch.bool)
    assert kernel.supports(KernelCall(cell, x, None, marks, False)) == "no resets here"
    # never asked with another cell (it would fail its assertion)
    assert kernel.supports(KernelCall(LSTM(3, 4), x, None, marks, False)) == (
        "runs _OwnLoop cells only, not LSTM"
    )


def test_cell_method_kernel_runs_through_dispatch() -> None:
    host = _host_with(_own_kernel(supports_extra=_no_resets))
    with use_host(host):
        cell = _OwnLoop(3, 4)
        x = torch.randn(2, 5, 3)
        y, _ = cell(x)  # auto: PORTABLE beats the reference loop
        assert [s[0] for s in cell.seen] == ["base"]
        assert torch.equal(y, cell(x, backend="reference")[0])
        cell(x, resets=torch.zeros(2, 5, dtype=torch.bool))  # refused: auto takes reference
        assert len(cell.seen) == 1
        with pytest.raises(BackendUnavailableError, match="no resets here"):
            cell(x, backend="own", resets=torch.zeros(2, 5, dtype=torch.bool))


class _LearnedOwnLoop(_OwnLoop):
    """An :class:`_OwnLoop` whose ``init_state`` is a learnable ``h`` (not the fill zeros)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.h_start = torch.nn.Parameter(torch.full((hidden_size,), 0.5))

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ElmanState:
        fill = super().init_state(batch, device=device, dtype=dtype)
        return ElmanState(self.h_start.to(fill.h).expand_as(fill.h))


#: ``cell_method_kernel``'s reason for resets on a cell whose ``init_state`` is not ``cls``'s
_FILL_RESTART = (
    "resets restart the state from the fill StateField.init here, not from {}'s own "
    "init_state (a learnable initial state?); backend='auto' runs such calls on another "
    "backend ('reference' at the latest), which restarts from init_state"
)


def test_cell_method_kernel_refuses_resets_for_a_cell_overriding_init_state() -> None:
    """The method restarts resets from what ``cls`` starts from: for a subclass (or an
    instance) with its own ``init_state`` the kernel refuses calls with resets, after
    ``supports_extra`` and unless ``restarts_from_init_state``; calls without resets run."""
    x = torch.randn(2, 5, 3)
    marks = torch.zeros(2, 5, dtype=torch.bool)
    learned = _LearnedOwnLoop(3, 4)
    kernel = _own_kernel()
    assert kernel.supports(KernelCall(learned, x, None, None, False)) is None
    assert kernel.supports(KernelCall(learned, x, None, marks, False)) == _FILL_RESTART.format(
        "_LearnedOwnLoop"
    )
    # the class's own init_state: resets run
    assert kernel.supports(KernelCall(_OwnLoop(3, 4), x, None, marks, False)) is None
    # an init_state set on the instance counts as well
    patched = _OwnLoop(3, 4)
    patched.init_state = learned.init_state  # type: ignore[method-assign]
    assert kernel.supports(KernelCall(patched, x, None, marks, False)) == _FILL_RESTART.format(
        "_OwnLoop"
    )
    # a method that restarts from init_state runs them
    restarting = _own_kernel(restarts_from_init_state=True)
    assert restarting.supports(KernelCall(learned, x, None, marks, False)) is None
    assert restarting.supports(KernelCall(patched, x, None, marks, False)) is None
    # supports_extra's own reason comes first
    extra = _own_kernel(supports_extra=_no_resets)
    assert extra.supports(KernelCall(learned, x, None, marks, False)) == "no resets here"
    # through dispatch: auto runs the call with resets on the reference loop
    with use_host(_host_with(_own_kernel())):
        cell = _LearnedOwnLoop(3, 4)
        cell(x)
        assert [s[0] for s in cell.seen] == ["base"]
        y, _ = cell(x, resets=marks | torch.eye(2, 5, dtype=torch.bool))
        assert len(cell.seen) == 1
        want, _ = cell(x, backend="reference", resets=marks | torch.eye(2, 5, dtype=torch.bool))
        assert torch.equal(y, want)


def test_cell_method_kernel_refuses_a_method_of_another_class_or_no_target() -> None:
    with pytest.raises(ValueError, match=r"pass _OwnLoop\.loop_forward"):
        cell_method_kernel(  # type: ignore[misc]  # (mypy refuses it as well)
            _OwnLoop,
            _Override.loop_forward,
            backend="own",
            description="",
            priority=Priority.PORTABLE,
        )

    def loop_elsewhere(self: _OwnLoop, x: Any, state: Any = None, *, resets: Any = None) -> Any:
        return self.loop_forward(x, state, resets=resets)

    with pytest.raises(
        ValueError,
        match=r"_OwnLoop has no attribute 'loop_elsewhere': define the method in the class body",
    ):
        cell_method_kernel(
            _OwnLoop, loop_elsewhere, backend="own", description="", priority=Priority.PORTABLE
        )
    with pytest.raises(ValueError, match="_Kindless has no kind: give cell_method_kernel a target"):
        cell_method_kernel(
            _Kindless, _Kindless.loop_forward, backend="own", description="", priority=0
        )
    kernel = cell_method_kernel(
        _Kindless, _Kindless.loop_forward, backend="own", description="", priority=0, target="t"
    )
    assert kernel.key == "own/t"


def test_is_exporting_only_under_torch_export() -> None:
    """``rnnkit.core.kernel.is_exporting`` is ``True`` while ``torch.export`` traces and
    ``False`` eagerly and under ``torch.compile`` (torch 2.11's ``torch.compiler.is_exporting``
    said ``True`` there, so kernels ranked and refused compiled calls as exported ones)."""
    from rnnkit.core.kernel import is_exporting

    seen: list[bool] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(is_exporting())
            return x + 1

    x = torch.randn(3)
    Probe()(x)
    torch._dynamo.reset()
    torch.compile(Probe(), backend="eager", fullgraph=True)(x)
    torch.export.export(Probe(), (x,))
    assert seen == [False, False, True]


def test_the_priority_tiers_are_the_documented_table() -> None:
    """docs/kernels.md's tier table (highest first) is the enum: a tier moved past its
    neighbour silently reorders ``auto`` for every kernel in it."""
    doc = (Path(__file__).parents[3] / "docs" / "kernels.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| (-?[\d,]+) \|", doc, flags=re.MULTILINE)
    assert [(name, int(value.replace(",", ""))) for name, value in rows] == sorted(
        ((p.name, int(p)) for p in Priority), key=lambda nv: -nv[1]
    )


def test_dispatch_without_a_kernel_source_says_what_to_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "_source", None)
    with pytest.raises(RuntimeError, match=r"no kernel source: import rnnkit\.core"):
        dispatch.registered_kernels()
