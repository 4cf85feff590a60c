"""LRU against a float64 evaluation of the paper's equations (Orvieto et al. 2023, Section 3
and Appendix A): the exponential parameterisation of ``lambda``, the ``gamma`` normalisation,
``y = Re(C x) + D u``, the ring initialisation, on every diagonal-linear backend."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from conftest import backend_params

from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import LRU


def _oracle(cell: LRU, u: torch.Tensor) -> tuple[list[list[float]], list[complex]]:
    """``y: (T, H)`` and the final state of one sequence ``u: (T, H)`` from

        lambda_j = exp(-exp(nu_log_j) + i exp(theta_log_j)),   gamma_j = exp(gamma_log_j)
        x_t = lambda * x_{t-1} + gamma * (B u_t),              y_t = Re(C x_t) + D * u_t

    with Python complex scalars (no ``2 Re``: the LRU keeps every state, no conjugate pairs)."""
    T, H = u.shape
    N = cell.hidden_size
    lam = [
        cmath.exp(complex(-math.exp(cell.nu_log[j].item()), math.exp(cell.theta_log[j].item())))
        for j in range(N)
    ]
    gamma = [math.exp(cell.gamma_log[j].item()) for j in range(N)]
    B = [
        [complex(cell.B_re[j, c].item(), cell.B_im[j, c].item()) for c in range(H)]
        for j in range(N)
    ]
    C = [
        [complex(cell.C_re[c, j].item(), cell.C_im[c, j].item()) for j in range(N)]
        for c in range(H)
    ]
    x = [0j] * N
    ys = []
    for t in range(T):
        ut = [u[t, c].item() for c in range(H)]
        for j in range(N):
            x[j] = lam[j] * x[j] + gamma[j] * sum(B[j][c] * ut[c] for c in range(H))
        ys.append(
            [
                sum(C[c][j] * x[j] for j in range(N)).real + cell.D[c].item() * ut[c]
                for c in range(H)
            ]
        )
    return ys, x


@pytest.mark.parametrize("backend", backend_params("reference", "scan"))
def test_recurrence_equals_the_equations(backend: str) -> None:
    """Every diagonal-linear backend against the oracle, with ``gamma`` moved off its initial
    ``sqrt(1 - |lambda|^2)`` so that it counts on its own."""
    torch.manual_seed(0)
    H, N, T = 3, 5, 7
    cell = LRU(H, N).double()
    with torch.no_grad():
        cell.gamma_log.uniform_(-1.0, 0.5)
    u = torch.randn(2, T, H, dtype=torch.float64)
    with torch.no_grad():
        y, (h_last,) = cell(u, backend=backend)
    for b in range(2):
        want_y, want_h = _oracle(cell, u[b])
        assert_close(f"lru ({backend}) y", y[b], torch.tensor(want_y, dtype=y.dtype), 1e-12)
        want = torch.tensor(want_h, dtype=h_last.dtype)
        assert_close(f"lru ({backend}) final state", h_last[b], want, 1e-12)


def test_ring_initialisation() -> None:
    """Appendix A: ``|lambda|^2`` uniform in ``[r_min^2, r_max^2]`` (uniform by area on the
    ring), phases uniform in ``[0, max_phase]``, ``gamma = sqrt(1 - |lambda|^2)``,
    ``B ~ N(0, 1/(2H))`` and ``C ~ N(0, 1/N)`` per real and imaginary part, ``D ~ N(0, 1)``."""
    torch.manual_seed(0)
    H, N = 16, 4000
    cell = LRU(H, N, r_min=0.5, r_max=0.9, max_phase=math.pi, dtype=torch.float64)
    lam = torch.exp(torch.complex(-torch.exp(cell.nu_log), torch.exp(cell.theta_log))).detach()
    r2 = lam.abs() ** 2
    # uniform in [0.25, 0.81]: mean 0.53, standard deviation 0.56 / sqrt(12)
    assert abs(r2.mean().item() - 0.53) < 0.01
    assert abs(r2.std().item() - 0.56 / math.sqrt(12)) < 0.01
    assert r2.min() >= 0.25 - 1e-12 and r2.max() <= 0.81 + 1e-12
    phase = torch.exp(cell.theta_log).detach()
    assert phase.max() <= math.pi and abs(phase.mean().item() - math.pi / 2) < 0.05
    gamma = torch.exp(cell.gamma_log).detach()
    assert torch.allclose(gamma, torch.sqrt(1 - r2), rtol=1e-12)
    for name, want_std in (
        ("B_re", 1 / math.sqrt(2 * H)),
        ("B_im", 1 / math.sqrt(2 * H)),
        ("C_re", 1 / math.sqrt(N)),
        ("C_im", 1 / math.sqrt(N)),
    ):
        std = getattr(cell, name).detach().std().item()
        assert abs(std / want_std - 1) < 0.03, name
