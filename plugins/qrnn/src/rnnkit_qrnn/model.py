"""A sequence classifier on the QRNN cell, for ``rnnkit train``."""

from __future__ import annotations

from torch import Tensor, nn

from rnnkit.core import Recurrent
from rnnkit_qrnn.cell import QRNNCell


class QRNNClassifier(nn.Module):
    """QRNN layers, then a linear map from the last step's qubit probabilities to class
    logits: ``(B, T, input_size)`` floats -> ``(B, output_size)`` logits.

    The paper reads classes from measured output qubits; here the measured probabilities
    ``(B, hidden_size)`` feed a classical linear head, which is how a small register serves
    tasks with any number of classes.
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
    ) -> None:
        super().__init__()
        self.rnn = Recurrent(
            QRNNCell,
            input_size,
            hidden_size,
            num_layers=num_layers,
            degree=degree,
            order=order,
            amplification=amplification,
            amplitudes=amplitudes,
        )
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
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
) -> QRNNClassifier:
    """Build a :class:`QRNNClassifier` (``hidden_size`` qubits per layer)."""
    return QRNNClassifier(
        input_size,
        output_size,
        hidden_size,
        num_layers,
        degree=degree,
        order=order,
        amplification=amplification,
        amplitudes=amplitudes,
    )
