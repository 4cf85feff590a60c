"""Next-item recommenders over implicit-feedback sequences: SASRec and a recurrent baseline.

Both read a user's chronological item ids ``(B, n)`` (``0`` = padding, left-padded so that the
last column is the latest item) and score every item at every position,
``r[b, t, i] = F[b, t] . M_i``, against the same item embedding ``M`` that embeds the inputs
(shared input/output embedding): ``(B, n, num_items + 1)`` logits, column ``i`` = item ``i``
(column 0, the padding id, is never a target). A training loss samples items from these
columns (binary cross-entropy with one sampled negative per position, ``rnnkit.tasks.recsys``).

:class:`SASRec` (Kang & McAuley, ICDM 2018, arXiv 1808.09781): item plus learned position
embeddings, ``num_blocks`` blocks of causal self-attention and a point-wise feed-forward
network, each sub-layer ``h <- h + Dropout(g(LayerNorm(h)))``, a final LayerNorm:

    E_hat = M[s] sqrt(d) + P,   padding rows zeroed
    A = softmax(Q K^T / sqrt(d_head) + causal mask) V,  Q, K, V = LN(h) W_Q, W_K, W_V
    FFN(x) = ReLU(x W_1 + b_1) W_2 + b_2

:class:`RecurrentRecommender` (GRU4Rec-style, Hidasi et al. 2016): the same item embedding
through a ``Recurrent`` stack of any registered cell, then the same shared-embedding scores.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core import Recurrent
from rnnkit.core.validation import check_heads, check_positive_int

__all__ = ["RecurrentRecommender", "SASRec", "gru4rec", "sasrec"]


def _check_vocab(vocab_size: object, output_size: object) -> int:
    v = check_positive_int("vocab_size", vocab_size)
    if v < 2:
        raise ValueError(f"vocab_size must be >= 2 (padding id 0 and one item), got {v}")
    if output_size is not None and output_size != v:
        raise ValueError(
            f"output_size must equal vocab_size={v} (items are scored against the shared "
            f"item embedding), got {output_size!r}"
        )
    return v


def _check_dropout(dropout: object) -> float:
    if not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _check_items(x: object, vocab_size: int) -> Tensor:
    """``x`` as a ``(B, n)`` int64 tensor of ids in ``[0, vocab_size)``, else ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of item ids (B, n), got {type(x).__name__}")
    if x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(
            f"x must be (B, n) int64 item ids, got shape {tuple(x.shape)} dtype {x.dtype}"
        )
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(
            f"x must hold item ids in [0, {vocab_size}) (0 = padding), got "
            f"[{int(x.min())}, {int(x.max())}]"
        )
    return x


def _init_embedding(item: nn.Embedding) -> None:
    """Glorot-normal item embeddings (std ``sqrt(2 / (V + d))``), padding row zero: with
    PyTorch's ``N(0, 1)`` the initial scores ``F . M_i`` have a standard deviation near
    ``sqrt(d)`` and the sigmoid losses start saturated."""
    nn.init.xavier_normal_(item.weight)
    with torch.no_grad():
        item.weight[0].zero_()


