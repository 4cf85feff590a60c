"""The plugin module named by the ``rnnkit`` entry point: registers the ``mingru`` and
``minlstm`` cells."""

from __future__ import annotations

from rnnkit.core import hookimpl
from rnnkit.core.hookspecs import RegisterCell
from rnnkit_mingru.cell import MinGRU, MinLSTM


@hookimpl
def rnnkit_register_cells(register: RegisterCell) -> None:
    register("mingru", MinGRU, description="minimal GRU: gate and candidate from x_t alone")
    register(
        "minlstm",
        MinLSTM,
        description="minimal LSTM: normalised forget/input gates from x_t alone (scan backends)",
        test_configs=[{}, {"candidate": "linear"}],
    )
