"""The canonical cells of rnnkit-core: Elman, LSTM, GRU and sLSTM."""

from rnnkit.core.cells._gated import GatedCell
from rnnkit.core.cells.elman import Elman, ElmanState
from rnnkit.core.cells.gru import GRU, GRUState
from rnnkit.core.cells.lstm import LSTM, LSTMState
from rnnkit.core.cells.slstm import SLSTM, SLSTMState

__all__ = [
    "GRU",
    "LSTM",
    "SLSTM",
    "Elman",
    "ElmanState",
    "GRUState",
    "GatedCell",
    "LSTMState",
    "SLSTMState",
]
