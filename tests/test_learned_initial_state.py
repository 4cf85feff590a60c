"""Every registered backend on cells whose ``init_state`` is overridden with a learnable initial
state (``nn.Parameter``s expanded over the batch, drawn at random, so not the fill
``StateField.init`` of the cell's ``state_spec``).

The conformance kit (``check_backends`` and ``check_lengths``, float64, with and without an
initial state and resets) runs each registered backend that accepts such a cell against the
``reference`` loop, values and every gradient (the initial-state parameters' included). A
backend either starts and restarts from the cell's ``init_state`` with its gradient (these
tests assert that it RAN the configurations with resets), or refuses the calls it cannot run
right with a reason naming the backend ``auto`` runs instead (these tests assert it was skipped
for that reason only where resets were given, and ran the others).

Before this was fixed, dispatch handed kernels ``state=None`` (some kernels then started from
zeros: ``s4d_conv``, ``lssl_conv``) and the fast kernels restarted resets from the fill
(``fused``, ``fused_cpp``, ``scan``, ``chunked``, the selective scans) or lost the gradient of
the state they restarted from (``newton``): each case below failed the kit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from rnnkit.core import Cell, overrides_init_state
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.testing.checks import check_backends, check_lengths, make_problem, run_cell
from rnnkit.core.testing.report import CheckReport
from rnnkit.models.cells.deltanet import DeltaNet
from rnnkit.models.cells.indrnn import IndRNN
from rnnkit.models.cells.mamba import Mamba
from rnnkit.models.cells.s4d import S4D

F64 = (torch.float64,)


class _LearnedStart:
    """Mixin for a cell class: ``init_state`` starts the fields named in ``self.start`` (an
    ``nn.ParameterDict``) from those parameters, expanded over the batch; a complex field's
    parameter holds its real and imaginary parts in a last dimension of 2."""

    start: nn.ParameterDict

    def init_state(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        fill = super().init_state(batch, device=device, dtype=dtype)  # type: ignore[misc]
        fields = []
        for name, value in zip(fill._fields, fill, strict=True):
            if name in self.start:
                p = self.start[name]
                if value.is_complex():
                    p = torch.view_as_complex(p.to(value.real.dtype))
                value = p.to(device=value.device, dtype=value.dtype).expand_as(value)
            fields.append(value)
        return type(fill)(*fields)


class LearnedElman(_LearnedStart, Elman):
    pass


class LearnedLSTM(_LearnedStart, LSTM):
    pass


class LearnedGRU(_LearnedStart, GRU):
    pass


class LearnedSLSTM(_LearnedStart, SLSTM):
    pass


class LearnedS4D(_LearnedStart, S4D):
    pass


class LearnedDeltaNet(_LearnedStart, DeltaNet):
    pass


class LearnedMamba(_LearnedStart, Mamba):
    pass


class LearnedIndRNN(_LearnedStart, IndRNN):
    pass


def _learn(cell: Cell[Any], draws: dict[str, Callable[[Tensor], Tensor]]) -> Cell[Any]:
    """Give ``cell`` a learnable start for each field in ``draws``: ``draws[name]`` maps a
    standard normal draw of the field's shape to its initial value."""
    gen = torch.Generator().manual_seed(1)
    spec = {f.name: f for f in cell.state_spec()}
    params = {}
    for name, draw in draws.items():
        f = spec[name]
        shape = (*f.shape, 2) if f.complex else f.shape
        params[name] = nn.Parameter(draw(torch.randn(shape, generator=gen)))
    cell.start = nn.ParameterDict(params)  # type: ignore[attr-defined]
    return cell


def _scaled(s: float, offset: float = 0.0) -> Callable[[Tensor], Tensor]:
    return lambda z: s * z + offset


