"""Conformance and parallel-form checks for ParaGRU, ParaLSTM, LRU, S4D and Aaren."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import LRU, S4D, Aaren, ParaGRU, ParaLSTM


class TestParaGRU(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return ParaGRU(5, 6)


class TestParaLSTM(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return ParaLSTM(5, 6)


class TestParaLSTMNoPeepholes(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return ParaLSTM(5, 6, peepholes=False)


class TestAaren(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return Aaren(5, 6, heads=2)


class TestLRU(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return LRU(5, 6)


def test_lru_eigenvalues_inside_unit_disk() -> None:
    torch.manual_seed(0)
    for kw in ({}, {"r_min": 0.9, "r_max": 0.999}):
        cell = LRU(4, 64, **kw)  # type: ignore[arg-type]
        mod = cell.eigenvalues().abs()
        assert torch.all(mod < 1) and torch.all(mod > 0)
        assert torch.all(mod >= cell.r_min - 1e-6) and torch.all(mod <= cell.r_max + 1e-6)
        # gamma normalises: gamma = sqrt(1 - |lambda|^2) at initialisation
        gamma = torch.exp(cell.gamma_log)
        assert_close("gamma", gamma, torch.sqrt(1 - mod**2), 1e-5)
    # any parameter value keeps |lambda| < 1
    with torch.no_grad():
        cell.nu_log.uniform_(-20, 5)
    assert torch.all(cell.eigenvalues().abs() <= 1)


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("time", [1, 2, 37])
def test_aaren_parallel_equals_step(heads: int, time: int) -> None:
    torch.manual_seed(heads + time)
    cell = Aaren(5, 6, heads=heads).double()
    x = torch.randn(2, time, 5, dtype=torch.float64)
    resets = torch.rand(2, time) < 0.2
    for use_resets in (False, True):
        r = resets if use_resets else None
        y, final = cell(x, resets=r)  # auto: parallel prefix
        y_ref, final_ref = cell(x, resets=r, backend="reference")
        assert_close("aaren parallel vs reference", y, y_ref, 1e-12)
        for a, b in zip(final, final_ref, strict=True):
            assert_close("aaren final state", a, b, 1e-12)
    state = None
    ys = []
    for x_t in x.unbind(1):
        y_t, state = cell.step(x_t, state)
        ys.append(y_t)
    y, _ = cell(x)
    assert_close("aaren step vs parallel", torch.stack(ys, 1), y, 1e-12)


def test_aaren_is_softmax_attention() -> None:
    torch.manual_seed(0)
    cell = Aaren(4, 6, heads=2).double()
    x = 10 * torch.randn(1, 50, 4, dtype=torch.float64)  # large scores: stability
    y, _ = cell(x)
    # scores and values from the parameters, not from the cell's project: per head h, the
    # learned query q_h against k = W_k x, scaled by 1/sqrt(head_dim); v = W_v x + b_v
    with torch.no_grad():
        k = (x @ cell.weight_k.T).unflatten(-1, (2, 3))
        s = (k * cell.query).sum(-1) / math.sqrt(3)
        v = (x @ cell.weight_v.T + cell.bias_v).unflatten(-1, (2, 3))
    mask = torch.ones(50, 50, dtype=torch.bool).tril()
    logits = s.transpose(1, 2).unsqueeze(-2).expand(1, 2, 50, 50).masked_fill(~mask, -torch.inf)
    attn = torch.softmax(logits, -1)  # (1, heads, t, i)
    want = torch.einsum("bhti,bihd->bthd", attn, v).flatten(-2)
    assert_close("aaren vs softmax attention", y, want, 1e-12)


class TestS4D(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return S4D(5, 6, init="inv")
