"""S5 against float64 evaluations of its equations: the block-diagonal HiPPO-N initialisation,
both discretisations, the MIMO recurrence on every diagonal-linear backend, resets at episode
boundaries, and the conformance kit."""

from __future__ import annotations

import cmath
import itertools
import math
from typing import Any

import pytest
import torch
from conftest import HAS_KERNELS, backend_params, needs_kernels

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.checks import make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms
from rnnkit.models import create_model
from rnnkit.models.cells import S5
from rnnkit.models.cells.hippo import hippo_n_half, legs_normal
from rnnkit.models.cells.s5 import phi1, s5_init


class TestS5(CellConformance):
    # blocks=1 and bilinear run the kit in tests/test_conformance_registered.py
    def make_cell(self) -> Cell[Any]:
        return S5(5, 6, blocks=3)


def _backends(cell: S5, x: torch.Tensor) -> list[str]:
    """The backends that can run ``cell`` on ``x`` (``reference`` and the scans)."""
    call = KernelCall(cell, x, None, None, True)
    return [k.backend for k in kernels_for(cell) if k.why_not(call) is None]


def _oracle(cell: S5, u: torch.Tensor, discretization: str) -> tuple[list[list[float]], list]:
    """``y: (T, H)`` and the final state of one sequence ``u: (T, H)``, written out with
    Python complex scalars from the equations."""
    T, H = u.shape
    M = cell.states
    lam = [
        complex(-math.exp(cell.lambda_log[j].item()), cell.lambda_imag[j].item()) for j in range(M)
    ]
    dt = [math.exp(cell.dt_log[j].item()) for j in range(M)]
    Bt = [
        [complex(cell.B_re[j, c].item(), cell.B_im[j, c].item()) for c in range(H)]
        for j in range(M)
    ]
    Ct = [
        [complex(cell.C_re[c, j].item(), cell.C_im[c, j].item()) for j in range(M)]
        for c in range(H)
    ]
    if discretization == "zoh":
        a_bar = [cmath.exp(lam[j] * dt[j]) for j in range(M)]
        scale = [(cmath.exp(lam[j] * dt[j]) - 1) / lam[j] for j in range(M)]
    else:
        a_bar = [(1 + dt[j] * lam[j] / 2) / (1 - dt[j] * lam[j] / 2) for j in range(M)]
        scale = [dt[j] / (1 - dt[j] * lam[j] / 2) for j in range(M)]
    x = [0j] * M
    ys = []
    for t in range(T):
        ut = [u[t, c].item() for c in range(H)]
        for j in range(M):
            x[j] = a_bar[j] * x[j] + scale[j] * sum(Bt[j][c] * ut[c] for c in range(H))
        ys.append(
            [
                2 * sum(Ct[c][j] * x[j] for j in range(M)).real + cell.D[c].item() * ut[c]
                for c in range(H)
            ]
        )
    return ys, x


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_recurrence_equals_the_equations(discretization: str) -> None:
    """Every backend that runs S5 (``reference`` and the scans) against the float64 oracle."""
    torch.manual_seed(0)
    H, P, T = 3, 8, 6
    cell = S5(H, P, blocks=2, discretization=discretization).double()
    u = torch.randn(2, T, H, dtype=torch.float64)
    backends = _backends(cell, u)
    assert "reference" in backends and ("scan" in backends or not HAS_KERNELS)
    for b in range(2):
        want_y, want_h = _oracle(cell, u[b], discretization)
        for backend in backends:
            with torch.no_grad():
                y, (h_last,) = cell(u, backend=backend)
            assert torch.allclose(y[b], torch.tensor(want_y, dtype=y.dtype), atol=1e-12), backend
            assert torch.allclose(h_last[b], torch.tensor(want_h, dtype=h_last.dtype), atol=1e-12)


