"""LSSL (Gu et al. 2021, "Combining Recurrent, Convolutional, and Continuous-time Models with
Linear State-Space Layers"): ``H`` independent single-input single-output state space models
with a dense HiPPO-LegS state matrix.

Per channel ``c`` (``H = input_size`` channels), with state ``x: (N,)``:

    x'(t) = A x + B u,        y = C_c x + D_c u
    A_bar = (I - dt_c/2 A)^{-1} (I + dt_c/2 A),    B_bar = (I - dt_c/2 A)^{-1} dt_c B   (bilinear)
    x_t = A_bar x_{t-1} + B_bar u_t,               y_t = C_c x_t + D_c u_t

``A: (N, N)`` and ``B: (N,)`` start at HiPPO-LegS and are learned, shared by the channels
(``share_a=True``, the paper's default) or one per channel; ``dt_c = exp(dt_log_c)`` is one
learned step per channel.

``A_bar`` is dense, so the recurrence has none of rnnkit's structural forms (a diagonal-linear
scan would combine ``N x N`` matrices, ``N^3`` work per combine, and Newton solves do not apply
to a linear recurrence): ``recur`` is the plain dense step, and the time-invariant case has its
own parallel algorithm, the convolution mode: ``y = K * u + D u`` with the Krylov kernel
``K_l = C A_bar^l B_bar``, computed by repeated squaring and applied by FFT (the
``lssl_conv`` backend registered below).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, Priority, cell_method_kernel
from rnnkit.core.forms import Form
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_dt_range
from rnnkit.models.cells.hippo import legs


class LSSLState(NamedTuple):
    """State of :class:`LSSL`: ``h: (B, H, N)``, one real state of size ``N`` per channel."""

    h: Tensor


def _real_compute(dtype: torch.dtype) -> torch.dtype:
    """float64 stays, anything narrower computes in float32 (``linalg.solve`` has no 16-bit
    kernels, and the dense recurrence compounds rounding)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class LSSL(Cell[LSSLState]):
    """LSSL: ``H`` SISO state space models with a dense HiPPO-LegS ``A``,
    ``y: (B, T, H)`` from ``x: (B, T, H)``.

    Parameters (in the cell's dtype): ``A: (G, N, N)`` and ``B: (G, N)`` with ``G = 1``
    (``share_a``) or ``G = H``, initialised to HiPPO-LegS; ``C: (H, N)`` and ``D: (H,)``
    standard normal; ``dt_log: (H,)`` with ``exp(dt_log)`` log-uniform in
    ``[dt_min, dt_max]``. The state is real ``h: (B, H, N)``. The paper's layer can read
    ``M`` outputs per channel; this cell reads one (a mixing layer after it does the rest).

    Every step discretises afresh (``H`` dense ``N x N`` solves): ``reference`` and ``step``
    cost ``O(H N^3)`` per step plus the ``O(H N^2)`` update. The ``lssl_conv`` backend
    (``auto``'s choice without ``resets``) discretises once per call.

    The bilinear transform maps the open left half-plane into the unit disk, so the
    discretisation is stable for every ``dt > 0`` as long as ``A``'s eigenvalues have negative
    real parts (LegS's are ``-1 .. -N``).

    Args:
        input_size: ``H``, the number of channels of ``x`` and ``y``.
        hidden_size: ``N``, the state size per channel.
        share_a: one ``A, B`` for all channels (default) or one per channel.
        dt_min, dt_max: the range of the initial steps.
    """

    kind = "lssl"
    forms: ClassVar[frozenset[Form]] = frozenset()
    state_type = LSSLState

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 64,
        *,
        share_a: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if not isinstance(share_a, bool):
            raise TypeError(f"share_a must be a bool, got {share_a!r}")
        check_dt_range(dt_min, dt_max)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.projected_size = input_size
        self.share_a = share_a
        self.dt_min, self.dt_max = dt_min, dt_max
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        H, N = input_size, hidden_size
        G = 1 if share_a else H
        self.A = nn.Parameter(torch.empty(G, N, N, **kw))
        self.B = nn.Parameter(torch.empty(G, N, **kw))
        self.C = nn.Parameter(torch.empty(H, N, **kw))
        self.D = nn.Parameter(torch.empty(H, **kw))
        self.dt_log = nn.Parameter(torch.empty(H, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HiPPO-LegS ``A, B``; ``C, D`` standard normal; ``dt`` log-uniform."""
        A, B = legs(self.hidden_size)
        self.A.copy_(A.expand_as(self.A))
        self.B.copy_(B.expand_as(self.B))
        nn.init.normal_(self.C)
        nn.init.normal_(self.D)
        u = torch.rand(self.input_size, dtype=torch.float64)
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.dt_log.copy_(lo + u * (hi - lo))

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField("h", (self.input_size, self.hidden_size), doc="dense state per channel"),
        )

    def discretized(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(A_bar: (H, N, N), B_bar: (H, N))`` by the bilinear transform, in float64 for
        ``dtype=float64`` and float32 otherwise."""
        rd = _real_compute(dtype)
        N = self.hidden_size
        half = (torch.exp(self.dt_log.to(rd)) / 2).view(-1, 1, 1)  # (H, 1, 1)
        A = self.A.to(rd)
        eye = torch.eye(N, dtype=rd, device=A.device)
        back = eye - half * A  # (H, N, N)
        rhs = torch.cat(((eye + half * A), (2 * half * self.B.to(rd).unsqueeze(-1))), -1)
        sol = torch.linalg.solve(back, rhs.expand(back.shape[0], N, N + 1))
        return sol[..., :N], sol[..., N]

    def project(self, x: Tensor) -> Tensor:
        """The identity: each channel's SSM reads its own input."""
        return x

    def recur(self, px_t: Tensor, state: LSSLState) -> tuple[Tensor, LSSLState]:
        """``h = A_bar h + B_bar u``, ``y = C . h + D u``: ``(B, H)``, ``(B, H, N)``."""
        a_bar, b_bar = self.discretized(px_t.dtype)
        rd = a_bar.dtype
        u = px_t.to(rd)
        h = torch.einsum("cij,bcj->bci", a_bar, state.h.to(rd)) + b_bar * u.unsqueeze(-1)
        y = (self.C.to(rd) * h).sum(-1) + self.D.to(rd) * u
        return y.to(px_t.dtype), LSSLState(h.to(state.h.dtype))

    def conv_forward(
        self, x: Tensor, state: LSSLState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, LSSLState]:
        """The whole sequence in convolution mode, :func:`lssl_conv_forward` (no validation:
        ``forward`` validates and then runs this as the ``lssl_conv`` kernel).

        Args:
            x: ``(B, T, H)``.
            state: the initial state or ``None`` for zeros.
            resets: must be ``None``: a convolution cannot restart the state.

        Returns:
            ``y: (B, T, H)`` and the final state ``LSSLState(h: (B, H, N))``.
        """
        if resets is not None:
            raise ValueError(
                "the convolution mode cannot restart the state (resets): use 'reference'"
            )
        return lssl_conv_forward(self, x, state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, share_a={self.share_a}"


def krylov(a: Tensor, v: Tensor, length: int) -> Tensor:
    """The Krylov matrix ``(v, a v, a^2 v, ..., a^{length-1} v)`` by repeated squaring.

    ``a: (..., N, N)``, ``v: (..., N)`` -> ``(..., N, length)``. Each round doubles the
    columns with one product by ``a^{2^k}`` and squares it: ``ceil(log2 length)`` matrix
    squarings instead of ``length`` matrix-vector products in sequence.
    """
    cols = v.unsqueeze(-1)
    power = a
    while cols.shape[-1] < length:
        cols = torch.cat((cols, power @ cols), -1)
        if cols.shape[-1] < length:
            power = power @ power
    return cols[..., :length]


def lssl_conv_forward(cell: LSSL, x: Tensor, state: LSSLState | None) -> tuple[Tensor, LSSLState]:
    """LSSL's convolution mode (the ``lssl_conv`` kernel, through :meth:`LSSL.conv_forward`):
    the outputs as a causal convolution with ``K_l = C A_bar^l B_bar`` by FFT, plus the
    initial state's contribution ``C A_bar^{t+1} h_0`` and the final state
    ``A_bar^T h_0 + sum_l A_bar^{T-1-l} B_bar u_l`` from Krylov matrices; same results as the
    recurrence without resets.

    ``x: (B, T, H) -> y: (B, T, H)`` and ``LSSLState(h: (B, H, N))`` from ``state``
    (``None``: zeros).
    """
    batch, time, H = x.shape
    given = state is not None
    if state is None:
        state = cell.init_state(batch, device=x.device, dtype=x.dtype)
    if time == 0 or batch == 0:  # (the FFT refuses empty batches)
        return x.new_zeros(batch, time, H), state
    a_bar, b_bar = cell.discretized(x.dtype)
    rd = a_bar.dtype
    # An FFT spreads a NaN over every output of its channel, earlier steps included: convolve
    # the finite inputs and spoil afterwards what the recurrence spoils (its channel, from its
    # step on, and that channel's final state).
    bad = ~torch.isfinite(x)  # (B, T, H)
    u = torch.where(bad, torch.zeros((), dtype=x.dtype, device=x.device), x).to(rd)
    C = cell.C.to(rd)
    kry = krylov(a_bar, b_bar, time)  # (H, N, T): A_bar^l B_bar
    K = torch.einsum("cn,cnl->cl", C, kry)  # (H, T)
    n = 2 * time  # linear (not circular) convolution
    conv = torch.fft.irfft(torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(K, n=n), n=n)[
        ..., :time
    ]
    y = conv.transpose(1, 2) + cell.D.to(rd) * u
    # h_T = A_bar^T h0 + sum_l A_bar^(T-1-l) B_bar u_l
    h_last = torch.einsum("cnl,blc->bcn", kry.flip(-1), u)
    if given:
        h0 = state.h.to(rd)
        # C A_bar^l as the Krylov matrix of A_bar^T and C^T, for l = 1 .. T
        left = krylov(a_bar.transpose(-1, -2), C, time + 1)[..., 1:]  # (H, N, T)
        y = y + torch.einsum("cnl,bcn->blc", left, h0)
        h_last = h_last + torch.einsum("cij,bcj->bci", torch.linalg.matrix_power(a_bar, time), h0)
    # The spoiled values are NaN weights on a link to the parameters: their gradients turn NaN
    # as the recurrence's do, while every other output adds 0 * link. (nan_to_num: a NaN
    # parameter must spoil what it spoils in the recurrence only, not every 0 * link.)
    finite = (torch.nan_to_num(p, 0.0, 0.0, 0.0).sum() for p in cell.parameters())
    link = sum(finite, torch.zeros((), device=x.device)).to(rd)
    zero = torch.zeros((), dtype=rd, device=x.device)
    spoil = torch.where(torch.cumsum(bad, 1) > 0, torch.nan, zero)  # (B, T, H)
    y = y + spoil * link
    spoil_h = torch.where(bad.any(1), torch.nan, zero).unsqueeze(-1)  # (B, H, 1)
    h_last = h_last + spoil_h * link
    return y.to(x.dtype), LSSLState(h_last.to(state.h.dtype))


def _conv_supports(cell: LSSL, call: KernelCall) -> str | None:
    """What the convolution mode cannot run: resets."""
    del cell
    if call.resets is not None:
        return "the convolution mode cannot restart the state (resets): use 'reference'"
    return None


#: LSSL's convolution mode, registered for the ``lssl`` cell kind: the cell's own parallel
#: algorithm (no form's kernel applies to a dense state), so ``auto`` prefers it to the
#: reference loop for calls without resets.
CONV_KERNEL = cell_method_kernel(
    LSSL,
    LSSL.conv_forward,
    backend="lssl_conv",
    description="LSSL convolution mode: Krylov kernel by repeated squaring, FFT (no resets)",
    priority=Priority.PORTABLE,
    supports_extra=_conv_supports,
)
