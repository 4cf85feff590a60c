"""HiPPO-LegS against its closed form, its normal-plus-low-rank split and HiPPO-N."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.models.cells.hippo import hippo_n, hippo_n_half, legs, legs_low_rank, legs_normal


def test_legs_entries() -> None:
    """``A_nk = -sqrt(2n+1) sqrt(2k+1)`` below the diagonal, ``-(n+1)`` on it, 0 above;
    ``B_n = sqrt(2n+1)``, entry by entry."""
    N = 7
    A, B = legs(N)
    assert A.shape == (N, N) and B.shape == (N,) and A.dtype == torch.float64
    for n in range(N):
        assert B[n].item() == pytest.approx(math.sqrt(2 * n + 1), abs=1e-15)
        for k in range(N):
            if n > k:
                want = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                want = -(n + 1.0)
            else:
                want = 0.0
            assert A[n, k].item() == pytest.approx(want, abs=1e-13), (n, k)


@pytest.mark.parametrize("N", [1, 2, 5, 16])
def test_normal_plus_low_rank(N: int) -> None:
    """``S = A + P P^T`` with ``P_n = sqrt(n + 1/2)`` reconstructs ``A`` and is normal, with
    real part ``-I/2`` (``S + S^T = -I``)."""
    A, _ = legs(N)
    P = legs_low_rank(N)
    S = legs_normal(N)
    assert torch.allclose(S - torch.outer(P, P), A, atol=1e-12)
    assert torch.allclose(S @ S.T, S.T @ S, atol=1e-10)
    assert torch.allclose(S + S.T, -torch.eye(N, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("N", [2, 6, 16, 64])
def test_hippo_n_eigendecomposition(N: int) -> None:
    """``V`` unitary, ``S = V diag(Lambda) V^H``, ``Re Lambda = -1/2``; the kept half and its
    conjugate make the whole spectrum, and ``2 Re(V_k diag(L_k) V_k^H x) = S x`` for real x."""
    S = legs_normal(N)
    lam, V = hippo_n(N)
    eye = torch.eye(N, dtype=torch.complex128)
    assert torch.allclose(V.conj().T @ V, eye, atol=1e-10)
    assert torch.allclose(V @ torch.diag(lam) @ V.conj().T, S.to(torch.complex128), atol=1e-9)
    assert torch.allclose(lam.real, torch.full((N,), -0.5, dtype=torch.float64), atol=1e-12)
    half, Vk = hippo_n_half(N)
    assert half.shape == (N // 2,) and Vk.shape == (N, N // 2)
    assert (half.imag > 0).all()
    both = torch.cat((half, half.conj())).imag.sort().values
    assert torch.allclose(both, lam.imag.sort().values, atol=1e-9)
    x = torch.randn(N, dtype=torch.float64)
    got = 2 * (Vk @ (half * (Vk.conj().T @ x.to(Vk.dtype)))).real
    assert torch.allclose(got, S @ x, atol=1e-9)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="state_size"):
        legs(0)
    with pytest.raises(ValueError, match="state_size must be even"):
        hippo_n_half(5)
