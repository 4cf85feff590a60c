"""S4D against float64 evaluations of its equations: the initialisations, both
discretisations, the recurrence, and the convolution mode against the recurrence."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.testing.checks import make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms
from rnnkit.models.cells import S4D


def test_initial_eigenvalues() -> None:
    """S4D-Lin ``-1/2 + i pi n`` and S4D-Inv ``-1/2 + i (N/pi)(N/(2n+1) - 1)``."""
    for init in ("lin", "inv"):
        cell = S4D(3, 8, init=init).double()
        A = torch.complex(-torch.exp(cell.a_log), cell.a_imag)
        for n in range(4):
            want = math.pi * n if init == "lin" else (8 / math.pi) * (8 / (2 * n + 1) - 1)
            assert torch.allclose(A[:, n], torch.tensor(complex(-0.5, want), dtype=A.dtype))
    dt = torch.exp(S4D(500, 4, dt_min=1e-3, dt_max=1e-1).dt_log.double())
    assert dt.min() >= 1e-3 - 1e-12 and dt.max() <= 1e-1 + 1e-12
    assert dt.log().std() > 0.5  # spread over the log range, not one value


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_recurrence_equals_the_equations(discretization: str) -> None:
    """``x_t = A_bar x_{t-1} + B_bar u_t``, ``y_t = 2 Re(sum C x_t) + D u_t``, per channel,
    written out in float64 with complex scalars, against the cell's ``reference`` run."""
    torch.manual_seed(0)
    H, N, T = 3, 4, 6
    cell = S4D(H, N, discretization=discretization).double()
    u = torch.randn(1, T, H, dtype=torch.float64)
    with torch.no_grad():
        y, (h_last,) = cell(u, backend="reference")
    for c in range(H):
        dt = math.exp(cell.dt_log[c].item())
        x = [0j] * (N // 2)
        for t in range(T):
            out = 0.0
            for n in range(N // 2):
                A = complex(-math.exp(cell.a_log[c, n].item()), cell.a_imag[c, n].item())
                if discretization == "zoh":
                    a_bar = complex(math.e ** (dt * A.real)) * complex(
                        math.cos(dt * A.imag), math.sin(dt * A.imag)
                    )
                    b_bar = (a_bar - 1) / A
                else:
                    a_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
                    b_bar = dt / (1 - dt * A / 2)
                x[n] = a_bar * x[n] + b_bar * u[0, t, c].item()
                C = complex(cell.C_re[c, n].item(), cell.C_im[c, n].item())
                out += 2 * (C * x[n]).real
            out += cell.D[c].item() * u[0, t, c].item()
            assert abs(y[0, t, c].item() - out) < 1e-12 * max(1.0, abs(out))
        got = h_last[0, c * (N // 2) : (c + 1) * (N // 2)]
        assert torch.allclose(got, torch.tensor(x, dtype=got.dtype), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("time", [1, 9, 37, 64])
def test_convolution_mode_equals_the_recurrence(
    dtype: torch.dtype, discretization: str, time: int
) -> None:
    """``s4d_conv`` against the float64 reference loop: outputs, final state and the gradients
    of the input, the initial state and every parameter."""
    torch.manual_seed(time)
    cell = S4D(5, 6, init="inv", discretization=discretization).double()
    p = make_problem(cell, batch=3, time=time, seed=time)
    for use_state in (False, True):
        want = run_cell(cell, p, backend="reference", dtype=torch.float64, use_state=use_state)
        got = run_cell(cell, p, backend="s4d_conv", dtype=dtype, use_state=use_state)
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        errs = {"y": rel_rms(got.y, want.y), "h": rel_rms(got.state[0], want.state[0])}
        assert got.grads.keys() == want.grads.keys()
        errs.update({k: rel_rms(got.grads[k], want.grads[k]) for k in want.grads})
        assert {"x", "param.dt_log", "param.a_log", "param.C_re", "param.D"} <= set(errs)
        bad = {k: f"{e:.1e}" for k, e in errs.items() if not e <= tol}
        assert not bad, (use_state, bad)


def test_auto_prefers_the_convolution_mode_without_resets() -> None:
    cell = S4D(3, 4)
    x = torch.randn(2, 7, 3)
    assert select(KernelCall(cell, x, None, None, True)).backend == "s4d_conv"
    resets = torch.zeros(2, 7, dtype=torch.bool)
    call = KernelCall(cell, x, None, resets, True)
    assert select(call).backend != "s4d_conv"
    with pytest.raises(Exception, match="cannot restart the state"):
        cell(x, resets=resets, backend="s4d_conv")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must be even"):
        S4D(3, 5)
    with pytest.raises(ValueError, match="init must be"):
        S4D(3, 4, init="legs")
    with pytest.raises(ValueError, match="discretization must be"):
        S4D(3, 4, discretization="euler")
    with pytest.raises(ValueError, match="dt_min"):
        S4D(3, 4, dt_min=0.2, dt_max=0.1)


def test_convolution_mode_keeps_a_nan_where_the_recurrence_has_it() -> None:
    """A NaN input spoils its channel from its step on (and that channel's final state), not
    the whole channel as the FFT would."""
    torch.manual_seed(0)
    cell = S4D(3, 4).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    x[1, 4, 2] = float("nan")
    with torch.no_grad():
        want_y, (want_h,) = cell(x, backend="reference")
        got_y, (got_h,) = cell(x, backend="s4d_conv")
    assert torch.equal(torch.isnan(got_y), torch.isnan(want_y))
    assert torch.equal(torch.isnan(got_h), torch.isnan(want_h))
    assert torch.isnan(want_y).sum() == 5
    ok = ~torch.isnan(want_y)
    assert rel_rms(got_y[ok], want_y[ok]) < 1e-10
