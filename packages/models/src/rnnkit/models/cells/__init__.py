"""Cells of the recurrent-model literature implemented in rnnkit-models.

- :class:`ParaGRU`, :class:`ParaLSTM`: ParaRNN's diagonal-recurrence GRU and CIFG LSTM
  (diagonal-Jacobian form, run in parallel by the ``newton`` backend when installed);
- :class:`LRU`: the Linear Recurrent Unit (complex diagonal linear form, ``scan`` backends);
- :class:`S4D`: the diagonal S4 state space model (diagonal linear form; convolution mode);
- :class:`S5`: the MIMO complex diagonal state space model (diagonal linear form);
- :class:`LSSL`: the dense HiPPO-LegS state space model (no form; convolution mode);
- :class:`Aaren`: attention with a learned query as an RNN (parallel prefix scan forward);
- :class:`DeltaNet`: a matrix key-value memory written by the delta rule (or linear attention);
- :class:`Mamba`: the Mamba-1 selective state space block (selective diagonal form);
- :class:`Mamba2`: the Mamba-2 block, SSD with a scalar decay per head (matrix-state form);
- :class:`IndRNN`: independently recurrent units (diagonal-Jacobian form, ``newton`` backend);
- :class:`RHN`: the Recurrent Highway Network (``depth`` highway micro-steps, reference loop);
- :class:`HybridRNN`: a tanh RNN with additive / learned-rate / gated updates and attention
  over the last ``K`` states (the ablations of Heidenreich et al. 2024; reference loop);
- :class:`LeakyRNN`: a leaky RNN with trainable timescales ``tau >= 1`` (reference loop);
- :class:`StateRegularized`: the state-regularised GRU/LSTM (centroids; automaton extraction);
- :class:`GatedDeltaNet`: DeltaNet with a learned per-head decay (the gated delta rule);
- :class:`LinearAttention`: linear attention, optionally with a fixed or gated scalar decay;
- :class:`Moneta`, :class:`Yaad`, :class:`Memora`: Miras memories (l_p / Huber / KL-retention
  gradient-descent writes on a matrix memory), exact per token, chunked approximation by name;
- :class:`Titans`: Titans' momentum memory (surprise with momentum and weight decay).
- :class:`PLSTM`: pLSTM on a line graph (source, transition and mark gates; ``chunked``).
- :class:`ALRNN`: the almost-linear RNN (ReLU on the last ``P`` units; symbolic region codes).
- :class:`BasedAttention`: Based's Taylor linear attention (matrix-state form), started from a
  :class:`PrefixEncoder`'s non-causal prefix state in JRT-RNN;
- :class:`M2RNN`: a ``K x V`` matrix state per head updated through ``tanh`` (reference loop).
"""

from rnnkit.models.cells.aaren import Aaren, AarenState, aaren_combine
from rnnkit.models.cells.alrnn import ALRNN, ALRNNState, region_codes, symbolic_graph
from rnnkit.models.cells.deltanet import DeltaNet, DeltaNetState, GatedDeltaNet, LinearAttention
from rnnkit.models.cells.hybrid import HYBRID_CORES, HYBRID_UPDATES, HybridRNN, HybridRNNState
from rnnkit.models.cells.indrnn import IndRNN, IndRNNState, indrnn_u_max
from rnnkit.models.cells.jrt import BasedAttention, JRTState, PrefixEncoder
from rnnkit.models.cells.leaky import LeakyRNN, LeakyRNNState
from rnnkit.models.cells.lru import LRU
from rnnkit.models.cells.lssl import LSSL, LSSLState
from rnnkit.models.cells.m2rnn import M2RNN, M2RNNState
from rnnkit.models.cells.mamba import Mamba, MambaState
from rnnkit.models.cells.mamba2 import Mamba2, Mamba2State
from rnnkit.models.cells.miras import Memora, MirasState, Moneta, Titans, TitansState, Yaad
from rnnkit.models.cells.para import ParaGRU, ParaGRUState, ParaLSTM, ParaLSTMState
from rnnkit.models.cells.plstm import PLSTM, PLSTMState
from rnnkit.models.cells.rhn import RHN, RHNState
from rnnkit.models.cells.s4d import S4D
from rnnkit.models.cells.s5 import S5
from rnnkit.models.cells.srrnn import SRState, StateRegularized

__all__ = [
    "ALRNN",
    "HYBRID_CORES",
    "HYBRID_UPDATES",
    "LRU",
    "LSSL",
    "M2RNN",
    "PLSTM",
    "RHN",
    "S4D",
    "S5",
    "ALRNNState",
    "Aaren",
    "AarenState",
    "BasedAttention",
    "DeltaNet",
    "DeltaNetState",
    "GatedDeltaNet",
    "HybridRNN",
    "HybridRNNState",
    "IndRNN",
    "IndRNNState",
    "JRTState",
    "LSSLState",
    "LeakyRNN",
    "LeakyRNNState",
    "LinearAttention",
    "M2RNNState",
    "Mamba",
    "Mamba2",
    "Mamba2State",
    "MambaState",
    "Memora",
    "MirasState",
    "Moneta",
    "PLSTMState",
    "ParaGRU",
    "ParaGRUState",
    "ParaLSTM",
    "ParaLSTMState",
    "PrefixEncoder",
    "RHNState",
    "SRState",
    "StateRegularized",
    "Titans",
    "TitansState",
    "Yaad",
    "aaren_combine",
    "indrnn_u_max",
    "region_codes",
    "symbolic_graph",
]
