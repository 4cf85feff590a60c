"""An attention-only causal language model with a key/value cache: the baseline that hybrid and
recurrent LMs are compared with at generation time.

``token ids (B, T) -> logits (B, T, vocab)``, a decoder-only pre-norm transformer::

    h_0 = Embed(x_t) + Pos(t)                       learned absolute positions, t < max_len
    h   = h + Attention(RMSNorm(h))                 causal multi-head softmax attention
    h   = h + SwiGLU(RMSNorm(h))                    (each layer: a hybrid stack's attention block)
    logits = Linear(RMSNorm(h_L))

It generates through the state cache of :mod:`rnnkit.models.cache` like the recurrent
networks: each layer's cache entry is a :class:`~rnnkit.models.cache.KVCache` of every position
read, so a step costs attention over all of them (time and memory growing with the length,
where a recurrent layer's step is constant). The learned positions bound the context:
reading past ``max_len`` positions raises :class:`ContextTooLongError`.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cache import BlockCache, ModelCache
from rnnkit.models.hybrid import ATTENTION, HybridBlock

__all__ = ["ContextTooLongError", "TransformerLM", "transformer_lm"]


class ContextTooLongError(RnnkitError, ValueError):
    """More positions than a model with learned absolute positions has embeddings for."""


class TransformerLM(BlockCache, nn.Module):
    """Decoder-only causal transformer LM (see the module docstring).

    Args:
        vocab_size: token ids ``0 .. vocab_size - 1``.
        output_size: the head's width (default ``vocab_size``).
        hidden_size: the model width.
        num_layers: attention blocks.
        heads, kv_heads: query and key/value heads (``kv_heads=None``: as many as ``heads``).
        mlp_ratio: SwiGLU hidden channels per model channel (0: no MLPs).
        max_len: the longest context (positions with an embedding).
        dropout: on every attention and MLP output.
    """

    def __init__(
        self,
        vocab_size: int,
        output_size: int | None = None,
        *,
        hidden_size: int = 64,
        num_layers: int = 4,
        heads: int = 4,
        kv_heads: int | None = None,
        mlp_ratio: float = 4.0,
        max_len: int = 2048,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("max_len", max_len)
        if mlp_ratio < 0:
            raise ValueError(f"need mlp_ratio >= 0, got {mlp_ratio}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.pooling = "none"
        self.max_len = max_len
        self.encoder: nn.Module = nn.Embedding(vocab_size, hidden_size)
        self.positions = nn.Embedding(max_len, hidden_size)
        self.blocks = nn.ModuleList(
            HybridBlock(
                ATTENTION,
                hidden_size,
                heads=heads,
                kv_heads=kv_heads,
                state_size=hidden_size,
                mlp_hidden=round(mlp_ratio * hidden_size),
                num_experts=0,
                top_k=1,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        self.norm = nn.RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size if output_size is None else output_size)

    def _check_length(self, start: int, steps: int) -> None:
        if start + steps > self.max_len:
            raise ContextTooLongError(
                f"reading {steps} position(s) after {start} needs {start + steps} positions; "
                f"this model has learned position embeddings for max_len={self.max_len} only "
                "(shorten the prompt and generation, or build the model with a larger max_len)"
            )

    def _blocks(self) -> list[HybridBlock]:
        return [cast(HybridBlock, b) for b in self.blocks]

    def _at_position(self, y: Tensor, position: int) -> Tensor:
        self._check_length(position, 1)
        out: Tensor = y + self.positions.weight[position]
        return out

    def _trunk(
        self, x: Tensor, cache: ModelCache | None, backend: str
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """The blocks over ids ``x: (B, T)`` after ``cache``'s positions: ``(features
        (B, T, width), each layer's KVCache)``; ``backend`` is unused (attention has one)."""
        del backend
        if x.dim() != 2:
            raise ValueError(f"expected token ids (B, T), got shape {tuple(x.shape)}")
        start = 0 if cache is None else cache.length
        self._check_length(start, x.shape[1])
        pos = torch.arange(start, start + x.shape[1], device=x.device)
        y = self.encoder(x) + self.positions(pos)
        finals = []
        for block, s in zip(self._blocks(), self._start_states(cache, y), strict=True):
            y, s, _ = block.run(y, s)
            finals.append(s)
        return y, tuple(finals)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """Token ids ``(B, T)`` -> logits ``(B, T, output_size)``; ``T <= max_len``."""
        y, _ = self._trunk(x, None, backend)
        out: Tensor = self.head(self.norm(y))
        return out

    def _cache_where(self, i: int) -> str:
        return f"attention layer {i}"


def transformer_lm(
    vocab_size: int = 128, *, input_size: int = 0, output_size: int | None = None, **cfg: Any
) -> TransformerLM:
    """causal transformer LM (KV cache, learned positions): token ids (B, T) -> logits"""
    # input_size: the task contract passes it (0 for token ids); the ids are embedded
    del input_size
    return TransformerLM(vocab_size, output_size, **cfg)
