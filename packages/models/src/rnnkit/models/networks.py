"""Generic networks built from a :class:`~rnnkit.core.recurrent.Recurrent` stack."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rnnkit.core.recurrent import Recurrent


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
        if pooling not in ("none", "last", "mean"):
            raise ValueError(f"pooling must be 'none', 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
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
        if self.pooling == "last":
            y = y[:, -1]
        elif self.pooling == "mean":
            y = y.mean(1)
        out: Tensor = self.head(y)
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
