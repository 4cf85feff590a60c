"""IndRNN, RHN and the leaky RNN with trainable timescales: conformance (every backend that can
run them: ``newton`` for IndRNN when rnnkit-kernels is installed), float64 oracles written from
the papers' equations, and hyperparameter errors at construction."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor

from rnnkit.core import create_cell
from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit.models.cells import RHN, IndRNN, LeakyRNN, ParaGRU, indrnn_u_max

F64 = torch.float64


class TestIndRNN(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return IndRNN(5, 6)


class TestIndRNNTanhClamped(CellConformance):
    def make_cell(self) -> Cell[Any]:
        # u drawn in (-1.2, 1.2) and clamped at 0.9: the clamp's zero gradient is exercised
        return IndRNN(5, 6, activation="tanh", u_max=0.9, u_init=(-1.2, 1.2))


class TestRHN(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return RHN(5, 6, depth=3)


class TestRHNDepth1(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return RHN(5, 6, depth=1)


class TestLeakyRNN(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return LeakyRNN(5, 6)


# --- oracles ------------------------------------------------------------------------------


def _inputs(batch: int, time: int, width: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, time, width, generator=gen, dtype=F64)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_indrnn_matches_its_equation(activation: str) -> None:
    torch.manual_seed(0)
    cell = create_cell(
        "indrnn",
        input_size=3,
        hidden_size=4,
        activation=activation,
        u_max=0.95,
        u_init=(-1.1, 1.1),
    ).double()
    with torch.no_grad():  # two units beyond the clamp, two inside
        cell.recurrent.copy_(torch.tensor([-1.2, -0.5, 0.7, 1.3], dtype=F64))
    x = _inputs(2, 9, 3, 1)
    y, state = cell(x, backend="reference")
    W, b = cell.weight_ih.detach(), cell.bias.detach()
    u = torch.tensor([-0.95, -0.5, 0.7, 0.95], dtype=F64)
    act = torch.relu if activation == "relu" else torch.tanh
    h = torch.zeros(2, 4, dtype=F64)
    for t in range(9):
        h = act(x[:, t] @ W.T + u * h + b)
        assert_close(f"h_{t}", y[:, t], h, 1e-12)
    assert_close("final", state.h, h, 1e-12)


def test_indrnn_declares_the_diagonal_jacobian_and_its_jacobian_is_exact() -> None:
    assert Form.DIAGONAL_JACOBIAN in IndRNN.forms
    torch.manual_seed(1)
    for activation in ("relu", "tanh"):
        cell = IndRNN(3, 5, activation=activation, u_init=(-1.0, 1.0)).double()
        px = cell.project(_inputs(2, 4, 3, 2)).detach()
        h = _inputs(2, 4, 5, 3)
        jac = cell.jacobian_diag(px, h)
        full = torch.autograd.functional.jacobian(partial(cell.recur_parallel, px), h)
        want = full.reshape(40, 40).diagonal().reshape(2, 4, 5)
        assert_close("jacobian", jac, want, 1e-12)
        # off-diagonal entries are exactly zero: the form's promise
        off = full.reshape(40, 40) - torch.diag(full.reshape(40, 40).diagonal())
        assert bool((off == 0).all())


def test_rhn_matches_its_equations() -> None:
    torch.manual_seed(0)
    depth, hidden = 3, 4
    cell = create_cell("rhn", input_size=3, hidden_size=hidden, depth=depth).double()
    with torch.no_grad():
        cell.bias.normal_()  # the oracle must see every layer's own biases
    x = _inputs(2, 6, 3, 1)
    s0 = _inputs(2, 1, hidden, 2)[:, 0]
    y, state = cell(x, (s0,), backend="reference")
    W_H, W_T = cell.weight_ih.detach().split(hidden)
    s = s0
    for t in range(6):
        for layer in range(depth):
            R_H, R_T = cell.recurrent[layer].detach().split(hidden)
            b_H, b_T = cell.bias[layer].detach().split(hidden)
            in_h = x[:, t] @ W_H.T if layer == 0 else 0.0
            in_t = x[:, t] @ W_T.T if layer == 0 else 0.0
            h = torch.tanh(in_h + s @ R_H.T + b_H)
            tr = torch.sigmoid(in_t + s @ R_T.T + b_T)
            s = h * tr + s * (1 - tr)  # coupled carry c = 1 - t
        assert_close(f"s_{t}", y[:, t], s, 1e-12)
    assert_close("final", state.s, s, 1e-12)


def test_rhn_initialisation_and_parameter_count() -> None:
    cell = RHN(7, 10, depth=4, transform_bias=-3.0)
    assert bool((cell.bias[:, 10:] == -3.0).all()) and bool((cell.bias[:, :10] == 0).all())
    n = sum(p.numel() for p in cell.parameters())
    assert n == 2 * 10 * 7 + 2 * 4 * 10 * 10 + 2 * 4 * 10
    assert RHN(7, 10).bias[0, 10:].eq(-2.0).all()  # the default T bias
    assert RHN.forms == frozenset()  # dense R: no form claims it


def test_leaky_rnn_matches_its_equation() -> None:
    torch.manual_seed(0)
    cell = create_cell(
        "leakyrnn", input_size=3, hidden_size=4, activation="leaky_relu", tau_init=(1.0, 5.0)
    ).double()
    x = _inputs(2, 7, 3, 1)
    y, state = cell(x, backend="reference")
    W, b, U = cell.weight_ih.detach(), cell.bias.detach(), cell.recurrent.detach()
    tau = 1 + torch.log1p(torch.exp(cell.tau_raw.detach()))
    h = torch.zeros(2, 4, dtype=F64)
    for t in range(7):
        pre = x[:, t] @ W.T + h @ U.T + b
        act = torch.where(pre >= 0, pre, 0.01 * pre)
        h = (1 - 1 / tau) * h + (1 / tau) * act
        assert_close(f"h_{t}", y[:, t], h, 1e-12)
    assert_close("final", state.h, h, 1e-12)


def test_leaky_rnn_timescales_stay_at_least_one_and_train() -> None:
    torch.manual_seed(0)
    cell = LeakyRNN(3, 64, tau_init=(1.0, 2.0))
    tau = cell.tau().detach()
    assert bool((tau >= 1).all()) and bool((tau <= 2 + 1e-5).all())
    assert float(tau.min()) < 1.1 and float(tau.max()) > 1.9  # the range is used
    with torch.no_grad():
        cell.tau_raw.copy_(torch.linspace(-200.0, 200.0, 64))  # any optimiser step
    assert bool((cell.tau() >= 1).all())
    cell = LeakyRNN(3, 4)
    y, _ = cell(torch.randn(2, 5, 3))
    y.sum().backward()
    assert cell.tau_raw.grad is not None and bool((cell.tau_raw.grad != 0).any())
    fixed = LeakyRNN(3, 4, train_tau=False)
    assert "tau_raw" not in dict(fixed.named_parameters())
    assert "tau_raw" in dict(fixed.named_buffers())


def test_indrnn_u_max_is_the_papers_recipe() -> None:
    assert indrnn_u_max(100) == pytest.approx(2 ** (1 / 100))
    assert indrnn_u_max(1, gamma=4.0) == pytest.approx(4.0)
    cell = IndRNN(2, 3, u_max=indrnn_u_max(10), u_init=(5.0, 6.0))
    assert bool((cell.effective_u() == indrnn_u_max(10)).all())


# --- bad hyperparameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (IndRNN, {"activation": "sigmoid"}, "activation"),
        (IndRNN, {"u_max": 0.0}, "u_max"),
        (IndRNN, {"u_max": math.inf}, "u_max"),
        (IndRNN, {"u_max": True}, "u_max"),
        (IndRNN, {"u_init": (1.0, 0.0)}, "u_init"),
        (IndRNN, {"u_init": (0.0, math.nan)}, "u_init"),
        (IndRNN, {"u_init": 0.5}, "u_init"),
        (IndRNN, {"hidden_size": 0}, "hidden_size"),
        (RHN, {"depth": 0}, "depth"),
        (RHN, {"depth": 2.5}, "depth"),
        (RHN, {"transform_bias": math.nan}, "transform_bias"),
        (LeakyRNN, {"tau_init": (0.5, 2.0)}, "tau_init"),
        (LeakyRNN, {"tau_init": (3.0, 2.0)}, "tau_init"),
        (LeakyRNN, {"activation": "gelu"}, "activation"),
        (LeakyRNN, {"input_size": -1}, "input_size"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(
    cls: type[Cell[Any]], kwargs: dict[str, Any], name: str
) -> None:
    config: dict[str, Any] = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} must"):
        cls(**config)


def test_indrnn_indrnn_u_max_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"^time must"):
        indrnn_u_max(0)
    with pytest.raises(ValueError, match=r"^gamma must"):
        indrnn_u_max(10, gamma=-1.0)


def test_auto_runs_indrnn_by_newton_only_on_narrow_batches() -> None:
    """IndRNN's ``newton_auto_work`` (2048) keeps ``auto`` on the loop from 1024 lanes on,
    where the measured Newton solve loses (docs/kernels-newton.md), and on Newton for a
    narrow batch of long sequences; after a solve that needed many iterations at a shape,
    ``auto`` goes back to the loop there."""
    pytest.importorskip("rnnkit.kernels.newton")
    from rnnkit.core.dispatch import KernelCall, select
    from rnnkit.kernels.newton import forget_failures, last_solve_info, newton_options

    forget_failures()
    torch.manual_seed(0)
    cell = IndRNN(4, 64, u_init=(0.9, 1.0))
    narrow = KernelCall(cell, torch.randn(4, 256, 4), None, None, needs_grad=True)
    wide = KernelCall(cell, torch.randn(16, 256, 4), None, None, needs_grad=True)
    assert select(narrow).backend == "newton" and select(wide).backend == "reference"
    with torch.no_grad(), newton_options(max_iters=200):
        cell(narrow.x)
    info = last_solve_info()
    assert info is not None and info.converged and info.iterations * 256 > 2048
    assert select(narrow).backend == "reference"
    forget_failures()


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("indrnn", lambda: IndRNN(3, 5, activation="tanh", u_init=(-1.0, 1.0))),
        ("paragru", lambda: ParaGRU(3, 5)),
        ("leakyrnn", lambda: LeakyRNN(3, 5)),
        ("rhn depth 1", lambda: RHN(3, 5, depth=1)),
        ("rhn depth 2", lambda: RHN(3, 5, depth=2)),
    ],
)
def test_the_diagonal_jacobian_form_is_declared_exactly_where_the_step_jacobian_is_diagonal(
    name: str, make: Any
) -> None:
    # Newton applies to a cell only through the form; a cell whose step Jacobian has one
    # off-diagonal entry must not declare it (Newton would silently solve another recurrence),
    # and one whose Jacobian is diagonal should (else `auto` never tries Newton on it).
    torch.manual_seed(3)
    cell = make().double()
    px = cell.project(_inputs(2, 1, 3, 4)).detach()[:, 0]
    h = _inputs(2, 1, 5, 5)[:, 0]
    state_type = cell.state_type

    def step(h_prev: Tensor) -> Tensor:
        _, new = cell.recur(px, state_type(h_prev))
        return new[0]

    full = torch.autograd.functional.jacobian(step, h).reshape(10, 10)
    off_diagonal = full - torch.diag(full.diagonal())
    declared = Form.DIAGONAL_JACOBIAN in type(cell).forms
    assert declared == bool((off_diagonal == 0).all()), name
