"""LRU, S4D, S5 and LSSL against float64 loops written from docs/models.md (Orvieto et al.
2023; Gu et al. 2022; Smith et al. 2023; Gu et al. 2021) in complex128 (real for LSSL), one
example and one step at a time, never through the cells' ``project``/``recur``/
``coefficients``: outputs, final state and every gradient, from zero and from a given state,
with resets, on ``reference`` and the fast backends. (Outputs without gradients are also
compared in test_lru.py, test_s4d.py, test_s5.py and test_lssl.py.)"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from _oracle_check import F64, Oracle, check
from conftest import backend_params
from torch import Tensor

from rnnkit.models.cells import LRU, LSSL, S4D, S5

B, T = 3, 7
C128 = torch.complex128


def _resets() -> Tensor:
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    return resets


def _lru(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """``lambda = exp(-exp(nu_log) + i exp(theta_log))``, ``gamma = exp(gamma_log)``, ``h_t =
    lambda h + gamma (B x_t)``, ``y_t = Re(C h_t) + D x_t`` (every state kept, no ``2 Re``);
    zero at a reset."""
    lam = torch.exp(torch.complex(-torch.exp(p["nu_log"]), torch.exp(p["theta_log"])))
    gamma = torch.exp(p["gamma_log"])
    Bm = torch.complex(p["B_re"], p["B_im"])
    Cm = torch.complex(p["C_re"], p["C_im"])
    N = lam.shape[0]
    ys, finals = [], []
    for e in range(x.shape[0]):
        h = torch.zeros(N, dtype=C128) if initial is None else initial[0][e]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                h = torch.zeros(N, dtype=C128)
            h = lam * h + gamma * (Bm @ x[e, t].to(C128))
            row.append((Cm @ h).real + p["D"] * x[e, t])
        ys.append(torch.stack(row))
        finals.append(h)
    return torch.stack(ys), [torch.stack(finals)]


@pytest.mark.parametrize("backend", backend_params("reference", "scan"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
def test_lru_equals_its_equations(backend: str, start: str) -> None:
    torch.manual_seed(0)
    cell = LRU(4, 5).double()
    with torch.no_grad():  # gamma off its initial sqrt(1 - |lambda|^2)
        cell.gamma_log.uniform_(-1.0, 0.5)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, 4, generator=gen, dtype=F64)
    h0 = torch.randn(B, 5, generator=gen, dtype=C128)
    check(
        cell,
        _lru,
        x,
        backend=backend,
        initial=[h0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )


def _s4d(discretization: str) -> Oracle:
    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        """Per channel ``c`` and mode ``n``: ``A = -exp(a_log) + i a_imag``, ``dt =
        exp(dt_log)``; ZOH ``A_bar = exp(dt A)``, ``B_bar = (exp(dt A) - 1) / A``, bilinear
        ``A_bar = (1 + dt A/2) / (1 - dt A/2)``, ``B_bar = dt / (1 - dt A/2)``; ``x_t = A_bar
        x + B_bar u_t``, ``y_t = 2 Re(sum_n C_n x_t,n) + D u_t``. The state is channel-major
        ``(H * N/2,)``; zero at a reset."""
        A = torch.complex(-torch.exp(p["a_log"]), p["a_imag"])  # (H, N/2)
        dt = torch.exp(p["dt_log"])[:, None]
        if discretization == "zoh":
            a_bar = torch.exp(dt * A)
            b_bar = (a_bar - 1) / A
        else:
            a_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
            b_bar = dt / (1 - dt * A / 2)
        Cm = torch.complex(p["C_re"], p["C_im"])
        H, M = A.shape
        ys, finals = [], []
        for e in range(x.shape[0]):
            s = torch.zeros(H, M, dtype=C128) if initial is None else initial[0][e].reshape(H, M)
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    s = torch.zeros(H, M, dtype=C128)
                u = x[e, t]
                s = a_bar * s + b_bar * u[:, None]
                row.append(2 * (Cm * s).sum(-1).real + p["D"] * u)
            ys.append(torch.stack(row))
            finals.append(s.reshape(-1))
        return torch.stack(ys), [torch.stack(finals)]

    return oracle


@pytest.mark.parametrize("backend", backend_params("reference", "scan", "s4d_conv"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize(("discretization", "init"), [("zoh", "lin"), ("bilinear", "inv")])
def test_s4d_equals_its_equations(backend: str, start: str, discretization: str, init: str) -> None:
    if backend == "s4d_conv" and start == "resets":
        pytest.skip("s4d_conv refuses resets (tested in test_s4d.py)")
    torch.manual_seed(1)
    cell = S4D(3, 6, init=init, discretization=discretization).double()
    with torch.no_grad():  # steps large enough that the modes decay within the sequence
        cell.dt_log.uniform_(-2.0, 0.0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, T, 3, generator=gen, dtype=F64)
    h0 = torch.randn(B, 9, generator=gen, dtype=C128)
    check(
        cell,
        _s4d(discretization),
        x,
        backend=backend,
        initial=[h0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )


def _s5(discretization: str) -> Oracle:
    """``Lambda = -exp(lambda_log) + i lambda_imag``, ``dt = exp(dt_log)`` per state; ZOH
    ``Lambda_bar = exp(dt Lambda)``, ``B_bar = (exp(dt Lambda) - 1) / Lambda * B~``, bilinear
    ``Lambda_bar = (1 + dt Lambda/2) / (1 - dt Lambda/2)``, ``B_bar = dt / (1 - dt Lambda/2) *
    B~``; ``x_t = Lambda_bar x + B_bar u_t``, ``y_t = 2 Re(C~ x_t) + D u_t``; zero at a
    reset."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        lam = torch.complex(-torch.exp(p["lambda_log"]), p["lambda_imag"])
        dt = torch.exp(p["dt_log"])
        if discretization == "zoh":
            a_bar = torch.exp(dt * lam)
            scale = (a_bar - 1) / lam
        else:
            a_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2)
            scale = dt / (1 - dt * lam / 2)
        b_bar = scale[:, None] * torch.complex(p["B_re"], p["B_im"])
        Cm = torch.complex(p["C_re"], p["C_im"])
        ys, finals = [], []
        for e in range(x.shape[0]):
            s = torch.zeros(lam.shape[0], dtype=C128) if initial is None else initial[0][e]
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    s = torch.zeros(lam.shape[0], dtype=C128)
                s = a_bar * s + b_bar @ x[e, t].to(C128)
                row.append(2 * (Cm @ s).real + p["D"] * x[e, t])
            ys.append(torch.stack(row))
            finals.append(s)
        return torch.stack(ys), [torch.stack(finals)]

    return oracle


