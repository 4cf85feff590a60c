"""Bad input to the analog simulator that needs the model zoo: every registered cell either
maps to a crossbar or is refused with an error naming the layer and why."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from rnnkit.core.api import create_cell, list_cells
from rnnkit.core.plugins import get_host
from rnnkit.core.recurrent import Recurrent
from rnnkit.core.testing.suite import HIDDEN_SIZE, INPUT_SIZE
from rnnkit.kernels.analog import AnalogConfig, is_analog, to_analog
from rnnkit.kernels.analog.cells import SUPPORTED_KINDS


@pytest.mark.parametrize("name", list_cells())
def test_every_registered_cell_maps_or_is_named_with_the_reason(name: str) -> None:
    # the cell's first registered test configuration at the kit's sizes: some defaults need
    # wider layers (mamba2's heads of 64 channels)
    configs = get_host().cells.get(name).obj.test_configs
    # (a configuration may set its own sizes: qrnn's qubit count)
    kw = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, **(configs[0] if configs else {})}
    cell = create_cell(name, **kw)
    model = nn.ModuleDict({"encoder": nn.Linear(INPUT_SIZE, INPUT_SIZE), "rnn": cell})
    if cell.kind in SUPPORTED_KINDS:
        converted: Any = to_analog(model, AnalogConfig.ideal())
        assert is_analog(converted["rnn"])
        return
    why = rf"cell kind '{cell.kind}' has no crossbar mapping \(supported: elman, lstm"
    with pytest.raises(ValueError, match=rf"layer 'rnn' \({type(cell).__name__}\) .*{why}"):
        to_analog(model)


def test_unmappable_layer_deep_in_a_model_is_named_by_its_path() -> None:
    # a mappable stack first, then an LRU two modules down: the error gives the full path.
    lru = create_cell("lru", input_size=8, hidden_size=8)
    model = nn.Sequential(
        Recurrent("lstm", 4, 8, num_layers=2), nn.ModuleDict({"mix": nn.Sequential(lru)})
    )
    with pytest.raises(ValueError, match=r"layer '1\.mix\.0' \(LRU\) cannot be mapped: cell kind"):
        to_analog(model)
    with pytest.raises(ValueError, match=r"layer 'rnn' \(GRU\) cannot be mapped: torch\.nn"):
        to_analog(nn.ModuleDict({"rnn": nn.GRU(3, 4)}))
