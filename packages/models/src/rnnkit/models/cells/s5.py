"""S5 (Smith, Warrington, Linderman 2023, "Simplified State Space Layers for Sequence
Modeling"): one complex diagonal state shared by all input channels (MIMO).

With ``H`` input channels, state size ``P`` (``P / 2`` complex states kept: conjugate pairs are
implied and the output takes twice the real part):

    x_t = Lambda_bar * x_{t-1} + B_bar u_t            (u_t: (H,), x_t: (P/2,) complex)
    y_t = 2 Re(C~ x_t) + D * u_t                      (C~: (H, P/2) complex, D: (H,))

with ``Lambda = -exp(lambda_log) + i lambda_imag`` and one step ``dt = exp(dt_log)`` per state,
discretised by zero-order hold (``Lambda_bar = exp(dt Lambda)``,
``B_bar = (Lambda_bar - 1) / Lambda * B~``) or the bilinear transform.

In the diagonal linear form the MIMO input matrix is part of the input transform: ``project``
computes ``B_bar u_t`` for every step at once (a dense ``(P/2, H)`` complex product, the
time-parallel part), ``coefficients`` hands the scan ``a = Lambda_bar`` and ``b = B_bar u_t``,
and ``readout`` applies ``C~`` and ``D``. Every backend of the diagonal linear form (the
``scan`` backends of rnnkit-kernels) therefore runs S5 unchanged, ``resets`` and ``lengths``
included; no S5-specific kernel exists.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_dt_range
from rnnkit.models.cells.hippo import hippo_n_half

#: Discretisations.
DISCRETIZATIONS: tuple[str, ...] = ("zoh", "bilinear")


def _real_compute(dtype: torch.dtype) -> torch.dtype:
    """float64 stays, anything narrower computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


#: Below this ``|z|``, :func:`phi1` sums its Taylor series (15 terms reach float64 precision at
#: ``|z| = 1/2``); above it, ``expm1(z) / z`` loses at most a few bits in value and derivative.
_PHI1_SERIES_BELOW = 0.5
_PHI1_TERMS = 15


def phi1(z: Tensor) -> Tensor:
    """``phi_1(z) = (exp(z) - 1) / z`` (1 at ``z = 0``), elementwise, with a derivative that
    keeps full precision for small ``|z|``.

    ZOH's ``B_bar = (exp(dt Lambda) - 1) / Lambda * B = dt phi_1(dt Lambda) B``. Written as
    ``expm1(z) / z``, autograd's derivative is ``exp(z) / z - expm1(z) / z^2``: two terms of
    size ``1/|z|`` that cancel to ``1/2``, losing ``log10(1/|z|)`` digits, which for ``dt``
    near ``1e-3`` is most of float32's. Near 0 the Taylor series
    ``sum_k z^k / (k + 1)!`` (Horner form) has no such cancellation.
    """
    small = z.abs() < _PHI1_SERIES_BELOW
    zs = torch.where(small, z, torch.zeros((), dtype=z.dtype, device=z.device))
    series = torch.ones_like(zs)
    for k in range(_PHI1_TERMS, 0, -1):
        series = 1 + series * zs / (k + 1)
    # the other branch at a safe argument: where() would route 0 * NaN gradients from 0 / 0
    zl = torch.where(small, torch.ones((), dtype=z.dtype, device=z.device), z)
    return torch.where(small, series, torch.expm1(zl) / zl)


