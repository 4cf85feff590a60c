"""Miras memories (Behrouz et al. 2025) and Titans' momentum memory as recurrent cells.

Each cell keeps, per head, a linear associative memory ``W: (d, d)`` (value index first, key
index second, as :class:`~rnnkit.models.cells.deltanet.DeltaNet`'s ``S``) that maps keys to
values, ``M(k) = W k``, and writes it with one step of gradient descent per token on an
internal loss (the *attentional bias*) with a *retention* term that keeps it near its past.
The papers use a two-layer MLP memory; at this toolkit's scale the memory is linear (a
matrix per head), which keeps the state ``(B, heads, d, d)`` and makes the gradients closed
form. The cells differ in the loss and the retention:

- :class:`Moneta`: ``l_p`` loss, ``l_q`` retention (a normalisation of the memory);
- :class:`Yaad`: a Huber-style loss (``l_2`` near the target, ``l_1`` far from it);
- :class:`Memora`: ``l_2`` loss, KL retention (a softmax-normalised memory);
- :class:`Titans`: ``l_2`` loss, gradient descent with momentum and weight decay.

Every cell shares DeltaNet's body: projections ``[W_q x, W_k x, W_v x]``, a width-2 causal
convolution, unit-norm ``q, k`` after SiLU, a step size ``eta_t = sigmoid(.)`` per head and
Gated DeltaNet's decay ``alpha_t = exp(-exp(A_log) softplus(. + dt_bias))`` per head.

The memory update is nonlinear in the memory, so no chunked form is exact. ``recur`` (the
``reference`` backend) is the exact per-token update; :meth:`MirasCell.exact_forward` (the
``exact`` backend, what ``backend="auto"`` runs) computes the same function a sequence at a
time.
:meth:`MirasCell.chunked_forward` (the ``chunked_approx`` backend, only when named) is the
mini-batch approximation the papers train with: inside a chunk every token's gradient is
taken at the memory the chunk started with. It is an approximation, not a kernel of the same
function: with ``chunk_size=1`` it equals ``recur`` (up to rounding); with larger chunks it
deviates (measured figures in docs/models.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import cell_method_kernel
from rnnkit.core.kernel import KernelCall, Priority
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_heads, check_positive_int
from rnnkit.models.cells._checks import check_finite
from rnnkit.models.cells.deltanet import _check_range

#: the backend name of the chunked mini-batch approximation (run only when named).
CHUNKED_APPROX = "chunked_approx"
#: the backend name of the exact update run a sequence at a time (``exact_forward``).
EXACT = "exact"
#: the steps :meth:`MirasCell.exact_forward` handles per block: the linear-memory form keeps
#: ``(block, block)`` coefficients and restacks its past updates every step (cost quadratic in
#: the block), and rebuilds the full memory only between blocks.
EXACT_BLOCK = 64
#: the default ``dt_range`` of every cell here: the retention ``alpha = exp(-A dt)`` starts in
#: ``(0.984, 1)`` for ``A <= 16`` (Gated DeltaNet's ``(1e-3, 0.1)`` draws ``alpha`` down to
#: 0.2, and one head that draws a fast decay forgets a binding before its query: on ``mqar``
#: Titans and Yaad failed with such a draw, docs/tasks.md). Forgetting is learned from there.
DT_RANGE = (1e-4, 1e-3)
#: :class:`Yaad`'s attentional biases: the notes' switch on the residual's norm, or the Huber
#: loss of each coordinate (the paper's first Huber variant, by a third-party restatement).
HUBER: tuple[str, ...] = ("switch", "coordinate")
#: :class:`Moneta`'s default ``radius`` ``r``: ``n(A) = ((||A||_q / r)^q + 1)^((q-2)/q)``.
#: Without the ``+ 1`` (the paper's ``||A||_q^(q-2)``), ``A / n(A)`` grows without bound as
#: ``A -> 0`` for ``q > 2`` (the memory starts at zero); with it the map is close to the
#: identity while ``||A||_q << r``, and for ``q >= 3`` the memory's ``l_q`` norm is bounded
#: (by ``r / sqrt(2)`` for ``q = 4``): at ``r = 1`` that bound kept Moneta from learning
#: ``mqar`` (docs/tasks.md).
RADIUS = 1.0


class MirasState(NamedTuple):
    """State of :class:`Moneta`, :class:`Yaad` and :class:`Memora`: the accumulator
    ``A: (B, heads, d, d)`` (value index first; the memory is ``W = phi(A)``, the cell's
    normalisation) and the previous step's projections ``prev: (B, 3 H)`` (the width-2
    convolution's input; zero at the start of an episode)."""

    A: Tensor
    prev: Tensor


class TitansState(NamedTuple):
    """State of :class:`Titans`: the memory ``M: (B, heads, d, d)``, its momentum (the
    "surprise") ``S: (B, heads, d, d)``, and the previous step's projections
    ``prev: (B, 3 H)``."""

    M: Tensor
    S: Tensor
    prev: Tensor


StateT = TypeVar("StateT", bound=tuple[Tensor, ...])


class SequenceInputs(NamedTuple):
    """The memory's inputs for every step of a sequence (:meth:`MirasCell._sequence_inputs`):
    ``q, k, v: (B, heads, T, d)`` (``q, k`` unit norm), ``eta, log_alpha: (B, heads, T)``, the
    raw extra gates ``extra: (B, extra_gates, heads, T)``, and ``last: (B, 3 H)``, the last
    step's projections (the next state's ``prev``)."""

    q: Tensor
    k: Tensor
    v: Tensor
    eta: Tensor
    log_alpha: Tensor
    extra: Tensor
    last: Tensor


def _segsum(log_a: Tensor) -> Tensor:
    """``(..., C) -> (..., C, C)``: ``out[..., t, i] = sum_{j=i+1..t} log_a[..., j]`` for
    ``i <= t`` (0 on the diagonal) and ``-inf`` above it; ``-inf`` entries (resets) give
    ``-inf`` sums without ``inf - inf``."""
    C = log_a.shape[-1]
    ones = torch.ones(C, C, dtype=torch.bool, device=log_a.device)
    x = log_a.unsqueeze(-1).expand(*log_a.shape, C)  # x[..., t, i] = log_a[..., t]
    x = x.masked_fill(~torch.tril(ones, -1), 0.0)
    return torch.cumsum(x, dim=-2).masked_fill(~torch.tril(ones), -math.inf)


