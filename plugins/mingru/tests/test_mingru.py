"""The example plugin: found through its entry point and conformant to the cell ABI."""

from __future__ import annotations

import torch

from rnnkit.core import create_cell
from rnnkit.core.plugins import PluginHost
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit_mingru import MinGRU


class TestMinGRUConformance(CellConformance):
    """rnnkit's conformance kit, one test per check."""

    def make_cell(self) -> MinGRU:
        return MinGRU(input_size=5, hidden_size=6)


def test_registered_through_the_entry_point_of_the_installed_distribution() -> None:
    host = PluginHost()
    entry = host.cells.get("mingru")
    assert entry.obj.cls is MinGRU
    assert entry.origin.plugin == "mingru"
    assert entry.origin.distribution == "rnnkit-mingru"
    assert entry.origin.version == "0.1.0"


def test_matches_its_equations() -> None:
    torch.manual_seed(0)
    cell = create_cell("mingru", input_size=3, hidden_size=4).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    y, state = cell(x)
    h = torch.zeros(2, 4, dtype=torch.float64)
    W_z, W_h = cell.weight.chunk(2)
    b_z, b_h = cell.bias.chunk(2)
    for t in range(5):
        z = torch.sigmoid(x[:, t] @ W_z.T + b_z)
        h = (1 - z) * h + z * (x[:, t] @ W_h.T + b_h)
        assert_close(f"h_{t}", y[:, t], h, 1e-12)
    assert_close("final", state.h, h, 1e-12)
