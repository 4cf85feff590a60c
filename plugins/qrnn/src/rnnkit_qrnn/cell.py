"""The recurrent quantum neural network cell (after Bausch 2020), simulated on a statevector."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.core.cell import Cell
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit_qrnn.statevector import (
    bit_table,
    controlled_ry,
    initial_register,
    monomial_table,
    monomials,
    normalise,
    phase,
    probabilities,
    rus_activation,
)

#: Above this the statevector (2**n amplitudes per example, n neurons each a pass over it)
#: stops being a small simulation: 12 qubits is the paper's largest network.
MAX_QUBITS = 12


class QRNNState(NamedTuple):
    """The QRNN state: ``delta = psi - psi_0``, the cell register's amplitudes ``psi`` less
    those of its initial state ``psi_0`` (:meth:`QRNNCell.register` adds them back);
    ``(B, 2**n)`` when real, ``(B, 2**n, 2)`` (``re, im``) when complex. Stored as a difference
    so that rnnkit's constant initial fill, zero, is the register's initial state whatever it
    is (the paper's ``|0...0>`` has one amplitude 1 and the others 0)."""

    delta: Tensor


class QRNNCell(Cell[QRNNState]):
    """A recurrent quantum neural network cell: ``n = hidden_size`` qubits whose state is
    carried from step to step, rotated each step by one quantum neuron per qubit.

    Step ``t`` (qubit ``j = 0, ..., n-1`` in turn, each stage seeing the previous ones'
    result):

    - neuron ``j`` computes, on every computational basis state ``s`` of the other qubits, the
      angle ``theta_j(s) = sum_{|I| <= degree} w_{j,I} prod_{i in I} s_i
      + sum_{|I| <= degree - 1} (u_{j,I} . x_t) prod_{i in I} s_i``, a polynomial of degree
      ``degree`` in the qubits and the inputs (the input enters as classical controls: exact
      for 0/1 inputs written into basis states, and its real-valued extension otherwise);
    - it rotates qubit ``j`` by ``R_y(2 q^order(theta_j(s)))``, ``q(theta) =
      arctan(tan^2 theta)`` (:func:`~rnnkit_qrnn.statevector.rus_activation`), controlled on
      ``s``: a nonlinear activation of the polynomial, applied coherently to every branch;
    - ``amplification="ideal"``: amplitude amplification has made the neuron's postselection
      certain (the limit the paper's amplitude amplification approaches), so every branch gets
      its rotation with its weight unchanged; ``"none"``: one repeat-until-success round
      postselected on success, i.e. branch ``s`` is weighted by ``sqrt(p(theta_j(s)))`` and
      the state renormalised, the distortion amplification removes;
    - ``amplitudes="complex"``: first, every qubit gets a phase gate ``R_z(phi_j)`` with
      ``phi_j = c_j + v_j . x_t`` (the register is then complex, stored as ``(re, im)``).

    The output is the probability of measuring each qubit in ``|1>``, ``y_t[j] = sum_s
    |psi(s)|^2 s_j``, read without collapsing the register (the expectation a repeated
    measurement estimates); the register stays quantum across steps. It starts in
    ``|0...0>`` (``initial="zero"``, as in the paper) or in the uniform superposition
    ``H^n |0...0>`` (``initial="uniform"``, all amplitudes ``2^(-n/2)``). From the uniform
    superposition a bit flip (``R_y(pi)``) leaves every qubit's probability at 1/2, so
    flip-based memories (a parity, a counter) are invisible to the readout there.

    Args:
        input_size: width of ``x``.
        hidden_size: ``n``, the number of qubits (1 to :data:`MAX_QUBITS`); also ``y``'s width.
        degree: the neurons' polynomial degree (1 to ``max(1, n - 1)``; default 2, or 1 for
            ``n <= 2``).
        order: repeat-until-success stages per neuron (``>= 1``; larger is a sharper step).
        amplification: ``"ideal"`` or ``"none"`` (see above).
        amplitudes: ``"real"`` (only ``R_y`` gates) or ``"complex"`` (adds the phase gates).
        initial: the register's initial state, ``"zero"`` (``|0...0>``) or ``"uniform"``.
        device, dtype: for the parameters.

    Parameters: ``weight: (n, M)`` (``M`` monomials of the other ``n - 1`` qubits of degree at
    most ``degree``, the empty one being the bias), ``input_weight: (n, M', input_size)``
    (``M'`` monomials of degree at most ``degree - 1``); complex: ``phase_bias: (n,)`` and
    ``phase_weight: (n, input_size)``.
    Shapes: ``project``: ``(..., input_size) -> (..., n 2**(n-1) [x 2 if "none"] [+ 2**n if
    complex])``, the neurons' angles ``q^order(theta_j(s))`` (they depend on the inputs and on
    basis labels, never on amplitudes, so they are time-parallel), their success amplitudes
    ``sqrt(p)`` when postselected, and the phase of each basis state when complex; state
    ``delta: (B, 2**n)`` real or ``(B, 2**n, 2)`` complex (see :class:`QRNNState`).
    """

    kind = "qrnn"
    state_type = QRNNState
    AMPLIFICATIONS = ("ideal", "none")
    monomial_values: Tensor
    bits: Tensor
    AMPLITUDES = ("real", "complex")
    INITIAL = ("zero", "uniform")

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        degree: int | None = None,
        order: int = 1,
        amplification: str = "ideal",
        amplitudes: str = "real",
        initial: str = "zero",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if hidden_size > MAX_QUBITS:
            raise ValueError(
                f"hidden_size is the number of qubits, at most {MAX_QUBITS} for a statevector "
                f"simulation, got {hidden_size}"
            )
        if degree is None:
            degree = min(2, max(1, hidden_size - 1))
        check_positive_int("degree", degree)
        if degree > max(1, hidden_size - 1):
            raise ValueError(
                f"degree must be at most max(1, hidden_size - 1) = {max(1, hidden_size - 1)} "
                f"(a neuron sees the other hidden_size - 1 qubits), got {degree}"
            )
        check_positive_int("order", order)
        if amplification not in self.AMPLIFICATIONS:
            raise ValueError(
                f"amplification must be one of {self.AMPLIFICATIONS}, got {amplification!r}"
            )
        if amplitudes not in self.AMPLITUDES:
            raise ValueError(f"amplitudes must be one of {self.AMPLITUDES}, got {amplitudes!r}")
        if initial not in self.INITIAL:
            raise ValueError(f"initial must be one of {self.INITIAL}, got {initial!r}")
        n = hidden_size
        self.input_size = input_size
        self.hidden_size = n
        self.output_size = n
        self.degree = degree
        self.order = order
        self.amplification = amplification
        self.amplitudes = amplitudes
        self.initial = initial
        self.num_monomials = len(monomials(n, 0, degree))
        self.num_input_monomials = len(monomials(n, 0, degree - 1))
        # per neuron, one activation angle per basis state of the other qubits (and, postselected,
        # its success amplitude); complex: one phase per basis state
        half = 2 ** (n - 1)
        self.projected_size = n * half * (2 if amplification == "none" else 1) + (
            2 * half if amplitudes == "complex" else 0
        )
        self.weight = nn.Parameter(torch.empty(n, self.num_monomials, device=device, dtype=dtype))
        self.input_weight = nn.Parameter(
            torch.empty(n, self.num_input_monomials, input_size, device=device, dtype=dtype)
        )
        # Angles of order one (a quarter turn of the neuron's range) at initialisation: the
        # activation's slope is largest there; the bias sits at pi/4, q's midpoint.
        bound = (math.pi / 4) / math.sqrt(self.num_monomials)
        nn.init.uniform_(self.weight, -bound, bound)
        with torch.no_grad():
            self.weight[:, 0] += math.pi / 4
        nn.init.uniform_(self.input_weight, -bound, bound)
        self.phase_bias: nn.Parameter | None = None
        self.phase_weight: nn.Parameter | None = None
        if amplitudes == "complex":
            self.phase_bias = nn.Parameter(torch.empty(n, device=device, dtype=dtype))
            self.phase_weight = nn.Parameter(torch.empty(n, input_size, device=device, dtype=dtype))
            nn.init.uniform_(self.phase_bias, -math.pi, math.pi)
            nn.init.uniform_(self.phase_weight, -bound, bound)
        table = torch.stack([monomial_table(n, j, degree) for j in range(n)])
        # Fixed 0/1 tables: follow the cell's dtype and device, never saved in checkpoints.
        self.register_buffer(
            "monomial_values", table.to(dtype or torch.get_default_dtype()), persistent=False
        )
        self.register_buffer(
            "bits", bit_table(n).to(dtype or torch.get_default_dtype()), persistent=False
        )

    def state_spec(self) -> tuple[StateField, ...]:
        size = 2**self.hidden_size
        shape = (size, 2) if self.amplitudes == "complex" else (size,)
        return (
            StateField(
                "delta",
                shape,
                init=0.0,
                doc="amplitudes of the 2**n basis states less the initial register's"
                + (" (re, im)" if self.amplitudes == "complex" else ""),
            ),
        )

    def register(self, state: QRNNState) -> Tensor:
        """The register's amplitudes ``psi = delta + psi_0``: ``(B, 2**n)``, or ``(B, 2**n, 2)``
        when complex."""
        return state.delta + self._initial_like(state.delta)

    def _initial_like(self, delta: Tensor) -> Tensor:
        # built from Python numbers in delta's dtype (not kept as a buffer), so that a cell
        # moved to float64 after construction gets the exact amplitudes
        return initial_register(
            self.hidden_size,
            self.initial,
            self.amplitudes == "complex",
            dtype=delta.dtype,
            device=delta.device,
        )

    def project(self, x: Tensor) -> Tensor:
        # The angles depend on the inputs and on the basis labels of the control qubits, never
        # on the amplitudes: every neuron's activation for every step is time-parallel work.
        n, m, half = self.hidden_size, self.num_monomials, 2 ** (self.hidden_size - 1)
        coupled = torch.einsum("...i,jki->...jk", x, self.input_weight)
        coef = self.weight + F.pad(coupled, (0, m - self.num_input_monomials))
        theta = torch.einsum("...jk,jks->...js", coef, self.monomial_values.to(x.dtype))
        angle, success = rus_activation(theta, self.order)
        lead = x.shape[:-1]
        parts = [angle.reshape(*lead, n * half)]
        if self.amplification == "none":
            parts.append(success.sqrt().reshape(*lead, n * half))
        if self.phase_weight is not None and self.phase_bias is not None:
            phi = F.linear(x, self.phase_weight, self.phase_bias)
            # R_z(phi_j) = diag(e^(-i phi_j / 2), e^(i phi_j / 2)) on every qubit: one phase
            # per basis state s, sum_j phi_j (s_j - 1/2)
            parts.append(phi @ (self.bits.to(x.dtype).T - 0.5))
        return torch.cat(parts, dim=-1)

    def recur(self, px_t: Tensor, state: QRNNState) -> tuple[Tensor, QRNNState]:
        n, half = self.hidden_size, 2 ** (self.hidden_size - 1)
        batch = px_t.shape[0]
        angles = px_t[:, : n * half].reshape(batch, n, half)
        psi0 = self._initial_like(state.delta)  # built once per step, used twice
        psi = state.delta + psi0
        if self.amplitudes == "complex":
            psi = phase(psi, px_t[:, px_t.shape[1] - 2 * half :])
        weights = None
        if self.amplification == "none":
            weights = px_t[:, n * half : 2 * n * half].reshape(batch, n, half)
        for j in range(n):
            if weights is None:
                psi = controlled_ry(psi, j, angles[:, j])
            else:
                psi = normalise(controlled_ry(psi, j, angles[:, j], weights[:, j]))
        y = probabilities(psi) @ self.bits.to(px_t.dtype)
        return y, QRNNState(psi - psi0)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, degree={self.degree}, order={self.order}, "
            f"amplification={self.amplification!r}, amplitudes={self.amplitudes!r}, "
            f"initial={self.initial!r}"
        )