def _since_reset(bad: Tensor, s0_bad: Tensor, resets: Tensor) -> Tensor:
    """``(B, heads, T)`` bool: a bad token (``bad: (B, heads, T)``) at or before ``t`` with no
    reset after it up to ``t``, or a bad initial memory (``s0_bad: (B, heads)``) and no reset
    up to ``t`` (``resets: (B, T)``)."""
    r = resets.unsqueeze(1)
    counts = torch.cumsum(bad.to(torch.int64), -1)
    # the count entering each segment, carried forward (counts never decrease)
    base = torch.cummax(torch.where(r, counts - bad.to(torch.int64), 0), -1).values
    before_any_reset = torch.cumsum(r.to(torch.int64), -1) == 0
    return (counts - base > 0) | (s0_bad.unsqueeze(-1) & before_any_reset)


def _recall(coef: Tensor, dots: Tensor, us: list[Tensor], live: Tensor | None = None) -> Tensor:
    """``sum_s coef[..., s] dots[..., s] us[s]`` over the ``n = len(us)`` past updates:
    ``coef, dots: (B, heads, >= n)`` (only the first ``n`` entries are read, so a NaN in a
    later step's update or coefficient does not reach this one), ``us[s]: (B, heads, d)``;
    returns ``(B, heads, d)``. ``live: (B, >= n)`` bool, where given, selects the past steps
    in the current step's segment (none before a reset): a select, so a NaN key before a
    reset does not survive it as ``0 * NaN``."""
    n = len(us)
    w = coef[..., :n] * dots[..., :n]
    if live is not None:
        w = torch.where(live[:, None, :n], w, 0.0)
    return (w.unsqueeze(-2) @ torch.stack(us, -2)).squeeze(-2)


def _written(coef: Tensor, us: list[Tensor], k: Tensor, live: Tensor | None = None) -> Tensor:
    """``sum_s coef[..., s] us[s] k[..., s, :]^T``: ``coef: (B, heads, C)``, ``us[s]: (B,
    heads, d)``, ``k: (B, heads, C, d)``; returns ``(B, heads, d, d)`` (value x key).
    ``live: (B, C)`` bool, where given, selects the steps of the block's last segment (see
    :func:`_recall`)."""
    if live is not None:
        k = torch.where(live[:, None, :, None], k, 0.0)
    return (torch.stack(us, -1) * coef.unsqueeze(-2)) @ k


def _keep(reset: Tensor | None, t: int, x: Tensor) -> Tensor:
    """``x: (B, ...)`` with the examples that reset at step ``t`` (``reset: (B, C)``) zeroed
    (a select, so a NaN before the reset does not survive it, as in the reference loop)."""
    if reset is None:
        return x
    return torch.where(reset[:, t].view(-1, *([1] * (x.dim() - 1))), 0.0, x)


def _from_start(cuts: Tensor | None, t: int, c: Tensor, x: Tensor) -> Tensor:
    """``c * x`` for a term carried from the memory entering the block (``c: (B, heads)``
    broadcast over ``x: (B, heads, ...)``), exactly zero for the examples with a reset at or
    before step ``t`` of the block (``cuts: (B, C)``, ``t = -1`` for the block's end): their
    ``c`` is 0 there, and a select keeps a NaN in that memory from surviving the reset as
    ``0 * NaN``, as in the reference loop."""
    y = c.view(*c.shape, *([1] * (x.dim() - c.dim()))) * x
    if cuts is None:
        return y
    return torch.where(cuts[:, t].view(-1, *([1] * (y.dim() - 1))), 0.0, y)


def chunk_deviation(cell: MirasCell[Any], x: Tensor, chunk_size: int) -> float:
    """Relative RMS deviation ``||y_chunked - y_exact|| / ||y_exact||`` of the chunked
    approximation (:meth:`MirasCell.chunked_forward`) from the exact update (the
    ``reference`` loop) on ``x: (B, T, input_size)`` from the initial state."""
    with torch.no_grad():
        want, _ = cell(x, backend="reference")
        got, _ = cell.chunked_forward(x, chunk_size=chunk_size)
        return float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())