@dataclass(frozen=True)
class Case:
    """A cell with a learnable initial state and what each backend must do with it.

    Attributes:
        make: the cell factory.
        supported: backends that must run the configurations with resets (and all others).
        refused: backends that must refuse exactly the configurations with resets, with a
            reason naming the backend ``auto`` runs instead; they run the others.
        started: backends that run only calls without resets (they refuse resets for every
            cell) and must run those.
    """

    make: Callable[[], Cell[Any]]
    supported: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)
    started: tuple[str, ...] = ()


def _gated(
    cls: type[Cell[Any]], heads: int, draws: dict[str, Callable[[Tensor], Tensor]]
) -> Callable[[], Cell[Any]]:
    """(torch's ops run one head only; two heads try the fused loops' head layout)"""
    return lambda: _learn(cls(5, 6, heads=heads), draws)  # type: ignore[call-arg]


CASES = {
    "elman": Case(
        _gated(LearnedElman, 1, {"h": _scaled(0.5)}),
        supported=("fused",),
        refused={"fused_cpp": "fused"},
        started=("torch",),
    ),
    "lstm": Case(
        _gated(LearnedLSTM, 1, {"h": _scaled(0.5), "c": _scaled(1.0)}),
        supported=("fused",),
        refused={"fused_cpp": "fused"},
        started=("torch",),
    ),
    "gru": Case(
        _gated(LearnedGRU, 2, {"h": _scaled(0.5)}),
        supported=("fused",),
        refused={"fused_cpp": "fused"},
    ),
    "slstm": Case(
        _gated(
            LearnedSLSTM,
            2,
            {
                "h": _scaled(0.5),
                "c": _scaled(1.0),
                "n": lambda z: 1.0 + 0.25 * z.abs(),  # a positive normaliser
                "m": _scaled(0.5),
            },
        ),
        supported=("fused",),
        refused={"fused_cpp": "fused"},
    ),
    "s4d": Case(
        lambda: _learn(LearnedS4D(3, 4), {"h": _scaled(0.5)}),
        supported=("scan",),
        started=("s4d_conv",),
    ),
    "deltanet": Case(
        lambda: _learn(LearnedDeltaNet(5, 4, heads=2), {"S": _scaled(0.3)}),
        supported=(),
        refused={"chunked": "reference"},
    ),
    "mamba": Case(
        lambda: _learn(LearnedMamba(3, 4, d_state=3, d_conv=2, expand=1), {"h": _scaled(0.5)}),
        supported=(),
        refused={"selective_torch": "reference", "selective_cpp": "reference"},
    ),
    "indrnn": Case(
        lambda: _learn(LearnedIndRNN(5, 6, activation="tanh"), {"h": _scaled(0.5)}),
        supported=("newton",),
    ),
}


def _ran(report: CheckReport, backend: str, resets: bool) -> list[str]:
    return [c for c in report.ran.get(backend, []) if ("resets" in c) == resets]


def _assert_as_declared(report: CheckReport, case: Case) -> None:
    for backend in case.supported:
        assert _ran(report, backend, resets=True), (backend, report.summary())
        assert _ran(report, backend, resets=False), (backend, report.summary())
    for backend in case.started:
        assert _ran(report, backend, resets=False), (backend, report.summary())
    for backend, instead in case.refused.items():
        assert _ran(report, backend, resets=False), (backend, report.summary())
        assert not _ran(report, backend, resets=True), (backend, report.summary())
        reasons = report.skipped.get(backend, {})
        why = [r for r, configs in reasons.items() if all("resets" in c for c in configs)]
        assert any("init_state" in r and f"'{instead}'" in r for r in why), (
            backend,
            report.summary(),
        )


@pytest.mark.parametrize("name", list(CASES))
def test_the_backends_start_and_restart_from_init_state(name: str) -> None:
    case = CASES[name]
    assert overrides_init_state(case.make())
    _assert_as_declared(check_backends(case.make, dtypes=F64), case)


@pytest.mark.parametrize("name", list(CASES))
def test_the_backends_hold_init_state_with_lengths(name: str) -> None:
    case = CASES[name]
    report = check_lengths(case.make)
    for backend in (*case.supported, *case.started, *case.refused):
        assert backend in report.ran, (backend, report.summary())


