"""Cells of the recurrent-model literature implemented in rnnkit-models.

- :class:`ParaGRU`, :class:`ParaLSTM`: ParaRNN's diagonal-recurrence GRU and CIFG LSTM
  (diagonal-Jacobian form, run in parallel by the ``newton`` backend when installed);
- :class:`LRU`: the Linear Recurrent Unit (complex diagonal linear form, ``scan`` backends);
- :class:`S4D`: the diagonal S4 state space model (diagonal linear form; convolution mode);
- :class:`Aaren`: attention with a learned query as an RNN (parallel prefix scan forward);
- :class:`DeltaNet`: a matrix key-value memory written by the delta rule (or linear attention);
- :class:`GatedDeltaNet`: DeltaNet with a learned per-head decay (the gated delta rule);
- :class:`LinearAttention`: linear attention, optionally with a fixed or gated scalar decay.
"""

from rnnkit.models.cells.aaren import Aaren, AarenState, aaren_combine
from rnnkit.models.cells.deltanet import DeltaNet, DeltaNetState, GatedDeltaNet, LinearAttention
from rnnkit.models.cells.lru import LRU
from rnnkit.models.cells.para import ParaGRU, ParaGRUState, ParaLSTM, ParaLSTMState
from rnnkit.models.cells.s4d import S4D

__all__ = [
    "LRU",
    "S4D",
    "Aaren",
    "AarenState",
    "DeltaNet",
    "DeltaNetState",
    "GatedDeltaNet",
    "LinearAttention",
    "ParaGRU",
    "ParaGRUState",
    "ParaLSTM",
    "ParaLSTMState",
    "aaren_combine",
]
