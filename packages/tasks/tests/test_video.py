"""Moving digits: rendering, the motion classes, determinism, and that LRCN learns what a
frame-averaging model cannot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models import create_model
from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.video import MOTIONS, motion_clips, moving_digits_data, render


def _digit() -> torch.Tensor:
    return torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) / 64


def test_render_places_and_rotates_exactly() -> None:
    d = _digit()
    centre = torch.full((1, 2), 8.0)
    frames = render(
        d,
        centre[:, :1] + torch.tensor([[0.0, 2.0]]),
        centre[:, 1:].expand(1, 2),
        torch.zeros(1, 2),
        16,
    )
    assert frames.shape == (1, 2, 16, 16)
    torch.testing.assert_close(frames[0, 0, 4:12, 4:12], d[0])  # pixel centres coincide
    assert frames[0, 0].sum().item() == pytest.approx(d.sum().item(), rel=1e-6)
    torch.testing.assert_close(frames[0, 1, 4:12, 6:14], d[0])  # 2 pixels to the right
    # a quarter turn clockwise on screen (y down) is rot90 with k = -1
    quarter = render(d, centre[:, :1], centre[:, 1:], torch.full((1, 1), math.pi / 2), 16)
    torch.testing.assert_close(quarter[0, 0, 4:12, 4:12], torch.rot90(d[0], -1), atol=1e-5, rtol=0)


def test_clips_move_as_labelled() -> None:
    images = _digit().expand(4, 8, 8)
    s = motion_clips(images, 200, torch.Generator().manual_seed(0), noise=0.0)
    x = s.inputs.reshape(200, 8, 16, 16)
    cols = torch.arange(16.0)
    mass = x.sum((2, 3))
    cx = (x.sum(2) * cols).sum(-1) / mass  # centre of mass per frame
    cy = (x.sum(3) * cols).sum(-1) / mass
    for k, name in enumerate(MOTIONS):
        m = s.targets == k
        assert m.any(), name
        dx = (cx[m, -1] - cx[m, 0]).mean().item()
        dy = (cy[m, -1] - cy[m, 0]).mean().item()
        expect = {"right": (6, 0), "left": (-6, 0), "down": (0, 6), "up": (0, -6)}
        if name in expect:
            assert dx == pytest.approx(expect[name][0], abs=0.3), name
            assert dy == pytest.approx(expect[name][1], abs=0.3), name
        elif name.startswith("bounce"):
            assert abs(dx) < 0.3 and abs(dy) < 0.3, name  # back where it started
    assert s.inputs.dtype == torch.float32


def test_data_deterministic_and_disjoint_images() -> None:
    a, b, c = (moving_digits_data(seed, sizes=(20, 10, 10)) for seed in (0, 0, 1))
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split).inputs, b.split(split).inputs)
        assert torch.equal(a.split(split).targets, b.split(split).targets)
        assert a.split(split).inputs.shape[1:] == (8, 256)
    assert not torch.equal(a.train.inputs, c.train.inputs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"frames": 2}, "frames"), ({"travel": 9.0}, "travel"), ({"noise": -1.0}, "noise")],
)
def test_bad_arguments_raise(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        motion_clips(_digit(), 4, torch.Generator(), **kwargs)  # type: ignore[arg-type]


def test_lrcn_beats_the_frame_average_ceiling_in_a_short_run() -> None:
    # 120 steps of batch 32 on 6-frame clips of a 12x12 canvas (~2 s): valid accuracy must
    # beat 3/8, the most a frame-averaging model can expect here, by 0.1 (measured: 0.55)
    data = moving_digits_data(0, sizes=(800, 200, 0), frames=6, canvas=12, travel=4.0)
    torch.manual_seed(0)
    m = create_model(
        "lrcn",
        input_size=144,
        output_size=len(MOTIONS),
        frame_size=12,
        conv_channels=(4, 8),
        feature_size=32,
        hidden_size=32,
    )
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(len(data.train), (32,), generator=g)
        loss = F.cross_entropy(m(data.train.inputs[idx]), data.train.targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (m(data.valid.inputs).argmax(-1) == data.valid.targets).double().mean().item()
    assert acc > 3 / 8 + 0.1, acc


@pytest.mark.experiment
@pytest.mark.parametrize(
    ("model", "low", "high"), [("lrcn", 0.85, 1.0), ("frame_average", 0.0, 3 / 8)]
)
def test_default_budget_scores(model: str, low: float, high: float, tmp_path: Path) -> None:
    cfg = TrainConfig(
        task="moving_digits", model=model, out=str(tmp_path), verbose=False, plot=False, seed=0
    )
    acc = Trainer(cfg).run().test["accuracy"]
    assert low <= acc <= high, acc