def test_the_builtin_cells_keep_the_fill() -> None:
    """No cell of rnnkit overrides init_state: dispatch and the kernels keep their fast
    paths for them (state=None handed on, restarts from the fill)."""
    for cell in (
        Elman(2, 2), LSTM(2, 2), GRU(2, 2), SLSTM(2, 2), S4D(2, 2), DeltaNet(2, 2),
        Mamba(2, 2), IndRNN(2, 2),
    ):  # fmt: skip
        assert not overrides_init_state(cell)


def test_an_instance_override_counts() -> None:
    cell = LSTM(3, 4)
    assert not overrides_init_state(cell)
    cell.init_state = lambda batch, **kw: LSTM.init_state(cell, batch, **kw)  # type: ignore[method-assign]
    assert overrides_init_state(cell)


def test_dispatch_hands_kernels_the_learned_state() -> None:
    """A kernel sees ``init_state``'s state (with its gradient), never ``None``, for a cell that
    overrides it; ``None`` for a cell that does not."""
    seen: list[KernelCall] = []
    cell = CASES["lstm"].make()
    kernel = next(k for k in kernels_for(cell) if k.backend == "fused")

    def spy(call: KernelCall) -> Any:
        seen.append(call)
        return kernel.run(call)

    spied = replace(kernel, backend="spy", run=spy)
    hook = module_plugin("spy", rnnkit_register_kernels=lambda register: register(spied))
    host = PluginHost(load_entry_points=False, plugins=[("core", core_plugin), ("spy", hook)])
    x = torch.randn(2, 3, 5)
    with use_host(host):
        cell(x, backend="spy")
        LSTM(5, 6, heads=2)(x, backend="spy")
    assert seen[0].state is not None and seen[0].state[0].requires_grad
    assert torch.equal(seen[0].state[0], cell.start["h"].expand(2, -1))  # type: ignore[attr-defined]
    assert seen[1].state is None


def test_fused_restarts_from_init_state_with_its_gradient() -> None:
    """The fused loops' restart values are init_state's rows, and their gradient reaches the
    initial-state parameters: a direct check, apart from the kit, in float32."""
    for name in ("elman", "lstm", "gru", "slstm"):
        cell = CASES[name].make()
        p = make_problem(cell.double())
        run: dict[str, Any] = {"dtype": torch.float32, "use_state": False, "use_resets": True}
        want = run_cell(cell, p, backend="reference", **run)
        got = run_cell(cell, p, backend="fused", **run)
        for key, w in want.grads.items():
            if key.startswith("param.start"):
                assert w.abs().sum() > 0, (name, key)
                torch.testing.assert_close(got.grads[key], w, rtol=1e-4, atol=1e-5)


def test_newton_sums_the_restart_gradient_over_its_tiles() -> None:
    """With several tiles (``newton_options(tile=2)``) and resets in more than one of them,
    the gradient of the learnable initial state is summed over the tiles (each tile's reverse
    pass adds the part of the restarts inside it), as the reference loop's."""
    from rnnkit.kernels.newton import newton_options

    cell = CASES["indrnn"].make().double()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 5, generator=gen, dtype=torch.float64)
    resets = torch.zeros(2, 8, dtype=torch.bool)
    resets[0, [1, 4, 7]] = True  # in three of the four tiles
    resets[1, 5] = True
    grads = {}
    for backend in ("reference", "newton"):
        cell.zero_grad(set_to_none=True)
        with newton_options(tile=2):
            y, (h,) = cell(x, resets=resets, backend=backend)
        (y.sum() + (h * h).sum()).backward()
        grads[backend] = cell.start["h"].grad.clone()  # type: ignore[attr-defined,union-attr]
    assert grads["reference"].abs().sum() > 0
    torch.testing.assert_close(grads["newton"], grads["reference"], rtol=1e-6, atol=1e-8)