def test_zoh_input_matrix() -> None:
    """``B_bar = Lambda^{-1} (exp(Lambda dt) - 1) B~`` (per state), from the cell's parameters."""
    torch.manual_seed(1)
    cell = S5(4, 8, blocks=2).double()
    lam_bar, B_bar = cell.discretized(torch.float64)
    lam = torch.complex(-cell.lambda_log.exp(), cell.lambda_imag).detach()
    dt = cell.dt_log.exp().detach()
    Bt = torch.complex(cell.B_re, cell.B_im).detach()
    want = torch.diag(torch.exp(lam * dt) - 1) @ torch.diag(1 / lam) @ Bt
    assert torch.allclose(B_bar.detach(), want, atol=1e-14)
    assert torch.allclose(lam_bar.detach(), torch.exp(lam * dt), atol=1e-15)


def test_phi1_value_and_float32_gradient() -> None:
    """``phi_1(z) = (exp(z) - 1) / z`` on both sides of the series threshold and at 0; its
    float32 gradient within float32 rounding of the float64 one (``expm1(z) / z`` under
    autograd loses three digits at ``|z| = 1e-3``, ZOH's typical ``dt |Lambda|``)."""
    re = torch.tensor([0.0, -1e-4, -1e-3, -0.3, -0.49, -0.51, -2.0, -7.0], dtype=torch.float64)
    z = torch.complex(re, torch.linspace(0, 0.4, 8, dtype=torch.float64))
    z = torch.cat((z, torch.tensor([0j, 3j, -1 + 5j], dtype=torch.complex128)))
    want = torch.where(z == 0, torch.ones_like(z), torch.expm1(z) / z)
    assert torch.allclose(phi1(z), want, rtol=1e-15, atol=0)
    # d phi_1 / dz = (z e^z - e^z + 1) / z^2, and 1/2 at 0
    dwant = torch.where(z == 0, 0.5 + 0j, (z * torch.exp(z) - torch.expm1(z)) / z**2)
    for dtype, tol in ((torch.complex128, 1e-9), (torch.complex64, 1e-6)):
        zz = z.to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad(phi1(zz).real.sum(), zz)
        # autograd's complex gradient is the conjugate Wirtinger derivative of the real loss
        got = g.conj().to(torch.complex128)
        assert ((got - dwant).abs() / dwant.abs()).max() < tol, dtype


