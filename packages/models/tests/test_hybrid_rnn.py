"""The gated / attentive hybrid RNN (``hybrid_rnn``): conformance per update and with attention,
a float64 oracle written from the equations, and bad options named at construction."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from rnnkit.core import create_cell
from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit.models.cells import HYBRID_UPDATES, RHN, HybridRNN

F64 = torch.float64


class TestHybridLearnedRateAttention(CellConformance):
    """A learned rate with attention over one past state; the gated and additive updates run
    the kit in the registered sweep (tests/test_conformance_registered.py)."""

    def make_cell(self) -> Cell[Any]:
        return HybridRNN(5, 6, update="learned_rate", attention=1)

    @pytest.mark.experiment
    def test_compile(self) -> None:
        # compiling costs 5-15 s on 2 cores; the registered sweep compiles the first
        # configuration (gated, no attention) by default
        super().test_compile()


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _attend(cell: HybridRNN, u: Tensor, past: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The oracle's attention step: ``u: (B, H)`` attends over ``past`` (the window, oldest
    first) and itself; returns ``h_t`` and the next window."""
    assert cell.attn is not None
    wq, wk, wv, wo = cell.attn.detach()
    rows = [*past, u]
    s = torch.stack([((wq @ u.T).T * (wk @ m.T).T).sum(-1) for m in rows], -1)
    p = torch.softmax(s / math.sqrt(u.shape[-1]), -1)
    ctx = sum(p[:, j : j + 1] * (wv @ m.T).T for j, m in enumerate(rows))
    h = u + (wo @ ctx.T).T
    return h, [*past[1:], h]


def _candidate(cell: HybridRNN, pre: Tensor, h: Tensor) -> Tensor:
    """The oracle's candidate ``f`` from the first product's rows ``pre = W x + U h + b``: a
    tanh, or the RHN core's highway micro-steps from ``s_0 = h``."""
    hidden = h.shape[-1]
    if cell.core == "tanh":
        return torch.tanh(pre[:, :hidden])
    assert cell.deep is not None and cell.deep_bias is not None
    R, rb = cell.deep.detach(), cell.deep_bias.detach()
    s = h
    for layer in range(cell.depth):
        rows = pre[:, : 2 * hidden] if layer == 0 else s @ R[layer - 1].T + rb[layer - 1]
        c = torch.tanh(rows[:, :hidden])
        tr = torch.sigmoid(rows[:, hidden:])
        s = c * tr + s * (1 - tr)
    return s


@pytest.mark.parametrize("core", ["tanh", "rhn"])
@pytest.mark.parametrize("attention", [0, 3])
@pytest.mark.parametrize("update", HYBRID_UPDATES)
def test_hybrid_matches_its_equations(update: str, attention: int, core: str) -> None:
    """A float64 oracle written from the equations: the core's candidate (a tanh, or the RHN
    core of depth 3), then the update and the attention."""
    torch.manual_seed(0)
    hidden, time = 4, 7
    depth = 3 if core == "rhn" else 1
    cell = create_cell(
        "hybrid_rnn",
        input_size=3,
        hidden_size=hidden,
        update=update,
        attention=attention,
        core=core,
        depth=depth,
    ).double()
    with torch.no_grad():
        cell.bias.normal_()
        if cell.deep_bias is not None:
            cell.deep_bias.normal_()
        if cell.rate is not None:
            cell.rate.normal_()  # one rate per unit, not one shared value
    x = _randn(2, time, 3, seed=1)
    h = _randn(2, hidden, seed=2)
    k = max(attention, 1)
    window0 = _randn(2, k, hidden, seed=3)
    y, state = cell(x, (h, window0), backend="reference")
    W, U, b = (p.detach() for p in (cell.weight_ih, cell.recurrent, cell.bias))
    past = [window0[:, j] for j in range(k)]  # oldest first
    for t in range(time):
        pre = x[:, t] @ W.T + h @ U.T + b
        f = _candidate(cell, pre, h)
        if update == "gated":
            g = torch.sigmoid(pre[:, cell.candidate_size :])
            u = (1 - g) * h + g * f
        elif update == "learned_rate":
            a = torch.sigmoid(cell.rate.detach())
            u = (1 - a) * h + a * f
        elif update == "additive":
            u = h + f
        else:
            u = f
        h, past = _attend(cell, u, past) if attention else (u, past)
        assert_close(f"h_{t}", y[:, t], h, 1e-12)
    assert_close("final h", state.h, h, 1e-12)
    if attention:
        assert_close("final window", state.window, torch.stack(past, 1), 1e-12)
    else:
        assert_close("window carried", state.window, window0, 0.0)


