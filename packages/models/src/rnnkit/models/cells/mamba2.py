"""Mamba-2 (Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality"): the Mamba-2 block, whose state space
recurrence has one scalar decay per head (SSD), as a cell of the matrix-state form.

Per step, with ``d_model = input_size``, ``E = hidden_size`` inner channels (``expand *
d_model`` by default) split into ``n_h = E / headdim`` heads of ``P = headdim``, ``N = d_state``
and ``G = ngroups`` groups of heads sharing ``B`` and ``C``:

    (z_t, xBC_t, dt_raw_t) = W_in u_t               widths E, E + 2 G N, n_h
    (x_t, B_t, C_t) = SiLU(sum_j w_conv[:, j] xBC_{t-K+1+j} + b_conv)   widths E, G N, G N
    dt_t   = softplus(dt_raw_t + dt_bias)           (n_h,)
    S_t[h] = exp(dt_t[h] A_h) S_{t-1}[h] + (dt_t[h] x_t[h]) B_t[g(h)]^T      (P, N) per head
    y_t[h] = S_t[h] C_t[g(h)] + D_h x_t[h]          A_h = -exp(A_log_h), g(h) = h // (n_h / G)
    out_t  = W_out RMSNorm_G(y_t * SiLU(z_t))       (d_model,)

``RMSNorm_G`` normalises each of the ``G`` groups of ``E / G`` channels by its root mean
square, then scales by a learned weight (Mamba-2's gated norm with the gate applied before
it). The recurrence is the matrix-state form's linear rule (value index first): ``v = x``,
``k = B``, ``q = C``, ``beta = dt``, ``log alpha = dt A``, so the form's kernels
(rnnkit-kernels' ``chunked``) run it. The state is ``S: (n_h, P, N)`` and the convolution's
window, the last ``K - 1`` inputs ``xBC`` (oldest first): with both carried, stepping one
token at a time equals the whole sequence, and a reset zeroes both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.matrix_state import MatrixStateCell, MemoryInputs
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_dt_range
from rnnkit.models.cells.mamba import (
    causal_conv,
    init_causal_conv,
    initial_dt_bias,
    inner_size,
)


class Mamba2State(NamedTuple):
    """State of :class:`Mamba2`: the SSD memory ``S: (B, n_h, headdim, d_state)`` (value index
    first) and the causal convolution's window ``conv: (B, E + 2 G N, K - 1)`` (the last
    ``K - 1`` inputs ``xBC``, oldest first)."""

    S: Tensor
    conv: Tensor


def _check_range(name: str, value: object) -> tuple[float, float]:
    """A pair ``0 < low <= high < inf`` as floats, else a ``ValueError`` naming ``name``."""
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and 0.0 < float(value[0]) <= float(value[1]) < math.inf
    )
    if not ok:
        raise ValueError(f"{name} must be a pair (low, high) with 0 < low <= high, got {value!r}")
    assert isinstance(value, tuple | list)
    return float(value[0]), float(value[1])


class Mamba2(MatrixStateCell[Mamba2State]):
    """The Mamba-2 block (see the module docstring): ``(B, T, d_model) -> (B, T, d_model)``.

    Initialisation as in the paper's code: ``A ~ U(a_range)`` per head stored as ``A_log =
    log A``; ``dt`` log-uniform in ``[dt_min, dt_max]`` (at least ``dt_floor``) per head, stored
    as ``dt_bias = softplus^{-1}(dt)``; ``D = 1`` per head; the norm's weight 1; the convolution
    and the linear maps as torch's ``Conv1d`` and ``Linear``. Parameters: ``in_proj`` (``W_in``),
    ``conv_weight: (E + 2 G N, K)``, ``conv_bias``, ``dt_bias: (n_h,)``, ``A_log: (n_h,)``,
    ``D: (n_h,)``, ``norm_weight: (E,)``, ``out_proj`` (``W_out``). ``A_log``, ``dt_bias`` and
    ``D`` are usually trained without weight decay.

    Backends: ``reference`` (the loop over :meth:`recur`) and, with rnnkit-kernels, every
    backend of the matrix-state form (``chunked``): the projections and the convolution for
    all steps at once, then the memory over chunks, with no kernel code of its own.

    Args:
        input_size: ``d_model``, the width of ``x`` and of the output.
        hidden_size: ``E``, the inner channels (default ``expand * input_size``); a multiple
            of ``headdim``.
        d_state: ``N``, the key width of each head's memory (paper default 128).
        headdim: ``P``, the channels per head (the value width; paper default 64).
        ngroups: ``G``, groups of heads sharing ``B`` and ``C``; divides the head count.
        d_conv: ``K``, the taps of the causal convolution.
        expand: ``E / d_model`` when ``hidden_size`` is not given.
        a_range: ``(low, high)``, ``0 < low <= high``: ``A = exp(A_log)`` starts uniform in it.
        dt_min, dt_max: the range of the initial steps (``0 < dt_min <= dt_max``).
        dt_floor: the smallest initial step.
        norm_eps: the gated RMS norm's epsilon.
        bias: biases of ``in_proj`` and ``out_proj``.
        conv_bias: a bias of the convolution.
    """

    kind = "mamba2"
    state_type = Mamba2State
    rule = "linear"

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        *,
        d_state: int = 128,
        headdim: int = 64,
        ngroups: int = 1,
        d_conv: int = 4,
        expand: int = 2,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_floor: float = 1e-4,
        norm_eps: float = 1e-5,
        bias: bool = False,
        conv_bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_size = inner_size(input_size, hidden_size, expand)
        check_positive_int("d_state", d_state)
        check_positive_int("headdim", headdim)
        check_positive_int("ngroups", ngroups)
        check_positive_int("d_conv", d_conv)
        if hidden_size % headdim:
            raise ValueError(
                f"headdim must divide hidden_size, got headdim={headdim}, hidden_size={hidden_size}"
            )
        nheads = hidden_size // headdim
        if nheads % ngroups:
            raise ValueError(
                f"ngroups must divide the head count hidden_size / headdim = {nheads}, "
                f"got ngroups={ngroups}"
            )
        self.a_range = _check_range("a_range", a_range)
        check_dt_range(dt_min, dt_max, dt_floor)
        if not (norm_eps > 0.0 and math.isfinite(norm_eps)):
            raise ValueError(f"norm_eps must be positive and finite, got {norm_eps}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.d_state, self.headdim, self.ngroups, self.d_conv = d_state, headdim, ngroups, d_conv
        self.nheads = nheads
        self.dt_min, self.dt_max, self.dt_floor = dt_min, dt_max, dt_floor
        self.norm_eps = norm_eps
        E, GN = hidden_size, ngroups * d_state
        self.conv_dim = E + 2 * GN
        self.projected_size = E + self.conv_dim + nheads
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(input_size, self.projected_size, bias=bias, **kw)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv, **kw))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim, **kw)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(nheads, **kw))
        self.A_log = nn.Parameter(torch.empty(nheads, **kw))
        self.D = nn.Parameter(torch.empty(nheads, **kw))
        self.norm_weight = nn.Parameter(torch.empty(E, **kw))
        self.out_proj = nn.Linear(E, input_size, bias=bias, **kw)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisation of the class docstring."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        init_causal_conv(self.conv_weight, self.conv_bias)
        n = self.nheads
        self.dt_bias.copy_(initial_dt_bias(n, self.dt_min, self.dt_max, self.dt_floor))
        A = torch.empty(n, dtype=torch.float64).uniform_(*self.a_range)
        self.A_log.copy_(torch.log(A))
        nn.init.ones_(self.D)
        nn.init.ones_(self.norm_weight)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField(
                "S", (self.nheads, self.headdim, self.d_state), doc="SSD memory per head (P x N)"
            ),
            StateField("conv", (self.conv_dim, self.d_conv - 1), doc="last d_conv - 1 xBC inputs"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., d_model) -> (..., projected_size)``: ``(z, xBC, dt_raw)`` of ``in_proj``."""
        out: Tensor = self.in_proj(x)
        return out

    def _conv_bias(self) -> Tensor | float:
        return self.conv_bias if self.conv_bias is not None else 0.0

    def _split(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x: (..., n_h, P)``, ``B, C: (..., n_h, N)`` (each group's repeated over its heads)
        from the convolution's output ``c: (..., E + 2 G N)``."""
        E, G, N = self.hidden_size, self.ngroups, self.d_state
        x, B, C = c[..., :E], c[..., E : E + G * N], c[..., E + G * N :]
        lead = c.shape[:-1]
        per_group = self.nheads // G

        def heads(u: Tensor) -> Tensor:
            return u.reshape(*lead, G, N).repeat_interleave(per_group, dim=-2)

        return x.reshape(*lead, self.nheads, self.headdim), heads(B), heads(C)

    def _dt(self, dt_raw: Tensor) -> Tensor:
        return F.softplus(dt_raw + self.dt_bias)

    def _A(self) -> Tensor:  # noqa: N802 (the paper's name)
        return -torch.exp(self.A_log)

    def _out(self, y: Tensor, z: Tensor) -> Tensor:
        """``W_out RMSNorm_G(y * SiLU(z))`` for ``y, z: (..., E)``."""
        g = y * F.silu(z)
        grouped = g.reshape(*g.shape[:-1], self.ngroups, self.hidden_size // self.ngroups)
        rms = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        normed = (grouped * rms).reshape(g.shape) * self.norm_weight
        out: Tensor = self.out_proj(normed)
        return out

    def recur(self, px_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        E, cd = self.hidden_size, self.conv_dim
        z, xbc, dt_raw = px_t[:, :E], px_t[:, E : E + cd], px_t[:, E + cd :]
        window = torch.cat((state.conv, xbc.unsqueeze(-1)), -1)  # (B, E + 2 G N, K)
        c = F.silu((window * self.conv_weight).sum(-1) + self._conv_bias())
        x, B, C = self._split(c)  # (B, n_h, P), (B, n_h, N), (B, n_h, N)
        dt = self._dt(dt_raw)  # (B, n_h)
        decay = torch.exp(dt * self._A())[:, :, None, None]
        S = decay * state.S + (dt[:, :, None] * x).unsqueeze(-1) * B.unsqueeze(-2)
        y = (S @ C.unsqueeze(-1)).squeeze(-1) + self.D[:, None] * x  # (B, n_h, P)
        return self._out(y.reshape(-1, E), z), Mamba2State(S, window[:, :, 1:])

    def memory_inputs(
        self, x: Tensor, state: Mamba2State | None, resets: Tensor | None
    ) -> MemoryInputs:
        """Projections, the causal convolution (cut at resets), ``dt`` and the heads' ``x, B,
        C`` for all steps: ``q = C``, ``k = B``, ``v = x``, ``beta = dt``, ``log_alpha = dt A``;
        ``carry`` is ``(z: (B, T, E), conv window after the last step: (B, E + 2 G N, K - 1))``."""
        batch = x.shape[0]
        E, cd = self.hidden_size, self.conv_dim
        S0, conv0 = (
            state if state is not None else self.init_state(batch, device=x.device, dtype=x.dtype)
        )
        px = self.project(x)
        z, xbc, dt_raw = px[..., :E], px[..., E : E + cd], px[..., E + cd :]
        conv, conv_last = causal_conv(xbc, conv0, self.conv_weight, resets)
        xs, B, C = self._split(F.silu(conv + self._conv_bias()))
        dt = self._dt(dt_raw).transpose(1, 2)  # (B, n_h, T)
        return MemoryInputs(
            C.transpose(1, 2),
            B.transpose(1, 2),
            xs.transpose(1, 2),
            dt,
            S0,
            (z, conv_last),
            dt * self._A()[:, None],
        )

    def memory_outputs(
        self, o: Tensor, S: Tensor, inputs: MemoryInputs
    ) -> tuple[Tensor, Mamba2State]:
        """``y = o + D x`` per head, then the gated norm and ``out_proj``; the state ``(S,
        conv window)``."""
        z, conv_last = inputs.carry
        y = o + self.D[:, None, None] * inputs.v  # (B, n_h, T, P)
        batch, _, time, _ = y.shape
        y = y.transpose(1, 2).reshape(batch, time, self.hidden_size)
        return self._out(y, z), Mamba2State(S, conv_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, headdim={self.headdim}, "
            f"ngroups={self.ngroups}, d_conv={self.d_conv}"
        )
