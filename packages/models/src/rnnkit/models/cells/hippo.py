"""HiPPO matrices shared by the state space cells (LSSL, S5; S4D-LegS would use the same).

HiPPO-LegS (Gu et al. 2020) for state size ``N``, ``n, k = 0 .. N - 1``:

    A_nk = -sqrt(2n + 1) sqrt(2k + 1)   if n > k
    A_nk = -(n + 1)                     if n = k
    A_nk = 0                            if n < k
    B_n  = sqrt(2n + 1)

Its normal-plus-low-rank (NPLR) form: with ``P_n = sqrt(n + 1/2)``, ``S = A + P P^T`` is normal;
in fact ``S = -I/2 + K`` with ``K`` real skew-symmetric, so ``S`` has eigenvalues
``-1/2 + i w`` (``w`` real, in pairs ``+-w``) and a unitary eigenbasis. That eigendecomposition
("HiPPO-N") is S5's initialisation.

Everything here is float64 (complex128) and built on the CPU without gradients: callers copy
the values into their parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.core.validation import check_positive_int


def legs(state_size: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS ``(A: (N, N), B: (N,))``, float64 (see the module docstring)."""
    N = check_positive_int("state_size", state_size)
    q = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -torch.tril(q.unsqueeze(1) * q.unsqueeze(0), diagonal=-1)
    A = A - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    return A, q.clone()


def legs_low_rank(state_size: int) -> Tensor:
    """``P: (N,)``, ``P_n = sqrt(n + 1/2)``: ``A + P P^T`` is normal for LegS's ``A``."""
    N = check_positive_int("state_size", state_size)
    return torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)


def legs_normal(state_size: int) -> Tensor:
    """The normal part ``S = A + P P^T: (N, N)`` of HiPPO-LegS, float64.

    ``S = -I/2 + K`` with ``K`` skew-symmetric: ``S_nk = -sqrt(2n+1) sqrt(2k+1) / 2`` below the
    diagonal, ``+sqrt(2n+1) sqrt(2k+1) / 2`` above it, ``-1/2`` on it.
    """
    A, _ = legs(state_size)
    P = legs_low_rank(state_size)
    return A + P.unsqueeze(1) * P.unsqueeze(0)


def hippo_n(state_size: int) -> tuple[Tensor, Tensor]:
    """The eigendecomposition of LegS's normal part: ``S = V diag(Lambda) V^H``.

    Returns ``(Lambda: (N,) complex128, V: (N, N) complex128)`` with ``V`` unitary and
    ``Lambda = -1/2 + i w``, ``w`` ascending. ``S``'s real part is exactly ``-I/2`` (so the real
    part of every eigenvalue is the mean of its diagonal); the imaginary parts come from the
    Hermitian matrix ``-i (S + I/2)``, whose eigendecomposition is exact and unitary (a general
    eigensolver on ``S`` would not return orthogonal eigenvectors for its clustered spectrum).
    """
    S = legs_normal(state_size)
    N = S.shape[0]
    re = torch.diagonal(S).mean()
    K = S - re * torch.eye(N, dtype=torch.float64)
    w, V = torch.linalg.eigh(-1j * K.to(torch.complex128))
    return torch.complex(torch.full_like(w, float(re)), w), V


def hippo_n_half(state_size: int) -> tuple[Tensor, Tensor]:
    """One eigenvalue of each conjugate pair of :func:`hippo_n`, with its eigenvectors.

    ``N`` must be even. Returns ``(Lambda: (N/2,), V: (N, N/2))``, complex128: the eigenvalues
    with positive imaginary part and their eigenvector columns. For a real ``x``,
    ``S x = V_full diag(Lambda_full) V_full^H x = 2 Re(V diag(Lambda) V^H x)``: the dropped half
    is the complex conjugate of the kept half, so a model keeps ``N/2`` complex states and
    reads them out as twice the real part.
    """
    N = check_positive_int("state_size", state_size)
    if N % 2:
        raise ValueError(
            f"state_size must be even to split the spectrum into conjugate pairs, got {N}"
        )
    lam, V = hippo_n(N)
    # eigh sorts w ascending and the spectrum is symmetric about 0 (K is real skew): the upper
    # half holds the positive imaginary parts
    return lam[N // 2 :], V[:, N // 2 :]
