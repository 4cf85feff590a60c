"""rnnkit-core: the recurrent cell ABI, kernel dispatch, plugin system, CLI and conformance kit.

Quick start::

    import torch
    from rnnkit.core import create_cell

    cell = create_cell("lstm", input_size=8, hidden_size=32)
    y, state = cell(torch.randn(4, 100, 8))     # y: (4, 100, 32); state: LSTMState(h, c)
"""

from importlib.metadata import PackageNotFoundError, version

from rnnkit.core.api import create_cell, get_cell_class, list_cells
from rnnkit.core.cell import Cell, fill_restart_refusal, overrides_init_state
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman, GatedCell
from rnnkit.core.errors import BackendUnavailableError, PluginConflictError, UnknownNameError
from rnnkit.core.forms import Form
from rnnkit.core.hookspecs import hookimpl
from rnnkit.core.kernel import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.recurrent import Recurrent
from rnnkit.core.state import StateField

try:
    __version__ = version("rnnkit-core")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "GRU",
    "LSTM",
    "SLSTM",
    "BackendUnavailableError",
    "Cell",
    "Elman",
    "Form",
    "GatedCell",
    "Kernel",
    "KernelCall",
    "PluginConflictError",
    "Priority",
    "ProtocolGap",
    "Recurrent",
    "StateField",
    "UnknownNameError",
    "__version__",
    "create_cell",
    "fill_restart_refusal",
    "get_cell_class",
    "hookimpl",
    "list_cells",
    "overrides_init_state",
]
