"""A small statevector simulator in torch: just what the quantum neuron needs.

Qubit ``0`` is the most significant bit of a basis index, so a state of ``n`` qubits
``psi: (B, 2**n)`` viewed as ``(B, 2**j, 2, 2**(n-j-1))`` has qubit ``j`` on the middle axis.
Complex amplitudes are stored as a trailing ``(re, im)`` pair, ``(B, 2**n, 2)``, so that every
real dtype (bfloat16 included) works and the gates stay real arithmetic.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.nn import functional as F


def rus_activation(theta: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """The quantum neuron's activation ``q^order(theta)`` and its success probability.

    One repeat-until-success stage (Cao, Guerreschi and Aspuru-Guzik 2017) rotates an ancilla
    by ``R_y(2 theta)``, applies ``-iY`` to the target controlled by it, and undoes the
    rotation. Measuring the ancilla in ``|0>`` (probability ``cos^4 + sin^4`` of ``theta``)
    leaves the target rotated by ``R_y(2 q(theta))`` with ``q(theta) = arctan(tan^2 theta)``,
    a sigmoid-like step around ``pi/4``; ``order`` nested stages apply ``q`` ``order`` times,
    sharpening it towards a step.

    Args:
        theta: angles, any shape.
        order: number of stages (``>= 1``).

    Returns:
        ``(phi, p)``, both of ``theta``'s shape: the rotation half-angle ``q^order(theta)`` in
        ``[0, pi/2]``, and the product of the stages' success probabilities.
    """
    p = torch.ones_like(theta)
    for _ in range(order):
        s2, c2 = torch.sin(theta).square(), torch.cos(theta).square()
        p = p * (s2.square() + c2.square())
        # atan2 of two non-negative numbers that sum to 1: finite, smooth, no tan overflow
        theta = torch.atan2(s2, c2)
    return theta, p


def monomials(n: int, target: int, degree: int) -> list[tuple[int, ...]]:
    """The monomials of a neuron on qubit ``target``: subsets of the other ``n - 1`` qubits of
    at most ``degree`` elements, by size then lexicographically (the empty one first)."""
    others = [q for q in range(n) if q != target]
    return [s for k in range(degree + 1) for s in itertools.combinations(others, k)]


def monomial_table(n: int, target: int, degree: int) -> Tensor:
    """``(num_monomials, 2**(n-1))`` float64 0/1: each monomial's value (the product of its
    qubits' bits) on every basis state of the qubits other than ``target``, in the order of
    ``psi.view(B, 2**target, 2, -1)`` with the middle axis removed."""
    others = [q for q in range(n) if q != target]
    index = torch.arange(2 ** (n - 1))
    bits = {q: (index >> (n - 2 - m)) & 1 for m, q in enumerate(others)}
    rows = []
    for mono in monomials(n, target, degree):
        value = torch.ones(2 ** (n - 1), dtype=torch.long)
        for q in mono:
            value = value * bits[q]
        rows.append(value)
    return torch.stack(rows).to(torch.float64)


def bit_table(n: int) -> Tensor:
    """``(2**n, n)`` float64 0/1: bit ``j`` of every basis index (qubit 0 most significant)."""
    index = torch.arange(2**n)
    return torch.stack([(index >> (n - 1 - j)) & 1 for j in range(n)], dim=1).to(torch.float64)


def initial_register(
    n: int,
    initial: str,
    complex_pairs: bool,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The initial amplitudes of ``n`` qubits: ``(2**n,)``, or ``(2**n, 2)`` as ``(re, im)``
    pairs when ``complex_pairs``.

    ``initial="zero"``: ``|0...0>`` (amplitude 1 on basis index 0); ``"uniform"``: ``H^n
    |0...0>``, every amplitude ``2^(-n/2)`` (as pairs: times the phase ``e^(i pi/4)``, so that
    ``re = im = 2^(-(n+1)/2)``).
    """
    size = 2**n
    shape = (size, 2) if complex_pairs else (size,)
    if initial == "uniform":
        value = 2.0 ** (-(n + 1) / 2) if complex_pairs else 2.0 ** (-n / 2)
        return torch.full(shape, value, dtype=dtype, device=device)
    if initial != "zero":
        raise ValueError(f"initial must be 'zero' or 'uniform', got {initial!r}")
    one = torch.ones((1, 1) if complex_pairs else (1,), dtype=dtype, device=device)
    # pad the single 1 (the real part of basis index 0) with zeros up to the full shape
    return F.pad(one, (0, 1, 0, size - 1) if complex_pairs else (0, size - 1))


def controlled_ry(psi: Tensor, target: int, phi: Tensor, weight: Tensor | None = None) -> Tensor:
    """Rotate qubit ``target`` by ``R_y(2 phi)``, the angle depending on the other qubits.

    Args:
        psi: ``(B, 2**n)`` real or ``(B, 2**n, 2)`` complex-as-pairs amplitudes.
        target: the rotated qubit.
        phi: ``(B, 2**(n-1))`` half-angles, one per basis state of the other qubits (the
            rotation is block-diagonal in their computational basis).
        weight: optional ``(B, 2**(n-1))`` factors multiplying each block afterwards
            (postselection's amplitude ``sqrt(p)``).

    Returns:
        The new amplitudes, ``psi``'s shape (not renormalised).
    """
    batch = psi.shape[0]
    n_total = psi.shape[1]
    left = 2**target
    right = n_total // (2 * left)
    tail = psi.shape[2:]
    view = psi.reshape(batch, left, 2, right, *tail)
    a0, a1 = view[:, :, 0], view[:, :, 1]
    angle = phi.reshape(batch, left, right, *([1] * len(tail)))
    c, s = torch.cos(angle), torch.sin(angle)
    new0, new1 = c * a0 - s * a1, s * a0 + c * a1
    if weight is not None:
        w = weight.reshape(batch, left, right, *([1] * len(tail)))
        new0, new1 = new0 * w, new1 * w
    return torch.stack((new0, new1), dim=2).reshape(psi.shape)


def probabilities(psi: Tensor) -> Tensor:
    """``|psi|^2`` per basis state: ``(B, 2**n)`` from real or complex-as-pairs amplitudes."""
    return psi.square() if psi.dim() == 2 else psi.square().sum(-1)


def normalise(psi: Tensor) -> Tensor:
    """``psi`` divided by its norm per example (postselection's renormalisation)."""
    norm = probabilities(psi).sum(1).sqrt()
    return psi / norm.reshape(-1, *([1] * (psi.dim() - 1)))


def phase(psi: Tensor, angle: Tensor) -> Tensor:
    """Multiply each complex amplitude by ``exp(i angle)``.

    Args:
        psi: ``(B, 2**n, 2)`` complex-as-pairs amplitudes.
        angle: ``(B, 2**n)``.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    re, im = psi[..., 0], psi[..., 1]
    return torch.stack((c * re - s * im, s * re + c * im), dim=-1)
