"""Matrix-memory cells: key-value memories written by the (gated) delta rule or linear attention.

:class:`DeltaNet`, :class:`GatedDeltaNet` and :class:`LinearAttention` share one body (the
projections, a width-2 causal convolution, unit-norm keys and queries) and differ in how the
memory is written: the delta rule or plain addition, with or without a per-head decay.

A fixed-width vector state has to squeeze every key-value binding into ``hidden_size``
numbers; a matrix state ``S`` (value x key per head) stores each binding as a rank-one term and
reads it back with a query, which is what associative recall asks for (Zoology: linear
attention and its gated/delta variants solve MQAR where fixed-width RNNs need width growing
with the sequence length).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.matrix_state import MEMORY_RULES, MatrixStateCell, MemoryInputs
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_heads, check_positive_int

#: rules ``DeltaNet`` can write its memory with.
RULES: tuple[str, ...] = MEMORY_RULES
#: decays of the memory: none (``alpha = 1``), a fixed one per head (RetNet's
#: ``1 - 2^(-5 - h)``), or one gated by the input (Mamba-2's ``exp(-exp(A_log) softplus(.))``).
DECAYS: tuple[str, ...] = ("none", "fixed", "gated")


class DeltaNetState(NamedTuple):
    """State of :class:`DeltaNet` (and :class:`GatedDeltaNet`, :class:`LinearAttention`): the
    memory ``S: (B, heads, head_dim, head_dim)`` (value
    index first, key index second) and the previous step's projections ``prev: (B, 3 H)``
    (``q, k, v`` before the short convolution; zero at the start of an episode)."""

    S: Tensor
    prev: Tensor


def _check_range(name: str, value: object) -> None:
    """A ``(low, high)`` pair with ``0 < low <= high < inf``, else a ``ValueError`` naming
    ``name``."""
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        and 0.0 < float(value[0]) <= float(value[1]) < math.inf
    )
    if not ok:
        raise ValueError(f"{name} must be a pair (low, high) with 0 < low <= high, got {value!r}")


class _ConvMemory(MatrixStateCell[DeltaNetState]):
    """The body :class:`DeltaNet`, :class:`GatedDeltaNet` and :class:`LinearAttention` share:
    projections, the width-2 causal convolution, unit-norm keys and queries, a write strength
    ``beta`` per head, and optionally a decay ``alpha`` per head (see :class:`DeltaNet` for the
    equations and :class:`GatedDeltaNet` for the decay). Not registered itself."""

    state_type = DeltaNetState
    #: ``"none"``, ``"fixed"`` or ``"gated"`` (one of :data:`DECAYS`).
    decay: str
    #: the gated decay's column count in :meth:`project` (``heads`` when gated, else 0).
    _gate_columns: int
    #: ``(heads,)`` log decays of ``decay="fixed"`` (a buffer, for reading; the recurrence
    #: computes them in the input's precision, :meth:`fixed_log_decays`).
    log_gamma: Tensor

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int,
        rule: str,
        decay: str,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = (1e-3, 0.1),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if decay == "gated":
            _check_range("a_range", a_range)
            _check_range("dt_range", dt_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.rule = rule
        self.decay = decay
        self.a_range = (float(a_range[0]), float(a_range[1]))
        self.dt_range = (float(dt_range[0]), float(dt_range[1]))
        self._gate_columns = heads if decay == "gated" else 0
        self.projected_size = 3 * hidden_size + heads + self._gate_columns
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))
        self.weight_beta = nn.Parameter(torch.empty(heads, input_size, **kw))
        self.bias_beta = nn.Parameter(torch.empty(heads, **kw))
        # taps of the width-2 causal convolution: conv[0] on p_t, conv[1] on p_{t-1}
        self.conv = nn.Parameter(torch.empty(2, 3 * hidden_size, **kw))
        if decay == "gated":
            self.weight_alpha = nn.Parameter(torch.empty(heads, input_size, **kw))
            self.A_log = nn.Parameter(torch.empty(heads, **kw))
            self.dt_bias = nn.Parameter(torch.empty(heads, **kw))
        elif decay == "fixed":
            # RetNet's per-head decays 1 - 2^(-5 - h): memories from ~32 to ~32 * 2^(heads-1)
            # tokens; a buffer, not a parameter (RetNet does not learn them)
            gamma = 1.0 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float64))
            buffer_dtype = dtype if dtype is not None else torch.get_default_dtype()
            self.register_buffer("log_gamma", torch.log(gamma).to(buffer_dtype).to(device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections ``U(-1/sqrt(I), 1/sqrt(I))``, ``b_beta = 0`` (``beta = 1/2`` on
        average), convolution taps ``U(-1/sqrt(2), 1/sqrt(2))`` (``nn.Conv1d``'s default);
        gated decay: ``w_alpha`` as the projections, ``A ~ U(a_range)`` stored as ``A_log =
        log A``, ``dt`` log-uniform in ``dt_range`` stored as ``dt_bias = softplus^{-1}(dt)``
        (Mamba-2's initialisation)."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.weight_beta, -bound, bound)
        nn.init.zeros_(self.bias_beta)
        nn.init.uniform_(self.conv, -1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))
        if self.decay == "gated":
            nn.init.uniform_(self.weight_alpha, -bound, bound)
            A = torch.empty_like(self.A_log).uniform_(*self.a_range)
            self.A_log.copy_(torch.log(A))
            lo, hi = math.log(self.dt_range[0]), math.log(self.dt_range[1])
            dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(lo, hi))
            # softplus^{-1}(dt) = dt + log(1 - exp(-dt)), exact for the small dt used here
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _log_alpha(self, px: Tensor) -> Tensor | None:
        """Log decays ``(..., heads)`` from the projections ``px: (..., projected_size)``;
        ``None`` without a decay."""
        if self.decay == "gated":
            a = px[..., self.projected_size - self._gate_columns :]
            return -torch.exp(self.A_log) * F.softplus(a + self.dt_bias)
        if self.decay == "fixed":
            return self.fixed_log_decays(px).expand(*px.shape[:-1], self.heads)
        return None

    def fixed_log_decays(self, like: Tensor) -> Tensor:
        """``log(1 - 2^(-5 - h))`` for ``h = 0 .. heads - 1`` in ``like``'s dtype and device,
        from the formula (in float64 for float64, else in float32, then rounded once; no
        float64 on a device without it): what ``decay="fixed"`` runs. The
        buffer ``log_gamma`` holds the same values in the module's dtype for reading and for
        state dicts, but a cell built in float32 and converted with ``.double()`` (or loaded
        from a float32 state dict) has them rounded to float32 there, about ``1e-9`` off the
        exact decays in float64, which compounds over the steps."""
        work = torch.float64 if like.dtype == torch.float64 else torch.float32
        h = torch.arange(self.heads, device=like.device, dtype=work)
        return torch.log1p(-torch.exp2(-5.0 - h)).to(like.dtype)

    def state_spec(self) -> tuple[StateField, ...]:
        d = self.head_dim
        return (
            StateField("S", (self.heads, d, d), doc="memory per head (value x key)"),
            StateField("prev", (3 * self.hidden_size,), doc="previous step's q, k, v inputs"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., projected_size)``: ``[W_q x, W_k x, W_v x, w_beta x + b_beta]``
        and, with the gated decay, ``w_alpha x`` (``heads`` more columns)."""
        parts = [F.linear(x, self.weight), F.linear(x, self.weight_beta, self.bias_beta)]
        if self.decay == "gated":
            parts.append(F.linear(x, self.weight_alpha))
        return torch.cat(parts, -1)

    def _heads(self, u: Tensor) -> Tensor:
        """``(B, H) -> (B, heads, head_dim)``."""
        return u.reshape(u.shape[0], self.heads, self.head_dim)

    def recur(self, px_t: Tensor, state: DeltaNetState) -> tuple[Tensor, DeltaNetState]:
        H, nh = self.hidden_size, self.heads
        p = px_t[:, : 3 * H]
        beta = torch.sigmoid(px_t[:, 3 * H : 3 * H + nh])[:, :, None, None]  # (B, heads, 1, 1)
        u = self.conv[0] * p + self.conv[1] * state.prev
        uq, uk, uv = u[:, :H], u[:, H : 2 * H], u[:, 2 * H :]
        q = F.normalize(F.silu(self._heads(uq)), dim=-1, eps=1e-6)
        k = F.normalize(F.silu(self._heads(uk)), dim=-1, eps=1e-6)
        v = self._heads(uv)
        S = state.S
        log_alpha = self._log_alpha(px_t)
        if log_alpha is not None:
            # alpha S (I - beta k k^T) = (alpha S) - beta (alpha S) k k^T: decay, then write
            S = torch.exp(log_alpha)[:, :, None, None] * S
        if self.rule == "delta":
            # what the memory currently returns for k_t: (B, heads, d)
            recalled = (S @ k.unsqueeze(-1)).squeeze(-1)
            S = S + beta * (v - recalled).unsqueeze(-1) * k.unsqueeze(-2)
        else:
            S = S + beta * v.unsqueeze(-1) * k.unsqueeze(-2)
        y = (S @ q.unsqueeze(-1)).squeeze(-1).reshape(-1, H)
        return y, DeltaNetState(S, p)

    def memory_inputs(
        self, x: Tensor, state: DeltaNetState | None, resets: Tensor | None
    ) -> MemoryInputs:
        """Projections, the width-2 convolution (cut at resets) and the normalisation for all
        steps at once; ``carry`` is the last step's projections ``(B, 3 H)`` (the state's
        ``prev``)."""
        B, T = x.shape[0], x.shape[1]
        H, nh, d = self.hidden_size, self.heads, self.head_dim
        S0, prev0 = (
            state if state is not None else self.init_state(B, device=x.device, dtype=x.dtype)
        )
        px = self.project(x)
        p = px[..., : 3 * H]
        beta = torch.sigmoid(px[..., 3 * H : 3 * H + nh])  # (B, T, heads)
        log_alpha = self._log_alpha(px)  # (B, T, heads) or None
        p_prev = torch.cat((prev0.unsqueeze(1), p[:, :-1]), 1)
        if resets is not None:
            p_prev = p_prev.masked_fill(resets.unsqueeze(-1), 0.0)
        u = self.conv[0] * p + self.conv[1] * p_prev

        def heads(t: Tensor) -> Tensor:
            return t.reshape(B, T, nh, d).transpose(1, 2)  # (B, heads, T, d)

        q = F.normalize(F.silu(heads(u[..., :H])), dim=-1, eps=1e-6)
        k = F.normalize(F.silu(heads(u[..., H : 2 * H])), dim=-1, eps=1e-6)
        v = heads(u[..., 2 * H :])
        last = p[:, -1] if T > 0 else prev0
        return MemoryInputs(
            q,
            k,
            v,
            beta.transpose(1, 2),
            S0,
            (last,),
            None if log_alpha is None else log_alpha.transpose(1, 2),
        )

    def memory_outputs(
        self, o: Tensor, S: Tensor, inputs: MemoryInputs
    ) -> tuple[Tensor, DeltaNetState]:
        """``y = o`` with the heads concatenated, ``(B, T, H)``; the state ``(S, prev)``."""
        B, _, T, _ = o.shape
        y = o.transpose(1, 2).reshape(B, T, self.hidden_size)
        return y, DeltaNetState(S, inputs.carry[0])

    def extra_repr(self) -> str:
        out = f"{super().extra_repr()}, heads={self.heads}, rule={self.rule!r}"
        if self.decay != "none":
            out += f", decay={self.decay!r}"
        return out


