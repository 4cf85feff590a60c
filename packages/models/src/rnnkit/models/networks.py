"""Generic networks: a :class:`~rnnkit.core.recurrent.Recurrent` stack with an encoder and a
head (:class:`SequenceModel`), and residual blocks of channel-wise state space cells
(:class:`SSMNetwork`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.api import get_cell_class
from rnnkit.core.recurrent import Recurrent

#: How a network turns per-step features into its outputs.
POOLINGS: tuple[str, ...] = ("none", "last", "mean")


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'none', 'last' or 'mean', got {pooling!r}")
    return pooling


def _pool(y: Tensor, pooling: str) -> Tensor:
    """``(B, T, F)`` -> ``(B, T, F)`` for ``"none"``, ``(B, F)`` for ``"last"`` / ``"mean"``."""
    if pooling == "last":
        return y[:, -1]
    if pooling == "mean":
        return y.mean(1)
    return y


class SequenceModel(nn.Module):
    """Encoder -> recurrent stack -> linear head, for per-step or per-sequence outputs.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output (classes, targets or vocabulary).
        cell: a registered cell name.
        hidden_size, num_layers, bidirectional, dropout: of the recurrent stack.
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"`` (per-step outputs ``(B, T, output_size)``) or ``"last"``
            (the output at the last step, ``(B, output_size)``) or ``"mean"``.
        **cell_kwargs: passed to every cell (``heads=4``, ...).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        pooling: str = "none",
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        self.embed = nn.Embedding(vocab_size, hidden_size) if vocab_size else None
        rnn_in = hidden_size if vocab_size else input_size
        self.rnn = Recurrent(
            cell,
            rnn_in,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            **cell_kwargs,
        )
        self.head = nn.Linear(self.rnn.output_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``)."""
        if self.embed is not None:
            x = self.embed(x)
        y, _ = self.rnn(x, backend=backend, resets=resets)
        out: Tensor = self.head(_pool(y, self.pooling))
        return out


def _builder(pooling: str, doc: str) -> Any:
    def build(**cfg: Any) -> SequenceModel:
        cfg.setdefault("pooling", pooling)
        return SequenceModel(**cfg)

    build.__doc__ = doc
    return build


sequence_tagger = _builder("none", "per-step outputs: (B, T, input) -> (B, T, output)")
sequence_classifier = _builder("last", "one output per sequence from the last step")


def char_lm(vocab_size: int = 128, **cfg: Any) -> SequenceModel:
    """character-level language model: token ids (B, T) -> logits (B, T, vocab)"""
    return SequenceModel(0, vocab_size, vocab_size=vocab_size, pooling="none", **cfg)


class SSMBlock(nn.Module):
    """One residual block of a deep state space model, on ``(B, T, width)``: with ``mix`` (the
    S4/S4D layout) ``x + Linear(GELU(cell(LayerNorm(x))))``, without (the Mamba layout, for
    cells that mix channels themselves) ``x + cell(LayerNorm(x))``.

    The cell must keep the width (``output_size == input_size == width``: S4D, S5, LSSL, LRU,
    Mamba).
    """

    def __init__(
        self, cell: str, width: int, state_size: int, dropout: float, *, mix: bool = True, **kw: Any
    ):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cell = get_cell_class(cell)(width, state_size, **kw)
        if self.cell.output_size != width:
            raise ValueError(
                f"cell {cell!r} maps {width} channels to {self.cell.output_size}: an SSM block "
                "needs a channel-wise cell (output width = input width, e.g. s4d, lru, mamba)"
            )
        self.mix: nn.Module = nn.Linear(width, width) if mix else nn.Identity()
        self.act: Callable[[Tensor], Tensor] = F.gelu if mix else _identity
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``(B, T, width) -> (B, T, width)``."""
        y, _ = self.cell(self.norm(x), backend=backend, resets=resets)
        out: Tensor = x + self.drop(self.mix(self.act(y)))
        return out


def _identity(x: Tensor) -> Tensor:
    return x


class SSMNetwork(nn.Module):
    """Encoder -> ``num_layers`` :class:`SSMBlock` -> final norm -> pooling -> linear head.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output.
        cell: a registered channel-wise cell (default ``"s4d"``).
        hidden_size: the model width (channels of every block).
        num_layers: number of blocks.
        state_size: the cell's ``hidden_size``: the state size per channel (S4D, LRU) or the
            inner channels (Mamba).
        dropout: after each block's mixing layer.
        mix: each block's GELU and linear mixing layer after the cell (``False``: the Mamba
            layout, see :class:`SSMBlock`).
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"``, ``"last"`` or ``"mean"`` (as :class:`SequenceModel`).
        **cell_kwargs: passed to every cell (``init="inv"``, ...).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "s4d",
        hidden_size: int = 64,
        num_layers: int = 2,
        state_size: int = 64,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        pooling: str = "mean",
        mix: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        self.encoder: nn.Module = (
            nn.Embedding(vocab_size, hidden_size)
            if vocab_size
            else nn.Linear(input_size, hidden_size)
        )
        self.blocks = nn.ModuleList(
            SSMBlock(cell, hidden_size, state_size, dropout, mix=mix, **cell_kwargs)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``)."""
        y = self.encoder(x)
        for block in self.blocks:
            y = block(y, backend=backend, resets=resets)
        out: Tensor = self.head(_pool(self.norm(y), self.pooling))
        return out


def ssm_classifier(**cfg: Any) -> SSMNetwork:
    """deep SSM (S4D blocks by default), one output per sequence (mean over time)"""
    cfg.setdefault("pooling", "mean")
    return SSMNetwork(**cfg)


def ssm_tagger(**cfg: Any) -> SSMNetwork:
    """deep SSM (S4D blocks by default), per-step outputs: (B, T, input) -> (B, T, output)"""
    cfg.setdefault("pooling", "none")
    return SSMNetwork(**cfg)


def _mamba_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg.setdefault("cell", "mamba")
    cfg.setdefault("mix", False)
    cfg.setdefault("hidden_size", 64)
    cfg.setdefault("state_size", 2 * int(cfg["hidden_size"]))  # inner channels: expand 2
    return cfg


def mamba_classifier(**cfg: Any) -> SSMNetwork:
    """Mamba-1 blocks (x + Mamba(LayerNorm(x))), one output per sequence (mean over time)"""
    cfg.setdefault("pooling", "mean")
    return SSMNetwork(**_mamba_defaults(cfg))


def mamba_lm(vocab_size: int = 128, **cfg: Any) -> SSMNetwork:
    """Mamba-1 language model: token ids (B, T) -> logits (B, T, vocab)"""
    cfg = _mamba_defaults(cfg)
    return SSMNetwork(0, vocab_size, vocab_size=vocab_size, pooling="none", **cfg)
