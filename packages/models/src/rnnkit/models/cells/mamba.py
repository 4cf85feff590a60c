"""Mamba (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"):
the Mamba-1 block, a selective state space model whose step, input and read-out depend on the
input, as a cell of the selective diagonal form.

Per step, with ``d_model = input_size``, ``E = hidden_size`` inner channels (``expand *
d_model`` by default) and ``N = d_state``:

    (x_t, z_t)  = W_in u_t                                   (two halves of width E)
    c_t         = SiLU(sum_j w_conv[:, j] x_{t-K+1+j} + b_conv)     depthwise causal conv, K taps
    (delta_t, B_t, C_t) = W_x c_t                            (widths R, N, N)
    dt_t        = softplus(W_dt delta_t + b_dt)              (E,)
    h_t         = exp(dt_t A) * h_{t-1} + (dt_t c_t) B_t^T   (E, N), A = -exp(A_log)
    y_t         = h_t C_t + D c_t
    out_t       = W_out (y_t * SiLU(z_t))                    (d_model,)

The state is the scan's ``h: (E, N)`` and the convolution's window, the last ``K - 1``
inputs ``x`` (oldest first): with both carried, stepping one token at a time equals the whole
sequence, and a reset zeroes both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.selective import SelectiveDiagonalCell, SelectiveInputs, selective_step
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_dt_range


class MambaState(NamedTuple):
    """State of :class:`Mamba`: the selective scan's ``h: (B, E, N)`` and the causal
    convolution's window ``conv: (B, E, K - 1)`` (the last ``K - 1`` inputs, oldest first)."""

    h: Tensor
    conv: Tensor


def inverse_softplus(y: Tensor) -> Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``: ``y + log(-expm1(-y))``."""
    return y + torch.log(-torch.expm1(-y))


def causal_conv(
    xs: Tensor, window: Tensor, weight: Tensor, resets: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Depthwise causal convolution over a whole sequence, continuing from a carried window.

    ``out_t = sum_j weight[:, j] x_{t-K+1+j}`` (no bias), where the inputs before step 0 are
    the carried ``window`` and where a reset at ``s`` restarts the window from zeros: the input
    of step ``s'`` reaches step ``t`` only if no reset lies in ``(s', t]``.

    Args:
        xs: ``(B, T, E)`` inputs.
        window: ``(B, E, K - 1)`` the last ``K - 1`` inputs before step 0, oldest first.
        weight: ``(E, K)`` taps, the last one on the current step.
        resets: optional bool ``(B, T)``.

    Returns:
        ``(out: (B, T, E), window after the last step: (B, E, K - 1))``, the latter masked by
        the resets in the same way (what the step-by-step loop would carry).
    """
    batch, time = xs.shape[0], xs.shape[1]
    K = weight.shape[1]
    # the window's inputs over time: the K - 1 carried ones, then x_0 .. x_{T-1}
    seq = torch.cat((window.transpose(1, 2), xs), 1)  # (B, K - 1 + T, E)
    # last[t] is the step of the last reset at or before t (-K: none); the carried inputs
    # (s < 0) reach only the steps before the first reset
    steps = torch.arange(time, device=xs.device)
    if resets is not None:
        marked = torch.where(resets, steps, torch.full_like(steps, -K))
        last = torch.cummax(marked, 1).values  # (B, T)
    else:
        last = torch.full((batch, time), -K, device=xs.device, dtype=steps.dtype)
    zero = torch.zeros((), dtype=xs.dtype, device=xs.device)
    conv = torch.zeros_like(xs)
    for j in range(K):
        lag = K - 1 - j
        tap = seq[:, j : j + time]  # input of step t - lag
        keep = (steps - lag).unsqueeze(0) >= last  # (B, T)
        conv = conv + weight[:, j] * torch.where(keep.unsqueeze(-1), tap, zero)
    # the window after the last step: inputs of steps T - K + 1 .. T - 1, masked likewise
    tail = seq[:, time:]  # (B, K - 1, E)
    if time > 0:
        src = torch.arange(time - K + 1, time, device=xs.device)  # (K - 1,)
        keep_tail = src.unsqueeze(0) >= last[:, -1:]  # (B, K - 1)
        tail = torch.where(keep_tail.unsqueeze(-1), tail, zero)
    return conv, tail.transpose(1, 2)


