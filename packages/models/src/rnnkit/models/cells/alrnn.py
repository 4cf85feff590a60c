"""AL-RNN (Brenner, Hemmer, Monfared & Durstewitz, NeurIPS 2024): the almost-linear RNN.

A latent state ``z (M,)`` evolves as::

    z_t = A * z_{t-1} + W Φ*(z_{t-1}) + C s_t + h,
    Φ*(z) = (z_1, ..., z_{M-P}, max(0, z_{M-P+1}), ..., max(0, z_M)),

with ``A`` diagonal (a vector), ``W`` a full ``M x M`` matrix, ``C`` the input weights and ``h``
a bias: only the last ``P`` units are rectified, the rest are linear. The map is therefore
linear inside each of at most ``2**P`` regions of state space, one per sign pattern of the last
``P`` units; :func:`region_codes` names the region as an integer (bit ``k`` set when unit
``M-P+k`` is positive) and :func:`symbolic_graph` counts the transitions between regions along
a trajectory (the paper's symbolic coding).

Written from the paper's equations and the notes in ``reference/zoo-nonlinear-and-methods.md``
(the authors' code is GPL-3.0 and was not used).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int


class ALRNNState(NamedTuple):
    """State of :class:`ALRNN`: ``z: (B, M)``."""

    z: Tensor


def check_pwl_units(pwl_units: object, hidden_size: int) -> int:
    """``pwl_units`` (``P``) as an int if ``0 <= P <= hidden_size``, else a ``ValueError``
    naming ``pwl_units``."""
    if (
        not isinstance(pwl_units, int)
        or isinstance(pwl_units, bool)
        or not 0 <= pwl_units <= hidden_size
    ):
        raise ValueError(
            f"pwl_units (P, the rectified units) must be an int in [0, hidden_size = "
            f"{hidden_size}], got {pwl_units!r}"
        )
    return pwl_units


def phi_star(z: Tensor, pwl_units: int) -> Tensor:
    """``Φ*(z)``: identity on the first ``M - P`` units, ReLU on the last ``P``.
    ``(..., M) -> (..., M)``."""
    if pwl_units == 0:
        return z
    k = z.shape[-1] - pwl_units
    return torch.cat((z[..., :k], torch.relu(z[..., k:])), dim=-1)


def region_codes(z: Tensor, pwl_units: int) -> Tensor:
    """The linear region of each state: ``sum_k 2**k [z_{M-P+k} > 0]`` (int64).

    ``z: (..., M) -> (...)``, values in ``[0, 2**P)``. A unit exactly at 0 counts as inactive
    (its ReLU is 0 either way, so both neighbouring regions give the same map there).
    """
    if pwl_units == 0:
        return torch.zeros(z.shape[:-1], dtype=torch.int64, device=z.device)
    bits = (z[..., z.shape[-1] - pwl_units :] > 0).to(torch.int64)
    weights = 2 ** torch.arange(pwl_units, device=z.device, dtype=torch.int64)
    return (bits * weights).sum(-1)


def symbolic_graph(codes: Tensor, num_codes: int) -> Tensor:
    """Transition counts between consecutive codes, self-transitions included.

    Args:
        codes: ``(T,)`` or ``(B, T)`` int64 codes in ``[0, num_codes)`` (each row one
            trajectory; transitions are counted within rows only).
        num_codes: ``R``, the number of symbols (``2**P`` for :func:`region_codes`).

    Returns:
        ``(R, R)`` int64, entry ``[i, j]`` the number of steps from code ``i`` to code ``j``.
        Divide each row by its sum for the transition probabilities.
    """
    check_positive_int("num_codes", num_codes)
    if codes.dim() == 1:
        codes = codes[None]
    if codes.dim() != 2 or codes.dtype != torch.int64:
        raise ValueError(f"codes must be int64 of shape (T,) or (B, T), got {codes.shape}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_codes):
        raise ValueError(f"codes must lie in [0, num_codes = {num_codes})")
    pairs = codes[:, :-1].reshape(-1) * num_codes + codes[:, 1:].reshape(-1)
    counts = torch.bincount(pairs.cpu(), minlength=num_codes * num_codes)
    return counts.reshape(num_codes, num_codes)


def _check_non_negative_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


class ALRNN(Cell[ALRNNState]):
    """AL-RNN: ``z_t = A * z_{t-1} + W Φ*(z_{t-1}) + C s_t + h``, ``y_t = z_t``.

    No structural form is declared: ``W`` is dense, so ``dz_t/dz_{t-1} = diag(A) + W D_t``
    (``D_t`` the 0/1 slopes of ``Φ*``) is dense and Newton's diagonal-Jacobian solve does not
    apply; the step is not the gated form either (the nonlinearity acts on ``z_{t-1}`` before
    ``W``, not on ``px + W z``), and ``A * z`` plus a dense ``W`` term is not diagonal linear.
    The ``reference`` loop runs it.

    Args:
        input_size: width of the external input ``s`` (``0``: an autonomous system, no ``C``;
            then ``project`` returns ``h`` for inputs of width 0).
        hidden_size: ``M``, width of ``z`` and ``y``.
        pwl_units: ``P``, how many of the last units are rectified (``0 <= P <= M``; ``0`` is a
            linear RNN, ``M`` a PLRNN with a diagonal linear part). Default 2 (the paper's
            Lorenz-63 setting).
        bias: whether there is a bias ``h``.
        device, dtype: for the parameters.

    Parameters and the paper's initialisation: ``diag: (M,)`` (``A``) is the diagonal of
    ``K / λ_max(K)`` with ``K = R^T R / M + I`` and ``R`` standard normal, so every entry lies
    in ``(0, 1]``; ``recurrent: (M, M)`` (``W``) from ``N(0, 0.01²)``; ``bias: (M,)`` (``h``)
    zero; ``weight_ih: (M, I)`` (``C``) from ``U(-1/sqrt(I), 1/sqrt(I))``. Shapes: ``project``
    ``(..., I) -> (..., M)``.
    """

    kind = "alrnn"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = ALRNNState
    floor: Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        pwl_units: int = 2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_non_negative_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        self.pwl_units = check_pwl_units(pwl_units, hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.projected_size = hidden_size
        self.weight_ih = nn.Parameter(
            torch.empty(hidden_size, input_size, device=device, dtype=dtype)
        )
        self.bias: nn.Parameter | None = (
            nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype)) if bias else None
        )
        self.diag = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.recurrent = nn.Parameter(
            torch.empty(hidden_size, hidden_size, device=device, dtype=dtype)
        )
        # Φ*(z) = max(z, floor): -inf on the linear units, 0 on the rectified ones (one op per
        # step instead of a split, a ReLU and a concatenation)
        floor = torch.zeros(hidden_size, device=device, dtype=dtype)
        floor[: hidden_size - self.pwl_units] = -math.inf
        self.register_buffer("floor", floor, persistent=False)
        self.reset_parameters()

    @property
    def num_regions(self) -> int:
        """``2**P``, the most linear regions the map can have."""
        return int(2**self.pwl_units)

    def reset_parameters(self) -> None:
        """The paper's initialisation (see the class docstring)."""
        m = self.hidden_size
        with torch.no_grad():
            r = torch.randn(m, m, dtype=torch.float64)
            k = r.T @ r / m + torch.eye(m, dtype=torch.float64)
            self.diag.copy_(torch.diagonal(k) / torch.linalg.eigvalsh(k)[-1])
        nn.init.normal_(self.recurrent, 0.0, 0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if self.input_size > 0:
            bound = 1.0 / math.sqrt(self.input_size)
            nn.init.uniform_(self.weight_ih, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("z", (self.hidden_size,), doc="latent state"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., M)``: ``C s + h``."""
        return F.linear(x, self.weight_ih, self.bias)

    def phi(self, z: Tensor) -> Tensor:
        """``Φ*(z)`` (:func:`phi_star`): ``(..., M) -> (..., M)``."""
        # clamp passes the gradient at exactly z = 0 where ReLU gives 0: a set of measure zero
        return torch.clamp(z, min=self.floor.to(z.dtype))

    def step_map(self, z: Tensor, px_t: Tensor | None = None) -> Tensor:
        """One step from ``z: (..., M)``: ``A * z + W Φ*(z) + px_t``.

        ``px_t`` broadcasts against ``z``; ``None`` means no external input (``px = h``, the
        autonomous system that :class:`rnnkit.models.dsr.ALRNNReconstructor` runs).
        """
        if px_t is None:
            wz = F.linear(self.phi(z), self.recurrent, self.bias)
        else:
            wz = F.linear(self.phi(z), self.recurrent).add_(px_t)
        return torch.addcmul(wz, self.diag, z)

    def recur(self, px_t: Tensor, state: ALRNNState) -> tuple[Tensor, ALRNNState]:
        z = self.step_map(state.z, px_t)
        return z, ALRNNState(z)

    def region_codes(self, z: Tensor) -> Tensor:
        """The linear region of each state (:func:`region_codes`): ``(..., M) -> (...)``."""
        return region_codes(z, self.pwl_units)

    def jacobian(self, z: Tensor) -> Tensor:
        """``dz_t/dz_{t-1}`` of the step taken from each state ``z`` (the input's term ``C s_t``
        does not depend on ``z``): ``diag(A) + W diag(1_{M-P}, d)`` with ``d = [z_{M-P+1:M} >
        0]``, exact for this piecewise-linear map away from the measure-zero faces ``z_k = 0``.

        ``z: (..., M) -> (..., M, M)``, entry ``[..., i, j] = dz_{t,i} / dz_{t-1,j}``.
        """
        return self._jacobian(z[..., self.hidden_size - self.pwl_units :] > 0, z.dtype)

    def region_jacobian(self, code: int) -> Tensor:
        """``dz_t/dz_{t-1}`` inside region ``code``: ``diag(A) + W diag(1_{M-P}, d)``, ``(M, M)``
        (``d`` the code's bits); the map there is ``z -> J z + px``."""
        if not 0 <= code < self.num_regions:
            raise ValueError(f"code must lie in [0, {self.num_regions}), got {code}")
        bits = torch.arange(self.pwl_units, device=self.recurrent.device)
        return self._jacobian((code >> bits) & 1 == 1, self.recurrent.dtype)

    def _jacobian(self, active: Tensor, dtype: torch.dtype) -> Tensor:
        """``diag(A) + W diag(1_{M-P}, d)`` in ``dtype``, ``d`` the bool ``active: (..., P)``
        (which rectified units pass their input): ``(..., M, M)``."""
        ones = active.new_ones(*active.shape[:-1], self.hidden_size - self.pwl_units)
        slopes = torch.cat((ones, active), dim=-1).to(dtype)
        diag = torch.diag_embed(self.diag.to(dtype).expand(slopes.shape))
        return diag + self.recurrent.to(dtype) * slopes[..., None, :]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pwl_units={self.pwl_units}, bias={self.bias is not None}"
