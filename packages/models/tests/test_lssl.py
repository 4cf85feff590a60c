"""LSSL against float64 evaluations of its equations: the LegS initialisation, the bilinear
discretisation, the dense recurrence, the Krylov kernel, and the convolution mode against the
recurrence in value and every gradient; plus the conformance kit."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.checks import make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms
from rnnkit.models import create_model
from rnnkit.models.cells import LSSL
from rnnkit.models.cells.hippo import legs
from rnnkit.models.cells.lssl import krylov


class TestLSSL(CellConformance):
    # share_a=False runs the kit in tests/test_conformance_registered.py
    def make_cell(self) -> Cell[Any]:
        return LSSL(5, 6)


def test_initialisation() -> None:
    cell = LSSL(3, 5, dt_min=1e-3, dt_max=1e-1, dtype=torch.float64)
    A, B = legs(5)
    assert cell.A.shape == (1, 5, 5) and torch.equal(cell.A[0].detach(), A)
    assert torch.equal(cell.B[0].detach(), B)
    per = LSSL(3, 5, share_a=False, dtype=torch.float64)
    assert per.A.shape == (3, 5, 5) and all(torch.equal(a.detach(), A) for a in per.A)
    dt = torch.exp(LSSL(400, 2).dt_log.double())
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    assert dt.log().std() > 0.5


def _bilinear(A: torch.Tensor, B: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^{-1} dt B`` with an
    explicit inverse."""
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    inv = torch.linalg.inv(eye - dt / 2 * A)
    return inv @ (eye + dt / 2 * A), inv @ (dt * B)


@pytest.mark.parametrize("share_a", [True, False])
def test_recurrence_equals_the_equations(share_a: bool) -> None:
    """``x_t = A_bar x_{t-1} + B_bar u_t``, ``y_t = C x_t + D u_t`` per channel, one matrix-
    vector product per step in float64, against ``reference`` and ``lssl_conv``, from zero and
    from a given initial state."""
    torch.manual_seed(0)
    H, N, T = 3, 4, 9
    cell = LSSL(H, N, share_a=share_a).double()
    with torch.no_grad():
        for p in (cell.A, cell.B):  # different per channel when not shared
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, T, H, dtype=torch.float64)
    h0 = torch.randn(2, H, N, dtype=torch.float64)
    for state in (None, h0):
        want_y = torch.zeros(2, T, H, dtype=torch.float64)
        want_h = torch.zeros(2, H, N, dtype=torch.float64)
        for c in range(H):
            g = 0 if share_a else c
            a_bar, b_bar = _bilinear(
                cell.A[g].detach(), cell.B[g].detach(), math.exp(cell.dt_log[c].item())
            )
            for b in range(2):
                x = torch.zeros(N, dtype=torch.float64) if state is None else state[b, c]
                for t in range(T):
                    x = a_bar @ x + b_bar * u[b, t, c]
                    want_y[b, t, c] = cell.C[c].detach() @ x + cell.D[c].item() * u[b, t, c]
                want_h[b, c] = x
        for backend in ("reference", "lssl_conv"):
            with torch.no_grad():
                y, (h,) = cell(u, None if state is None else (state,), backend=backend)
            assert rel_rms(y, want_y) < 1e-12, (backend, state is None)
            assert rel_rms(h, want_h) < 1e-12, (backend, state is None)


def test_krylov() -> None:
    """Columns ``a^l v`` for ``l < length``, for lengths around powers of two."""
    torch.manual_seed(1)
    a = torch.randn(2, 4, 4, dtype=torch.float64) / 2
    v = torch.randn(2, 4, dtype=torch.float64)
    for length in (1, 2, 3, 4, 5, 8, 13):
        got = krylov(a, v, length)
        assert got.shape == (2, 4, length)
        for l in range(length):  # noqa: E741
            want = torch.linalg.matrix_power(a, l) @ v.unsqueeze(-1)
            assert torch.allclose(got[..., l], want[..., 0], atol=1e-12), (length, l)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("time", [1, 9, 64])
@pytest.mark.parametrize("share_a", [True, False])
def test_convolution_mode_equals_the_recurrence(
    dtype: torch.dtype, time: int, share_a: bool
) -> None:
    """``lssl_conv`` against the float64 reference loop: outputs, final state and the gradients
    of the input, the initial state and every parameter (``A, B, C, D, dt_log``)."""
    torch.manual_seed(time)
    cell = LSSL(5, 6, share_a=share_a).double()
    p = make_problem(cell, batch=3, time=time, seed=time)
    for use_state in (False, True):
        want = run_cell(cell, p, backend="reference", dtype=torch.float64, use_state=use_state)
        got = run_cell(cell, p, backend="lssl_conv", dtype=dtype, use_state=use_state)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        errs = {"y": rel_rms(got.y, want.y), "h": rel_rms(got.state[0], want.state[0])}
        assert got.grads.keys() == want.grads.keys()
        errs.update({k: rel_rms(got.grads[k], want.grads[k]) for k in want.grads})
        want_keys = {"x", "param.A", "param.B", "param.C", "param.D", "param.dt_log"}
        assert want_keys <= set(errs)
        assert all(want.grads[k].abs().sum() > 0 for k in want_keys)
        bad = {k: f"{e:.1e}" for k, e in errs.items() if not e <= tol}
        assert not bad, (use_state, bad)


def test_auto_prefers_the_convolution_mode_without_resets() -> None:
    cell = LSSL(3, 4)
    x = torch.randn(2, 7, 3)
    assert select(KernelCall(cell, x, None, None, True)).backend == "lssl_conv"
    resets = torch.zeros(2, 7, dtype=torch.bool)
    assert select(KernelCall(cell, x, None, resets, True)).backend == "reference"
    with pytest.raises(Exception, match="cannot restart the state"):
        cell(x, resets=resets, backend="lssl_conv")


def test_convolution_mode_keeps_a_nan_where_the_recurrence_has_it() -> None:
    """A NaN input spoils its channel from its step on (and that channel's final state), not
    the whole channel as the FFT would."""
    torch.manual_seed(0)
    cell = LSSL(3, 4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    x[1, 4, 2] = float("nan")
    with torch.no_grad():
        want_y, (want_h,) = cell(x, backend="reference")
        got_y, (got_h,) = cell(x, backend="lssl_conv")
    assert torch.equal(torch.isnan(got_y), torch.isnan(want_y))
    assert torch.equal(torch.isnan(got_h), torch.isnan(want_h))
    assert torch.isnan(want_y).sum() == 5
    ok = ~torch.isnan(want_y)
    assert rel_rms(got_y[ok], want_y[ok]) < 1e-10


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        LSSL(3, 0)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        LSSL(0, 4)
    with pytest.raises(ValueError, match="dt_min"):
        LSSL(3, 4, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="dt_min"):
        LSSL(3, 4, dt_min=-1.0)
    with pytest.raises(TypeError, match="share_a"):
        LSSL(3, 4, share_a="yes")  # type: ignore[arg-type]


def test_in_the_ssm_network() -> None:
    torch.manual_seed(0)
    model = create_model(
        "ssm_classifier", input_size=2, output_size=4, cell="lssl", hidden_size=8, state_size=8
    )
    x = torch.randn(3, 9, 2, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 4)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
