"""JRT-RNN and Based-style networks: residual blocks of Taylor linear attention
(:class:`~rnnkit.models.cells.jrt.BasedAttention`) and MLPs, with the attention's
state started from a non-causal encoding of a prefix (JRT-RNN) or from zero (causal Based)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnkit.models.cells.jrt import BasedAttention, PrefixEncoder, prefix_mask
from rnnkit.models.networks import _check_pooling, _pool


class JRTBlock(nn.Module):
    """``x + W_o attn(LayerNorm(x))`` then ``x + MLP(LayerNorm(x))`` on ``(B, T, width)``,
    with ``attn`` a :class:`BasedAttention` of ``width`` values started from its
    :class:`PrefixEncoder`'s state (the MLP: ``width -> 2 width -> width``, GELU); without
    ``encoder`` the block has no prefix encoder and is causal."""

    prefix: PrefixEncoder | None

    def __init__(self, width: int, *, heads: int, feature_dim: int, encoder: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = BasedAttention(width, width, heads=heads, feature_dim=feature_dim)
        self.prefix = PrefixEncoder(self.attn) if encoder else None
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(
        self, x: Tensor, keep: Tensor | None, *, backend: str = "auto", resets: Tensor | None = None
    ) -> Tensor:
        """``x: (B, T, width)``; ``keep: (B, T)`` bool, the prefix the encoder reads (``None``:
        none, causal attention) -> ``(B, T, width)``."""
        h = self.norm1(x)
        state = None
        if keep is not None:
            if self.prefix is None:
                raise ValueError("prefix_len: this network has no prefix encoder (prefix_len=0)")
            state = self.prefix(h, h.shape[1], mask=keep)
        y, _ = self.attn(h, state, backend=backend, resets=resets)
        x = x + self.out(y)
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class JRTNetwork(nn.Module):
    """Encoder -> ``num_layers`` :class:`JRTBlock` -> LayerNorm -> pooling -> linear head.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output.
        hidden_size: the model width (values of every attention layer).
        num_layers: number of blocks.
        heads, feature_dim: of every attention layer (see :class:`BasedAttention`).
        prefix_len: the prefix the encoder reads when ``forward`` is given none: an ``int``,
            negative counting from the end (``-1``: all but the last position); ``0``: no
            prefix encoder at all, a causal Based-style network (``forward`` then refuses a
            prefix).
        pad_id: with token inputs, positions holding this id are left out of the prefix (the
            paper masks left padding out of the encoder); ``None``: keep every position.
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"``, ``"last"`` or ``"mean"`` (as :class:`SequenceModel`).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        hidden_size: int = 64,
        num_layers: int = 2,
        heads: int = 1,
        feature_dim: int = 16,
        prefix_len: int = -1,
        pad_id: int | None = None,
        vocab_size: int | None = None,
        pooling: str = "last",
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        if isinstance(prefix_len, bool) or not isinstance(prefix_len, int):
            raise ValueError(f"prefix_len must be an int, got {prefix_len!r}")
        self.prefix_len = prefix_len
        self.pad_id = pad_id
        self.encoder: nn.Module = (
            nn.Embedding(vocab_size, hidden_size)
            if vocab_size
            else nn.Linear(input_size, hidden_size)
        )
        self.blocks = nn.ModuleList(
            JRTBlock(hidden_size, heads=heads, feature_dim=feature_dim, encoder=prefix_len != 0)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(
        self,
        x: Tensor,
        *,
        backend: str = "auto",
        resets: Tensor | None = None,
        prefix_len: int | Tensor | None = None,
    ) -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``).

        ``prefix_len``: ``int`` or ``(B,)`` integers, the prefix of each row the encoders
        read (default: the network's ``prefix_len``); a ``resets`` restart clears it.
        """
        B, T = x.shape[0], x.shape[1]
        m = self.prefix_len if prefix_len is None else prefix_len
        keep: Tensor | None = None
        if not (isinstance(m, int) and m == 0):
            keep = prefix_mask(m, B, T, x.device)
            if self.pad_id is not None and not x.is_floating_point():
                keep = keep & (x != self.pad_id)
        y = self.encoder(x)
        for block in self.blocks:
            y = block(y, keep, backend=backend, resets=resets)
        out: Tensor = self.head(_pool(self.norm(y), self.pooling))
        return out


def jrt_classifier(**cfg: Any) -> JRTNetwork:
    """JRT-RNN: prefix (non-causal) + causal Taylor linear attention; one output per sequence
    from the last step, which by default is the only position outside the prefix"""
    cfg.setdefault("pooling", "last")
    cfg.setdefault("prefix_len", -1)
    cfg.setdefault("pad_id", 0)
    cfg.pop("cell", None)
    return JRTNetwork(**cfg)


def based_classifier(**cfg: Any) -> JRTNetwork:
    """causal Based-style Taylor linear attention (JRT-RNN without the prefix encoder); one
    output per sequence from the last step"""
    cfg.setdefault("pooling", "last")
    if cfg.setdefault("prefix_len", 0) != 0:
        raise ValueError(
            f"based_classifier has no prefix: prefix_len must be 0, got {cfg['prefix_len']!r}"
        )
    cfg.pop("cell", None)
    return JRTNetwork(**cfg)
