"""Gated DeltaNet and linear attention: conformance, the gated recurrence written out, the
decays, and hyperparameter checks at construction."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import available_backends, backend_params, needs_kernels

from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import DeltaNet, GatedDeltaNet, LinearAttention
from rnnkit.models.cells.deltanet import _ConvMemory


class TestGatedDeltaNet(CellConformance):
    # the default, rule="linear" and LinearAttention's decays run the kit in
    # tests/test_conformance_registered.py. heads=2 (5 -> 6) is not used here: its bfloat16
    # run misses the bound on the 2-number gradient of bias_beta (chunked 3.8e-2, reference
    # loop 6.3e-3, bound 3e-2) although the per-step beta gradients it sums are closer to
    # float64 on chunked (1.0e-2) than on the reference loop (1.2e-2): a bfloat16 sum of 21
    # terms that cancel to a tenth of their size, i.e. rounding of that one draw.
    def make_cell(self) -> Cell[Any]:
        return GatedDeltaNet(5, 6, heads=3)


def _gated_form(cell: _ConvMemory, x: torch.Tensor) -> torch.Tensor:
    """Independent float64 loop, per example and head: ``alpha = exp(-exp(A_log) *
    softplus(w_alpha x + dt_bias))`` (gated), ``1 - 2^(-5 - h)`` (fixed) or 1, then
    ``S_t = alpha S_{t-1} (I - beta k k^T) + beta v k^T`` (delta) or ``alpha S_{t-1} + beta v
    k^T`` (linear), ``y_t = S_t q_t``."""
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
            if cell.decay == "gated":
                rate = torch.exp(cell.A_log.detach().double())
                a_in = cell.weight_alpha.detach().double() @ x[b, t]
                alpha = torch.exp(-rate * F.softplus(a_in + cell.dt_bias.detach().double()))
            elif cell.decay == "fixed":
                # RetNet's decays from the formula, not the cell's buffer (which a cell built in
                # float32 holds rounded to float32)
                alpha = 1 - 2.0 ** (-5.0 - torch.arange(nh, dtype=torch.float64))
            else:
                alpha = torch.ones(nh, dtype=torch.float64)
            for h in range(nh):
                sl = slice(h * d, (h + 1) * d)
                q = F.silu(u[:H][sl])
                k = F.silu(u[H : 2 * H][sl])
                q, k = q / q.norm(), k / k.norm()
                v = u[2 * H :][sl]
                if cell.rule == "delta":
                    S[h] = alpha[h] * S[h] @ (eye - beta[h] * torch.outer(k, k))
                else:
                    S[h] = alpha[h] * S[h]
                S[h] = S[h] + beta[h] * torch.outer(v, k)
                y[b, t, sl] = S[h] @ q
    return y


@pytest.mark.parametrize(
    "make",
    [
        lambda: GatedDeltaNet(4, 6),
        lambda: GatedDeltaNet(4, 6, heads=3),
        lambda: GatedDeltaNet(4, 6, heads=2, rule="linear"),
        lambda: LinearAttention(4, 6, heads=2),
        lambda: LinearAttention(4, 6, heads=3, decay="fixed"),
        lambda: LinearAttention(4, 6, heads=2, decay="gated"),
    ],
    ids=["gdn", "gdn-3heads", "gdn-linear", "la", "la-fixed", "la-gated"],
)
@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
def test_cells_equal_the_written_out_recurrence(make: Any, backend: str) -> None:
    torch.manual_seed(0)
    cell = make().double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    y, _ = cell(x, backend=backend)
    assert_close(f"{cell.kind} ({backend}) vs the recurrence", y, _gated_form(cell, x), 1e-12)


def test_without_decay_gated_deltanet_is_deltanet() -> None:
    """``exp(A_log) = 0`` makes ``alpha = 1``: Gated DeltaNet then gives DeltaNet's outputs
    with the same weights (the gate is the only difference)."""
    torch.manual_seed(1)
    gdn = GatedDeltaNet(4, 6, heads=2).double()
    dn = DeltaNet(4, 6, heads=2).double()
    with torch.no_grad():
        for name in ("weight", "weight_beta", "bias_beta", "conv"):
            getattr(dn, name).copy_(getattr(gdn, name))
        gdn.A_log.fill_(-math.inf)
    x = torch.randn(3, 10, 4, dtype=torch.float64)
    for backend in available_backends("reference", "chunked"):
        y, st = gdn(x, backend=backend)
        y_dn, st_dn = dn(x, backend=backend)
        assert_close("gated deltanet, alpha = 1", y, y_dn, 1e-14)
        assert_close("gated deltanet state, alpha = 1", st.S, st_dn.S, 1e-14)


@needs_kernels
def test_a_closed_gate_forgets() -> None:
    """A decay near 0 (large ``A``, large ``dt``) leaves only the current write in the memory:
    ``y_t = beta_t v_t (k_t . q_t)``, whatever came before."""
    torch.manual_seed(2)
    cell = GatedDeltaNet(4, 6, heads=2).double()
    with torch.no_grad():
        cell.A_log.fill_(math.log(100.0))
        cell.dt_bias.fill_(20.0)  # alpha = exp(-100 * 20): 0 in float64
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    y, _ = cell(x, backend="chunked")
    y_last, _ = cell(x[:, -1:], cell.init_state(2, dtype=torch.float64)._replace(
        prev=(x[:, -2] @ cell.weight.T).detach()), backend="reference")  # fmt: skip
    assert_close("closed gate: only the last write", y[:, -1], y_last[:, 0], 1e-12)


def test_initial_decays_follow_the_ranges() -> None:
    """``A ~ U(a_range)``, ``softplus(dt_bias)`` in ``dt_range``; RetNet's fixed decays."""
    torch.manual_seed(3)
    cell = GatedDeltaNet(4, 64, heads=64, a_range=(2.0, 3.0), dt_range=(0.01, 0.02))
    A, dt = torch.exp(cell.A_log), F.softplus(cell.dt_bias)
    assert bool(((A >= 2.0) & (A <= 3.0)).all()), A
    assert bool(((dt >= 0.01 * (1 - 1e-5)) & (dt <= 0.02 * (1 + 1e-5))).all()), dt
    fixed = LinearAttention(4, 6, heads=3, decay="fixed")
    want = torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7])
    torch.testing.assert_close(torch.exp(fixed.log_gamma), want)
    assert "log_gamma" in dict(fixed.named_buffers()) and "log_gamma" not in dict(
        fixed.named_parameters()
    )


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: GatedDeltaNet(3, 6, heads=4), "heads"),
        (lambda: GatedDeltaNet(3, 6, rule="gated"), "rule"),
        (lambda: GatedDeltaNet(3, 6, a_range=(0.0, 16.0)), "a_range"),
        (lambda: GatedDeltaNet(3, 6, a_range=(4.0, 2.0)), "a_range"),
        (lambda: GatedDeltaNet(3, 6, a_range=16.0), "a_range"),
        (lambda: GatedDeltaNet(3, 6, dt_range=(-1e-3, 0.1)), "dt_range"),
        (lambda: GatedDeltaNet(3, 6, dt_range=(1e-3, math.inf)), "dt_range"),
        (lambda: LinearAttention(3, 6, decay="exp"), "decay"),
        (lambda: LinearAttention(3, 6, decay="gated", dt_range=(0.1,)), "dt_range"),
        (lambda: LinearAttention(0, 6), "input_size"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make: Any, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        make()


def test_fixed_decays_come_in_the_input_s_dtype() -> None:
    """``decay="fixed"``'s log decays in the input's dtype: exact from the formula in float64,
    else computed in float32 and rounded once (a half-precision input gets half-precision
    decays, not float32 ones that would promote the recurrence)."""
    cell = LinearAttention(4, 6, heads=3, decay="fixed")
    exact = torch.log1p(-torch.exp2(-5.0 - torch.arange(3, dtype=torch.float64)))
    assert torch.equal(cell.fixed_log_decays(torch.zeros(2, dtype=torch.float64)), exact)
    single = cell.fixed_log_decays(torch.zeros(2))
    assert single.dtype == torch.float32
    for dtype in (torch.bfloat16, torch.float16):
        got = cell.fixed_log_decays(torch.zeros(2, dtype=dtype))
        assert got.dtype == dtype and torch.equal(got, single.to(dtype))
