"""DeltaNet-style matrix-memory cell: a key-value memory written by the delta rule.

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


class DeltaNetState(NamedTuple):
    """State of :class:`DeltaNet`: the memory ``S: (B, heads, head_dim, head_dim)`` (value
    index first, key index second) and the previous step's projections ``prev: (B, 3 H)``
    (``q, k, v`` before the short convolution; zero at the start of an episode)."""

    S: Tensor
    prev: Tensor


class DeltaNet(MatrixStateCell[DeltaNetState]):
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
    state_type = DeltaNetState

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
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.rule = rule
        self.projected_size = 3 * hidden_size + heads
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size, **kw))
        self.weight_beta = nn.Parameter(torch.empty(heads, input_size, **kw))
        self.bias_beta = nn.Parameter(torch.empty(heads, **kw))
        # taps of the width-2 causal convolution: conv[0] on p_t, conv[1] on p_{t-1}
        self.conv = nn.Parameter(torch.empty(2, 3 * hidden_size, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections ``U(-1/sqrt(I), 1/sqrt(I))``, ``b_beta = 0`` (``beta = 1/2`` on
        average), convolution taps ``U(-1/sqrt(2), 1/sqrt(2))`` (``nn.Conv1d``'s default)."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.weight_beta, -bound, bound)
        nn.init.zeros_(self.bias_beta)
        nn.init.uniform_(self.conv, -1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))

    def state_spec(self) -> tuple[StateField, ...]:
        d = self.head_dim
        return (
            StateField("S", (self.heads, d, d), doc="memory per head (value x key)"),
            StateField("prev", (3 * self.hidden_size,), doc="previous step's q, k, v inputs"),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., 3 H + heads)``: ``[W_q x, W_k x, W_v x, w_beta x + b_beta]``."""
        return torch.cat(
            (F.linear(x, self.weight), F.linear(x, self.weight_beta, self.bias_beta)), -1
        )

    def _heads(self, u: Tensor) -> Tensor:
        """``(B, H) -> (B, heads, head_dim)``."""
        return u.reshape(u.shape[0], self.heads, self.head_dim)

    def recur(self, px_t: Tensor, state: DeltaNetState) -> tuple[Tensor, DeltaNetState]:
        H = self.hidden_size
        p = px_t[:, : 3 * H]
        beta = torch.sigmoid(px_t[:, 3 * H :])[:, :, None, None]  # (B, heads, 1, 1)
        u = self.conv[0] * p + self.conv[1] * state.prev
        uq, uk, uv = u[:, :H], u[:, H : 2 * H], u[:, 2 * H :]
        q = F.normalize(F.silu(self._heads(uq)), dim=-1, eps=1e-6)
        k = F.normalize(F.silu(self._heads(uk)), dim=-1, eps=1e-6)
        v = self._heads(uv)
        S = state.S
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
        beta = torch.sigmoid(px[..., 3 * H :])  # (B, T, heads)
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
        return MemoryInputs(q, k, v, beta.transpose(1, 2), S0, (last,))

    def memory_outputs(
        self, o: Tensor, S: Tensor, inputs: MemoryInputs
    ) -> tuple[Tensor, DeltaNetState]:
        """``y = o`` with the heads concatenated, ``(B, T, H)``; the state ``(S, prev)``."""
        B, _, T, _ = o.shape
        y = o.transpose(1, 2).reshape(B, T, self.hidden_size)
        return y, DeltaNetState(S, inputs.carry[0])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, rule={self.rule!r}"
