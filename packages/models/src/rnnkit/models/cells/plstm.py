"""pLSTM on a line graph (Pöppel et al. 2025, "pLSTM: parallelizable Linear Source Transition
Mark networks"): a matrix memory with source, transition and mark gates.

The 1D cell :class:`PLSTM` is the line-graph case of pLSTM with scalar gates per head (the
reference code's ``JT = JK = JV = JO = JQ = 1``): a gated linear attention whose memory is
written through a *source* gate, carried by a signed *transition* gate in ``(-1, 1)`` and read
through a *mark* gate, with a separate *direct* gate for the token's own key-value pair. Its
own parallel algorithm, :func:`plstm_chunked` (exact, parallel within chunks, sequential across
them), is registered as the ``chunked`` kernel of the ``plstm`` cell kind. The 2D grid version
lives in :mod:`rnnkit.models.plstm2d`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import Priority, cell_method_kernel
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_heads, check_positive_int

#: Order of the gate pre-activations in :meth:`PLSTM.project` (``heads`` columns each).
GATES: tuple[str, ...] = ("source", "transition", "mark", "direct")


class PLSTMState(NamedTuple):
    """State of :class:`PLSTM`: the memory ``C: (B, heads, head_dim, head_dim)`` (key index
    first, value index second), zero at the start of an episode."""

    C: Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit floats (the memory sums many rank-one terms: rounding each in 16
    bits compounds), else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def segment_products(t: Tensor) -> Tensor:
    """``out[..., i, j] = prod_{j < r <= i} t[..., r]`` for ``j <= i`` (1 on the diagonal) and
    ``0`` above it: ``t: (..., L) -> (..., L, L)``.

    A cumulative product down the columns of a matrix holding ``t`` below the diagonal and 1
    elsewhere: no logarithms and no divisions, so a transition that is exactly zero (``tanh(0)``)
    or negative needs no special case, and autograd's ``cumprod`` backward gives the exact
    gradient at zero too."""
    L = t.shape[-1]
    idx = torch.arange(L, device=t.device)
    below = idx[:, None] > idx[None, :]
    x = torch.where(below, t.unsqueeze(-1).expand(*t.shape, L), t.new_ones(()))
    return torch.where(below | (idx[:, None] == idx[None, :]), x.cumprod(-2), t.new_zeros(()))


def _since_reset(bad: Tensor, resets: Tensor | None) -> Tensor:
    """``bad: (B, heads, T, X)`` bool -> whether any step since the last reset (that step
    included) up to ``t`` (included) was bad."""
    x = bad.to(torch.int64)
    counts = x.cumsum(2)
    if resets is not None:
        r = resets[:, None, :, None]
        base = torch.where(r, counts - x, torch.zeros_like(counts)).cummax(2).values
        counts = counts - base
    return counts > 0


def _poison(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gates: tuple[Tensor, Tensor, Tensor, Tensor],
    C0: Tensor,
    resets: Tensor | None,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, Tensor]]:
    """Where the step recurrence gives non-finite numbers, and the finite operands to run the
    chunked form on.

    The chunked products multiply zero (masked) weights with every step of a chunk, so a NaN
    would reach the chunk's earlier outputs (``0 * nan``). The chunks therefore run on inputs
    whose non-finite entries are replaced by zero, and the loop's own spread is put back as
    masks: a bad ``k_t[i]`` spoils row ``i`` of the memory, a bad ``v_t[j]`` its column ``j``,
    a bad source or transition gate the whole memory, each until the next reset; a read of a
    memory with a spoiled row spoils every output feature, one with a spoiled column that
    feature; a bad ``q_t``, ``k_t``, mark or direct gate spoils all of ``y_t``, a bad ``v_t[j]``
    its feature ``j`` (the direct term), and a bad entry of ``C0`` its column of every read
    until the first reset.

    Returns:
        The sanitised ``(q, k, v, source, transition, mark, direct, C0)`` and the masks of
        ``y: (B, heads, T, d_v)`` and of the final memory ``(B, heads, d_k, d_v)``.
    """
    source, transition, mark, direct = gates
    q_bad, k_bad, v_bad, c0_bad = (~torch.isfinite(u) for u in (q, k, v, C0))
    s_bad, t_bad, m_bad, d_bad = (~torch.isfinite(g) for g in gates)
    whole = (s_bad | t_bad).unsqueeze(-1)  # (B, h, T, 1): the whole write is spoiled
    rows = _since_reset(k_bad | whole, resets)  # (B, h, T, d_k): memory rows after step t
    cols = _since_reset(v_bad | whole, resets)  # (B, h, T, d_v)
    T = q.shape[2]
    no_reset = torch.ones(q.shape[0], T, dtype=torch.bool, device=q.device)
    if resets is not None:
        no_reset = resets.to(torch.int64).cumsum(1) == 0  # no reset in [0, t]
    alive = no_reset[:, None, :, None]  # (B, 1, T, 1): C0 still in the memory read at t

    def before(m: Tensor) -> Tensor:
        """The memory read at step ``t`` is the one after step ``t - 1``, unless reset."""
        prev = torch.cat((torch.zeros_like(m[:, :, :1]), m[:, :, :-1]), 2)
        if resets is not None:
            prev = prev & ~resets[:, None, :, None]
        return prev

    read_rows = before(rows).any(-1, keepdim=True)  # (B, h, T, 1)
    read_cols = before(cols)  # (B, h, T, d_v)
    y_all = (
        q_bad.any(-1, keepdim=True)
        | k_bad.any(-1, keepdim=True)
        | (m_bad | d_bad).unsqueeze(-1)
        | read_rows
    )
    y_bad = y_all | v_bad | read_cols | (alive & c0_bad.any(-2).unsqueeze(2))
    if T > 0:
        c_bad = rows[:, :, -1, :, None] | cols[:, :, -1, None, :] | (alive[:, :, -1:] & c0_bad)
    else:
        c_bad = c0_bad
    zero = q.new_zeros(())

    def clean(u: Tensor) -> Tensor:
        return torch.where(torch.isfinite(u), u, zero)

    operands = tuple(clean(u) for u in (q, k, v, source, transition, mark, direct, C0))
    return operands, (y_bad, c_bad)


def plstm_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    C0: Tensor,
    resets: Tensor | None = None,
    *,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """The 1D pLSTM recurrence, exact, parallel within chunks of ``chunk_size`` steps.

    Per head, with ``d_k`` the key width::

        y_t = (mark_t q_t^T C_{t-1} + direct_t (q_t . k_t) v_t^T) / sqrt(d_k)
        C_t = transition_t C_{t-1} + source_t k_t v_t^T

    Within a chunk every output is a weighted sum of the chunk's values and the memory
    entering it, the weights being products of the transitions between the two steps
    (:func:`segment_products`, signed and exact); the memory is carried across chunks.
    Non-finite inputs give non-finite outputs exactly where the sequential loop does (see
    :func:`_poison`).

    Args:
        q, k: ``(B, heads, T, d_k)``.
        v: ``(B, heads, T, d_v)``.
        source, transition, mark, direct: the gates, ``(B, heads, T)``.
        C0: the memory entering step 0, ``(B, heads, d_k, d_v)``.
        resets: optional bool ``(B, T)``: the memory entering step ``t`` is zero where true.
        chunk_size: steps per chunk (the work per chunk grows with its square).

    Returns:
        ``y: (B, heads, T, d_v)`` and the memory after the last step, ``(B, heads, d_k, d_v)``.
    """
    (q, k, v, source, transition, mark, direct, C), (y_bad, c_bad) = _poison(
        q, k, v, (source, transition, mark, direct), C0, resets
    )
    scale = 1.0 / math.sqrt(q.shape[-1])
    T = q.shape[2]
    outs: list[Tensor] = []
    zero = q.new_zeros(())
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        L = end - start
        qc, kc, vc = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        sc, tc = source[:, :, start:end], transition[:, :, start:end]
        mc, dc = mark[:, :, start:end], direct[:, :, start:end]
        seg = segment_products(tc)  # (B, h, L, L): prod_{s<r<=t} T_r
        cum = tc.cumprod(-1)  # prod_{r<=t} T_r
        # the memory read at step t is the one after step t - 1: shift by one step
        cum_prev = torch.cat((torch.ones_like(cum[..., :1]), cum[..., :-1]), -1)
        seg_prev = torch.cat((torch.zeros_like(seg[..., :1, :]), seg[..., :-1, :]), -2)
        idx = torch.arange(L, device=q.device)
        reach: Tensor = idx[:, None] > idx[None, :]  # (L, L): s < t
        from_start: Tensor | None = None
        to_end: Tensor | None = None
        start_to_end: Tensor | None = None
        if resets is not None:
            # count[t]: resets at chunk steps <= t; s reaches t iff none in (s, t]
            count = resets[:, start:end].to(torch.int64).cumsum(-1)  # (B, L)
            reach = (reach & (count[:, :, None] == count[:, None, :]))[:, None]  # (B, 1, L, L)
            from_start = (count == 0)[:, None]  # (B, 1, L)
            to_end = (count == count[:, -1:])[:, None]  # (B, 1, L)
            start_to_end = (count[:, -1] == 0)[:, None, None, None]  # (B, 1, 1, 1)
        # intra-chunk weights: mark_t prod_{s<r<t} T_r source_s (q_t . k_s), s < t
        qk = qc @ kc.transpose(-1, -2)  # (B, h, L, L)
        w = torch.where(reach, seg_prev * mc[..., :, None] * sc[..., None, :] * qk, zero)
        w = w + torch.diag_embed(dc * torch.diagonal(qk, dim1=-2, dim2=-1))
        # the memory entering the chunk, carried to each step
        read = (mc * cum_prev)[..., None] * (qc @ C)  # (B, h, L, d_v)
        if from_start is not None:
            read = torch.where(from_start[..., None], read, zero)
        outs.append((w @ vc + read) * scale)
        # the memory leaving the chunk
        to_last = seg[..., -1, :] * sc  # (B, h, L)
        if to_end is not None:
            to_last = torch.where(to_end, to_last, zero)
        written = (kc * to_last[..., None]).transpose(-1, -2) @ vc  # (B, h, d_k, d_v)
        carried = cum[..., -1, None, None] * C
        if start_to_end is not None:
            carried = torch.where(start_to_end, carried, zero)
        C = carried + written
    y = torch.cat(outs, 2) if outs else v.new_zeros(v.shape)
    nan = q.new_full((), float("nan"))
    return torch.where(y_bad, nan, y), torch.where(c_bad, nan, C)


class PLSTM(Cell[PLSTMState]):
    """pLSTM on a line graph: a matrix memory with source, transition, mark and direct gates.

    Per step, with ``H = hidden_size`` split into ``heads`` heads of ``d = H / heads``:

    - ``q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t`` split into heads (``(heads, d)`` each);
    - per head, from ``g_t = W_g x_t + b_g`` (``4 heads`` numbers): the source gate
      ``S_t = sigmoid(g_S)``, the transition ``T_t = tanh(transition_scale * g_T)`` in
      ``(-1, 1)``, the mark gate ``M_t = sigmoid(g_M)`` and the direct gate
      ``D_t = sigmoid(g_D)``;
    - ``y_t = (M_t q_t^T C_{t-1} + D_t (q_t . k_t) v_t) / sqrt(d)`` per head, concatenated;
    - ``C_t = T_t C_{t-1} + S_t k_t v_t^T`` (``C: (heads, d, d)``, key x value).

    The output reads the memory *before* the step's own write (the mark gate acts on what
    earlier steps left); the step's own pair reaches the output only through the direct gate.
    Because ``|T_t| < 1`` the memory cannot grow without bound, and a negative ``T_t`` lets it
    flip sign (a parity-like state that a positive decay cannot hold).

    Initialisation (the reference code's defaults for the gates): gate weights ``W_g = 0``;
    biases ``b_S = b_M = b_D = gate_bias`` (``-5`` there, where a per-head norm follows; the
    default here is ``0``, since nothing rescales the cell's output) and
    ``b_T = transition_bias = 1`` (``T = tanh(5) ~ 0.9999`` at the start: a long memory);
    ``W_q, W_k, W_v ~ U(-1/sqrt(I), 1/sqrt(I))``.

    ``forward`` with ``backend="auto"`` runs :func:`plstm_chunked` (the ``chunked`` kernel,
    exact; chunks of ``chunk_size`` steps, resets included); ``backend="reference"`` is the
    sequential loop over :meth:`recur`, the float64 oracle.

    Args:
        input_size: width of ``x``.
        hidden_size: ``H``, the query/key/value width (also the output width).
        heads: number of heads; must divide ``hidden_size``.
        chunk_size: steps per chunk of the ``chunked`` kernel (64, the reference's
            ``levels = 6``).
        gate_bias: initial bias of the source, mark and direct gates.
        transition_bias: initial bias of the transition gate.
        transition_scale: the factor inside ``tanh`` of the transition (5 in the reference).
    """

    kind = "plstm"
    state_type = PLSTMState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        chunk_size: int = 64,
        gate_bias: float = 0.0,
        transition_bias: float = 1.0,
        transition_scale: float = 5.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        check_positive_int("chunk_size", chunk_size)
        for name, value in (
            ("gate_bias", gate_bias),
            ("transition_bias", transition_bias),
            ("transition_scale", transition_scale),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if transition_scale <= 0:
            raise ValueError(f"transition_scale must be positive, got {transition_scale!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.chunk_size = chunk_size
        self.gate_bias = float(gate_bias)
        self.transition_bias = float(transition_bias)
        self.transition_scale = float(transition_scale)
        self.projected_size = 3 * hidden_size + len(GATES) * heads
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))  # type: ignore[arg-type]
        self.weight_gates = nn.Parameter(torch.empty(len(GATES) * heads, input_size, **kw))  # type: ignore[arg-type]
        self.bias_gates = nn.Parameter(torch.empty(len(GATES) * heads, **kw))  # type: ignore[arg-type]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """See the class docstring."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.weight_gates)
        bias = self.bias_gates.view(len(GATES), self.heads)
        bias.fill_(self.gate_bias)
        bias[GATES.index("transition")].fill_(self.transition_bias)

    def state_spec(self) -> tuple[StateField, ...]:
        d = self.head_dim
        return (StateField("C", (self.heads, d, d), doc="memory per head (key x value)"),)

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., 3 H + 4 heads)``: ``[W_q x, W_k x, W_v x, W_g x + b_g]`` (the
        gate pre-activations in :data:`GATES` order, ``heads`` each)."""
        return torch.cat(
            (F.linear(x, self.weight), F.linear(x, self.weight_gates, self.bias_gates)), -1
        )

    def split(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``px: (..., projected_size)`` -> ``q, k, v: (..., heads, d)`` and the gates
        ``source, transition, mark, direct: (..., heads)`` (activated)."""
        H, nh = self.hidden_size, self.heads
        lead = px.shape[:-1]
        q, k, v = (px[..., i * H : (i + 1) * H].reshape(*lead, nh, self.head_dim) for i in range(3))
        g = px[..., 3 * H :].reshape(*lead, len(GATES), nh)
        source = torch.sigmoid(g[..., 0, :])
        transition = torch.tanh(self.transition_scale * g[..., 1, :])
        mark = torch.sigmoid(g[..., 2, :])
        direct = torch.sigmoid(g[..., 3, :])
        return q, k, v, source, transition, mark, direct

    def recur(self, px_t: Tensor, state: PLSTMState) -> tuple[Tensor, PLSTMState]:
        dtype = px_t.dtype
        cd = compute_dtype(dtype)
        q, k, v, s, t, m, d = self.split(px_t.to(cd))  # (B, heads, d), gates (B, heads)
        C = state.C.to(cd)
        read = (q.unsqueeze(-2) @ C).squeeze(-2)  # q^T C_{t-1}: (B, heads, d)
        own = (q * k).sum(-1, keepdim=True) * v
        y = (m[..., None] * read + d[..., None] * own) / math.sqrt(self.head_dim)
        C = t[..., None, None] * C + s[..., None, None] * k.unsqueeze(-1) * v.unsqueeze(-2)
        return y.flatten(-2).to(dtype), PLSTMState(C.to(dtype))

    def chunked_forward(
        self, x: Tensor, state: PLSTMState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, PLSTMState]:
        """The whole sequence by :func:`plstm_chunked` (no validation: ``forward`` validates
        and then runs this as the ``chunked`` kernel).

        Args:
            x: ``(B, T, input_size)``.
            state: the initial state or ``None`` for zeros.
            resets: optional bool ``(B, T)``.

        Returns:
            ``y: (B, T, hidden_size)`` and the final state.
        """
        B, T = x.shape[0], x.shape[1]
        if state is None:
            state = self.init_state(B, device=x.device, dtype=x.dtype)
        dtype = x.dtype
        cd = compute_dtype(dtype)
        q, k, v, s, t, m, d = (u.transpose(1, 2) for u in self.split(self.project(x).to(cd)))
        y, C = plstm_chunked(
            q, k, v, s, t, m, d, state.C.to(cd), resets, chunk_size=self.chunk_size
        )  # fmt: skip
        y = y.transpose(1, 2).reshape(B, T, self.hidden_size)
        return y.to(dtype), PLSTMState(C.to(dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, chunk_size={self.chunk_size}"


#: pLSTM's own parallel algorithm, registered as a kernel of the ``plstm`` cell kind.
CHUNKED_KERNEL = cell_method_kernel(
    PLSTM,
    PLSTM.chunked_forward,
    backend="chunked",
    description="pLSTM 1D: exact chunked form (parallel within chunks, memory carried across)",
    priority=Priority.PORTABLE,
)