class _Block(nn.Module):
    """One SASRec block: causal multi-head self-attention, then the point-wise FFN; each
    sub-layer ``h + Dropout(g(LayerNorm(h)))``."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        """``h (B, n, d)``, ``allowed (B, 1, n, n)`` bool (query row may see key column)."""
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln_attn(h)).chunk(3, -1)
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        p = self.drop.p if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        h = h + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
        out: Tensor = h + self.drop(self.ffn(self.ln_ffn(h)))
        return out


class SASRec(nn.Module):
    """Self-attentive sequential recommendation: item ids ``(B, n)`` -> scores
    ``(B, n, vocab_size)`` (see the module docstring).

    Args:
        vocab_size: number of items plus one (id 0 is padding).
        max_length: ``n`` of the paper: the learned positions; longer inputs keep their last
            ``max_length`` items (paper: 200 on MovieLens-1M, 50 on the sparse sets).
        hidden_size: ``d`` (paper: 50).
        num_blocks: ``b`` (paper: 2).
        heads: attention heads, dividing ``hidden_size`` (paper: 1).
        dropout: on the embeddings, the attention weights and each sub-layer's output
            (paper: 0.2 dense data, 0.5 sparse).
        output_size: accepted for the task contract; must equal ``vocab_size``.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        max_length: int = 50,
        hidden_size: int = 50,
        num_blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        output_size: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = _check_vocab(vocab_size, output_size)
        self.max_length = check_positive_int("max_length", max_length)
        d = check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_blocks", num_blocks)
        check_heads(d, heads)
        p = _check_dropout(dropout)
        self.hidden_size = d
        self.item = nn.Embedding(self.vocab_size, d, padding_idx=0)
        self.position = nn.Embedding(self.max_length, d)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(_Block(d, heads, p) for _ in range(num_blocks))
        self.ln = nn.LayerNorm(d)
        _init_embedding(self.item)
        nn.init.xavier_normal_(self.position.weight)

    def features(self, x: Tensor) -> Tensor:
        """The per-position user representations ``F``: ``(B, n) -> (B, n', d)`` with
        ``n' = min(n, max_length)``; padding positions are zero."""
        x = _check_items(x, self.vocab_size)[:, -self.max_length :]
        n = x.shape[1]
        real = (x != 0).unsqueeze(-1)
        pos = torch.arange(n, device=x.device)
        h = self.item(x) * math.sqrt(self.hidden_size) + self.position(pos)
        h = self.drop(h) * real
        # causal, and no padding keys; every query keeps its own key so that the rows of
        # padding positions (masked afterwards) never take a softmax over nothing
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        allowed = (causal & (x != 0)[:, None, :]) | torch.eye(n, dtype=torch.bool, device=x.device)
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            h = block(h, allowed) * real
        out: Tensor = self.ln(h) * real
        return out

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """Scores of every item after every position.

        Args:
            x: ``(B, n)`` int64 item ids, ``0`` = padding (left).
            backend: accepted for the trainer's contract (attention has no backends).

        Returns:
            ``(B, n', vocab_size)`` logits ``F . M_i``, ``n' = min(n, max_length)``.
        """
        return self.features(x) @ self.item.weight.T


class RecurrentRecommender(nn.Module):
    """GRU4Rec-style recommender: item embedding -> ``Recurrent(cell)`` -> shared-embedding
    scores; item ids ``(B, n)`` -> ``(B, n, vocab_size)``.

    Args:
        vocab_size: number of items plus one (id 0 is padding).
        hidden_size: embedding and recurrent width.
        num_layers: recurrent layers.
        cell: any registered cell (GRU4Rec: ``"gru"``).
        dropout: on the embeddings and between layers.
        output_size: accepted for the task contract; must equal ``vocab_size``.
        **cell_kwargs: passed to every cell.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        hidden_size: int = 50,
        num_layers: int = 1,
        cell: str = "gru",
        dropout: float = 0.2,
        output_size: int | None = None,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.vocab_size = _check_vocab(vocab_size, output_size)
        d = check_positive_int("hidden_size", hidden_size)
        p = _check_dropout(dropout)
        self.item = nn.Embedding(self.vocab_size, d, padding_idx=0)
        _init_embedding(self.item)
        self.drop = nn.Dropout(p)
        self.rnn = Recurrent(cell, d, d, num_layers, dropout=p, **cell_kwargs)
        # cells whose output is wider or narrower than d are mapped back to the embedding width
        width = self.rnn.output_size
        self.proj: nn.Module = nn.Identity() if width == d else nn.Linear(width, d)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x (B, n)`` int64 item ids (0 = padding, left) -> ``(B, n, vocab_size)`` logits."""
        x = _check_items(x, self.vocab_size)
        h, _ = self.rnn(self.drop(self.item(x)), backend=backend)
        out: Tensor = self.proj(self.drop(h)) @ self.item.weight.T
        return out


def sasrec(
    *,
    vocab_size: int,
    output_size: int | None = None,
    max_length: int = 50,
    hidden_size: int = 50,
    num_blocks: int = 2,
    heads: int = 1,
    dropout: float = 0.2,
) -> SASRec:
    """SASRec next-item recommender: item ids (B, n) -> item scores (B, n, vocab_size)."""
    return SASRec(
        vocab_size,
        max_length=max_length,
        hidden_size=hidden_size,
        num_blocks=num_blocks,
        heads=heads,
        dropout=dropout,
        output_size=output_size,
    )


def gru4rec(
    *,
    vocab_size: int,
    output_size: int | None = None,
    hidden_size: int = 50,
    num_layers: int = 1,
    cell: str = "gru",
    dropout: float = 0.2,
    **cell_kwargs: Any,
) -> RecurrentRecommender:
    """GRU4Rec-style recurrent recommender (any cell): item ids (B, n) -> (B, n, vocab_size)."""
    return RecurrentRecommender(
        vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        cell=cell,
        dropout=dropout,
        output_size=output_size,
        **cell_kwargs,
    )
