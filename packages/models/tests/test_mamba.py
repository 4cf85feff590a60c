"""The Mamba-1 cell: its initialisation, its state (scan and convolution window), its
construction checks and the networks built from it. The conformance kit runs it on every
backend (tests/test_conformance_registered.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import available_backends

from rnnkit.core.selective import SelectiveDiagonalCell
from rnnkit.models import create_model
from rnnkit.models.cells import Mamba, MambaState
from rnnkit.models.cells.mamba import inverse_softplus


def test_defaults_follow_the_paper() -> None:
    torch.manual_seed(0)
    cell = Mamba(32)
    assert isinstance(cell, SelectiveDiagonalCell)
    assert (cell.hidden_size, cell.d_state, cell.d_conv, cell.dt_rank) == (64, 16, 4, 2)
    assert (cell.input_size, cell.output_size) == (32, 32)
    # S4D-Real: A[e, n] = -(n + 1) for every channel; D = 1
    want_A = -torch.arange(1, 17, dtype=torch.float32).expand(64, -1)
    assert torch.allclose(-torch.exp(cell.A_log), want_A)
    assert torch.equal(cell.D, torch.ones(64))
    # the initial steps softplus(b_dt) are log-uniform in [dt_min, dt_max]
    dt = F.softplus(cell.dt_proj.bias)
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()
    assert dt.log().std() > 0.5  # spread over the log range, not one value
    bound = cell.dt_rank**-0.5
    assert cell.dt_proj.weight.abs().max() <= bound
    assert cell.conv_weight.shape == (64, 4) and cell.x_proj.bias is None


def test_inverse_softplus() -> None:
    y = torch.tensor([1e-4, 1e-3, 0.05, 0.1, 2.0], dtype=torch.float64)
    assert torch.allclose(F.softplus(inverse_softplus(y)), y, rtol=1e-12)


def test_state_carries_the_convolution_window() -> None:
    """Two halves with the state carried equal the whole sequence; the state's window holds
    the last d_conv - 1 inputs of the convolution (x half of in_proj)."""
    torch.manual_seed(1)
    cell = Mamba(4, 6, d_state=3).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    y, final = cell(x, backend="reference")
    y1, s1 = cell(x[:, :5], backend="reference")
    y2, s2 = cell(x[:, 5:], s1, backend="reference")
    assert torch.allclose(torch.cat((y1, y2), 1), y) and torch.allclose(s2.h, final.h)
    want_window = cell.in_proj(x[:, -3:])[..., :6].transpose(1, 2)
    assert torch.allclose(final.conv, want_window)


def test_a_reset_clears_the_window_and_the_scan() -> None:
    """After a reset at t, the outputs are those of the sequence started at t."""
    torch.manual_seed(2)
    cell = Mamba(3, 5, d_state=2).double()
    x = torch.randn(1, 8, 3, dtype=torch.float64)
    resets = torch.zeros(1, 8, dtype=torch.bool)
    resets[0, 5] = True
    for backend in available_backends("reference", "selective_torch"):
        y, _ = cell(x, backend=backend, resets=resets)
        y_tail, _ = cell(x[:, 5:], backend="reference")
        assert torch.allclose(y[:, 5:], y_tail, atol=1e-12), backend


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_max": math.inf}, "dt_max"),
        ({"dt_floor": -1.0}, "dt_floor"),
        ({"d_state": 0}, "d_state"),
        ({"d_conv": 0}, "d_conv"),
        ({"dt_rank": 0}, "dt_rank"),
    ],
)
def test_bad_construction(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mamba(4, **kw)  # type: ignore[arg-type]


def test_state_shapes() -> None:
    cell = Mamba(4, 6, d_state=5, d_conv=3)
    state = cell.init_state(2)
    assert isinstance(state, MambaState)
    assert state.h.shape == (2, 6, 5) and state.conv.shape == (2, 6, 2)


@pytest.mark.parametrize(("name", "shape"), [("mamba_classifier", (3, 4))])
def test_classifier(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size=2, output_size=4, hidden_size=8, num_layers=2)
    x = torch.randn(3, 9, 2, requires_grad=True)
    out = model(x)
    assert out.shape == shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    block = model.blocks[0]  # type: ignore[index]
    assert isinstance(block.cell, Mamba) and block.cell.hidden_size == 16


def test_language_model() -> None:
    torch.manual_seed(0)
    model = create_model("mamba_lm", vocab_size=11, hidden_size=8, num_layers=1)
    tokens = torch.randint(0, 11, (2, 6))
    logits = model(tokens)
    assert logits.shape == (2, 6, 11)
    # causal: the logits of the first steps do not depend on later tokens
    other = tokens.clone()
    other[:, 4:] = (other[:, 4:] + 1) % 11
    assert torch.allclose(model(other)[:, :4], logits[:, :4], atol=1e-6)
