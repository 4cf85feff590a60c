"""The example plugin: found through its entry point and conformant to the cell ABI."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rnnkit.core import create_cell
from rnnkit.core.forms import Form
from rnnkit.core.plugins import PluginHost
from rnnkit.core.testing import CellConformance, assert_close
from rnnkit_mingru import MinGRU, MinLSTM, g


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


class TestMinLSTMConformance(CellConformance):
    """The conformance kit on minLSTM (scan backends included)."""

    def make_cell(self) -> MinLSTM:
        return MinLSTM(input_size=5, hidden_size=6)


class TestMinLSTMLinearConformance(CellConformance):
    def make_cell(self) -> MinLSTM:
        return MinLSTM(input_size=5, hidden_size=6, candidate="linear")


def test_minlstm_registered_through_the_same_entry_point() -> None:
    host = PluginHost()
    entry = host.cells.get("minlstm")
    assert entry.obj.cls is MinLSTM
    assert entry.origin.plugin == "mingru"
    assert entry.origin.distribution == "rnnkit-mingru"
    assert Form.DIAGONAL_LINEAR in MinLSTM.forms


@pytest.mark.parametrize("candidate", ["g", "linear"])
def test_minlstm_matches_its_equations(candidate: str) -> None:
    torch.manual_seed(0)
    cell = create_cell("minlstm", input_size=3, hidden_size=4, candidate=candidate).double()
    with torch.no_grad():  # large logits: the normalisation must not lose f' or i'
        cell.weight.mul_(20)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    h0 = torch.rand(2, 4, dtype=torch.float64)
    W_f, W_i, W_h = cell.weight.detach().chunk(3)
    b_f, b_i, b_h = cell.bias.detach().chunk(3)
    # the plugin session installs rnnkit-core alone: the scan comes with rnnkit-kernels
    kernels = importlib.util.find_spec("rnnkit.kernels") is not None
    for backend in ("reference", "scan") if kernels else ("reference",):
        y, state = cell(x, (h0,), backend=backend)
        h = h0
        for t in range(7):
            f = torch.sigmoid(x[:, t] @ W_f.T + b_f)
            i = torch.sigmoid(x[:, t] @ W_i.T + b_i)
            k = x[:, t] @ W_h.T + b_h
            cand = torch.where(k >= 0, k + 0.5, torch.sigmoid(k)) if candidate == "g" else k
            h = f / (f + i) * h + i / (f + i) * cand
            assert_close(f"{backend} h_{t}", y[:, t], h, 1e-12)
        assert_close(f"{backend} final", state.h, h, 1e-12)


def test_g_is_continuous_and_positive() -> None:
    x = torch.tensor([-30.0, -1.0, -1e-7, 0.0, 1e-7, 2.0], dtype=torch.float64)
    want = torch.cat((torch.sigmoid(x[:3]), x[3:] + 0.5))
    assert_close("g", g(x), want, 1e-15)
    assert bool((g(x) > 0).all())
    assert abs(float(g(x)[2]) - 0.5) < 1e-7 and abs(float(g(x)[4]) - 0.5) < 2e-7  # continuous


def test_minlstm_state_stays_positive_with_g() -> None:
    torch.manual_seed(1)
    cell = MinLSTM(3, 8)
    y, _ = cell(torch.randn(4, 50, 3) * 5)
    assert bool((y > 0).all())


def test_minlstm_bad_hyperparameters_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^candidate must"):
        MinLSTM(3, 4, candidate="tanh")
    with pytest.raises(ValueError, match=r"^hidden_size must"):
        MinLSTM(3, 0)
