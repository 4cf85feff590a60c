"""The diagonal-Jacobian form: every registered backend against the form's reference, on odd
shapes.

Cells, defined here (the kernels' tests do not import rnnkit-models): :class:`LeakyTanh`, with a
diagonal Jacobian, and :class:`Spiral`, with 2x2 blocks (``newton_block = 2``), input 5 and
hidden 7. Backends: every one the dispatch registry has for them (``kernels_for``), each in
float64 and float32, against :data:`rnnkit.kernels.newton.REFERENCE` (the loop over ``recur``)
run in float64: output, final state and the gradients of the input, the initial state and every
parameter, for lengths 1, 7 and 13, with and without an initial state and resets, every fresh
buffer poisoned to NaN; and a NaN in the input makes exactly its own example's later outputs
and final state NaN.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar, NamedTuple

import pytest
import torch
from _form_helpers import (
    DEVICES,
    DTYPE_IDS,
    DTYPES,
    REFERENCE,
    ReferenceRuns,
    backends_for,
    check_backend,
    check_nan_propagates,
)
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.reference import reference_forward
from rnnkit.core.state import StateField
from rnnkit.kernels import newton

INPUT, HIDDEN = 5, 7


class LeakState(NamedTuple):
    h: Tensor


class SpiralState(NamedTuple):
    h: Tensor
    c: Tensor


class LeakyTanh(Cell[LeakState]):
    """``h_t = (1 - a_t) h_{t-1} + a_t tanh(w h_{t-1} + u_t)`` with ``a_t = sigmoid(g_t)`` and
    ``(g_t, u_t)`` projected from ``x_t``; ``y_t = c h_t``. Diagonal Jacobian."""

    kind: ClassVar[str] = "leaky_tanh"
    forms = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = LeakState
    newton_block = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.projected_size = 2 * hidden_size
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        self.w = nn.Parameter(torch.linspace(-1.2, 1.2, hidden_size))
        self.c = nn.Parameter(torch.linspace(0.5, 1.5, hidden_size))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)),)

    def project(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def recur(self, px_t: Tensor, state: LeakState) -> tuple[Tensor, LeakState]:
        h = self.recur_parallel(px_t, state.h)
        return self.readout_parallel(px_t, h), LeakState(h)

    def pack_state(self, state: LeakState) -> Tensor:
        return state.h

    def unpack_state(self, z: Tensor) -> LeakState:
        return LeakState(z)

    def _parts(self, px: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        g, u = px.chunk(2, dim=-1)
        return torch.sigmoid(g), torch.tanh(self.w * z + u)

    def recur_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        a, t = self._parts(px, z)
        return (1 - a) * z + a * t

    def jacobian_diag(self, px: Tensor, z: Tensor) -> Tensor:
        a, t = self._parts(px, z)
        return (1 - a) + a * (1 - t * t) * self.w

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return self.c * z


class Spiral(Cell[SpiralState]):
    """``(h, c)_t = tanh(M (h, c)_{t-1} + p_t)`` per unit, ``M = rho R(phi)`` a scaled 2x2
    rotation with learned ``rho`` and ``phi``; ``y_t = h_t + c_t / 2``. 2x2-block Jacobian."""

    kind: ClassVar[str] = "spiral"
    forms = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = SpiralState
    newton_block = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.projected_size = 2 * hidden_size
        self.proj = nn.Linear(input_size, 2 * hidden_size)
        self.rho = nn.Parameter(torch.linspace(0.4, 0.9, hidden_size))
        self.phi = nn.Parameter(torch.linspace(-2.0, 2.0, hidden_size))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)), StateField("c", (self.hidden_size,)))

    def project(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def recur(self, px_t: Tensor, state: SpiralState) -> tuple[Tensor, SpiralState]:
        z = self.recur_parallel(px_t, self.pack_state(state))
        return self.readout_parallel(px_t, z), self.unpack_state(z)

    def pack_state(self, state: SpiralState) -> Tensor:
        return torch.stack((state.h, state.c), -1)

    def unpack_state(self, z: Tensor) -> SpiralState:
        return SpiralState(z[..., 0], z[..., 1])

    def _m(self) -> Tensor:
        """``(H, 2, 2)``: ``m[u, i, j]`` maps component ``j`` of unit ``u`` to component ``i``."""
        cos, sin = torch.cos(self.phi), torch.sin(self.phi)
        return self.rho[:, None, None] * torch.stack((cos, -sin, sin, cos), -1).unflatten(
            -1, (2, 2)
        )

    def _pre(self, px: Tensor, z: Tensor) -> Tensor:
        return (self._m() * z.unsqueeze(-2)).sum(-1) + px.unflatten(-1, (self.hidden_size, 2))

    def recur_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return torch.tanh(self._pre(px, z))

    def jacobian_diag(self, px: Tensor, z: Tensor) -> Tensor:
        d = 1 - torch.tanh(self._pre(px, z)) ** 2
        return d.unsqueeze(-1) * self._m()

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return z[..., 0] + 0.5 * z[..., 1]


MAKERS = {"diagonal": LeakyTanh, "block2": Spiral}
BACKENDS = backends_for(make(INPUT, HIDDEN) for make in MAKERS.values())


@cache
def _reference(name: str) -> ReferenceRuns:
    return ReferenceRuns(lambda: MAKERS[name](INPUT, HIDDEN), seed=7)


def test_reference_is_the_recur_loop() -> None:
    assert newton.REFERENCE is reference_forward


def test_backends_come_from_the_registry() -> None:
    assert "newton" in BACKENDS and REFERENCE not in BACKENDS


@pytest.mark.parametrize("resets", [False, True], ids=["noresets", "resets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_reference(
    backend: str, name: str, device: str, dtype: torch.dtype, resets: bool
) -> None:
    check_backend(_reference(name), backend, dtype, use_resets=resets, device=device)


# The Newton solve reports a NaN residual as no convergence and falls back, with this warning, to
# the sequential loop, which propagates the NaN: the outputs are what the test asserts.
@pytest.mark.filterwarnings("ignore:newton. no convergence:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend: str, name: str, device: str, dtype: torch.dtype) -> None:
    check_nan_propagates(_reference(name).cell, backend, dtype, device)
