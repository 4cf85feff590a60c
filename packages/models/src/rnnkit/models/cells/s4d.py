"""S4D (Gu, Gupta, Goel, Re 2022, "On the Parameterization and Initialization of Diagonal State
Space Models"): a diagonal, time-invariant complex state space model per channel.

Per input channel ``h`` and complex mode ``n`` (``N / 2`` modes, conjugate pairs implied):

    x_t = A_bar * x_{t-1} + B_bar * u_t          y_t = 2 Re(sum_n C_n x_{t,n}) + D u_t

with ``A = -exp(a_log) + i a_imag`` and the step ``dt = exp(dt_log)`` per channel, discretised by
zero-order hold (``A_bar = exp(dt A)``, ``B_bar = (A_bar - 1) / A``, ``B = 1``) or the bilinear
transform (``A_bar = (1 + dt A / 2) / (1 - dt A / 2)``, ``B_bar = dt / (1 - dt A / 2)``).

Being diagonal and linear, the cell runs on every backend of the diagonal linear form (the
``scan`` backends of rnnkit-kernels). Being time-invariant, its outputs are also a causal
convolution of the input with the kernel ``K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l)`` (a
Vandermonde product), applied by FFT: the ``s4d_conv`` backend registered below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.dispatch import KernelCall, Priority, cell_method_kernel
from rnnkit.core.linear import DiagonalLinearCell, LinearState
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_dt_range

#: Initialisations of the eigenvalues ``A``.
INITS: tuple[str, ...] = ("lin", "inv")
#: Discretisations.
DISCRETIZATIONS: tuple[str, ...] = ("zoh", "bilinear")


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64 parameters and inputs, complex64 otherwise."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def s4d_eigenvalues(init: str, state_size: int) -> tuple[Tensor, Tensor]:
    """``(real, imag)`` of the ``state_size / 2`` initial eigenvalues, float64.

    ``"lin"`` (S4D-Lin): ``A_n = -1/2 + i pi n``; ``"inv"`` (S4D-Inv):
    ``A_n = -1/2 + i (N / pi) (N / (2 n + 1) - 1)``, ``n = 0 .. N/2 - 1``.
    """
    modes = state_size // 2
    n = torch.arange(modes, dtype=torch.float64)
    real = torch.full((modes,), -0.5, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    elif init == "inv":
        N = float(state_size)
        imag = (N / math.pi) * (N / (2 * n + 1) - 1)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return real, imag


class S4D(DiagonalLinearCell):
    """S4D: a diagonal complex SSM per channel, ``y: (B, T, H)`` from ``x: (B, T, H)``.

    The state is complex, ``h: (B, H * N / 2)`` (channel-major: mode ``n`` of channel ``c`` at
    ``c * N / 2 + n``); the input and output have ``H = input_size`` channels; ``hidden_size``
    is the state size ``N`` per channel (even: conjugate pairs are implied, the output takes
    twice the real part). ``B`` is fixed to 1 (folded into ``C``, as in the paper's minimal
    code); ``C`` is complex ``N(0, 1)``, ``D`` real ``N(0, 1)``; ``dt`` is log-uniform in
    ``[dt_min, dt_max]`` per channel. Parameters are stored in the cell's dtype; the recurrence
    runs in complex64 (complex128 for float64 cells).

    Backends: ``reference``, the ``scan`` backends (diagonal linear form) and ``s4d_conv`` (the
    convolution mode, no ``resets``), which ``auto`` prefers when it can run the call.

    Args:
        input_size: ``H``, the number of channels of ``x`` and ``y``.
        hidden_size: ``N``, the state size per channel (even).
        init: ``"lin"`` (S4D-Lin) or ``"inv"`` (S4D-Inv), see :func:`s4d_eigenvalues`.
        discretization: ``"zoh"`` or ``"bilinear"``.
        dt_min, dt_max: the range of the initial steps.
    """

    kind = "s4d"

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        *,
        init: str = "lin",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if hidden_size % 2:
            raise ValueError(
                f"hidden_size (the state size N) must be even (N / 2 complex modes), got "
                f"{hidden_size}"
            )
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(
                f"discretization must be one of {DISCRETIZATIONS}, got {discretization!r}"
            )
        check_dt_range(dt_min, dt_max)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.projected_size = input_size
        self.modes = hidden_size // 2
        self.init, self.discretization = init, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        H, M = input_size, self.modes
        self.dt_log = nn.Parameter(torch.empty(H, **kw))
        self.a_log = nn.Parameter(torch.empty(H, M, **kw))
        self.a_imag = nn.Parameter(torch.empty(H, M, **kw))
        self.C_re = nn.Parameter(torch.empty(H, M, **kw))
        self.C_im = nn.Parameter(torch.empty(H, M, **kw))
        self.D = nn.Parameter(torch.empty(H, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The S4D initialisation (see the class docstring)."""
        real, imag = s4d_eigenvalues(self.init, self.hidden_size)
        H = self.input_size
        self.a_log.copy_(torch.log(-real).expand(H, -1))
        self.a_imag.copy_(imag.expand(H, -1))
        u = torch.rand(H, dtype=torch.float64)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.dt_log.copy_(lo + u * (hi - lo))
        nn.init.normal_(self.C_re, std=math.sqrt(0.5))
        nn.init.normal_(self.C_im, std=math.sqrt(0.5))
        nn.init.normal_(self.D)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField(
                "h", (self.input_size * self.modes,), complex=True, doc="complex modes per channel"
            ),
        )

    def discretized(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(A_bar, B_bar)``, each ``(H, N / 2)`` complex, for inputs of ``dtype``."""
        cd = _complex_dtype(dtype)
        rd = torch.float64 if cd == torch.complex128 else torch.float32
        A = torch.complex(-torch.exp(self.a_log.to(rd)), self.a_imag.to(rd))
        dt = torch.exp(self.dt_log.to(rd)).unsqueeze(-1)
        dtA = dt * A
        if self.discretization == "zoh":
            # expm1: exp(dt A) - 1 cancels to a few digits in float32 when dt |A| is small
            return torch.exp(dtA), torch.expm1(dtA) / A
        half = 1 - dtA / 2
        return (1 + dtA / 2) / half, dt / half

    def project(self, x: Tensor) -> Tensor:
        """The identity: the SSM acts on the input channels themselves."""
        return x

    def coefficients(self, px: Tensor) -> tuple[Tensor, Tensor]:
        """``a = A_bar`` and ``b = B_bar u``, each ``(..., H * N / 2)`` complex."""
        a_bar, b_bar = self.discretized(px.dtype)
        b = (b_bar * px.to(a_bar.dtype).unsqueeze(-1)).flatten(-2)
        return a_bar.flatten().expand(b.shape), b

    def readout(self, h: Tensor, px: Tensor) -> Tensor:
        """``y = 2 Re(sum_n C_n h_n) + D u``: ``(..., H * N / 2)`` complex -> ``(..., H)``."""
        rd = h.real.dtype
        modes = h.view(*h.shape[:-1], self.input_size, self.modes)
        y = 2 * (modes.real * self.C_re.to(rd) - modes.imag * self.C_im.to(rd)).sum(-1)
        return (y + self.D.to(rd) * px.to(rd)).to(px.dtype)

    def conv_forward(
        self, x: Tensor, state: LinearState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, LinearState]:
        """The whole sequence in convolution mode, :func:`s4d_conv_forward` (no validation:
        ``forward`` validates and then runs this as the ``s4d_conv`` kernel).

        Args:
            x: ``(B, T, H)``.
            state: the initial state or ``None`` for zeros.
            resets: must be ``None``: a convolution cannot restart the state.

        Returns:
            ``y: (B, T, H)`` and the final state ``LinearState(h: (B, H * N / 2))``.
        """
        if resets is not None:
            raise ValueError("the convolution mode cannot restart the state (resets): use 'scan'")
        return s4d_conv_forward(self, x, state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}, discretization={self.discretization!r}"


def _chunked_powers(a_bar: Tensor, length: int) -> tuple[int, Tensor, Tensor]:
    """Powers of ``a_bar`` (``(H, M)``) for exponents ``0 .. length - 1`` in two small tables:
    every exponent is ``l = j c + i`` with ``c ~ sqrt(length)``, so ``A^l = A^(j c) A^i``.

    Returns ``(c, inner (H, M, c) = A^i, outer (H, M, J) = A^(j c))`` with
    ``J = ceil(length / c)``. Products over ``l`` then become batched matrix products of
    ``(J, M) x (M, c)`` per channel instead of an ``(H, M, length)`` table: memory falls from
    ``H M length`` to ``H M (c + J)`` numbers, and the products run as matrix multiplications.
    """
    c = max(1, math.isqrt(max(length, 1)))
    J = -(-length // c)
    log = torch.log(a_bar).unsqueeze(-1)  # (H, M, 1)
    steps = torch.arange(max(c, J), device=a_bar.device).to(a_bar.dtype)
    inner = torch.exp(log * steps[:c])
    outer = torch.exp(log * (steps[:J] * c))
    return c, inner, outer


def _vandermonde(weights: Tensor, a_bar: Tensor, length: int) -> Tensor:
    """``out[..., h, l] = sum_m weights[..., h, m] * a_bar[h, m]^l`` for ``l < length``.

    ``weights: (..., H, M)`` complex, ``a_bar: (H, M)`` -> ``(..., H, length)`` complex.
    """
    _, inner, outer = _chunked_powers(a_bar, length)
    rows = (weights.unsqueeze(-1) * outer).transpose(-1, -2)  # (..., H, J, M)
    out = torch.matmul(rows, inner)  # (..., H, J, c)
    return out.flatten(-2)[..., :length]


def _vandermonde_t(values: Tensor, a_bar: Tensor) -> Tensor:
    """``out[b, h, m] = sum_l a_bar[h, m]^l * values[b, l, h]``: the transposed product.

    ``values: (B, L, H)`` real or complex, ``a_bar: (H, M)`` -> ``(B, H, M)`` complex.
    """
    batch, length, H = values.shape
    c, inner, outer = _chunked_powers(a_bar, length)
    J = outer.shape[-1]
    v = values.to(a_bar.dtype)
    if J * c > length:
        v = torch.cat([v, v.new_zeros(batch, J * c - length, H)], 1)
    blocks = v.view(batch, J, c, H).permute(0, 3, 1, 2)  # (B, H, J, c)
    partial = torch.matmul(blocks, inner.transpose(-1, -2))  # (B, H, J, M)
    return (partial * outer.transpose(-1, -2)).sum(-2)


def s4d_conv_forward(
    cell: S4D, x: Tensor, initial: LinearState | None
) -> tuple[Tensor, LinearState]:
    """S4D's convolution mode (the ``s4d_conv`` kernel, through :meth:`S4D.conv_forward`):
    outputs as a causal convolution by FFT, the initial state's contribution and the final
    state as Vandermonde products; same results as the recurrence without resets.

    ``x: (B, T, H) -> y: (B, T, H)`` and ``LinearState(h: (B, H * N / 2))`` from ``initial``
    (``None``: zeros).
    """
    batch, time, H = x.shape
    M = cell.modes
    state = initial
    if state is None:
        state = cell.init_state(batch, device=x.device, dtype=x.dtype)
    if time == 0 or batch == 0:  # (the FFT refuses empty batches)
        return x.new_zeros(batch, time, H), state
    a_bar, b_bar = cell.discretized(x.dtype)
    cd = a_bar.dtype
    rd = a_bar.real.dtype
    # An FFT spreads a NaN over every output of its channel, earlier steps included: convolve
    # the finite inputs and spoil afterwards what the recurrence spoils (its channel, from its
    # step on, and that channel's final state).
    bad = ~torch.isfinite(x)  # (B, T, H)
    u = torch.where(bad, torch.zeros((), dtype=x.dtype, device=x.device), x).to(rd)
    C = torch.complex(cell.C_re.to(rd), cell.C_im.to(rd))
    W = C * b_bar  # (H, M)
    K = 2 * _vandermonde(W, a_bar, time).real  # (H, T): K_l = 2 Re(sum_m W_m A_bar_m^l)
    n = 2 * time  # linear (not circular) convolution
    conv = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(K, n=n), n=n)[
        ..., :time
    ]
    y = conv.transpose(1, 2) + cell.D.to(rd) * u
    # h_T = A_bar^T h0 + B_bar sum_l A_bar^(T-1-l) u_l (the inputs read backwards)
    h_last = b_bar * _vandermonde_t(u.flip(1), a_bar)
    if initial is not None:  # a zero initial state (None) adds nothing to either
        h0 = state.h.to(cd).view(batch, H, M)
        # what the initial state adds: 2 Re(sum_m C_m A_bar_m^(t+1) h0_m)
        y = y + 2 * _vandermonde(C * a_bar * h0, a_bar, time).real.transpose(1, 2)
        h_last = h_last + torch.exp(torch.log(a_bar) * time) * h0
    # The spoiled values are NaN weights on a link to the parameters: their gradients turn NaN
    # as the recurrence's do (a diverged run must not train on as if nothing happened), while
    # every other output adds 0 * link.
    # (nan_to_num: a NaN parameter must spoil its own channel only, not every 0 * link)
    finite = (torch.nan_to_num(p, 0.0, 0.0, 0.0).sum() for p in cell.parameters())
    link = sum(finite, torch.zeros((), device=x.device)).to(rd)
    zero = torch.zeros((), dtype=rd, device=x.device)
    spoil = torch.where(torch.cumsum(bad, 1) > 0, torch.nan, zero)  # (B, T, H)
    y = y + spoil * link
    spoil_h = torch.where(bad.any(1), torch.nan, zero).unsqueeze(-1)  # (B, H, 1)
    h_last = h_last + torch.complex(spoil_h, spoil_h) * link.to(cd)
    final = LinearState(h_last.reshape(batch, H * M).to(state.h.dtype))
    return y.to(x.dtype), final


def _conv_supports(cell: S4D, call: KernelCall) -> str | None:
    """What the convolution mode cannot run: resets."""
    del cell
    if call.resets is not None:
        return "the convolution mode cannot restart the state (resets): use 'scan'"
    return None


#: S4D's convolution mode, registered for the ``s4d`` cell kind: ``auto`` prefers it to the
#: generic scans for calls without resets.
CONV_KERNEL = cell_method_kernel(
    S4D,
    S4D.conv_forward,
    backend="s4d_conv",
    description="S4D convolution mode: Vandermonde kernel, FFT convolution (no resets)",
    priority=Priority.BEATS_PORTABLE,
    supports_extra=_conv_supports,
)
