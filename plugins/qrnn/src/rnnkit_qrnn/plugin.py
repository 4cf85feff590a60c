"""The plugin module named by the ``rnnkit`` entry point: registers the ``qrnn`` cell and the
``qrnn_classifier`` network."""

from __future__ import annotations

from rnnkit.core import hookimpl
from rnnkit.core.hookspecs import RegisterCell, RegisterModel
from rnnkit_qrnn.cell import QRNNCell
from rnnkit_qrnn.model import qrnn_classifier


@hookimpl
def rnnkit_register_cells(register: RegisterCell) -> None:
    register(
        "qrnn",
        QRNNCell,
        description="recurrent quantum neural network: quantum neurons on a simulated register",
        # One configuration, every option away from its default, at 2 qubits (4 amplitudes):
        # the kit and the ONNX export run it in seconds. The plugin's own tests run the kit
        # on the default configuration too.
        test_configs=[
            {
                "hidden_size": 2,
                "order": 2,
                "amplification": "none",
                "amplitudes": "complex",
                "initial": "uniform",
            },
        ],
    )


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    register(
        "qrnn_classifier",
        qrnn_classifier,
        description="QRNN cell stack + linear head on the last step's qubit probabilities",
    )
