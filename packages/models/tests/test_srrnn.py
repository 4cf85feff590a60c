"""The state-regularised RNN: conformance, a float64 oracle written from the equations (GRU
and LSTM bases; soft, hard and straight-through), and hyperparameter errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit.models.cells import StateRegularized

F64 = torch.float64


class TestSRGRU(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return StateRegularized(5, 6, centroids=4)


class TestSRLSTM(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return StateRegularized(5, 6, centroids=7, base="lstm", temperature=0.5)


def _oracle(cell: StateRegularized, x: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The equations, one step at a time: ``(y: (B, T, H), final c)``."""
    batch, time, _ = x.shape
    hidden = cell.hidden_size
    w_ih, w_hh, b_ih, b_hh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    s = cell.centroids
    h = torch.zeros(batch, hidden, dtype=F64)
    c = torch.zeros(batch, hidden, dtype=F64)
    ys = []
    for t in range(time):
        gx = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if cell.base == "gru":
            r = torch.sigmoid(gx[:, :hidden] + gh[:, :hidden])
            z = torch.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            n = torch.tanh(gx[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
            u = (1 - z) * n + z * h
        else:
            i, f, g, o = (gx + gh).split(hidden, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            u = torch.sigmoid(o) * torch.tanh(c)
        scores = (u @ s.T) / cell.temperature
        alpha = torch.exp(scores - scores.max(1, keepdim=True).values)
        alpha = alpha / alpha.sum(1, keepdim=True)
        h = alpha @ s if mode == "soft" else s[scores.argmax(1)]
        ys.append(h)
    return torch.stack(ys, 1), c


@pytest.mark.parametrize("base", ["gru", "lstm"])
@pytest.mark.parametrize("mode", ["soft", "hard", "straight_through"])
def test_matches_its_equations(base: str, mode: str) -> None:
    torch.manual_seed(0)
    cell = StateRegularized(
        3,
        5,
        centroids=6,
        temperature=0.7,
        base=base,
        hard=mode == "hard",
        straight_through=mode == "straight_through",
        dtype=F64,
    )
    x = torch.randn(4, 9, 3, dtype=F64)
    y, state = cell(x)
    want, c = _oracle(cell, x, "soft" if mode == "soft" else "hard")
    assert_close("y", y, want, 1e-12)
    assert_close("h", state.h, want[:, -1], 1e-12)
    if base == "lstm":
        assert_close("c", state.c, c, 1e-12)
    if mode != "soft":  # every hard state is a centroid
        gap = (y.reshape(-1, 1, 5) - cell.centroids.unsqueeze(0)).abs().amax(-1)
        dist = gap.min(1).values
        assert float(dist.max()) < 1e-12


def test_straight_through_carries_the_soft_gradient() -> None:
    """One step from the same state: the value is the nearest centroid, the gradient that of
    the soft mixture."""
    torch.manual_seed(1)
    soft = StateRegularized(3, 5, centroids=6, dtype=F64)
    st = StateRegularized(3, 5, centroids=6, straight_through=True, dtype=F64)
    st.load_state_dict(soft.state_dict())
    x = torch.randn(4, 1, 3, dtype=F64)
    w = torch.randn(4, 1, 5, dtype=F64)
    grads = []
    for cell in (soft, st):
        y, _ = cell(x)
        grads.append(torch.autograd.grad((y * w).sum(), list(cell.parameters())))
    for a, b in zip(*grads, strict=True):
        assert_close("grad", b, a, 1e-12)


def test_bad_hyperparameters_name_the_argument() -> None:
    with pytest.raises(ValueError, match="centroids"):
        StateRegularized(3, 5, centroids=0)
    with pytest.raises(ValueError, match="temperature"):
        StateRegularized(3, 5, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        StateRegularized(3, 5, temperature=float("nan"))
    with pytest.raises(ValueError, match="base must be one of gru, lstm"):
        StateRegularized(3, 5, base="rnn")