@pytest.mark.parametrize(("P", "J"), [(8, 1), (12, 3), (16, 4)])
def test_block_diagonal_hippo_n_init(P: int, J: int) -> None:
    """``Lambda`` is the kept half of HiPPO-N of size ``P/J`` repeated per block; ``B~, C~``
    are the projections of real matrices ``B, C`` on the kept eigenvectors, and
    ``2 Re(C~ diag(Lambda) B~) = C S B`` with ``S`` the block-diagonal LegS normal part."""
    torch.manual_seed(P)
    H = 5
    lam, Bt, Ct, Vk = s5_init(H, P, J)
    half, _ = hippo_n_half(P // J)
    assert torch.allclose(lam, half.repeat(J))
    # B = 2 Re(V_k B~) is the real matrix B~ came from (V_k V_k^H + its conjugate = I)
    B = 2 * (Vk @ Bt).real
    C = 2 * (Ct @ Vk.conj().T).real
    assert torch.allclose(Vk.conj().T @ B.to(Vk.dtype), Bt, atol=1e-12)
    assert torch.allclose(C.to(Vk.dtype) @ Vk, Ct, atol=1e-12)
    S = torch.block_diag(*([legs_normal(P // J)] * J))
    assert torch.allclose(2 * (Ct @ torch.diag(lam) @ Bt).real, C @ S @ B, atol=1e-9)
    # the scales of the draws: B ~ N(0, 1/H), C ~ truncated N(0, 1/P)
    assert C.abs().max() <= 2 / math.sqrt(P) + 1e-12
    cell = S5(H, P, blocks=J)
    assert torch.allclose(cell.eigenvalues(torch.float64), lam.to(torch.complex128), atol=1e-6)


def test_dt_per_state() -> None:
    dt = torch.exp(S5(3, 1000, blocks=1, dt_min=1e-3, dt_max=1e-1).dt_log.double())
    assert dt.shape == (500,)
    assert dt.min() >= 1e-3 - 1e-9 and dt.max() <= 1e-1 + 1e-9
    assert dt.log().std() > 0.5  # spread over the log range, not one value


@pytest.mark.parametrize("backend", backend_params("reference", "scan"))
def test_resets_equal_each_episode_alone(backend: str) -> None:
    """Episode boundaries (``resets``) zero the state: equal to running every episode on its
    own from the zero state, in value and in the gradients of the parameters."""
    torch.manual_seed(2)
    cell = S5(3, 8, blocks=2).double()
    T = 11
    x = torch.randn(2, T, 3, dtype=torch.float64)
    resets = torch.zeros(2, T, dtype=torch.bool)
    resets[0, 4] = resets[0, 9] = resets[1, 1] = True
    h0 = torch.randn(2, 4, dtype=torch.complex128)
    y, (h_last,) = cell(x, (h0,), backend=backend, resets=resets)
    (y.square().sum() + h_last.abs().square().sum()).backward()
    got = {n: p.grad.clone() for n, p in cell.named_parameters() if p.grad is not None}
    cell.zero_grad()
    loss = torch.zeros((), dtype=torch.float64)
    for b, cuts in ((0, [0, 4, 9, T]), (1, [0, 1, T])):
        state: Any = (h0[b : b + 1],)
        for lo, hi in itertools.pairwise(cuts):
            if lo > 0:
                state = None
            y_seg, state = cell(x[b : b + 1, lo:hi], state, backend="reference")
            assert torch.allclose(y_seg[0], y[b, lo:hi].detach(), atol=1e-12), (b, lo)
            loss = loss + y_seg.square().sum()
        assert torch.allclose(state[0][0], h_last[b].detach(), atol=1e-12)
        loss = loss + state[0].abs().square().sum()
    loss.backward()
    assert got.keys() == {n for n, _ in cell.named_parameters()}
    for n, p in cell.named_parameters():
        assert p.grad is not None and rel_rms(got[n], p.grad) < 1e-10, n


@needs_kernels
def test_scan_gradients_equal_the_reference() -> None:
    """``scan`` against the float64 loop: outputs, final state and every gradient, float64 and
    float32."""
    cell = S5(5, 8, blocks=2).double()
    p = make_problem(cell, batch=3, time=13, seed=3)
    for use_resets in (False, True):
        want = run_cell(cell, p, backend="reference", dtype=torch.float64, use_resets=use_resets)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
            got = run_cell(cell, p, backend="scan", dtype=dtype, use_resets=use_resets)
            errs = {"y": rel_rms(got.y, want.y), "h": rel_rms(got.state[0], want.state[0])}
            errs.update({k: rel_rms(got.grads[k], want.grads[k]) for k in want.grads})
            assert {"x", "param.dt_log", "param.lambda_log", "param.B_re", "param.C_im"} <= set(
                errs
            )
            bad = {k: f"{e:.1e}" for k, e in errs.items() if not e <= tol}
            assert not bad, (dtype, use_resets, bad)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"hidden_size .* multiple of 2 \* blocks"):
        S5(3, 7, blocks=1)
    with pytest.raises(ValueError, match="blocks=4"):
        S5(3, 12, blocks=4)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        S5(3, 8, blocks=0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        S5(3, 0)
    with pytest.raises(ValueError, match="discretization must be"):
        S5(3, 8, discretization="euler")
    with pytest.raises(ValueError, match="dt_min"):
        S5(3, 8, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="dt_min"):
        S5(3, 8, dt_min=0.0)


def test_in_the_ssm_network() -> None:
    torch.manual_seed(0)
    model = create_model(
        "ssm_classifier", input_size=2, output_size=4, cell="s5", hidden_size=8, state_size=8
    )
    x = torch.randn(3, 9, 2, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 4)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
