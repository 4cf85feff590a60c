"""SASRec and the recurrent recommender: shapes, float64, causality, padding, shared
embedding scores, argument checks."""

from __future__ import annotations

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.recommend import RecurrentRecommender, SASRec


def _items(batch: int, n: int, vocab: int, pad: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, vocab, (batch, n), generator=g)
    x[:, :pad] = 0
    return x


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_scores_every_item_at_every_position_in_float64(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, vocab_size=13, output_size=13, hidden_size=8, dropout=0.0).double()
    x = _items(3, 6, 13, pad=2)
    out = m(x)
    assert out.shape == (3, 6, 13)
    assert out.dtype == torch.float64
    # shared item embedding: the scores are features . M_i for every item column
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert m.item.weight.grad is not None and m.item.weight.grad.dtype == torch.float64


def test_sasrec_scores_are_features_times_the_item_embedding() -> None:
    torch.manual_seed(0)
    m = SASRec(11, max_length=5, hidden_size=8, num_blocks=2, heads=2, dropout=0.0).double()
    x = _items(2, 5, 11, pad=1)
    f = m.features(x)
    torch.testing.assert_close(m(x), f @ m.item.weight.T, rtol=0, atol=0)
    assert (f[:, 0] == 0).all()  # padding positions carry no features


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_outputs_are_causal(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, vocab_size=20, hidden_size=8, dropout=0.0).double().eval()
    x = _items(2, 7, 20)
    y = x.clone()
    y[:, 4:] = (y[:, 4:] % 19) + 1  # change the items from position 4 on
    torch.testing.assert_close(m(x)[:, :4], m(y)[:, :4], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(m(x)[:, 4:], m(y)[:, 4:])


def test_sasrec_padding_rows_attend_to_nothing_else() -> None:
    # a row of pure padding (every key masked but its own) still gives finite outputs, and a
    # real position's features do not depend on how many padding rows come before the
    # history's first item once the positions are the same: compare two histories that
    # differ only in an item hidden behind padding (the id is 0 either way, so identical)
    torch.manual_seed(0)
    m = SASRec(20, max_length=6, hidden_size=8, dropout=0.0).double().eval()
    x = torch.zeros(2, 6, dtype=torch.long)
    x[1, 3:] = torch.tensor([4, 7, 9])
    out = m(x)
    assert torch.isfinite(out).all()
    assert (m.features(x)[0] == 0).all()  # all-padding history: no features
    # item 4 at position 3 with three padding keys before it: attending to them would mix
    # in LayerNorm(0) = the bias; with them masked, position 3 sees only itself
    y = x.clone()
    y[1, :3] = torch.tensor([5, 6, 8])
    assert not torch.allclose(m(x)[1, 3], m(y)[1, 3])  # real earlier items do count


def test_sasrec_keeps_the_last_max_length_items() -> None:
    torch.manual_seed(0)
    m = SASRec(20, max_length=4, hidden_size=8, dropout=0.0).eval()
    x = _items(2, 7, 20)
    torch.testing.assert_close(m(x), m(x[:, -4:]), rtol=0, atol=0)
    assert m(x).shape == (2, 4, 20)


def test_recurrent_recommender_takes_any_registered_cell() -> None:
    torch.manual_seed(0)
    m = create_model("gru4rec", vocab_size=10, hidden_size=8, cell="lstm", num_layers=2)
    assert isinstance(m, RecurrentRecommender)
    assert m(_items(2, 5, 10)).shape == (2, 5, 10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 10, "output_size": 9}, "output_size"),
        ({"vocab_size": 10, "hidden_size": 0}, "hidden_size"),
        ({"vocab_size": 10, "dropout": 1.0}, "dropout"),
        ({"vocab_size": 10, "max_length": 0}, "max_length"),
        ({"vocab_size": 10, "num_blocks": 0}, "num_blocks"),
        ({"vocab_size": 10, "hidden_size": 6, "heads": 4}, "heads"),
    ],
)
def test_sasrec_bad_arguments_raise(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        create_model("sasrec", **kwargs)


def test_bad_inputs_raise() -> None:
    m = SASRec(10, hidden_size=8)
    with pytest.raises(ValueError, match="x must"):
        m(torch.rand(2, 5))  # not ids
    with pytest.raises(ValueError, match="x must"):
        m(torch.full((2, 5), 10))  # id out of range
    r = RecurrentRecommender(10, hidden_size=8)
    with pytest.raises(ValueError, match="x must"):
        r(torch.full((2, 5), -1))
    with pytest.raises(ValueError, match="output_size"):
        RecurrentRecommender(10, output_size=3)
