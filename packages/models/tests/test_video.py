"""LRCN and its frame-averaging baseline: shapes, float64, order (in)sensitivity, checks."""

from __future__ import annotations

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.models.video import LRCN


def _clips(batch: int = 3, frames: int = 5, side: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, frames, side * side, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["lrcn", "frame_average"])
def test_logits_shape_and_float64(name: str) -> None:
    torch.manual_seed(0)
    m = create_model(name, input_size=64, output_size=4, frame_size=8, hidden_size=6).double()
    x = _clips().requires_grad_()
    out = m(x)
    assert out.shape == (3, 4)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_frame_average_ignores_order_and_lrcn_does_not() -> None:
    torch.manual_seed(0)
    x = _clips()
    rev = x.flip(1)
    avg = create_model("frame_average", input_size=64, output_size=4, frame_size=8).double()
    torch.testing.assert_close(avg(x), avg(rev), rtol=1e-12, atol=1e-12)
    rnn = create_model("lrcn", input_size=64, output_size=4, frame_size=8).double()
    assert not torch.allclose(rnn(x), rnn(rev))


def test_frame_features_are_per_frame() -> None:
    torch.manual_seed(0)
    m = LRCN(64, 4, frame_size=8, feature_size=5).double()
    x = _clips()
    phi = m.frame_features(x)
    assert phi.shape == (3, 5, 5)
    torch.testing.assert_close(phi[:, 2], m.frame_features(x[:, 2:3])[:, 0])


def test_pool_last_and_other_cells() -> None:
    torch.manual_seed(0)
    m = create_model("lrcn", input_size=64, output_size=4, frame_size=8, cell="gru", pool="last")
    assert m(_clips().float()).shape == (3, 4)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_size": 60, "frame_size": 8}, "input_size"),
        ({"input_size": 36, "frame_size": 6}, "frame_size"),
        ({"input_size": 64, "frame_size": 8, "temporal": "conv"}, "temporal"),
        ({"input_size": 64, "frame_size": 8, "pool": "max"}, "pool"),
        ({"input_size": 64, "frame_size": 8, "feature_size": 0}, "feature_size"),
        ({"input_size": 64, "frame_size": 8, "conv_channels": (4,)}, "conv_channels"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        LRCN(output_size=4, **kwargs)  # type: ignore[arg-type]


def test_bad_input_raises() -> None:
    m = LRCN(64, 4, frame_size=8)
    with pytest.raises(ValueError, match="x must"):
        m(torch.rand(2, 5, 63))
