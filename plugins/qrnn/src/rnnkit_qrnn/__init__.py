"""rnnkit-qrnn: the recurrent quantum neural network (Bausch 2020) as an rnnkit plugin, on a
statevector simulated in torch."""

from rnnkit_qrnn.cell import MAX_QUBITS, QRNNCell, QRNNState
from rnnkit_qrnn.model import QRNNClassifier, qrnn_classifier
from rnnkit_qrnn.statevector import rus_activation

__all__ = [
    "MAX_QUBITS",
    "QRNNCell",
    "QRNNClassifier",
    "QRNNState",
    "qrnn_classifier",
    "rus_activation",
]
