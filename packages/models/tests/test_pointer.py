"""Pointer network: logit shapes, masks (padding, no revisits, END), teacher forcing."""

from __future__ import annotations

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.pointer import PointerNet


def _points(batch: int, n: int, lengths: list[int]) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(batch, n, 3)
    for b, k in enumerate(lengths):
        x[b, :k, 2] = 1.0
        x[b, k:] = 0.0
    return x


def test_greedy_decoding_masks_padding_and_visited_points() -> None:
    m = create_model("pointer_net", input_size=3, hidden_size=16, mask_feature=2, output_size=7)
    assert isinstance(m, PointerNet)
    x = _points(4, 6, [6, 4, 3, 5])
    out = m(x)
    assert out.shape == (4, 6, 7)  # one step per row, n + 1 columns (column 6 = END)
    low = torch.finfo(out.dtype).min
    choice = out.argmax(-1)
    for b, k in enumerate([6, 4, 3, 5]):
        assert (out[b, :, k:6] == low).all()  # padding rows never pointed at
        seq = choice[b].tolist()
        before_end = seq[: seq.index(6)] if 6 in seq else seq
        assert len(set(before_end)) == len(before_end)  # no revisits
        assert all(i < k for i in before_end)
        if 6 in seq:  # after END, only END
            first = seq.index(6)
            assert (out[b, first + 1 :, :6] == low).all()


def test_without_end_token_greedy_tours_are_permutations() -> None:
    m = PointerNet(2, hidden_size=16, end_token=False)
    x = torch.rand(5, 8, 2)
    out = m(x)
    assert out.shape == (5, 8, 8)
    tours = out.argmax(-1)
    assert torch.equal(tours.sort(1).values, torch.arange(8).expand(5, 8))


def test_teacher_forcing_masks_the_targets_chosen_before() -> None:
    m = PointerNet(3, hidden_size=16, mask_feature=2)
    x = _points(2, 5, [5, 4])
    targets = torch.tensor([[0, 2, 4, 5, -100, -100], [3, 1, 0, 5, -100, -100]])
    out = m(x, targets=targets)
    assert out.shape == (2, 6, 6)
    low = torch.finfo(out.dtype).min
    assert (out[0, 1, 0] == low) and (out[0, 2, [0, 2]] == low).all()
    assert (out[1, 3, [3, 1, 0]] == low).all() and out[1, 3, 5] > low
    assert (out[1, :, 4] == low).all()  # padding row
    assert (out[0, 4, :5] == low).all() and out[0, 4, 5] > low  # after END
    # the targets themselves are never masked, so the loss is finite
    loss = torch.nn.functional.cross_entropy(
        out.reshape(-1, 6), targets.reshape(-1), ignore_index=-100
    )
    assert torch.isfinite(loss)
    loss.backward()


def test_teacher_forced_step_zero_equals_greedy_step_zero() -> None:
    m = PointerNet(3, hidden_size=16, mask_feature=2).eval()
    x = _points(3, 5, [5, 5, 3])
    greedy = m(x)
    forced = m(x, targets=greedy.argmax(-1))
    # feeding the model its own choices reproduces its greedy logits
    assert torch.allclose(forced, greedy, atol=1e-5)


def test_output_size_is_checked_against_the_inputs() -> None:
    m = PointerNet(2, hidden_size=8, end_token=False, output_size=5)
    with pytest.raises(ValueError, match="output_size 5"):
        m(torch.rand(2, 6, 2))


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"input_size": 0}, "input_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"mask_feature": 3}, "mask_feature"),
        ({"init_scale": -1.0}, "init_scale"),
        ({"output_size": 0}, "output_size"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kw: dict[str, object], name: str) -> None:
    cfg: dict[str, object] = {"input_size": 3}
    cfg.update(kw)
    with pytest.raises(ValueError, match=name):
        create_model("pointer_net", **cfg)
