"""The QRNN cell against a float64 circuit simulation written from docs/plugin-qrnn.md: the
register as a complex128 vector of ``2**n`` amplitudes (qubit 0 most significant), every gate
a dense ``2**n x 2**n`` matrix built from Kronecker products, one example and one step at a
time, never through the cell's ``project``/``recur`` or its statevector helpers. Outputs, the
final register and the gradients of the input, the initial register and every parameter at
1e-10 relative RMS, with three qubits, degree 2, two RUS stages, every option, from the
initial register, from a given one and with resets. (test_qrnn.py compares two qubits of
degree 1, real amplitudes, one sequence and no gradients, against dense matrices.)

Conventions taken from the code's documentation where docs/plugin-qrnn.md leaves them open:
the monomials are ordered by size, then lexicographically, the empty one first
(``statevector.monomials``); the complex uniform register is ``H^n |0...0>`` times the global
phase ``e^(i pi/4)`` (``statevector.initial_register``). The plugin is tested with rnnkit-core
alone, so the comparison is written out here."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from rnnkit.core.testing.numerics import rel_rms
from rnnkit_qrnn import QRNNCell, QRNNState

F64, C128 = torch.float64, torch.complex128
B, T, N_IN, N = 3, 5, 2, 3


def _kron(mats: list[Tensor]) -> Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def _step_matrices(cell: QRNNCell, p: dict[str, Tensor], x_t: Tensor) -> list[Tensor]:
    """The step's gates in order: the phase gates ``R_z(phi_j) = diag(e^(-i phi_j/2), e^(i
    phi_j/2))`` when complex, then neuron ``j = 0 .. n-1``: ``sum_s |s><s| (others) x R_y(2
    q^order(theta_j(s)))`` (qubit ``j``), each block times ``sqrt(p(theta_j(s)))`` when
    postselected."""
    n = cell.hidden_size
    gates = []
    if cell.amplitudes == "complex":
        phi = p["phase_bias"] + p["phase_weight"] @ x_t
        zs = [torch.diag(torch.exp(1j * torch.stack((-phi[j] / 2, phi[j] / 2)))) for j in range(n)]
        gates.append(_kron(zs))
    for j in range(n):
        others = [q for q in range(n) if q != j]
        monos = [m for k in range(cell.degree + 1) for m in itertools.combinations(others, k)]
        U = torch.zeros(2**n, 2**n, dtype=C128)
        for bits in itertools.product((0, 1), repeat=n - 1):
            s = dict(zip(others, bits, strict=True))
            theta = torch.zeros((), dtype=F64)
            for k, mono in enumerate(monos):
                if all(s[q] for q in mono):
                    theta = theta + p["weight"][j, k]
                    if len(mono) <= cell.degree - 1:
                        theta = theta + p["input_weight"][j, k] @ x_t
            prob = torch.ones((), dtype=F64)
            for _ in range(cell.order):  # q(theta) = arctan(tan^2 theta), p = cos^4 + sin^4
                prob = prob * (torch.cos(theta) ** 4 + torch.sin(theta) ** 4)
                theta = torch.atan2(torch.sin(theta) ** 2, torch.cos(theta) ** 2)
            c, sn = torch.cos(theta), torch.sin(theta)
            ry = torch.stack((torch.stack((c, -sn)), torch.stack((sn, c)))).to(C128)
            if cell.amplification == "none":
                ry = ry * prob.sqrt()
            factors = []
            for q in range(n):
                if q == j:
                    factors.append(ry)
                else:
                    proj = torch.zeros(2, 2, dtype=C128)
                    proj[s[q], s[q]] = 1
                    factors.append(proj)
            U = U + _kron(factors)
        gates.append(U)
    return gates


def _initial(cell: QRNNCell) -> Tensor:
    n = cell.hidden_size
    if cell.initial == "zero":
        psi = torch.zeros(2**n, dtype=C128)
        psi[0] = 1
        return psi
    psi = torch.full((2**n,), 2 ** (-n / 2), dtype=C128)
    return (
        psi * complex(math.cos(math.pi / 4), math.sin(math.pi / 4))
        if cell.amplitudes == "complex"
        else psi
    )


def _oracle(
    cell: QRNNCell, p: dict[str, Tensor], x: Tensor, delta0: Tensor | None, resets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(y, final register)``: ``y_t[j] = sum_s |psi(s)|^2 s_j``; the register starts at
    ``psi_0 + delta0`` (or ``psi_0``), is ``psi_0`` again at a reset, and is renormalised after
    each postselected neuron."""
    n = cell.hidden_size
    bits = torch.tensor(list(itertools.product((0, 1), repeat=n)), dtype=F64)  # qubit 0 first
    psi0 = _initial(cell)
    ys, finals = [], []
    for e in range(x.shape[0]):
        if delta0 is None:
            psi = psi0
        elif cell.amplitudes == "complex":
            psi = psi0 + torch.view_as_complex(delta0[e].contiguous())
        else:
            psi = psi0 + delta0[e].to(C128)
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                psi = psi0
            for gate in _step_matrices(cell, p, x[e, t]):
                psi = gate @ psi
                if cell.amplification == "none":
                    psi = psi / psi.abs().square().sum().sqrt()
            row.append(psi.abs().square() @ bits)
        ys.append(torch.stack(row))
        finals.append(psi)
    return torch.stack(ys), torch.stack(finals)