class DeltaNet(_ConvMemory):
    """Matrix-memory recurrent cell with the delta rule (DeltaNet) or plain linear attention.

    Per step, with ``H = hidden_size`` split into ``heads`` heads of ``d = H / heads``:

    - projections ``p_t = [W_q x_t, W_k x_t, W_v x_t]`` (``(3 H,)``) and a write strength
      ``beta_t = sigmoid(w_beta x_t + b_beta)`` per head;
    - a causal depthwise convolution of width 2 over time, ``u_t = c_0 * p_t + c_1 * p_{t-1}``
      (``p_{-1} = 0``; the previous projections are part of the state). It lets a key be
      built from the previous token, so one layer can bind a value to the key before it;
    - ``q_t = normalize(silu(u_q))``, ``k_t = normalize(silu(u_k))`` (unit L2 norm per head),
      ``v_t = u_v``;
    - ``rule="delta"``: ``S_t = S_{t-1} + beta_t (v_t - S_{t-1} k_t) k_t^T``, i.e.
      ``S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``: the value stored under ``k_t``
      moves a fraction ``beta_t`` towards ``v_t`` instead of adding to it;
      ``rule="linear"``: ``S_t = S_{t-1} + beta_t v_t k_t^T`` (linear attention);
    - ``y_t = S_t q_t`` per head, concatenated: ``(H,)``.

    The state starts at ``S = 0``, ``prev = 0``. The cell has the matrix-state form: with
    rnnkit-kernels installed, ``forward`` with ``backend="auto"`` runs its ``chunked`` backend
    (:mod:`rnnkit.kernels.matrix_state`: the projections, convolution and normalisation for
    all steps at once by :meth:`memory_inputs`, then the delta rule over chunks of 64 tokens
    in the WY form, with resets); ``backend="reference"`` is the sequential loop over
    :meth:`recur`.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the query/key/value width (also the output width).
        heads: number of heads; must divide ``hidden_size``. The memory holds
            ``heads * (H / heads)^2`` numbers per sequence.
        rule: ``"delta"`` or ``"linear"``.
    """

    kind = "deltanet"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        rule: str = "delta",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, heads=heads, rule=rule, decay="none", device=device,
            dtype=dtype,
        )  # fmt: skip


