"""A sequence classifier on the QRNN cell, for ``rnnkit train``."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from rnnkit.core import Recurrent
from rnnkit.core.validation import check_positive_int
from rnnkit_qrnn.cell import QRNNCell


class QRNNClassifier(nn.Module):
    """QRNN layers, then a linear map from the last step's qubit probabilities to class
    logits: ``(B, T, input_size)`` floats, or ``(B, T)`` token ids when ``vocab_size`` is
    given, -> ``(B, output_size)`` logits.

    The paper reads classes from measured output qubits; here the measured probabilities
    ``(B, hidden_size)`` feed a classical linear head, which is how a small register serves
    tasks with any number of classes. Tokens enter one-hot (``vocab_size`` classical controls,
    what writing a token into an input register as one-hot bits gives the neurons).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 6,
        num_layers: int = 1,
        *,
        degree: int | None = None,
        order: int = 1,
        amplification: str = "ideal",
        amplitudes: str = "real",
        initial: str = "zero",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if vocab_size is not None:
            # checked here: 0 would fall back to input_size and be reported under that name
            check_positive_int("vocab_size", vocab_size)
        self.vocab_size = vocab_size
        self.rnn = Recurrent(
            QRNNCell,
            vocab_size if vocab_size else input_size,
            hidden_size,
            num_layers=num_layers,
            degree=degree,
            order=order,
            amplification=amplification,
            amplitudes=amplitudes,
            initial=initial,
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        if self.vocab_size:
            x = F.one_hot(x, self.vocab_size).to(self.head.weight.dtype)
        y, _ = self.rnn(x, backend=backend)
        out: Tensor = self.head(y[:, -1])
        return out


def qrnn_classifier(
    input_size: int,
    output_size: int,
    hidden_size: int = 6,
    num_layers: int = 1,
    degree: int | None = None,
    order: int = 1,
    amplification: str = "ideal",
    amplitudes: str = "real",
    initial: str = "zero",
    vocab_size: int | None = None,
) -> QRNNClassifier:
    """Build a :class:`QRNNClassifier` (``hidden_size`` qubits per layer; ``vocab_size``: token
    inputs, one-hot)."""
    return QRNNClassifier(
        input_size,
        output_size,
        hidden_size,
        num_layers,
        degree=degree,
        order=order,
        amplification=amplification,
        amplitudes=amplitudes,
        initial=initial,
        vocab_size=vocab_size,
    )