def test_hybrid_parameter_counts_and_initialisation() -> None:
    n = lambda c: sum(p.numel() for p in c.parameters())  # noqa: E731
    i, h = 7, 10
    assert n(HybridRNN(i, h, update="replace")) == h * (i + h + 1)
    assert n(HybridRNN(i, h, update="additive")) == h * (i + h + 1)
    assert n(HybridRNN(i, h, update="learned_rate")) == h * (i + h + 1) + h
    assert n(HybridRNN(i, h, update="gated")) == 2 * h * (i + h + 1)
    assert n(HybridRNN(i, h, update="gated", attention=4)) == 2 * h * (i + h + 1) + 4 * h * h
    cell = HybridRNN(i, h, update="gated", gate_bias=-1.5)
    assert bool((cell.bias[h:] == -1.5).all()) and bool((cell.bias[:h] == 0).all())
    rate = HybridRNN(i, h, update="learned_rate", rate_init=2.0).rate
    assert rate is not None and bool((rate == 2.0).all())
    assert HybridRNN.forms == frozenset()
    assert HybridRNN(i, h).update == "gated"  # the default is the paper's best gating
    deep = 2 * 2 * h * (h + 1)  # two later micro-steps: [R_H; R_T] and [b_H | b_T] each
    assert n(HybridRNN(i, h, update="replace", core="rhn", depth=3)) == 2 * h * (i + h + 1) + deep
    assert n(HybridRNN(i, h, update="gated", core="rhn", depth=3)) == 3 * h * (i + h + 1) + deep
    rhn = HybridRNN(i, h, update="gated", core="rhn", depth=2, gate_bias=1.0, transform_bias=-3)
    assert rhn.deep_bias is not None
    assert bool((rhn.bias[h : 2 * h] == -3).all()) and bool((rhn.bias[2 * h :] == 1).all())
    assert bool((rhn.deep_bias[:, h:] == -3).all()) and bool((rhn.deep_bias[:, :h] == 0).all())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"update": "residual"}, "update"),
        ({"update": None}, "update"),
        ({"attention": -1}, "attention"),
        ({"attention": 2.0}, "attention"),
        ({"attention": True}, "attention"),
        ({"rate_init": math.nan}, "rate_init"),
        ({"gate_bias": math.inf}, "gate_bias"),
        ({"gate_bias": "0"}, "gate_bias"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"core": "lstm"}, "core"),
        ({"core": "rhn", "depth": 0}, "depth"),
        ({"depth": 2}, "depth"),
        ({"core": "rhn", "transform_bias": math.nan}, "transform_bias"),
        # options of parts the cell does not have are refused, not ignored
        ({"transform_bias": -4.0}, "transform_bias needs core='rhn'"),
        ({"update": "replace", "gate_bias": 1.0}, "gate_bias needs update='gated'"),
        ({"rate_init": 2.0}, "rate_init needs update='learned_rate'"),
    ],
)
def test_bad_options_raise_naming_the_argument(kwargs: dict[str, Any], name: str) -> None:
    sizes: dict[str, Any] = {"input_size": 3, "hidden_size": 4}
    sizes.update(kwargs)
    with pytest.raises(ValueError, match=name):
        HybridRNN(**sizes)


def test_rhn_core_replacing_without_attention_is_the_rhn_cell() -> None:
    """``core="rhn", update="replace"`` without attention computes what the RHN cell computes
    with the same weights (laid out the same: the first micro-step in ``weight_ih`` /
    ``recurrent`` / ``bias``, the later ones in ``deep`` / ``deep_bias``)."""
    torch.manual_seed(1)
    rhn = RHN(3, 5, depth=3).double()
    hybrid = HybridRNN(3, 5, update="replace", core="rhn", depth=3).double()
    with torch.no_grad():
        for p in rhn.parameters():
            p.normal_()
        assert hybrid.deep is not None and hybrid.deep_bias is not None
        hybrid.weight_ih.copy_(rhn.weight_ih)
        hybrid.recurrent.copy_(rhn.recurrent[0])
        hybrid.bias.copy_(rhn.bias[0])
        hybrid.deep.copy_(rhn.recurrent[1:])
        hybrid.deep_bias.copy_(rhn.bias[1:])
    x = _randn(3, 8, 3, seed=4)
    y_rhn, s_rhn = rhn(x, backend="reference")
    y_hyb, s_hyb = hybrid(x, backend="reference")
    assert_close("y", y_hyb, y_rhn, 1e-13)
    assert_close("state", s_hyb.h, s_rhn.s, 1e-13)


class TestHybridRHNCoreGatedAttention(CellConformance):
    """The RHN core (depth 2) with the gated update and attention over two past states: the
    paper's best combination."""

    def make_cell(self) -> Cell[Any]:
        return HybridRNN(5, 6, update="gated", attention=2, core="rhn", depth=2)

    @pytest.mark.experiment
    def test_compile(self) -> None:
        super().test_compile()


def test_rhn_core_defaults_to_the_rhn_cells_transform_bias_and_names_itself() -> None:
    """Without ``transform_bias`` every ``b_T`` of the RHN core (first and later micro-steps)
    starts at the RHN cell's default, -2.0 (carry mostly: the highway's initial bias); the
    repr names the core and its depth, the tanh core's does not."""
    i, h = 3, 4
    cell = HybridRNN(i, h, update="replace", core="rhn", depth=2)
    assert RHN(i, h).transform_bias == cell.transform_bias == -2.0
    assert cell.deep_bias is not None
    assert bool((cell.bias[h:] == -2.0).all()) and bool((cell.deep_bias[:, h:] == -2.0).all())
    assert "core='rhn', depth=2" in repr(cell)
    assert "core=" not in repr(HybridRNN(i, h))