class GatedDeltaNet(_ConvMemory):
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh 2025): DeltaNet with a decay per head.

    As :class:`DeltaNet` (projections, width-2 causal convolution, unit-norm ``q, k``,
    ``beta_t = sigmoid(w_beta x_t + b_beta)``), with the memory multiplied by a gate
    ``alpha_t`` in ``(0, 1)`` per head before each write:

    - ``alpha_t = exp(-exp(A_log) * softplus(w_alpha x_t + dt_bias))`` per head, Mamba-2's
      parametrisation of a decay ``exp(-A dt_t)`` with a positive rate ``A = exp(A_log)`` and
      an input-dependent step ``dt_t = softplus(.)``;
    - ``rule="delta"``: ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``
      (the paper's gated delta rule); ``rule="linear"``:
      ``S_t = alpha_t S_{t-1} + beta_t v_t k_t^T`` (scalar-gated linear attention, the
      Mamba-2 / GLA-scalar recurrence);
    - ``y_t = S_t q_t`` per head, concatenated.

    The decay lets the memory clear out bindings that are no longer needed, where DeltaNet
    can only overwrite the value under one key at a time. The published layer's output gate,
    normalisation and output projection are left out, as in :class:`DeltaNet`. With
    rnnkit-kernels installed, ``backend="auto"`` runs the matrix-state form's ``chunked``
    kernel (the decay folded into the WY/UT chunks in log space).

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the query/key/value width (also the output width).
        heads: number of heads; must divide ``hidden_size``.
        rule: ``"delta"`` (default) or ``"linear"``.
        a_range: ``(low, high)``, ``0 < low <= high``: ``A`` starts ``U(low, high)`` per head
            (Mamba-2: ``(1, 16)``).
        dt_range: ``(low, high)``, ``0 < low <= high``: ``softplus(dt_bias)`` starts
            log-uniform in it (Mamba-2: ``(1e-3, 0.1)``), so ``alpha`` starts between
            ``exp(-high_A * high_dt)`` and ``exp(-low_A * low_dt)`` for a zero input.
    """

    kind = "gated_deltanet"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        rule: str = "delta",
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = (1e-3, 0.1),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, heads=heads, rule=rule, decay="gated", a_range=a_range,
            dt_range=dt_range, device=device, dtype=dtype,
        )  # fmt: skip


class LinearAttention(_ConvMemory):
    """Linear attention as a recurrent cell, optionally with a scalar decay per head.

    As :class:`DeltaNet` with ``rule="linear"``: ``S_t = alpha_t S_{t-1} + beta_t v_t k_t^T``,
    ``y_t = S_t q_t``, with a learned write strength ``beta_t = sigmoid(w_beta x_t + b_beta)``
    and

    - ``decay="none"``: ``alpha = 1`` (linear attention);
    - ``decay="fixed"``: ``alpha = 1 - 2^(-5 - h)`` for head ``h = 0 .. heads - 1``, fixed
      (RetNet's decays, a buffer ``log_gamma``);
    - ``decay="gated"``: :class:`GatedDeltaNet`'s input-dependent ``alpha_t`` (scalar-gated
      linear attention, GLA/Mamba-2 style), with its ``a_range`` and ``dt_range``.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the query/key/value width (also the output width).
        heads: number of heads; must divide ``hidden_size``.
        decay: ``"none"`` (default), ``"fixed"`` or ``"gated"``.
        a_range, dt_range: the gated decay's initialisation (see :class:`GatedDeltaNet`);
            checked only for ``decay="gated"``.
    """

    kind = "linear_attention"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        decay: str = "none",
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = (1e-3, 0.1),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            input_size, hidden_size, heads=heads, rule="linear", decay=decay, a_range=a_range,
            dt_range=dt_range, device=device, dtype=dtype,
        )  # fmt: skip