def s5_init(input_size: int, state_size: int, blocks: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """S5's block-diagonal HiPPO-N initialisation, float64/complex128, from the global RNG.

    The state of size ``P = state_size`` is ``blocks`` blocks of HiPPO-N of size ``P / blocks``
    each (the eigendecomposition ``V diag(Lambda) V^H`` of LegS's normal part, see
    :mod:`rnnkit.models.cells.hippo`), of which one eigenvalue of every conjugate pair is kept.
    With ``V_k: (P, P/2)`` the block-diagonal matrix of the kept eigenvectors, a real
    ``B: (P, H)`` drawn LeCun-normal (std ``1/sqrt(H)``) and a real ``C: (H, P)`` drawn from a
    normal truncated at two standard deviations (std ``1/sqrt(P)``):

        B~ = V_k^H B  (P/2, H),    C~ = C V_k  (H, P/2)

    so that ``2 Re(C~ x~)`` with ``x~ = V_k^H x`` equals ``C x`` for the real state ``x`` of
    the block-diagonal normal system.

    Returns ``(Lambda: (P/2,), B~: (P/2, H), C~: (H, P/2), V_k: (P, P/2))``.
    """
    lam_b, V_b = hippo_n_half(state_size // blocks)
    lam = lam_b.repeat(blocks)
    n, m = V_b.shape
    Vk = torch.zeros(state_size, state_size // 2, dtype=V_b.dtype)
    for j in range(blocks):  # block-diagonal: J copies of V_b
        Vk[j * n : (j + 1) * n, j * m : (j + 1) * m] = V_b
    B = torch.randn(state_size, input_size, dtype=torch.float64) / math.sqrt(input_size)
    C = torch.empty(input_size, state_size, dtype=torch.float64)
    std = 1 / math.sqrt(state_size)
    nn.init.trunc_normal_(C, std=std, a=-2 * std, b=2 * std)
    Bt = Vk.conj().T @ B.to(Vk.dtype)
    Ct = C.to(Vk.dtype) @ Vk
    return lam, Bt, Ct, Vk


class S5(DiagonalLinearCell):
    """S5: a MIMO complex diagonal SSM, ``y: (B, T, H)`` from ``x: (B, T, H)``.

    The state is complex ``h: (B, P / 2)``, shared by the ``H = input_size`` channels;
    ``hidden_size`` is ``P`` (the size of the real system it is initialised from; ``P / 2``
    complex states are kept, conjugate pairs implied, output ``2 Re``). Parameters:
    ``lambda_log, lambda_imag, dt_log: (P/2,)``, ``B_re, B_im: (P/2, H)``,
    ``C_re, C_im: (H, P/2)``, ``D: (H,)``, stored in the cell's dtype; the recurrence runs in
    complex64 (complex128 for float64 cells).

    ``Re(Lambda) = -exp(lambda_log) < 0`` for every parameter value, so both discretisations
    are stable throughout training (S5 itself stores ``Re(Lambda)`` and can clip it; this
    parameterisation makes the clip unnecessary).

    Backends: ``reference`` and the ``scan`` backends of the diagonal linear form, with
    ``resets`` (episode boundaries: the state restarts from zero) and ``lengths``.

    Args:
        input_size: ``H``, the number of channels of ``x`` and ``y``.
        hidden_size: ``P``, the state size; a multiple of ``2 * blocks``.
        blocks: ``J``, the number of HiPPO-N blocks of the initialisation (size ``P / J``
            each, even).
        discretization: ``"zoh"`` (default) or ``"bilinear"``.
        dt_min, dt_max: the range of the initial steps (log-uniform, one per state).
    """

    kind = "s5"

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        *,
        blocks: int = 4,
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("blocks", blocks)
        if hidden_size % (2 * blocks):
            raise ValueError(
                f"hidden_size (the state size P) must be a multiple of 2 * blocks (each of the "
                f"{blocks} blocks keeps half of its conjugate pairs), got hidden_size="
                f"{hidden_size}, blocks={blocks}"
            )
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}"
            )
        check_dt_range(dt_min, dt_max)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.states = hidden_size // 2
        self.projected_size = 2 * self.states + input_size
        self.blocks, self.discretization = blocks, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        H, M = input_size, self.states
        self.lambda_log = nn.Parameter(torch.empty(M, **kw))
        self.lambda_imag = nn.Parameter(torch.empty(M, **kw))
        self.dt_log = nn.Parameter(torch.empty(M, **kw))
        self.B_re = nn.Parameter(torch.empty(M, H, **kw))
        self.B_im = nn.Parameter(torch.empty(M, H, **kw))
        self.C_re = nn.Parameter(torch.empty(H, M, **kw))
        self.C_im = nn.Parameter(torch.empty(H, M, **kw))
        self.D = nn.Parameter(torch.empty(H, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """S5's initialisation (see :func:`s5_init`); ``dt`` log-uniform in ``[dt_min, dt_max]``,
        ``D`` standard normal."""
        lam, Bt, Ct, _ = s5_init(self.input_size, self.hidden_size, self.blocks)
        self.lambda_log.copy_(torch.log(-lam.real))
        self.lambda_imag.copy_(lam.imag)
        self.B_re.copy_(Bt.real)
        self.B_im.copy_(Bt.imag)
        self.C_re.copy_(Ct.real)
        self.C_im.copy_(Ct.imag)
        u = torch.rand(self.states, dtype=torch.float64)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.dt_log.copy_(lo + u * (hi - lo))
        nn.init.normal_(self.D)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.states,), complex=True, doc="complex state (P/2)"),)

    def eigenvalues(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``Lambda: (P/2,)`` complex (complex128 for ``dtype=float64``, else complex64)."""
        rd = _real_compute(dtype)
        return torch.complex(-torch.exp(self.lambda_log.to(rd)), self.lambda_imag.to(rd))

    def discretized(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(Lambda_bar: (P/2,), B_bar: (P/2, H))`` complex, for inputs of ``dtype``."""
        rd = _real_compute(dtype)
        lam = self.eigenvalues(rd)
        dt = torch.exp(self.dt_log.to(rd))
        dtl = dt * lam
        B = torch.complex(self.B_re.to(rd), self.B_im.to(rd))
        if self.discretization == "zoh":
            # (exp(dt Lambda) - 1) / Lambda as dt phi_1(dt Lambda): see phi1 for why
            return torch.exp(dtl), (dt * phi1(dtl)).unsqueeze(-1) * B
        half = 1 - dtl / 2
        return (1 + dtl / 2) / half, (dt / half).unsqueeze(-1) * B

    def project(self, x: Tensor) -> Tensor:
        """``(..., H) -> (..., P + H)``: ``[Re(B_bar x), Im(B_bar x), x]`` in ``x``'s dtype."""
        _, b_bar = self.discretized(x.dtype)
        rd = b_bar.real.dtype
        xr = x.to(rd)
        re = xr @ b_bar.real.T
        im = xr @ b_bar.imag.T
        return torch.cat((re.to(x.dtype), im.to(x.dtype), x), -1)

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        """``a = Lambda_bar`` broadcast to ``(..., P/2)`` and ``b = B_bar u`` (complex)."""
        M = self.states
        rd = _real_compute(px.dtype)
        b = torch.complex(px[..., :M].to(rd), px[..., M : 2 * M].to(rd))
        a_bar, _ = self.discretized(px.dtype)
        return a_bar.expand(b.shape), b

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        """``y = 2 Re(C~ h) + D u``: ``(..., P/2)`` complex -> ``(..., H)`` in ``px``'s dtype."""
        rd = h.real.dtype
        y = 2 * (h.real @ self.C_re.to(rd).T - h.imag @ self.C_im.to(rd).T)
        u = px[..., 2 * self.states :].to(rd)
        return (y + self.D.to(rd) * u).to(px.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, blocks={self.blocks}, discretization={self.discretization!r}"
        )
