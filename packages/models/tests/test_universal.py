"""Universal Transformer with ACT: shapes, the halting arithmetic by hand, the ponder cost."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.universal import UniversalTransformer, coordinate_embedding


def _ut(**kw: object) -> UniversalTransformer:
    cfg: dict[str, object] = {"vocab_size": 12, "output_size": 5, "hidden_size": 16, "heads": 2}
    cfg.update(kw)
    m = create_model("universal_transformer", **cfg)
    assert isinstance(m, UniversalTransformer)
    return m


def test_shapes_tag_and_pooled() -> None:
    x = torch.randint(1, 12, (3, 7))
    assert _ut()(x).shape == (3, 7, 5)
    assert _ut(pool="mean")(x).shape == (3, 5)
    feats = UniversalTransformer(4, input_size=6, hidden_size=8, heads=2)
    assert feats(torch.randn(2, 5, 6)).shape == (2, 5, 4)


def test_coordinate_embedding_is_position_plus_step_sinusoids() -> None:
    pos = torch.tensor([[0, 3]])
    e = coordinate_embedding(pos, 2, 4)
    # dims (sin, cos) at frequency 1, then at 1 / 10000^(2/4) = 0.01
    want = [
        [
            math.sin(0) + math.sin(2),
            math.cos(0) + math.cos(2),
            0 + math.sin(0.02),
            2 * 0 + 1 + math.cos(0.02),
        ],
        [
            math.sin(3) + math.sin(2),
            math.cos(3) + math.cos(2),
            math.sin(0.03) + math.sin(0.02),
            math.cos(0.03) + math.cos(0.02),
        ],
    ]
    assert torch.allclose(e[0], torch.tensor(want), atol=1e-6)


def _constant_halting(m: UniversalTransformer, p: float) -> None:
    with torch.no_grad():
        m.halting.weight.zero_()
        m.halting.bias.fill_(math.log(p / (1 - p)))


def test_act_weights_and_ponder_cost_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """p = 0.3 at every step: the sums are 0.3, 0.6, 0.9, then 1.2 >= 0.99, so every position
    halts at N = 4 with R = 1 - 0.9 = 0.1 and weights 0.3, 0.3, 0.3, 0.1. A block that adds 1
    to the state makes the output state0 + 0.3*1 + 0.3*2 + 0.3*3 + 0.1*4 = state0 + 2.2."""
    m = _ut(max_steps=8, tau=0.5, dropout=0.0).eval()
    _constant_halting(m, 0.3)
    monkeypatch.setattr(m, "_block", lambda h, step, positions, pad: h + 1.0)
    x = torch.randint(1, 12, (2, 4))
    h0 = m.embed(x)
    out, ponder = m._act(h0, torch.zeros(2, 4), None)
    assert torch.allclose(out, h0 + 2.2, atol=1e-5)
    assert torch.allclose(ponder, torch.full((2, 4), 4.1), atol=1e-5)
    aux = m.regularization(0.0)
    assert abs(float(aux.detach()) - 0.5 * 4.1) < 1e-5


def test_act_stops_at_max_steps_with_the_remainder(monkeypatch: pytest.MonkeyPatch) -> None:
    """p = 0.1 with max_steps 3: sums 0.1, 0.2 then the forced halt, R = 0.8, rho = 3.8."""
    m = _ut(max_steps=3, dropout=0.0).eval()
    _constant_halting(m, 0.1)
    monkeypatch.setattr(m, "_block", lambda h, step, positions, pad: h + 1.0)
    h0 = torch.zeros(1, 2, 16)
    out, ponder = m._act(h0, torch.zeros(1, 2), None)
    assert torch.allclose(out, torch.full_like(out, 0.1 * 1 + 0.1 * 2 + 0.8 * 3), atol=1e-5)
    assert torch.allclose(ponder, torch.full((1, 2), 3.8), atol=1e-5)


def test_halted_positions_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A position that halts at step 1 keeps its state while the others go on: with a block
    adding 1 and halting driven by the first feature, position 0 halts at once."""
    m = _ut(max_steps=5, dropout=0.0).eval()
    with torch.no_grad():
        m.halting.weight.zero_()
        m.halting.weight[0, 0] = 100.0
        m.halting.bias.fill_(-50.0)
    seen: list[torch.Tensor] = []

    def block(h: torch.Tensor, step: int, positions: torch.Tensor, pad: object) -> torch.Tensor:
        seen.append(h.clone())
        return h + 1.0

    monkeypatch.setattr(m, "_block", block)
    h0 = torch.zeros(1, 2, 16)
    h0[0, 0, 0] = 1.0  # position 0: p = sigmoid(100 * (1 + t) - 50) ~ 1 -> halts at step 1
    h0[0, 1, 0] = -10.0  # position 1: p ~ 0 until the forced halt
    _, ponder = m._act(h0, torch.zeros(1, 2), None)
    assert len(seen) == 5
    assert torch.equal(seen[-1][0, 0], h0[0, 0] + 1.0)  # frozen after its single step
    assert float(seen[-1][0, 1, 1]) == 4.0  # position 1 was updated at every step
    assert abs(float(ponder[0, 0]) - 2.0) < 1e-5  # N = 1, R = 1


def test_ponder_cost_has_gradient_to_the_halting_unit_and_skips_padding() -> None:
    m = _ut(pad_id=0, tau=0.01)
    x = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    m(x)
    assert m.last_ponder is not None
    assert torch.isnan(m.last_ponder[0, :2]).all() and not torch.isnan(m.last_ponder[0, 2:]).any()
    aux = m.regularization(0.5)
    aux.backward()
    assert m.halting.bias.grad is not None and float(m.halting.bias.grad.abs()) > 0
    assert 1.0 <= m.mean_ponder_time() <= m.max_steps + 1


def test_without_act_runs_max_steps_and_has_no_aux_loss() -> None:
    m = _ut(act=False, max_steps=3)
    m(torch.randint(1, 12, (2, 5)))
    assert m.regularization(0.5).dim() == 0 and float(m.regularization(0.5)) == 0.0
    assert m.mean_ponder_time() == 3.0


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"hidden_size": 10, "heads": 4}, "hidden_size must be divisible by heads"),
        ({"max_steps": 0}, "max_steps"),
        ({"tau": -0.1}, "tau"),
        ({"act_epsilon": 1.0}, "act_epsilon"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_layers": 2}, "num_layers"),
        ({"position_offset": -1}, "position_offset"),
        ({"pool": "max"}, "pool"),
        ({"pad_id": 12}, "pad_id"),
        ({"input_size": 3}, "exactly one of vocab_size"),
        ({"heads": 0}, "heads"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _ut(**kw)


def test_position_offset_only_in_training() -> None:
    torch.manual_seed(0)
    m = _ut(position_offset=50, dropout=0.0)
    x = torch.randint(1, 12, (4, 6))
    m.eval()
    a, b = m(x), m(x)
    assert torch.equal(a, b)
    m.train()
    assert not torch.allclose(m(x), a)
