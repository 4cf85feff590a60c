"""DeltaNet: conformance, the matrix form of the delta rule, and what the memory recalls."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import DeltaNet


class TestDeltaNet(CellConformance):
    # rule="linear" and heads=3 run the kit in tests/test_conformance_registered.py
    def make_cell(self) -> Cell[Any]:
        return DeltaNet(5, 6, heads=2)


def _matrix_form(cell: DeltaNet, x: torch.Tensor) -> torch.Tensor:
    """Independent float64 loop: ``S_t = S_{t-1} (I - beta k k^T) + beta v k^T`` (delta) or
    ``S_{t-1} + beta v k^T`` (linear), per example and head, ``y_t = S_t q_t``."""
    B, T, _ = x.shape
    H, nh, d = cell.hidden_size, cell.heads, cell.head_dim
    W = cell.weight.detach().double()
    wb, bb = cell.weight_beta.detach().double(), cell.bias_beta.detach().double()
    c = cell.conv.detach().double()
    y = torch.zeros(B, T, H, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for b in range(B):
        S = [torch.zeros(d, d, dtype=torch.float64) for _ in range(nh)]
        prev = torch.zeros(3 * H, dtype=torch.float64)
        for t in range(T):
            p = W @ x[b, t]
            u = c[0] * p + c[1] * prev
            prev = p
            beta = torch.sigmoid(wb @ x[b, t] + bb)
            for h in range(nh):
                sl = slice(h * d, (h + 1) * d)
                q = torch.nn.functional.silu(u[:H][sl])
                k = torch.nn.functional.silu(u[H : 2 * H][sl])
                q, k = q / q.norm(), k / k.norm()
                v = u[2 * H :][sl]
                if cell.rule == "delta":
                    S[h] = S[h] @ (eye - beta[h] * torch.outer(k, k)) + beta[h] * torch.outer(v, k)
                else:
                    S[h] = S[h] + beta[h] * torch.outer(v, k)
                y[b, t, sl] = S[h] @ q
    return y


@pytest.mark.parametrize(("rule", "heads"), [("delta", 1), ("delta", 3), ("linear", 2)])
def test_reference_equals_the_matrix_form(rule: str, heads: int) -> None:
    torch.manual_seed(0)
    cell = DeltaNet(4, 6, heads=heads, rule=rule).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    y, _ = cell(x, backend="reference")
    assert_close(f"deltanet {rule} vs matrix form", y, _matrix_form(cell, x), 1e-12)


def _write_then_read(rule: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write value a, then value b under the same key (beta ~ 1), then read with that key.

    Input channels 0..3 drive the key/query (one direction), 4..7 the value; channel 8 is a
    constant 1 that sets beta ~ 1. No time shift (taps 1, 0). Returns (read, a, b)."""
    d = 4
    cell = DeltaNet(9, d, rule=rule).double()
    with torch.no_grad():
        cell.weight.zero_()
        eye = torch.eye(d, dtype=torch.float64)
        cell.weight[:d, :d] = eye  # q = x[:4]
        cell.weight[d : 2 * d, :d] = eye  # k = x[:4]
        cell.weight[2 * d :, d : 2 * d] = eye  # v = x[4:8]
        cell.weight_beta.zero_()
        cell.weight_beta[0, 8] = 40.0  # sigmoid(40) = 1 - 4e-18
        cell.bias_beta.zero_()
        cell.conv.copy_(torch.tensor([[1.0], [0.0]], dtype=torch.float64).expand(2, 3 * d))
    key = torch.tensor([3.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    b = torch.tensor([-1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    x = torch.stack([torch.cat((key, a, one)), torch.cat((key, b, one))])[None]
    y, _ = cell(x)
    return y[0, -1], a, b


def test_delta_rule_overwrites_linear_attention_adds() -> None:
    read, a, b = _write_then_read("delta")
    # the key's normalised silu has q . k = 1, so the delta rule returns exactly the new value
    assert_close("delta rule: overwritten value", read, b, 1e-12)
    read, a, b = _write_then_read("linear")
    assert_close("linear attention: both values", read, a + b, 1e-12)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must divide"):
        DeltaNet(3, 6, heads=4)
    with pytest.raises(ValueError, match="rule must be one of"):
        DeltaNet(3, 6, rule="gated")
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        DeltaNet(3, 0)