def _register_of(cell: QRNNCell, state: QRNNState) -> Tensor:
    psi = cell.register(state)
    return torch.view_as_complex(psi.contiguous()) if cell.amplitudes == "complex" else psi.to(C128)


@pytest.mark.parametrize("start", ["initial", "given", "resets"])
@pytest.mark.parametrize(
    ("amplification", "amplitudes", "initial"),
    [
        ("ideal", "real", "zero"),
        ("none", "real", "uniform"),
        ("ideal", "complex", "uniform"),
        ("none", "complex", "zero"),
    ],
)
def test_qrnn_equals_the_circuit(
    amplification: str, amplitudes: str, initial: str, start: str
) -> None:
    torch.manual_seed(3)
    cell = QRNNCell(
        N_IN,
        N,
        degree=2,
        order=2,
        amplification=amplification,
        amplitudes=amplitudes,
        initial=initial,
    ).double()
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(B, T, N_IN, generator=gen, dtype=F64)
    shape = (B, 2**N, 2) if amplitudes == "complex" else (B, 2**N)
    delta0 = None
    if start != "initial":  # a normalised register, less the initial one: a valid state
        raw = torch.randn(*shape, generator=gen, dtype=F64)
        norm = raw.square().reshape(B, -1).sum(1).sqrt().reshape(B, *([1] * (len(shape) - 1)))
        delta0 = raw / norm - cell.register(cell.init_state(B, dtype=F64))
    resets = None
    if start == "resets":
        resets = torch.zeros(B, T, dtype=torch.bool)
        resets[0, 2] = resets[1, 0] = True  # the third example keeps its given register
    params = {n: q.detach().clone().requires_grad_(True) for n, q in cell.named_parameters()}
    x_c, x_o = (x.clone().requires_grad_(True) for _ in range(2))
    d_c, d_o = (
        (delta0.clone().requires_grad_(True) if delta0 is not None else None) for _ in range(2)
    )
    y, last = cell(x_c, QRNNState(d_c) if d_c is not None else None, resets=resets)
    want_y, want_psi = _oracle(cell, params, x_o, d_o, resets)
    got_psi = _register_of(cell, last)
    w_y = torch.randn(y.shape, generator=gen, dtype=F64)
    w_psi = torch.randn(want_psi.shape, generator=gen, dtype=C128)
    leaves_c = [x_c, *([d_c] if d_c is not None else []), *cell.parameters()]
    leaves_o = [x_o, *([d_o] if d_o is not None else []), *params.values()]
    got = torch.autograd.grad((y * w_y).sum() + (got_psi * w_psi).real.sum(), leaves_c)
    want = torch.autograd.grad((want_y * w_y).sum() + (want_psi * w_psi).real.sum(), leaves_o)
    errs = {"y": rel_rms(y, want_y), "register": rel_rms(got_psi, want_psi)}
    labels = ["x", *(["delta0"] if d_c is not None else []), *params]
    errs.update({f"d/d{n}": rel_rms(g, w) for n, g, w in zip(labels, got, want, strict=True)})
    assert all(bool(w.abs().sum() > 0) for w in want)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= 1e-10}
    assert not bad, f"qrnn ({amplification}, {amplitudes}, {initial}, {start}): {bad}"
