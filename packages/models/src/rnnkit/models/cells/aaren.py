"""Aaren (Feng et al. 2024, "Attention as an RNN"): attention with a learned query as an RNN."""

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


class AarenState(NamedTuple):
    """State of :class:`Aaren`, per head: the running max score ``m: (B, heads)``, the
    normaliser ``u: (B, heads)`` and the weighted value sum ``w: (B, heads, head_dim)``."""

    m: Tensor
    u: Tensor
    w: Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def aaren_combine(
    left: tuple[Tensor, Tensor, Tensor], right: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The associative operator on ``(m, u, w)`` triples (``w`` has one more trailing dim):

    ``m = max(m_A, m_B)``, ``u = u_A e^{m_A - m} + u_B e^{m_B - m}``,
    ``w = w_A e^{m_A - m} + w_B e^{m_B - m}``.
    """
    m_a, u_a, w_a = left
    m_b, u_b, w_b = right
    m = torch.maximum(m_a, m_b)
    sa, sb = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, u_a * sa + u_b * sb, w_a * sa.unsqueeze(-1) + w_b * sb.unsqueeze(-1)


class Aaren(Cell[AarenState]):
    """Aaren: causal softmax attention of a learned, input-independent query per head.

    With ``k_t = W_k x_t``, ``v_t = W_v x_t`` split into heads and the score
    ``s_t = q . k_t / sqrt(head_dim)`` per head, the output is
    ``y_t = sum_{i<=t} softmax(s)_i v_i`` (over the whole history and the initial state),
    computed as the RNN ``m_t = max(m_{t-1}, s_t)``, ``u_t = u_{t-1} e^{m_{t-1} - m_t} +
    e^{s_t - m_t}``, ``w_t = w_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t} v_t``,
    ``y_t = w_t / u_t``. The initial state is the empty prefix ``(m, u, w) = (-inf, 0, 0)``.

    ``forward`` with ``backend="auto"`` runs the whole sequence on the cell's own registered
    kernel, ``backend="prefix_scan"`` (:meth:`parallel_forward`: a parallel prefix scan of
    :func:`aaren_combine`, Hillis-Steele doubling, ``ceil(log2 T)`` vectorised steps, every
    exponent ``<= 0`` so nothing overflows); ``backend="reference"`` runs the constant-memory
    ``recur`` loop. ``step`` is constant-memory.

    Args:
        input_size: width of ``x``.
        hidden_size: value width ``heads * head_dim`` (also the output width).
        heads: the number of heads (each with its own query); must divide ``hidden_size``.
    """

    kind = "aaren"
    state_type = AarenState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.projected_size = heads + hidden_size
        kw = {"device": device, "dtype": dtype}
        self.weight_k = nn.Parameter(torch.empty(hidden_size, input_size, **kw))  # type: ignore[arg-type]
        self.weight_v = nn.Parameter(torch.empty(hidden_size, input_size, **kw))  # type: ignore[arg-type]
        self.bias_v = nn.Parameter(torch.empty(hidden_size, **kw))  # type: ignore[arg-type]
        self.query = nn.Parameter(torch.empty(heads, self.head_dim, **kw))  # type: ignore[arg-type]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections ``U(-1/sqrt(I), 1/sqrt(I))``, query ``N(0, 1)``."""
        bound = 1.0 / math.sqrt(self.input_size)
        for p in (self.weight_k, self.weight_v, self.bias_v):
            nn.init.uniform_(p, -bound, bound)
        nn.init.normal_(self.query)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField("m", (self.heads,), init=-math.inf, doc="running max of the scores"),
            StateField("u", (self.heads,), doc="softmax normaliser (relative to m)"),
            StateField("w", (self.heads, self.head_dim), doc="weighted sum of values"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., heads + hidden_size)``: the scores ``s`` then the values ``v``."""
        k = F.linear(x, self.weight_k)
        k = k.reshape(*k.shape[:-1], self.heads, self.head_dim)
        s = (k * self.query).sum(-1) / math.sqrt(self.head_dim)
        return torch.cat((s, F.linear(x, self.weight_v, self.bias_v)), -1)

    def _split(self, px: Tensor) -> tuple[Tensor, Tensor]:
        s = px[..., : self.heads]
        v = px[..., self.heads :]
        v = v.reshape(*v.shape[:-1], self.heads, self.head_dim)
        return s, v

    def recur(self, px_t: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        dtype = px_t.dtype
        cd = _compute_dtype(dtype)  # 16-bit floats: combine in float32, round once
        s, v = self._split(px_t.to(cd))
        leaf = (s, torch.ones_like(s), v)
        m, u, w = aaren_combine((state.m.to(cd), state.u.to(cd), state.w.to(cd)), leaf)
        y = (w / u.unsqueeze(-1)).flatten(-2)
        return y.to(dtype), AarenState(m.to(dtype), u.to(dtype), w.to(dtype))

    def parallel_forward(
        self, x: Tensor, state: AarenState | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, AarenState]:
        """All outputs at once by a prefix scan (no validation: ``forward`` validates and then
        runs this as the ``prefix_scan`` kernel).

        Args:
            x: ``(B, T, input_size)``.
            state: the initial state or ``None`` for the empty prefix.
            resets: optional bool ``(B, T)``: the state entering step ``t`` is the initial one.

        Returns:
            ``y: (B, T, hidden_size)`` and the final state.
        """
        batch, time = x.shape[0], x.shape[1]
        init = self.init_state(batch, device=x.device, dtype=x.dtype)
        if state is None:
            state = init
        if time == 0:
            return x.new_empty(batch, 0, self.output_size), state
        dtype = x.dtype
        cd = _compute_dtype(dtype)
        s, v = self._split(self.project(x).to(cd))
        state = AarenState(*(f.to(cd) for f in state))
        # element 0 is the initial state, element t + 1 the leaf of step t
        m = torch.cat((state.m.unsqueeze(1), s), 1)
        u = torch.cat((state.u.unsqueeze(1), torch.ones_like(s)), 1)
        w = torch.cat((state.w.unsqueeze(1), v), 1)
        flag: Tensor | None = None
        if resets is not None:
            # a reset at step t: nothing left of element t + 1 contributes
            flag = torch.cat((torch.zeros_like(resets[:, :1]), resets), 1)
        n = time + 1
        stride = 1
        while stride < n:
            lm, lu, lw = aaren_combine(
                (m[:, :-stride], u[:, :-stride], w[:, :-stride]),
                (m[:, stride:], u[:, stride:], w[:, stride:]),
            )
            if flag is not None:
                keep = flag[:, stride:].unsqueeze(-1)
                lm = torch.where(keep, m[:, stride:], lm)
                lu = torch.where(keep, u[:, stride:], lu)
                lw = torch.where(keep.unsqueeze(-1), w[:, stride:], lw)
                flag = torch.cat((flag[:, :stride], flag[:, stride:] | flag[:, :-stride]), 1)
            m = torch.cat((m[:, :stride], lm), 1)
            u = torch.cat((u[:, :stride], lu), 1)
            w = torch.cat((w[:, :stride], lw), 1)
            stride *= 2
        y = (w[:, 1:] / u[:, 1:].unsqueeze(-1)).flatten(-2)
        return y.to(dtype), AarenState(m[:, -1].to(dtype), u[:, -1].to(dtype), w[:, -1].to(dtype))


#: Aaren's own parallel algorithm, registered as a kernel of the ``aaren`` cell kind: ``auto``
#: prefers it to the ``reference`` loop for every call.
PARALLEL_KERNEL = cell_method_kernel(
    Aaren,
    Aaren.parallel_forward,
    backend="prefix_scan",
    description="Aaren's parallel prefix scan (Hillis-Steele doubling, log2 T steps)",
    priority=Priority.PORTABLE,
)
