"""Cell-level behaviour beyond the conformance kit: heads, sLSTM stability, Recurrent stack."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.core import GRU, LSTM, SLSTM, Elman, Recurrent, create_cell, list_cells
from rnnkit.core.recurrent import reverse_resets
from rnnkit.core.testing import assert_close


def test_block_diagonal_heads_equal_the_dense_matrix() -> None:
    torch.manual_seed(0)
    cell = LSTM(4, 6, heads=3, dtype=torch.float64)
    h = torch.randn(2, 6, dtype=torch.float64)
    dense = cell.dense_recurrent()
    assert dense.shape == (24, 6)
    # off-diagonal blocks are zero
    assert torch.count_nonzero(dense[0:2, 2:6]) == 0
    assert_close("R h", cell.recurrent_term(h), h @ dense.T, 1e-12)


def test_heads_must_divide_hidden_size() -> None:
    with pytest.raises(ValueError, match="heads must be a positive divisor of hidden_size=6"):
        GRU(3, 6, heads=4)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        Elman(3, 0)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        Elman(3, 4, nonlinearity="sigmoid")


def test_slstm_is_stable_for_huge_input_gates() -> None:
    cell = SLSTM(2, 4, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.bias.zero_()
        cell.bias[:4] = 500.0  # exp(500) overflows float64 without the stabiliser
    y, state = cell(torch.randn(1, 20, 2, dtype=torch.float64))
    assert torch.isfinite(y).all() and torch.isfinite(state.c).all()
    assert (state.n >= 1 - 1e-12).all()


def test_slstm_m_does_not_change_h() -> None:
    """Shifting the stabiliser m while rescaling c and n by exp(-shift) leaves h unchanged."""
    torch.manual_seed(3)
    cell = SLSTM(3, 4, dtype=torch.float64)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    _, s = cell(x[:, :3])
    shift = 2.5
    scale = math.exp(-shift)
    s2 = s._replace(c=s.c * scale, n=s.n * scale, m=s.m + shift)
    y1, _ = cell(x[:, 3:], s)
    y2, _ = cell(x[:, 3:], s2)
    assert_close("h", y2, y1, 1e-12)


def test_registry_lookup() -> None:
    assert {"elman", "gru", "lstm", "slstm"} <= set(list_cells())
    assert list_cells("*lstm") == [n for n in list_cells() if n.endswith("lstm")]
    cell = create_cell("elman", input_size=2, hidden_size=3, nonlinearity="relu")
    assert isinstance(cell, Elman) and cell.nonlinearity == "relu"


def test_reverse_resets() -> None:
    r = torch.tensor([[False, False, True, False]])
    # boundary between steps 1 and 2; running backwards (3, 2 | 1, 0) resets before step 1,
    # which is reversed index 2
    assert reverse_resets(r).tolist() == [[False, False, True, False]]
    r = torch.tensor([[True, True, False, False, False]])
    assert reverse_resets(r).tolist() == [[False, False, False, False, True]]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_resets_equal_separate_episodes(bidirectional: bool) -> None:
    torch.manual_seed(4)
    stack = Recurrent("gru", 3, 4, 2, bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(1, 9, 3, dtype=torch.float64)
    resets = torch.zeros(1, 9, dtype=torch.bool)
    resets[0, 4] = True
    y, _ = stack(x, resets=resets)
    y_a, _ = stack(x[:, :4])
    y_b, _ = stack(x[:, 4:])
    assert_close("episode 1", y[:, :4], y_a, 1e-12)
    assert_close("episode 2", y[:, 4:], y_b, 1e-12)


def test_recurrent_state_layout_and_errors() -> None:
    stack = Recurrent("lstm", 3, 4, 2, bidirectional=True, heads=2)
    state = stack.init_state(5)
    assert state.h.shape == (4, 5, 4) and state.c.shape == (4, 5, 4)
    y, final = stack(torch.randn(5, 7, 3), state)
    assert y.shape == (5, 7, 8) and final.h.shape == (4, 5, 4)
    with pytest.raises(ValueError, match=r"state.h must have leading shape"):
        stack(torch.randn(5, 7, 3), state._replace(h=state.h[:2]))
    with pytest.raises(ValueError, match="x has input width 2"):
        stack(torch.randn(5, 7, 2))
    with pytest.raises(ValueError, match="dropout must be in"):
        Recurrent("lstm", 3, 4, dropout=1.5)


def test_recurrent_dropout_only_in_training() -> None:
    torch.manual_seed(5)
    stack = Recurrent("elman", 3, 8, 3, dropout=0.5)
    x = torch.randn(2, 5, 3)
    stack.eval()
    assert torch.equal(stack(x)[0], stack(x)[0])
    stack.train()
    assert not torch.equal(stack(x)[0], stack(x)[0])
