"""JRT-RNN's prefix linear attention with Based's Taylor feature map.

Based (Arora et al. 2024) replaces softmax attention's ``exp(q . k / sqrt(d))`` by its
second-order Taylor expansion, which factors through a feature map ``phi`` of ``1 + d + d^2``
numbers, so causal attention becomes a recurrence over a matrix state ``sum_j [v_j; 1]
phi(k_j)^T`` (the extra row accumulates the normaliser). JRT-RNN (Arora et al. 2024, "Just
read twice") adds a non-causal encoder over a prefix of the sequence: the prefix's keys and
values (projected by their own weights) are summed into the state before the causal
recurrence starts, so every position, the prefix's own included, reads the whole prefix. A
causal model has to decide what to keep before it has seen what will be asked; the prefix
encoder sees both sets of a set-disjointness question at once.

Here the encoder is a state initialiser (:class:`PrefixEncoder`): the cell
(:class:`BasedAttention`) itself is causal Based linear attention of the matrix-state form,
so the ``chunked`` kernel of rnnkit-kernels runs it, and the conformance kit's chunking and
stepping checks hold.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.matrix_state import MatrixStateCell, MemoryInputs
from rnnkit.core.state import StateField
from rnnkit.core.validation import check_heads, check_positive_int

#: added to the normaliser before dividing; the normaliser is a sum of ``phi(q) . phi(k) >=
#: 1/2`` terms, so this only matters for a state that holds no key at all.
EPS = 1e-6


def taylor_feature_count(feature_dim: int) -> int:
    """Width ``1 + d + d^2`` of :func:`taylor_features` for ``feature_dim = d``."""
    return 1 + feature_dim + feature_dim * feature_dim


def taylor_features(x: Tensor) -> Tensor:
    """Based's feature map, ``(..., d) -> (..., 1 + d + d^2)``::

        phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]

    so that ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q . k / sqrt(d)``: the
    second-order Taylor expansion of ``exp(s)``, which is at least ``1/2`` for every ``s``.
    """
    d = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    one = torch.ones_like(x[..., :1])
    return torch.cat((one, x / d**0.25, outer / math.sqrt(2.0 * d)), -1)


def prefix_mask(prefix_len: int | Tensor, batch: int, time: int, device: torch.device) -> Tensor:
    """``(batch, time)`` bool, true on the first ``prefix_len`` positions of each row.

    ``prefix_len``: an ``int`` for every row, or ``(batch,)`` integers, one per row; each in
    ``[-time, time]``, a negative one counting from the end as a Python slice does (``-1``:
    all but the last position). Anything else raises ``ValueError`` naming ``prefix_len``.
    """
    if isinstance(prefix_len, Tensor):
        if prefix_len.shape != (batch,) or prefix_len.dtype.is_floating_point:
            raise ValueError(
                f"prefix_len must be an int or a ({batch},) integer tensor, got a "
                f"{prefix_len.dtype} tensor of shape {tuple(prefix_len.shape)}"
            )
        m = prefix_len.to(device=device, dtype=torch.long)
        if bool(((m < -time) | (m > time)).any()):
            raise ValueError(f"prefix_len must lie in [-{time}, {time}], got {m.tolist()}")
    elif isinstance(prefix_len, bool) or not isinstance(prefix_len, int):
        raise ValueError(f"prefix_len must be an int or a tensor, got {prefix_len!r}")
    elif not -time <= prefix_len <= time:
        raise ValueError(f"prefix_len must lie in [-{time}, {time}], got {prefix_len}")
    else:
        m = torch.full((batch,), prefix_len, device=device, dtype=torch.long)
    m = torch.where(m < 0, m + time, m)
    return torch.arange(time, device=device) < m[:, None]


class JRTState(NamedTuple):
    """State of :class:`BasedAttention`: ``S: (B, heads, value_dim + 1, features)``,
    per head ``sum_j [v_j; 1] phi(k_j)^T`` (value index first; the last row is the
    normaliser's ``sum_j phi(k_j)``), ``features = 1 + feature_dim + feature_dim^2``."""

    S: Tensor


class BasedAttention(MatrixStateCell[JRTState]):
    """Based's Taylor linear attention as a recurrent cell; JRT-RNN's causal part.

    Per head (``heads`` heads; ``d = feature_dim``, ``V = hidden_size / heads``):

    - ``q_t = W_q x_t``, ``k_t = W_k x_t`` (``(d,)``), ``v_t = W_v x_t`` (``(V,)``);
    - ``S_t = S_{t-1} + [v_t; 1] phi(k_t)^T`` with :func:`taylor_features` ``phi``;
    - ``o_t = S_t phi(q_t)`` and ``y_t = o_t[:V] / (o_t[V] + eps)``: causal attention
      with the weights ``phi(q_t) . phi(k_j)`` (the Taylor expansion of ``exp(q . k /
      sqrt(d))``) over every key in the state.

    From ``S = 0`` this is Based's causal linear attention. A :class:`PrefixEncoder` gives
    JRT-RNN's starting state instead, ``S_0 = sum_{j in prefix} [v^e_j; 1] phi(k^e_j)^T``
    with the encoder's own ``k^e = W_ke x``, ``v^e = W_ve x``; ``cell(x, encoder(x, M))`` is
    JRT-RNN's prefix linear attention. The published layer's output projection is left to the
    network (:mod:`rnnkit.models.jrt`).

    The cell has the matrix-state form (``rule="linear"``, ``beta = 1``, no decay, values
    ``[v; 1]``), so with rnnkit-kernels installed ``backend="auto"`` runs the ``chunked``
    kernel; ``backend="reference"`` is the loop over :meth:`recur`.

    Args:
        input_size: width of ``x``.
        hidden_size: the value width over all heads, and the output width.
        heads: number of heads; must divide ``hidden_size``.
        feature_dim: ``d``, the query/key width per head before the feature map (Based and
            JRT-RNN: 16, i.e. 273 features per head). A positive int of at most
            :data:`MAX_FEATURE_DIM`.
        device, dtype: for the parameters.

    Parameters: ``weight: (heads * (2 d) + hidden_size, I)`` (``W_q, W_k, W_v``) from
    ``U(-1/sqrt(I), 1/sqrt(I))``. State ``S: (B, heads, V + 1, 1 + d + d^2)``, zero at the start.
    """

    kind = "based"
    state_type = JRTState
    rule = "linear"

    #: the largest ``feature_dim``: its ``1 + d + d^2`` features per head times the value
    #: width is the state, which grows with ``d^2`` (64 already gives 4,161 features per head).
    MAX_FEATURE_DIM = 64

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        feature_dim: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        check_positive_int("feature_dim", feature_dim)
        if feature_dim > self.MAX_FEATURE_DIM:
            raise ValueError(
                f"feature_dim must be at most {self.MAX_FEATURE_DIM} (the Taylor map has "
                f"1 + d + d^2 features per head), got {feature_dim}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.heads = heads
        self.value_dim = hidden_size // heads
        self.feature_dim = feature_dim
        self.features = taylor_feature_count(feature_dim)
        self.projected_size = 2 * heads * feature_dim + hidden_size
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.projected_size, input_size, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The projections ``U(-1/sqrt(I), 1/sqrt(I))``."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def state_spec(self) -> tuple[StateField, ...]:
        return (
            StateField(
                "S",
                (self.heads, self.value_dim + 1, self.features),
                doc="per head sum of [v; 1] phi(k)^T (value index first)",
            ),
        )

    def project(self, x: Tensor) -> Tensor:
        """``(..., I) -> (..., 2 heads d + hidden_size)``: ``[W_q x, W_k x, W_v x]``."""
        return F.linear(x, self.weight)

    def _split(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``phi(q), phi(k): (..., heads, F)`` and ``[v; 1]: (..., heads, V + 1)`` from
        ``px: (..., projected_size)``."""
        nh, d, V = self.heads, self.feature_dim, self.value_dim
        lead = px.shape[:-1]
        q = taylor_features(px[..., : nh * d].reshape(*lead, nh, d))
        k = taylor_features(px[..., nh * d : 2 * nh * d].reshape(*lead, nh, d))
        v = px[..., 2 * nh * d :].reshape(*lead, nh, V)
        return q, k, torch.cat((v, torch.ones_like(v[..., :1])), -1)

    def _read(self, o: Tensor) -> Tensor:
        """``(..., V + 1) -> (..., V)``: the numerator over the normaliser."""
        return o[..., :-1] / (o[..., -1:] + EPS)

    def recur(self, px_t: Tensor, state: JRTState) -> tuple[Tensor, JRTState]:
        q, k, v = self._split(px_t)  # (B, heads, F), (B, heads, F), (B, heads, V + 1)
        S = state.S + v.unsqueeze(-1) * k.unsqueeze(-2)
        o = (S @ q.unsqueeze(-1)).squeeze(-1)
        return self._read(o).reshape(-1, self.hidden_size), JRTState(S)

    def memory_inputs(
        self, x: Tensor, state: JRTState | None, resets: Tensor | None
    ) -> MemoryInputs:
        """``phi(q), phi(k): (B, heads, T, F)``, ``[v; 1]: (B, heads, T, V + 1)``, ``beta =
        1``, no decay; nothing is carried besides ``S``."""
        B, T = x.shape[0], x.shape[1]
        S0 = state.S if state is not None else self.init_state(B, device=x.device, dtype=x.dtype).S
        q, k, v = (t.transpose(1, 2) for t in self._split(self.project(x)))
        beta = torch.ones(B, self.heads, T, device=x.device, dtype=x.dtype)
        return MemoryInputs(q, k, v, beta, S0, ())

    def memory_outputs(self, o: Tensor, S: Tensor, inputs: MemoryInputs) -> tuple[Tensor, JRTState]:
        """``y: (B, T, hidden_size)`` from the read-outs ``o: (B, heads, T, V + 1)``."""
        B, _, T, _ = o.shape
        y = self._read(o).transpose(1, 2).reshape(B, T, self.hidden_size)
        return y, JRTState(S)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, feature_dim={self.feature_dim}"


class PrefixEncoder(nn.Module):
    """JRT-RNN's non-causal encoder for a :class:`BasedAttention` cell: the state

        S_0 = sum_{j in prefix} [W_ve x_j; 1] phi(W_ke x_j)^T        per head

    with its own projections ``W_ke: (heads * d, I)``, ``W_ve: (hidden_size, I)`` (``weight``
    stacks them, ``U(-1/sqrt(I), 1/sqrt(I))``) and the cell's feature map. The cell run from
    it, ``cell(x, encoder(x, keep))``, is JRT-RNN's prefix linear attention: position ``i``
    reads the decoder's keys ``j <= i`` and the encoder's keys over the whole prefix, past and
    future.

    Args:
        cell: the cell whose state this encoder starts (its sizes, heads and ``feature_dim``).
    """

    def __init__(self, cell: BasedAttention) -> None:
        super().__init__()
        self.heads, self.feature_dim, self.value_dim = cell.heads, cell.feature_dim, cell.value_dim
        self.input_size = cell.input_size
        p = next(iter(cell.parameters()))
        rows = cell.heads * cell.feature_dim + cell.hidden_size
        self.weight = nn.Parameter(
            torch.empty(rows, cell.input_size, device=p.device, dtype=p.dtype)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``U(-1/sqrt(I), 1/sqrt(I))``, as the cell's projections."""
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, prefix: int | Tensor, *, mask: Tensor | None = None) -> JRTState:
        """The state ``S_0: (B, heads, V + 1, F)`` over the prefix of ``x: (B, T, I)``.

        ``prefix``: ``M``, an ``int`` or ``(B,)`` integers (see :func:`prefix_mask`; ``0``
        gives the zero state, i.e. plain causal attention). ``mask``: optional ``(B, T)`` bool,
        false on positions to leave out of the prefix (left padding).
        """
        B, T = x.shape[0], x.shape[1]
        keep = prefix_mask(prefix, B, T, x.device)
        if mask is not None:
            keep = keep & mask
        nh, d, V = self.heads, self.feature_dim, self.value_dim
        p = F.linear(x, self.weight)
        k = taylor_features(p[..., : nh * d].reshape(B, T, nh, d))
        v = p[..., nh * d :].reshape(B, T, nh, V)
        v = torch.cat((v, torch.ones_like(v[..., :1])), -1)
        # where(), not a product with the mask: a NaN outside the prefix must not leak in
        v = torch.where(keep[:, :, None, None], v, torch.zeros_like(v))
        k = torch.where(keep[:, :, None, None], k, torch.zeros_like(k))
        return JRTState(torch.einsum("bthv,bthf->bhvf", v, k))
