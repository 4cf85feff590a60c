"""Cell-level behaviour beyond the conformance kit: heads, sLSTM stability and its float64
oracle from the xLSTM equations, Recurrent stack."""

from __future__ import annotations

import importlib.util
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


def _slstm_oracle(
    cell: SLSTM,
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    initial: tuple[torch.Tensor, ...] | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """xLSTM (Beck et al. 2024), Section 2.2, Eqs. (8)-(13) without the stabiliser, one example,
    head and unit at a time in float64: pre-activations ``W x_t + R h_{t-1} + b`` with ``R``
    block-diagonal over heads, ``i = exp(i~)``, ``f = sigmoid(f~)`` (the sigmoid forget gate),
    ``z = tanh(z~)``, ``o = sigmoid(o~)``; ``c_t = f c + i z``, ``n_t = f n + i``,
    ``h_t = o c_t / n_t``. Returns ``(h: (B, T, H), c_T, n_T)``, the last two unscaled.
    ``initial`` is a state ``(h, c, n, m)`` as the cell keeps it (``c, n`` scaled by
    ``exp(-m)``); a reset starts from zero."""
    batch, time, _ = x.shape
    H, heads, D = cell.hidden_size, cell.heads, cell.head_dim
    W, b, R = params["weight_ih"], params["bias"], params["recurrent"]
    zero = torch.zeros(H, dtype=torch.float64)
    hs, cs, ns = [], [], []
    for e in range(batch):
        h, c, n = zero, zero, zero
        if initial is not None:
            h0, c0, n0, m0 = (s[e] for s in initial)
            h, c, n = h0, c0 * torch.exp(m0), n0 * torch.exp(m0)
        rows = []
        for t in range(time):
            if resets is not None and bool(resets[e, t]):
                h, c, n = zero, zero, zero
            gates = []
            for g in range(4):  # i, f, z, o
                pre = W[g * H : (g + 1) * H] @ x[e, t] + b[g * H : (g + 1) * H]
                rec = torch.cat([R[g, k] @ h[k * D : (k + 1) * D] for k in range(heads)])
                gates.append(pre + rec)
            i_gate, f_gate = torch.exp(gates[0]), torch.sigmoid(gates[1])
            z, o = torch.tanh(gates[2]), torch.sigmoid(gates[3])
            c = f_gate * c + i_gate * z
            n = f_gate * n + i_gate
            h = o * c / n
            rows.append(h)
        hs.append(torch.stack(rows))
        cs.append(c)
        ns.append(n)
    return torch.stack(hs), torch.stack(cs), torch.stack(ns)


@pytest.mark.parametrize("heads", [1, 2])
def test_slstm_equals_the_unstabilised_equations(heads: int) -> None:
    """The stabilised cell equals the paper's unstabilised recurrence where the latter does not
    overflow: outputs, ``c`` and ``n`` (the state holds them scaled by ``exp(-m)``), and the
    gradients of the input and of every parameter."""
    torch.manual_seed(4)
    cell = SLSTM(3, 4, heads=heads, dtype=torch.float64)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    y, state = cell(x, backend="reference")
    params = {k: p.detach().clone().requires_grad_(True) for k, p in cell.named_parameters()}
    x_o = x.detach().clone().requires_grad_(True)
    want, c, n = _slstm_oracle(cell, x_o, params)
    assert_close("slstm h", y, want, 1e-12)
    assert_close("slstm c", state.c * torch.exp(state.m), c, 1e-12)
    assert_close("slstm n", state.n * torch.exp(state.m), n, 1e-12)
    w = torch.randn_like(want)
    (y * w).sum().backward()
    (want * w).sum().backward()
    assert x.grad is not None and x_o.grad is not None
    assert_close("slstm d/dx", x.grad, x_o.grad, 1e-11)
    for name, p in cell.named_parameters():
        g_o = params[name].grad
        assert p.grad is not None and g_o is not None and g_o.abs().sum() > 0, name
        assert_close(f"slstm d/d{name}", p.grad, g_o, 1e-11)


_SLSTM_BACKENDS = ["reference"] + (["fused"] if importlib.util.find_spec("rnnkit.kernels") else [])


@pytest.mark.parametrize("backend", _SLSTM_BACKENDS)
@pytest.mark.parametrize("heads", [1, 3])
def test_slstm_equals_the_equations_from_a_state_with_resets(backend: str, heads: int) -> None:
    """As above from a given state ``(h, c, n, m)`` with resets, on the CPU backends: outputs,
    the unscaled ``c`` and ``n``, and the gradients of the input, of every field of the initial
    state and of every parameter."""
    torch.manual_seed(5)
    cell = SLSTM(4, 6, heads=heads, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64)
    initial = (
        0.5 * torch.randn(3, 6, generator=gen, dtype=torch.float64),
        torch.randn(3, 6, generator=gen, dtype=torch.float64),
        1 + torch.rand(3, 6, generator=gen, dtype=torch.float64),  # n > 0, as the cell keeps it
        torch.randn(3, 6, generator=gen, dtype=torch.float64),
    )
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = True  # the third example keeps its given state
    s_c = [t.clone().requires_grad_(True) for t in initial]
    s_o = [t.clone().requires_grad_(True) for t in initial]
    x_c, x_o = (x.clone().requires_grad_(True) for _ in range(2))
    params = {k: p.detach().clone().requires_grad_(True) for k, p in cell.named_parameters()}
    y, state = cell(x_c, cell.state_type(*s_c), backend=backend, resets=resets)
    want, c, n = _slstm_oracle(cell, x_o, params, tuple(s_o), resets)
    got_c, got_n = state.c * torch.exp(state.m), state.n * torch.exp(state.m)
    assert_close(f"slstm ({backend}) h", y, want, 1e-12)
    assert_close(f"slstm ({backend}) c", got_c, c, 1e-12)
    assert_close(f"slstm ({backend}) n", got_n, n, 1e-12)
    w = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (want, c, n)]
    names = list(params)
    got = torch.autograd.grad(
        (y * w[0]).sum() + (got_c * w[1]).sum() + (got_n * w[2]).sum(),
        [x_c, *s_c, *(dict(cell.named_parameters())[k] for k in names)],
    )
    exp = torch.autograd.grad(
        (want * w[0]).sum() + (c * w[1]).sum() + (n * w[2]).sum(),
        [x_o, *s_o, *(params[k] for k in names)],
    )
    labels = ["x", "h0", "c0", "n0", "m0", *names]
    for label, g, g_o in zip(labels, got, exp, strict=True):
        assert g_o.abs().sum() > 0, label
        assert_close(f"slstm ({backend}) d/d{label}", g, g_o, 1e-10)


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