def inner_size(input_size: int, hidden_size: int | None, expand: int) -> int:
    """The inner width ``E`` of a Mamba block: ``hidden_size``, or ``expand * input_size`` when
    it is ``None``, after checking that the three are positive integers."""
    check_positive_int("input_size", input_size)
    check_positive_int("expand", expand)
    if hidden_size is None:
        hidden_size = expand * input_size
    check_positive_int("hidden_size", hidden_size)
    return hidden_size


def initial_dt_bias(size: int, dt_min: float, dt_max: float, dt_floor: float) -> Tensor:
    """``softplus^{-1}(max(dt, dt_floor))`` with ``dt`` log-uniform in ``[dt_min, dt_max]``:
    ``(size,)`` float64, drawn by one ``torch.rand`` from the default generator. A bias ``b``
    gives the initial step ``softplus(b)`` (Mamba's and Mamba-2's ``dt`` initialisation)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(lo + torch.rand(size, dtype=torch.float64) * (hi - lo))
    return inverse_softplus(dt.clamp(min=dt_floor))


def init_causal_conv(weight: Tensor, bias: Tensor | None) -> None:
    """Initialise a depthwise causal convolution's ``weight: (channels, K)`` and optional
    ``bias: (channels,)`` in place as torch's ``Conv1d`` does: uniform in ``+-K^{-1/2}``."""
    bound = 1.0 / math.sqrt(weight.shape[1])  # Conv1d's default: fan-in K (one input channel)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class Mamba(SelectiveDiagonalCell[MambaState]):
    """The Mamba-1 block (see the module docstring): ``(B, T, d_model) -> (B, T, d_model)``.

    Initialisation as in the paper: ``A_log[e, n] = log(n + 1)`` (S4D-Real, ``A = -(n + 1)``),
    ``D = 1``; ``dt`` log-uniform in ``[dt_min, dt_max]`` (at least ``dt_floor``) per channel,
    stored as the bias of ``W_dt`` through the inverse softplus, and ``W_dt`` uniform in
    ``+-dt_rank^{-1/2}``; the convolution and the linear maps as torch's ``Conv1d`` and
    ``Linear``. Parameters: ``in_proj`` (``W_in``), ``conv_weight: (E, K)``, ``conv_bias: (E,)``,
    ``x_proj`` (``W_x``, no bias), ``dt_proj`` (``W_dt``, ``b_dt``), ``A_log: (E, N)``, ``D: (E,)``,
    ``out_proj`` (``W_out``). ``A_log`` and ``D`` are usually trained without weight decay.

    Backends: ``reference`` (the loop over :meth:`recur`) and, with rnnkit-kernels, every
    backend of the selective diagonal form (``selective_cpp`` on the CPU, ``selective_torch``
    anywhere): the projections and the convolution for all steps at once, then the scan.

    Args:
        input_size: ``d_model``, the width of ``x`` and of the output.
        hidden_size: ``E``, the inner channels (default ``expand * input_size``).
        d_state: ``N``, the state entries per channel.
        d_conv: ``K``, the taps of the causal convolution.
        expand: ``E / d_model`` when ``hidden_size`` is not given.
        dt_rank: ``R``, the width of ``delta`` (default ``ceil(d_model / 16)``).
        dt_min, dt_max: the range of the initial steps (``0 < dt_min <= dt_max``).
        dt_floor: the smallest initial step.
        bias: biases of ``in_proj`` and ``out_proj``.
        conv_bias: a bias of the convolution.
    """

    kind = "mamba"
    state_type = MambaState

    def __init__(
        self,
        input_size: int,
        hidden_size: int | None = None,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_size = inner_size(input_size, hidden_size, expand)
        check_positive_int("d_state", d_state)
        check_positive_int("d_conv", d_conv)
        if dt_rank is None:
            dt_rank = math.ceil(input_size / 16)
        check_positive_int("dt_rank", dt_rank)
        check_dt_range(dt_min, dt_max, dt_floor)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = input_size
        self.projected_size = 2 * hidden_size
        self.d_state, self.d_conv, self.dt_rank = d_state, d_conv, dt_rank
        self.dt_min, self.dt_max, self.dt_floor = dt_min, dt_max, dt_floor
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        E, N, R, K = hidden_size, d_state, dt_rank, d_conv
        self.in_proj = nn.Linear(input_size, 2 * E, bias=bias, **kw)
        self.conv_weight = nn.Parameter(torch.empty(E, K, **kw))
        self.conv_bias = nn.Parameter(torch.empty(E, **kw)) if conv_bias else None
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **kw)
        self.dt_proj = nn.Linear(R, E, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(E, N, **kw))
        self.D = nn.Parameter(torch.empty(E, **kw))
        self.out_proj = nn.Linear(E, input_size, bias=bias, **kw)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The initialisation of the class docstring."""
        self.in_proj.reset_parameters()
        self.x_proj.reset_parameters()
        self.out_proj.reset_parameters()
        init_causal_conv(self.conv_weight, self.conv_bias)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        E = self.hidden_size
        self.dt_proj.bias.copy_(initial_dt_bias(E, self.dt_min, self.dt_max, self.dt_floor))
        n = torch.arange(1, self.d_state + 1, dtype=torch.float64)
        self.A_log.copy_(torch.log(n).expand(E, -1))
        nn.init.ones_(self.D)

    def state_spec(self) -> tuple[StateField, ...]:
        E = self.hidden_size
        return (
            StateField("h", (E, self.d_state), doc="selective scan state per inner channel"),
            StateField("conv", (E, self.d_conv - 1), doc="last d_conv - 1 inputs of the conv"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., d_model) -> (..., 2 E)``: ``(x, z)`` of ``in_proj``."""
        out: Tensor = self.in_proj(x)
        return out

    def _conv_bias(self) -> Tensor | float:
        return self.conv_bias if self.conv_bias is not None else 0.0

    def _scan_inputs(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``dt, B, C`` from the convolution's output ``c: (..., E)``."""
        R, N = self.dt_rank, self.d_state
        delta, B, C = self.x_proj(c).split((R, N, N), -1)
        return F.softplus(self.dt_proj(delta)), B, C

    def _A(self) -> Tensor:  # noqa: N802 (the paper's name)
        return -torch.exp(self.A_log)

    def recur(self, px_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        E = self.hidden_size
        x, z = px_t[:, :E], px_t[:, E:]
        window = torch.cat((state.conv, x.unsqueeze(-1)), -1)  # (B, E, K), oldest first
        c = F.silu((window * self.conv_weight).sum(-1) + self._conv_bias())
        dt, B, C = self._scan_inputs(c)
        y, h = selective_step(state.h, c, dt, self._A(), B, C, self.D)
        out: Tensor = self.out_proj(y * F.silu(z))
        return out, MambaState(h, window[:, :, 1:])

    def selective_inputs(
        self, x: Tensor, state: MambaState | None, resets: Tensor | None
    ) -> SelectiveInputs:
        """Projections, the causal convolution (cut at resets) and ``dt, B, C`` for all steps;
        ``carry`` is ``(z: (B, T, E), conv window after the last step: (B, E, K - 1))``."""
        batch = x.shape[0]
        E = self.hidden_size
        h0, conv0 = (
            state if state is not None else self.init_state(batch, device=x.device, dtype=x.dtype)
        )
        px = self.project(x)
        xs, z = px[..., :E], px[..., E:]
        conv, conv_last = causal_conv(xs, conv0, self.conv_weight, resets)
        c = F.silu(conv + self._conv_bias())
        dt, B, C = self._scan_inputs(c)
        return SelectiveInputs(c, dt, self._A(), B, C, self.D, h0, (z, conv_last))

    def selective_outputs(
        self, y: Tensor, h: Tensor, inputs: SelectiveInputs
    ) -> tuple[Tensor, MambaState]:
        """``out_proj(y * SiLU(z))`` and the state ``(h, conv window)``."""
        z, conv_last = inputs.carry
        out: Tensor = self.out_proj(y * F.silu(z))
        return out, MambaState(h, conv_last)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}"
        )