class MirasCell(Cell[StateT]):
    """The body every cell here shares (not registered itself); see the module docstring.

    Per step, with ``H = hidden_size`` split into ``heads`` heads of ``d = H / heads``:
    ``u_t = c_0 * p_t + c_1 * p_{t-1}`` with ``p_t = [W_q x_t, W_k x_t, W_v x_t]``;
    ``q_t = normalize(silu(u_q))``, ``k_t = normalize(silu(u_k))``, ``v_t = u_v`` per head;
    ``eta_t = sigmoid(w_eta x_t + b_eta)``; ``alpha_t = exp(-exp(A_log) softplus(w_alpha x_t
    + dt_bias))``; and ``extra`` more gates per head (``w_g x_t + b_g``, raw) for the cells
    that need them. Subclasses implement the memory update (:meth:`_write`) and its chunked
    approximation (:meth:`_chunk`).
    """

    #: per-head gates beyond ``eta`` and ``alpha`` a subclass reads from :meth:`project`.
    extra_gates: ClassVar[int] = 0

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        chunk_size: int | None = None,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = DT_RANGE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
        _check_range("a_range", a_range)
        _check_range("dt_range", dt_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.chunk_size = chunk_size
        self.a_range = (float(a_range[0]), float(a_range[1]))
        self.dt_range = (float(dt_range[0]), float(dt_range[1]))
        n_extra = self.extra_gates * heads
        self.projected_size = 3 * hidden_size + 2 * heads + n_extra
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))
        self.weight_eta = nn.Parameter(torch.empty(heads, input_size, **kw))
        self.bias_eta = nn.Parameter(torch.empty(heads, **kw))
        self.conv = nn.Parameter(torch.empty(2, 3 * hidden_size, **kw))
        self.weight_alpha = nn.Parameter(torch.empty(heads, input_size, **kw))
        self.A_log = nn.Parameter(torch.empty(heads, **kw))
        self.dt_bias = nn.Parameter(torch.empty(heads, **kw))
        self.weight_extra = nn.Parameter(torch.empty(n_extra, input_size, **kw))
        self.bias_extra = nn.Parameter(torch.empty(n_extra, **kw))
        self.reset_parameters()

    #: initial ``b_g`` of the extra gates (subclasses set it for their gate's meaning).
    extra_bias_init: ClassVar[float] = 0.0

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """As :class:`~rnnkit.models.cells.deltanet.GatedDeltaNet`: projections
        ``U(-1/sqrt(I), 1/sqrt(I))``, ``b_eta = 0``, convolution taps ``U(-1/sqrt(2),
        1/sqrt(2))``, ``A ~ U(a_range)``, ``softplus(dt_bias)`` log-uniform in ``dt_range``;
        the extra gates' biases start at :attr:`extra_bias_init`."""
        bound = 1.0 / math.sqrt(self.input_size)
        for w in (self.weight, self.weight_eta, self.weight_alpha, self.weight_extra):
            nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.bias_eta)
        nn.init.constant_(self.bias_extra, self.extra_bias_init)
        nn.init.uniform_(self.conv, -1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))
        A = torch.empty_like(self.A_log).uniform_(*self.a_range)
        self.A_log.copy_(torch.log(A))
        lo, hi = math.log(self.dt_range[0]), math.log(self.dt_range[1])
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(lo, hi))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., projected_size)``: ``[W_q x, W_k x, W_v x, w_eta x + b_eta,
        w_alpha x, w_g x + b_g]``."""
        return torch.cat(
            (
                F.linear(x, self.weight),
                F.linear(x, self.weight_eta, self.bias_eta),
                F.linear(x, self.weight_alpha),
                F.linear(x, self.weight_extra, self.bias_extra),
            ),
            -1,
        )

    def _gates(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``eta (..., heads)``, ``log alpha (..., heads)`` and the raw extra gates
        ``(..., extra_gates, heads)`` from ``px: (..., projected_size)``."""
        H, nh = 3 * self.hidden_size, self.heads
        eta = torch.sigmoid(px[..., H : H + nh])
        log_alpha = -torch.exp(self.A_log) * F.softplus(px[..., H + nh : H + 2 * nh] + self.dt_bias)
        extra = px[..., H + 2 * nh :].reshape(*px.shape[:-1], self.extra_gates, nh)
        return eta, log_alpha, extra

    def _qkv(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unit-norm ``q, k`` and ``v``, each ``(..., heads, d)``, from the convolved
        projections ``u: (..., 3 H)``."""
        q, k, v = (t.reshape(*t.shape[:-1], self.heads, self.head_dim) for t in u.chunk(3, -1))
        q = F.normalize(F.silu(q), dim=-1, eps=1e-6)
        k = F.normalize(F.silu(k), dim=-1, eps=1e-6)
        return q, k, v

    def _memory_spec(self) -> tuple[StateField, ...]:
        d = self.head_dim
        return (StateField("A", (self.heads, d, d), doc="accumulator per head (value x key)"),)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            *self._memory_spec(),
            StateField("prev", (3 * self.hidden_size,), doc="previous step's q, k, v inputs"),
        )

    def recur(self, px_t: Tensor, state: StateT) -> tuple[Tensor, StateT]:
        """The exact per-token update (the oracle): see the subclass's equations."""
        p = px_t[:, : 3 * self.hidden_size]
        q, k, v = self._qkv(self.conv[0] * p + self.conv[1] * state[-1])
        eta, log_alpha, extra = self._gates(px_t)
        y, memory = self._write(tuple(state[:-1]), q, k, v, eta, log_alpha, extra)
        return y.flatten(-2), self.state_type(*memory, p)

    def _sequence_inputs(self, x: Tensor, state: StateT, resets: Tensor | None) -> SequenceInputs:
        """Every step's memory inputs at once, from ``x: (B, T, input_size)`` with ``T >= 1``,
        the state entering the sequence and ``resets: (B, T)`` bool or ``None``: the
        projections, the width-2 convolution with the previous step (the state's ``prev``
        before the first step, zero at a reset), unit-norm ``q, k`` and the gates, as
        :meth:`recur` computes them one step at a time."""
        H = self.hidden_size
        px = self.project(x)
        p = px[..., : 3 * H]
        p_prev = torch.cat((state[-1].unsqueeze(1), p[:, :-1]), 1)
        if resets is not None:
            p_prev = p_prev.masked_fill(resets.unsqueeze(-1), 0.0)
        q, k, v = (t.transpose(1, 2) for t in self._qkv(self.conv[0] * p + self.conv[1] * p_prev))
        eta, log_alpha, extra = (t.movedim(1, -1) for t in self._gates(px))
        return SequenceInputs(q, k, v, eta, log_alpha, extra, p[:, -1])

    def exact_forward(
        self, x: Tensor, state: StateT | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, StateT]:
        """The exact per-token update over a whole sequence (the ``exact`` backend).

        The same function as the ``reference`` loop over :meth:`recur`, computed faster: the
        projections, convolution, normalisation and gates of every step are computed at once,
        then the memory recurrence runs in blocks of :data:`EXACT_BLOCK` steps
        (:meth:`_exact_block`). Autograd differentiates it (no custom backward).

        Args:
            x: ``(B, T, input_size)``.
            state: the initial state, or ``None`` for :meth:`init_state`.
            resets: optional bool ``(B, T)``: the state restarts at those steps.

        Returns:
            ``(y: (B, T, H), final state)``.
        """
        B, T = x.shape[0], x.shape[1]
        H = self.hidden_size
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        if T == 0:
            return x.new_empty(B, 0, H), state
        q, k, v, eta, log_alpha, extra, last = self._sequence_inputs(x, state, resets)
        memory = tuple(state[:-1])
        ys = []
        for s in range(0, T, EXACT_BLOCK):
            e = min(s + EXACT_BLOCK, T)
            reset = None if resets is None else resets[:, s:e]
            y, memory = self._exact_block(
                memory, reset, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], eta[..., s:e],
                log_alpha[..., s:e], extra[..., s:e],
            )  # fmt: skip
            ys.append(y)
        y = torch.cat(ys, 2).transpose(1, 2).reshape(B, T, H)
        return y, self.state_type(*memory, last)

    def _exact_block(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The exact update over ``C`` steps: ``q, k, v: (B, heads, C, d)``, ``eta, log_alpha:
        (B, heads, C)``, ``extra: (B, extra_gates, heads, C)``, ``reset: (B, C)`` bool or
        ``None``; returns the read-outs ``(B, heads, C, d)`` and the memory fields after the
        block."""
        raise NotImplementedError

    def _write(
        self,
        memory: tuple[Tensor, ...],
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One exact update of the memory fields ``(B, heads, d, d)`` with ``q, k, v: (B,
        heads, d)``, ``eta, log_alpha: (B, heads)``, ``extra: (B, extra_gates, heads)``;
        returns the read-out ``(B, heads, d)`` and the new memory fields."""
        raise NotImplementedError

    def _chunk(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor,
        fresh: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One chunk of the mini-batch approximation: ``q, k, v: (B, heads, C, d)``, ``eta,
        log_alpha: (B, heads, C)``, ``extra: (B, extra_gates, heads, C)``, ``reset: (B, 1,
        C)`` bool (the state restarts at the token), ``fresh: (B, 1, C)`` bool (a reset at or
        before the token inside this chunk: its gradient is taken at the initial memory);
        returns the read-outs ``(B, heads, C, d)`` and the memory fields after the chunk."""
        raise NotImplementedError

    def chunked_forward(
        self,
        x: Tensor,
        state: StateT | None = None,
        *,
        resets: Tensor | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, StateT]:
        """The chunked mini-batch approximation (APPROXIMATE: not equal to ``forward``).

        The sequence is cut into chunks of ``chunk_size`` tokens; inside a chunk, each
        token's gradient of the attentional bias is taken at the memory the chunk started
        with (or at the initial memory after a reset), so the residuals of a whole chunk
        come from one batched product; the retention and the accumulation of the gradients
        stay per token (closed-form decay products), as do the read-outs. ``chunk_size=1``
        is the exact update (equal to :meth:`recur`'s loop up to rounding).

        Args:
            x: ``(B, T, input_size)``.
            state: the initial state, or ``None`` for :meth:`init_state`.
            resets: optional bool ``(B, T)``: the state restarts at those steps.
            chunk_size: overrides the cell's ``chunk_size`` (one of them must be set).

        Returns:
            ``(y: (B, T, H), final state)``.
        """
        C = chunk_size if chunk_size is not None else self.chunk_size
        if C is None:
            raise ValueError(
                "chunk_size must be set (on the cell or in the call) for chunked_forward"
            )
        check_positive_int("chunk_size", C)
        B, T = x.shape[0], x.shape[1]
        H, nh, d = self.hidden_size, self.heads, self.head_dim
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        if T == 0:
            return x.new_empty(B, 0, H), state
        q, k, v, eta, log_alpha, extra, last = self._sequence_inputs(x, state, resets)
        if resets is None:
            resets = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        # a chunk's products multiply zero coefficients with every token of the chunk, so a
        # NaN would reach earlier outputs (0 * nan): compute on finite inputs and put the
        # recurrence's propagation back per head (a non-finite token spoils the head's memory
        # until the next reset; the exact update may spoil only part of it)
        bad = (
            ~torch.isfinite(torch.cat((q, k, v), -1)).all(-1)
            | ~torch.isfinite(eta)
            | torch.isnan(log_alpha)
            | torch.isposinf(log_alpha)
            | ~torch.isfinite(extra).all(1)
        )  # (B, heads, T)
        s0_bad = torch.stack([~torch.isfinite(m).all(-1).all(-1) for m in state[:-1]]).any(0)
        poison = _since_reset(bad, s0_bad, resets)
        q, k, v = (torch.where(bad.unsqueeze(-1), 0.0, t) for t in (q, k, v))
        eta = torch.where(bad, 0.0, eta)
        log_alpha = torch.where(bad, 0.0, log_alpha)
        extra = torch.where(bad.unsqueeze(1), 0.0, extra)
        memory = tuple(torch.where(s0_bad[..., None, None], 0.0, m) for m in state[:-1])
        ys = []
        for s in range(0, T, C):
            e = min(s + C, T)
            reset = resets[:, s:e].unsqueeze(1)
            fresh = reset.cumsum(-1) > 0
            y, memory = self._chunk(
                memory, reset, fresh, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], eta[..., s:e],
                log_alpha[..., s:e], extra[..., s:e],
            )  # fmt: skip
            ys.append(y)
        nan = torch.full((), math.nan, dtype=x.dtype, device=x.device)
        y = torch.where(poison.unsqueeze(-1), nan, torch.cat(ys, 2))
        y = y.transpose(1, 2).reshape(B, T, nh * d)
        memory = tuple(torch.where(poison[..., -1, None, None], nan, m) for m in memory)
        return y, self.state_type(*memory, last)

    def extra_repr(self) -> str:
        out = f"{super().extra_repr()}, heads={self.heads}"
        if self.chunk_size is not None:
            out += f", chunk_size={self.chunk_size}"
        return out


class _Accumulating(MirasCell[MirasState]):
    """Moneta, Yaad, Memora: ``A_t = alpha_t A_{t-1} - eta_t g_t k_t^T`` with the loss's
    residual gradient ``g_t = psi(W_{t-1} k_t - v_t)`` at the memory ``W = phi(A)``, and
    ``y_t = phi(A_t) q_t``; subclasses define ``phi`` (:meth:`_memory`) and ``psi``
    (:meth:`_bias_grad`)."""

    state_type = MirasState

    def _memory(self, A: Tensor) -> Tensor:
        """``phi``: the memory ``W`` from the accumulator ``A: (..., d, d)``."""
        return A

    def _bias_grad(self, e: Tensor, extra: Tensor) -> Tensor:
        """``psi``: the loss's gradient with respect to the memory's output, from the residual
        ``e = W k - v: (..., d)`` and the extra gates ``(..., extra_gates)``."""
        return e

    def _write(
        self,
        memory: tuple[Tensor, ...],
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        (A,) = memory
        W = self._memory(A)
        e = (W @ k.unsqueeze(-1)).squeeze(-1) - v
        g = self._bias_grad(e, extra.transpose(-1, -2))
        A = torch.exp(log_alpha)[..., None, None] * A - (eta[..., None] * g).unsqueeze(
            -1
        ) * k.unsqueeze(-2)
        y = (self._memory(A) @ q.unsqueeze(-1)).squeeze(-1)
        return y, (A,)

    def _exact_steps(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """:meth:`_exact_block` for a nonlinear ``phi``: :meth:`_write`'s update step by step,
        computing each step's memory ``W_t = phi(A_t)`` once (it is both the step's read-out
        and the next step's residual's memory)."""
        (A,) = memory
        W = self._memory(A)
        W_init = self._memory(torch.zeros_like(A[:1]))
        a = torch.exp(log_alpha)
        ys = []
        steps = zip(
            q.unbind(2), k.unbind(2), v.unbind(2), eta.unbind(-1), a.unbind(-1), extra.unbind(-1),
            strict=True,
        )  # fmt: skip
        for t, (q_t, k_t, v_t, eta_t, a_t, extra_t) in enumerate(steps):
            if reset is not None:
                r = reset[:, t, None, None, None]
                A, W = torch.where(r, 0.0, A), torch.where(r, W_init, W)
            e = (W @ k_t.unsqueeze(-1)).squeeze(-1) - v_t
            g = self._bias_grad(e, extra_t.transpose(-1, -2))
            A = a_t[..., None, None] * A - (eta_t.unsqueeze(-1) * g).unsqueeze(-1) * k_t.unsqueeze(
                -2
            )
            W = self._memory(A)
            ys.append((W @ q_t.unsqueeze(-1)).squeeze(-1))
        return torch.stack(ys, 2), (A,)

    def _linear_memory(self) -> bool:
        """Whether ``phi`` is the identity (the memory is the accumulator), so that the exact
        update can run on the coefficients of the past updates (:meth:`_exact_block`)."""
        return type(self)._memory is _Accumulating._memory

    def _exact_block(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """With a linear memory (``W = A``), ``A_t = c0_t A_0 + sum_{s<=t} c_t[s] u_s k_s^T``
        with ``u_s = -eta_s g_s``, where the coefficients follow ``c_t = alpha_t c_{t-1} +
        onehot(t)``, ``c0_t = alpha_t c0_{t-1}`` (zeroed at a reset). So ``W_{t-1} k_t`` and
        ``W_t q_t`` need only the dot products ``k_s . k_t``, ``k_s . q_t`` and the vectors
        ``u_s``: ``(B, heads, d)`` work per step instead of ``(B, heads, d, d)``, and the
        memory matrix is built once per block. Other cells: the step-by-step default."""
        if not self._linear_memory():
            return self._exact_steps(memory, reset, q, k, v, eta, log_alpha, extra)
        (A0,) = memory
        C = q.shape[2]
        a = torch.exp(log_alpha)
        kk = k @ k.transpose(-1, -2)  # kk[..., s, t] = k_s . k_t
        kq = k @ q.transpose(-1, -2)
        A0k = k @ A0.transpose(-1, -2)  # A0k[..., t, :] = A_0 k_t
        A0q = q @ A0.transpose(-1, -2)
        onehot = torch.eye(C, dtype=q.dtype, device=q.device)
        coef = torch.zeros_like(eta)  # (B, heads, C)
        c0 = torch.ones_like(eta[..., 0])  # (B, heads)
        seg = None if reset is None else reset.cumsum(-1)
        cuts = None if seg is None else seg > 0
        us: list[Tensor] = []
        ys = []
        for t in range(C):
            coef, c0 = _keep(reset, t, coef), _keep(reset, t, c0)
            live = None if seg is None else seg == seg[:, t : t + 1]
            if reset is not None:  # updates before a reset are never read again: clear NaNs
                us = [_keep(reset, t, u) for u in us]
            e = _from_start(cuts, t, c0, A0k[:, :, t]) - v[:, :, t]
            if us:
                e = e + _recall(coef, kk[..., t], us, live)
            g = self._bias_grad(e, extra[..., t].transpose(-1, -2))
            us.append(-eta[..., t, None] * g)
            a_t = a[..., t]
            coef = a_t.unsqueeze(-1) * coef + onehot[t]
            c0 = a_t * c0
            ys.append(_from_start(cuts, t, c0, A0q[:, :, t]) + _recall(coef, kq[..., t], us, live))
        A = _from_start(cuts, -1, c0, A0) + _written(coef, us, k, live)
        return torch.stack(ys, 2), (A,)

    def _chunk(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor,
        fresh: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        (A0,) = memory
        W0 = self._memory(A0)
        W_init = self._memory(torch.zeros_like(A0[:1]))
        recalled = torch.where(
            fresh.unsqueeze(-1), k @ W_init.transpose(-1, -2), k @ W0.transpose(-1, -2)
        )
        log_alpha = log_alpha.masked_fill(reset, -math.inf)
        g = self._bias_grad(recalled - v, extra.movedim(1, -1))  # (B, heads, C, d)
        D = torch.exp(_segsum(log_alpha))  # (B, heads, C, C)
        D0 = torch.exp(torch.cumsum(log_alpha, -1))  # (B, heads, C)
        carried = (D0[..., None, None] * A0.unsqueeze(2)).masked_fill(
            fresh[..., None, None], 0.0
        )  # a reset drops the old memory outright (0 * inf would be nan)
        A = carried - torch.einsum("bhti,bhiv,bhik->bhtvk", D, eta.unsqueeze(-1) * g, k)
        y = (self._memory(A) @ q.unsqueeze(-1)).squeeze(-1)
        return y, (A[:, :, -1],)


class Moneta(_Accumulating):
    """Moneta (Miras): ``l_p`` attentional bias with ``l_q`` retention, linear memory per head.

    With :class:`MirasCell`'s body (``q_t, k_t, v_t``, ``eta_t``, ``alpha_t``):

    - ``W_{t-1} = A_{t-1} / n(A_{t-1})``, ``n(A) = ((||A||_q / r)^q + 1)^((q - 2) / q)`` per
      head: the paper's ``||A||_q^(q-2)`` (up to the constant ``r^(q-2)``) with a floor that
      keeps it finite at ``A = 0``, ``r = radius``; ``n = 1`` for ``q = 2``;
    - residual ``e_t = W_{t-1} k_t - v_t``; loss ``(1/p) ||e_t||_p^p``, whose gradient with
      respect to ``W`` is ``(sign(e_t) |e_t|^(p-1)) k_t^T`` (the paper's ``p`` factor is
      folded into ``eta``, so ``p = 2`` gives the delta rule's step);
    - ``A_t = alpha_t A_{t-1} - eta_t (sign(e_t) |e_t|^(p-1)) k_t^T``;
    - ``y_t = W_t q_t`` with ``W_t = A_t / n(A_t)``.

    With ``p = q = 2`` and ``alpha = 1`` this is DeltaNet's delta rule with ``beta = eta``
    (tested); with a decay it is ``W_t = W_{t-1} (alpha_t I - eta_t k_t k_t^T) + eta_t v_t
    k_t^T``, which differs from Gated DeltaNet's ``alpha_t W_{t-1} (I - eta_t k_t k_t^T) + ...``
    in decaying only the old memory, not the correction term.

    The normalisation bounds the memory: ``W = A / n(A)`` is close to ``A`` while ``||A||_q
    << r`` and homogeneous of degree ``3 - q`` in ``A`` beyond ``r`` (``W`` shrinks as ``A``
    grows for ``q > 3``), so for ``q >= 3`` the memory is bounded, ``||W||_q <= r sup_u u
    (u^q + 1)^((2-q)/q)`` (``r`` for ``q = 3``, ``r / sqrt(2)`` for ``q = 4``). Bindings that
    need a larger memory cannot be written: the residuals stay large, ``A`` keeps growing and
    the read-out shrinks. At ``r = 1`` (the default, the floor this cell had before the option)
    the ``mqar`` model's bindings needed more; ``radius=4`` learns it (docs/tasks.md).

    ``recur`` (``backend="reference"``) is the exact update; ``exact_forward``
    (``backend="exact"``, what ``auto`` runs) computes it a sequence at a time.
    ``chunked_forward`` (``backend="chunked_approx"``, with ``chunk_size`` set) is the
    mini-batch APPROXIMATION: gradients at the chunk-start memory; relative RMS deviation of
    ``y`` from the exact update measured in docs/models.md (0 at chunk size 1).

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the query/key/value width (also the output width).
        heads: number of heads; must divide ``hidden_size``.
        p: the attentional bias's exponent, a finite number ``>= 2`` (paper: 3).
        q: the retention's exponent, a finite number ``>= 2`` (paper: 4).
        radius: ``r``, a finite number ``> 0``: the scale of the normalisation's floor and of
            the bound on the memory (default :data:`RADIUS`; the paper has no floor).
        chunk_size: ``None`` (default) or a positive int: the chunk of ``chunked_forward``.
        a_range, dt_range: the decay's initialisation (see :class:`GatedDeltaNet`); ``dt_range``
            defaults to :data:`DT_RANGE`, slower than Gated DeltaNet's.
    """

    kind = "moneta"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        p: float = 3.0,
        q: float = 4.0,
        radius: float = RADIUS,
        chunk_size: int | None = None,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = DT_RANGE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        for name, value in (("p", p), ("q", q)):
            if check_finite(name, value) < 2.0:
                raise ValueError(f"{name} must be a finite number >= 2, got {value!r}")
        self.p = float(p)
        self.q = float(q)
        self.radius = check_finite("radius", radius, positive=True)
        super().__init__(
            input_size, hidden_size, heads=heads, chunk_size=chunk_size, a_range=a_range,
            dt_range=dt_range, device=device, dtype=dtype,
        )  # fmt: skip

    def _linear_memory(self) -> bool:
        return self.q == 2.0

    def _memory(self, A: Tensor) -> Tensor:
        if self.q == 2.0:
            return A
        total = (
            A.abs().pow(self.q).sum((-2, -1), keepdim=True) / math.pow(self.radius, self.q) + 1.0
        )
        return A / total.pow((self.q - 2.0) / self.q)

    def _bias_grad(self, e: Tensor, extra: Tensor) -> Tensor:
        if self.p == 2.0:
            return e
        return torch.sign(e) * e.abs().pow(self.p - 1.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p:g}, q={self.q:g}, radius={self.radius:g}"


class Yaad(_Accumulating):
    """Yaad (Miras): Huber-style attentional bias, ``l_2`` retention, linear memory per head.

    With :class:`MirasCell`'s body and one more gate per head, the threshold
    ``delta_t = softplus(w_delta x_t + b_delta)`` (``b_delta`` starts at ``softplus^{-1}(1)``):

    - residual ``e_t = W_{t-1} k_t - v_t``;
    - ``huber="switch"`` (default, the reference notes' rule): ``W_t = alpha_t W_{t-1} - eta_t
      e_t k_t^T`` if ``||e_t||_2 <= delta_t`` (the ``l_2`` loss's gradient), else ``alpha_t
      W_{t-1} - eta_t delta_t sign(e_t) k_t^T`` (``delta_t`` times the ``l_1`` loss's
      gradient): a large residual moves each value coordinate by at most ``eta_t delta_t``,
      so outliers do not overwrite the memory;
    - ``huber="coordinate"``: the Huber loss of each value coordinate, ``W_t = alpha_t
      W_{t-1} - eta_t clamp(e_t, -delta_t, delta_t) k_t^T``. Its write never exceeds the
      delta rule's in any coordinate; the switch's ``l_1`` branch writes ``eta_t delta_t``
      in every coordinate as soon as the residual's norm passes ``delta_t``, up to ``sqrt(d)``
      times the residual, which overshoots (on ``mqar`` the residuals then grew and the
      switch did not learn; docs/tasks.md);
    - ``y_t = W_t q_t``.

    ``sign(0) = 0``. The state's ``A`` is ``W`` itself. ``chunked_forward``
    (``backend="chunked_approx"``) is the mini-batch APPROXIMATION (residuals and the switch
    at the chunk-start memory; deviation in docs/models.md).

    Args:
        input_size, hidden_size, heads, chunk_size, a_range, dt_range: as :class:`Moneta`.
        huber: ``"switch"`` (default) or ``"coordinate"`` (see above; one of :data:`HUBER`).
    """

    kind = "yaad"
    extra_gates = 1
    extra_bias_init = math.log(math.e - 1.0)  # softplus^{-1}(1): delta starts near 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        huber: str = "switch",
        chunk_size: int | None = None,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = DT_RANGE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if huber not in HUBER:
            raise ValueError(f"huber must be one of {HUBER}, got {huber!r}")
        self.huber = huber
        super().__init__(
            input_size, hidden_size, heads=heads, chunk_size=chunk_size, a_range=a_range,
            dt_range=dt_range, device=device, dtype=dtype,
        )  # fmt: skip

    def _bias_grad(self, e: Tensor, extra: Tensor) -> Tensor:
        delta = F.softplus(extra[..., 0]).unsqueeze(-1)
        if self.huber == "coordinate":
            return torch.minimum(torch.maximum(e, -delta), delta)
        small = e.norm(dim=-1, keepdim=True) <= delta
        return torch.where(small, e, delta * torch.sign(e))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, huber={self.huber!r}"


class Memora(_Accumulating):
    """Memora (Miras): ``l_2`` attentional bias, KL retention: a softmax-normalised memory.

    With :class:`MirasCell`'s body:

    - the memory is ``W = c softmax(A)``, the softmax over the value index of each key
      column (every column of ``W`` is ``c`` times a probability vector), ``c = scale``;
    - ``W_t = c softmax(alpha_t log W_{t-1} - eta_t (W_{t-1} k_t - v_t) k_t^T)``, the
      paper's KL-retention step. Since ``log W = A - logsumexp(A) + log c`` and the softmax
      ignores what is constant along its axis, this is ``A_t = alpha_t A_{t-1} - eta_t e_t
      k_t^T`` on the logits ``A`` with ``e_t = W_{t-1} k_t - v_t``, exactly;
    - ``y_t = W_t q_t``.

    The decay pulls the logits to 0, i.e. the memory towards the uniform ``c / d`` (the KL
    retention's forgetting). ``chunked_forward`` (``backend="chunked_approx"``) is the
    mini-batch APPROXIMATION (residuals at the chunk-start memory; deviation in
    docs/models.md).

    Args:
        input_size, hidden_size, heads, chunk_size, a_range, dt_range: as :class:`Moneta`.
        scale: ``c``, a finite number ``> 0``; ``None`` (default): the head width ``d``, so
            the initial memory is all ones.
    """

    kind = "memora"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        scale: float | None = None,
        chunk_size: int | None = None,
        a_range: tuple[float, float] = (1.0, 16.0),
        dt_range: tuple[float, float] = DT_RANGE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if scale is not None:
            check_finite("scale", scale, positive=True)
        super().__init__(
            input_size, hidden_size, heads=heads, chunk_size=chunk_size, a_range=a_range,
            dt_range=dt_range, device=device, dtype=dtype,
        )  # fmt: skip
        self.scale = float(scale) if scale is not None else float(self.head_dim)

    def _memory(self, A: Tensor) -> Tensor:
        return self.scale * torch.softmax(A, dim=-2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


class Titans(MirasCell[TitansState]):
    """Titans' long-term memory (Behrouz et al. 2024), linear per head: gradient descent with
    momentum ("surprise") and weight decay on an ``l_2`` attentional bias.

    With :class:`MirasCell`'s body (``eta_t`` is the step ``theta_t``, ``alpha_t`` the
    retention ``1 - forget``) and one more gate per head, the momentum
    ``m_t = sigmoid(w_m x_t + b_m)`` (``b_m`` starts at 0):

    - ``S_t = m_t S_{t-1} - theta_t (M_{t-1} k_t - v_t) k_t^T`` (past surprise plus the
      gradient of ``(1/2) ||M k_t - v_t||^2`` at the previous memory);
    - ``M_t = alpha_t M_{t-1} + S_t``;
    - ``y_t = M_t q_t``.

    With ``m = 0`` and ``alpha = 1`` this is DeltaNet's delta rule with ``beta = theta``.
    ``chunked_forward`` (``backend="chunked_approx"``) is the mini-batch APPROXIMATION that
    Titans trains with (gradients at the chunk-start memory, momentum and decay by closed-form
    products; deviation in docs/models.md).

    Args:
        input_size, hidden_size, heads, chunk_size, a_range, dt_range: as :class:`Moneta`.
    """

    kind = "titans"
    state_type = TitansState
    extra_gates = 1

    def _memory_spec(self) -> tuple[StateField, ...]:
        d = self.head_dim
        return (
            StateField("M", (self.heads, d, d), doc="memory per head (value x key)"),
            StateField("S", (self.heads, d, d), doc="momentum of the memory's updates"),
        )

    def _exact_block(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor | None,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The memory is linear in the updates ``u_s = -theta_s e_s``: ``S_t = sS_t S_0 +
        sum_s cS_t[s] u_s k_s^T`` and ``M_t = mM_t M_0 + sM_t S_0 + sum_s cM_t[s] u_s
        k_s^T``, with ``cS_t = m_t cS_{t-1} + onehot(t)``, ``cM_t = alpha_t cM_{t-1} +
        cS_t`` and the same recursions for the scalars (all zeroed at a reset). Reads need
        only ``k_s . k_t``, ``k_s . q_t`` and the ``u_s`` (see :class:`_Accumulating`)."""
        M0, S0 = memory
        C = q.shape[2]
        a = torch.exp(log_alpha)
        m = torch.sigmoid(extra[:, 0])
        kk = k @ k.transpose(-1, -2)
        kq = k @ q.transpose(-1, -2)
        M0k, S0k = k @ M0.transpose(-1, -2), k @ S0.transpose(-1, -2)
        M0q, S0q = q @ M0.transpose(-1, -2), q @ S0.transpose(-1, -2)
        onehot = torch.eye(C, dtype=q.dtype, device=q.device)
        cS = torch.zeros_like(eta)
        cM = torch.zeros_like(eta)
        sS = torch.ones_like(eta[..., 0])
        mM = torch.ones_like(sS)
        sM = torch.zeros_like(sS)
        seg = None if reset is None else reset.cumsum(-1)
        cuts = None if seg is None else seg > 0
        us: list[Tensor] = []
        ys = []
        for t in range(C):
            cS, cM, sS, mM, sM = (_keep(reset, t, c) for c in (cS, cM, sS, mM, sM))
            live = None if seg is None else seg == seg[:, t : t + 1]
            if reset is not None:  # updates before a reset are never read again: clear NaNs
                us = [_keep(reset, t, u) for u in us]
            carried = _from_start(cuts, t, mM, M0k[:, :, t]) + _from_start(
                cuts, t, sM, S0k[:, :, t]
            )
            e = carried - v[:, :, t]
            if us:
                e = e + _recall(cM, kk[..., t], us, live)
            us.append(-eta[..., t, None] * e)
            m_t, a_t = m[..., t], a[..., t]
            cS = m_t.unsqueeze(-1) * cS + onehot[t]
            sS = m_t * sS
            cM = a_t.unsqueeze(-1) * cM + cS
            mM = a_t * mM
            sM = a_t * sM + sS
            y = _from_start(cuts, t, mM, M0q[:, :, t]) + _from_start(cuts, t, sM, S0q[:, :, t])
            ys.append(y + _recall(cM, kq[..., t], us, live))
        S = _from_start(cuts, -1, sS, S0) + _written(cS, us, k, live)
        M = (
            _from_start(cuts, -1, mM, M0)
            + _from_start(cuts, -1, sM, S0)
            + _written(cM, us, k, live)
        )
        return torch.stack(ys, 2), (M, S)

    def _write(
        self,
        memory: tuple[Tensor, ...],
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        M, S = memory
        momentum = torch.sigmoid(extra[:, 0])[..., None, None]
        e = (M @ k.unsqueeze(-1)).squeeze(-1) - v
        S = momentum * S - (eta[..., None] * e).unsqueeze(-1) * k.unsqueeze(-2)
        M = torch.exp(log_alpha)[..., None, None] * M + S
        return (M @ q.unsqueeze(-1)).squeeze(-1), (M, S)

    def _chunk(
        self,
        memory: tuple[Tensor, ...],
        reset: Tensor,
        fresh: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        log_alpha: Tensor,
        extra: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        M0, S0 = memory
        # the initial memory is 0: a token after a reset in this chunk recalls nothing
        recalled = (k @ M0.transpose(-1, -2)).masked_fill(fresh.unsqueeze(-1), 0.0)
        g = eta.unsqueeze(-1) * (recalled - v)
        log_alpha = log_alpha.masked_fill(reset, -math.inf)
        log_m = F.logsigmoid(extra[:, 0]).masked_fill(reset, -math.inf)
        P = torch.exp(_segsum(log_m))
        P0 = torch.exp(torch.cumsum(log_m, -1))
        drop = fresh[..., None, None]
        S = (P0[..., None, None] * S0.unsqueeze(2)).masked_fill(drop, 0.0) - torch.einsum(
            "bhti,bhiv,bhik->bhtvk", P, g, k
        )
        D = torch.exp(_segsum(log_alpha))
        D0 = torch.exp(torch.cumsum(log_alpha, -1))
        M = (D0[..., None, None] * M0.unsqueeze(2)).masked_fill(drop, 0.0) + torch.einsum(
            "bhtj,bhjvk->bhtvk", D, S
        )
        y = (M @ q.unsqueeze(-1)).squeeze(-1)
        return y, (M[:, :, -1], S[:, :, -1])


def _supports_chunked(cell: MirasCell[Any], call: KernelCall) -> str | None:
    """What the chunked approximation needs beyond a Miras cell: a ``chunk_size``."""
    del call
    if cell.chunk_size is None:
        return (
            "the cell has no chunk_size: the chunked mini-batch approximation is not the exact "
            "recurrence and runs only on a cell built with chunk_size=C and named as "
            "backend='chunked_approx'"
        )
    return None


#: The chunked mini-batch approximation of each Miras cell, one kernel per cell kind. It
#: computes a different (approximate) function, so ``auto`` never picks it (``NEVER``) and it
#: refuses cells without ``chunk_size`` (the conformance kit runs every backend that accepts
#: a cell against ``reference``).
CHUNKED_KERNELS = tuple(
    cell_method_kernel(
        MirasCell,
        MirasCell.chunked_forward,
        backend=CHUNKED_APPROX,
        target=cls.kind,
        label="Miras",
        description=f"{cls.__name__}: chunked mini-batch approximation (approximate; named only)",
        priority=Priority.NEVER,
        supports_extra=_supports_chunked,
    )
    for cls in (Moneta, Yaad, Memora, Titans)
)


def _supports_exact(cell: MirasCell[Any], call: KernelCall) -> str | None:
    """The ``exact`` backend runs float32 and float64 only."""
    del cell
    if call.x.dtype not in (torch.float32, torch.float64):
        return (
            f"runs float32 and float64 only, not {call.x.dtype}: its sums over a block's past "
            "updates round differently from the loop's, beyond the low-precision tolerance"
        )
    return None


#: The exact update computed a sequence at a time (:meth:`MirasCell.exact_forward`), one
#: kernel per cell kind: the same function as the ``reference`` loop, faster, so ``auto``
#: takes it (the portable tier).
EXACT_KERNELS = tuple(
    cell_method_kernel(
        MirasCell,
        MirasCell.exact_forward,
        backend=EXACT,
        target=cls.kind,
        label="Miras",
        description=f"{cls.__name__}: the exact update, projections hoisted out of the loop",
        priority=Priority.PORTABLE,
        supports_extra=_supports_exact,
    )
    for cls in (Moneta, Yaad, Memora, Titans)
)
