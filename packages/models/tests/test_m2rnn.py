"""M2RNN: the published equations in float64, the block-diagonal Jacobian, NaN propagation
and the checks of its block sizes (the conformance kit runs in
tests/test_conformance_registered.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import M2RNN, M2RNNState


def _equations(cell: M2RNN, x: torch.Tensor) -> torch.Tensor:
    """Independent float64 loop over examples, heads and rows of ``H``::

    Z = tanh(H W + k v^T), H = f H + (1 - f) Z, y = H^T q + D * v
    """
    B, T, _ = x.shape
    nh, K, V = cell.heads, cell.key_dim, cell.value_dim
    Wx = cell.weight.detach().double()
    W, D = cell.mix.detach().double(), cell.skip.detach().double()
    A, dt_bias = torch.exp(cell.A_log.detach().double()), cell.dt_bias.detach().double()
    y = torch.zeros(B, T, nh * V, dtype=torch.float64)
    for b in range(B):
        H = [torch.zeros(K, V, dtype=torch.float64) for _ in range(nh)]
        for t in range(T):
            p = Wx @ x[b, t]
            for h in range(nh):
                q = p[h * K : (h + 1) * K]
                k = p[nh * K + h * K : nh * K + (h + 1) * K]
                v = p[2 * nh * K + h * V : 2 * nh * K + (h + 1) * V]
                dt = math.log1p(math.exp(float(p[nh * (2 * K + V) + h] + dt_bias[h])))
                f = math.exp(-float(A[h]) * dt)
                Z = torch.stack([torch.tanh(H[h][i] @ W[h] + k[i] * v) for i in range(K)])
                H[h] = f * H[h] + (1 - f) * Z
                y[b, t, h * V : (h + 1) * V] = H[h].T @ q + D[h] * v
    return y


@pytest.mark.parametrize(("value_dim", "key_dim"), [(2, 3), (3, 2), (6, 1)])
def test_reference_equals_the_equations(value_dim: int, key_dim: int) -> None:
    torch.manual_seed(0)
    cell = M2RNN(4, 6, value_dim=value_dim, key_dim=key_dim).double()
    with torch.no_grad():  # a mixing matrix that is not the identity, D not 1
        cell.mix.add_(0.3 * torch.randn_like(cell.mix))
        cell.skip.mul_(torch.rand_like(cell.skip))
    x = 2 * torch.randn(2, 7, 4, dtype=torch.float64)
    y, (H,) = cell(x, backend="reference")
    assert_close("m2rnn vs equations", y, _equations(cell, x), 1e-12)
    assert H.shape == (2, 6 // value_dim, key_dim, value_dim)
    # the tanh is active: the state is not a linear function of the input
    y2, _ = cell(2 * x, backend="reference")
    assert (y2 - 2 * y).abs().max() > 1e-3


def test_initialisation() -> None:
    cell = M2RNN(5, 32, value_dim=16, key_dim=4)
    assert cell.heads == 2
    assert torch.equal(cell.mix, torch.eye(16).expand(2, 16, 16))
    assert torch.equal(cell.skip, torch.ones(2, 16))
    A = torch.exp(cell.A_log)
    assert bool(((A >= 1) & (A <= 16)).all())
    dt = F.softplus(cell.dt_bias)
    assert bool(((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all())


def test_jacobian_is_block_diagonal_over_rows() -> None:
    """``dH_t / dH_{t-1}`` couples entries of one row only (dense ``V x V`` blocks)."""
    torch.manual_seed(1)
    cell = M2RNN(3, 4, value_dim=4, key_dim=3).double()
    with torch.no_grad():  # W = I at initialisation would make each block diagonal too
        cell.mix.add_(0.3 * torch.randn_like(cell.mix))
    px = cell.project(torch.randn(1, 3, dtype=torch.float64))
    H0 = torch.randn(1, 1, 3, 4, dtype=torch.float64)

    def step(H: torch.Tensor) -> torch.Tensor:
        return cell.recur(px, M2RNNState(H))[1].H

    J = torch.autograd.functional.jacobian(step, H0).reshape(12, 12)
    rows = torch.arange(12) // 4
    off = rows[:, None] != rows[None, :]
    assert J[off].abs().max() == 0
    assert J[~off].abs().min() > 0  # every within-row block is dense


def test_nan_in_gives_nan_out_from_that_step() -> None:
    torch.manual_seed(0)
    cell = M2RNN(3, 4, value_dim=2, key_dim=2)
    x = torch.randn(2, 6, 3)
    x[1, 2, 0] = float("nan")
    y, (H,) = cell(x, backend="reference")
    assert bool(torch.isfinite(y[0]).all()) and bool(torch.isfinite(y[1, :2]).all())
    assert bool(torch.isnan(y[1, 2:]).all())
    assert bool(torch.isnan(H[1]).all()) and bool(torch.isfinite(H[0]).all())


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"value_dim": 4}, "value_dim"),  # 4 does not divide 6
        ({"value_dim": 0}, "value_dim"),
        ({"value_dim": 3, "key_dim": 0}, "key_dim"),
        ({"value_dim": 3, "key_dim": 2.5}, "key_dim"),
        ({"value_dim": 3, "a_range": (0.0, 16.0)}, "a_range"),
        ({"value_dim": 3, "dt_range": (0.1, 0.01)}, "dt_range"),
    ],
)
def test_bad_sizes_name_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        M2RNN(5, 6, **kw)  # type: ignore[arg-type]