@pytest.mark.parametrize("backend", backend_params("reference", "scan"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s5_equals_its_equations(backend: str, start: str, discretization: str) -> None:
    torch.manual_seed(2)
    cell = S5(3, 8, blocks=2, discretization=discretization).double()
    with torch.no_grad():  # steps large enough that the states decay within the sequence
        cell.dt_log.uniform_(-2.0, 0.0)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, 3, generator=gen, dtype=F64)
    h0 = torch.randn(B, 4, generator=gen, dtype=C128)
    check(
        cell,
        _s5(discretization),
        x,
        backend=backend,
        initial=[h0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )


def _lssl(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """Per channel ``c`` (with ``A, B`` of group ``c`` or the shared one): ``A_bar = (I -
    dt/2 A)^{-1} (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^{-1} dt B`` (explicit inverses),
    ``x_t = A_bar x + B_bar u_t``, ``y_t = C_c . x_t + D_c u_t``; zero at a reset."""
    H, N = p["C"].shape
    eye = torch.eye(N, dtype=F64)
    bars = []
    for c in range(H):
        g = c if p["A"].shape[0] > 1 else 0
        dt = torch.exp(p["dt_log"][c])
        inv = torch.linalg.inv(eye - dt / 2 * p["A"][g])
        bars.append((inv @ (eye + dt / 2 * p["A"][g]), inv @ (dt * p["B"][g])))
    ys, finals = [], []
    for e in range(x.shape[0]):
        s = [torch.zeros(N, dtype=F64) if initial is None else initial[0][e, c] for c in range(H)]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                s = [torch.zeros(N, dtype=F64) for _ in range(H)]
            u = x[e, t]
            s = [bars[c][0] @ s[c] + bars[c][1] * u[c] for c in range(H)]
            row.append(torch.stack([p["C"][c] @ s[c] + p["D"][c] * u[c] for c in range(H)]))
        ys.append(torch.stack(row))
        finals.append(torch.stack(s))
    return torch.stack(ys), [torch.stack(finals)]


@pytest.mark.parametrize("backend", ["reference", "lssl_conv"])
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("share_a", [True, False])
def test_lssl_equals_its_equations(backend: str, start: str, share_a: bool) -> None:
    if backend == "lssl_conv" and start == "resets":
        pytest.skip("lssl_conv refuses resets (tested in test_lssl.py)")
    torch.manual_seed(3)
    cell = LSSL(3, 4, share_a=share_a).double()
    with torch.no_grad():  # A, B off HiPPO-LegS (and per channel when not shared), larger steps
        cell.A.add_(0.1 * torch.randn_like(cell.A))
        cell.B.add_(0.1 * torch.randn_like(cell.B))
        cell.dt_log.uniform_(-2.0, 0.0)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(B, T, 3, generator=gen, dtype=F64)
    h0 = torch.randn(B, 3, 4, generator=gen, dtype=F64)
    check(
        cell,
        _lssl,
        x,
        backend=backend,
        initial=[h0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )
