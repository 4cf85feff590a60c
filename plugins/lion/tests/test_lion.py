"""The LION plugin: its entry point, the voxel operations, the grouping identities, and that
it learns the point_shapes task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from rnnkit.core import Recurrent
from rnnkit.core.plugins import PluginHost
from rnnkit.core.testing import assert_close
from rnnkit_lion import (
    LION,
    POINT_SHAPES,
    LIONLayer,
    Voxels,
    generate,
    lion_classifier,
    merge,
    point_clouds,
    voxelise,
    window_groups,
)


def test_registered_through_the_entry_point_of_the_installed_distribution() -> None:
    host = PluginHost()
    model = host.models.get("lion_classifier")
    assert model.obj is lion_classifier
    assert (model.origin.plugin, model.origin.distribution) == ("lion", "rnnkit-lion")
    task = host.tasks.get("point_shapes")
    assert task.obj is POINT_SHAPES
    assert task.origin.distribution == "rnnkit-lion"


def random_coords(n: int, batch: int, extent: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(batch * extent**3, generator=g)[:n]
    return torch.stack(
        (keys // extent**3, keys // extent**2 % extent, keys // extent % extent, keys % extent),
        dim=1,
    )


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("shift", [False, True])
def test_groups_scatter_after_gather_is_the_identity(axis: str, shift: bool) -> None:
    coords = random_coords(150, 3, 8)
    groups = window_groups(coords, 4, 16, axis=axis, shift=shift)
    assert groups.gather.numel() % 16 == 0
    feats = torch.randn(150, 5)
    assert torch.equal(feats[groups.gather][groups.scatter], feats)
    # every padded slot of a group repeats a voxel of the group's own sample
    per_group = coords[groups.gather, 0].view(-1, 16)
    assert bool((per_group == per_group[:, :1]).all())


def test_window_order_is_window_major_then_inside_the_window() -> None:
    # 2 windows along x (edge 2); x-major: all of window x=0 (ordered by x, y, z) first
    coords = torch.tensor([[0, 3, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 2, 1, 0]])
    order = window_groups(coords, 2, 8, axis="x").gather[:5]
    assert order.tolist() == [3, 1, 2, 4, 0]
    # y-major: y varies slowest inside a window
    order = window_groups(coords, 2, 8, axis="y").gather[:5]
    assert order.tolist() == [3, 2, 1, 0, 4]


def test_one_window_and_one_group_equal_a_full_sequence_run() -> None:
    torch.manual_seed(0)
    coords = random_coords(40, 1, 4)
    feats = torch.randn(40, 6)
    layer = LIONLayer(
        "lru", 6, window=4, group_size=64, shift=False, bidirectional=False, cell_kwargs={}
    )
    got = layer(coords, feats)
    # by hand: the x-order sequence, then the y-order sequence, each x + LN(W Op(x))
    want = feats
    for k, axis in enumerate(("x", "y")):
        order = window_groups(coords, 4, 64, axis=axis).gather[:40]
        y, _ = layer.ops[k][0](want[order][None])
        step = torch.empty_like(want)
        step[order] = layer.norm[k](layer.out[k](y[0]))
        want = want + step
    assert_close("layer", got, want, 1e-5)


def test_merge_sums_features_of_voxels_in_one_parent() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0], [1, 1, 0, 0]])
    feats = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    out = merge(Voxels(coords, feats, 4))
    assert out.extent == 2
    assert out.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert out.feats.flatten().tolist() == [3.0, 4.0, 8.0]


def test_generation_adds_zero_diagonal_neighbours_of_the_top_voxels() -> None:
    coords = torch.tensor([[0, 2, 2, 0], [0, 0, 0, 1], [0, 3, 3, 3], [1, 1, 1, 1]])
    feats = torch.tensor([[5.0], [1.0], [0.0], [2.0]])
    out = generate(Voxels(coords, feats, 4), ratio=0.2)
    # ceil(0.2 * 3) = 1 seed in sample 0 (the 5.0 voxel), ceil(0.2 * 1) = 1 in sample 1
    added = out.coords[4:].tolist()
    sample0 = [[0, 3, 3, 0], [0, 3, 1, 0], [0, 1, 3, 0], [0, 1, 1, 0]]
    sample1 = [[1, 2, 2, 1], [1, 2, 0, 1], [1, 0, 2, 1], [1, 0, 0, 1]]
    assert sorted(added) == sorted([*sample0, *sample1])
    assert bool((out.feats[4:] == 0).all()) and torch.equal(out.feats[:4], feats)


def test_voxelise_assigns_points_to_cells() -> None:
    points = torch.tensor([[[0.1, 0.1, 0.1], [0.12, 0.1, 0.1], [0.9, 0.5, 0.0]]])
    coords, inverse, offsets = voxelise(points, 4)
    assert coords.tolist() == [[0, 0, 0, 0], [0, 3, 2, 0]]
    assert inverse.tolist() == [0, 0, 1]
    assert bool(((offsets >= -0.5) & (offsets < 0.5)).all())


def test_point_clouds_fit_the_unit_cube_and_cover_every_shape() -> None:
    x, y = point_clouds(40, 64, torch.Generator().manual_seed(0))
    assert x.shape == (40, 64, 3) and bool(((x >= 0.0) & (x < 1.0)).all())
    assert set(y.tolist()) == {0, 1, 2, 3}


def test_bad_arguments_raise_naming_the_argument() -> None:
    for kwargs, name in [
        ({"cell": "lstm"}, "cell"),
        ({"input_size": 2}, "input_size"),
        ({"grid": 1}, "grid"),
        ({"generation_ratio": 0.0}, "generation_ratio"),
        ({"group_size": 0}, "group_size"),
    ]:
        with pytest.raises(ValueError, match=rf"^{name} "):
            LION(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^x must"):
        LION(hidden_size=8)(torch.rand(2, 5, 2))


def test_any_diagonal_linear_cell_can_be_the_operator() -> None:
    model = LION(output_size=3, hidden_size=8, num_layers=2, cell="s4d", grid=8)
    out = model(torch.rand(2, 30, 3))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())
    assert isinstance(model.layers[0][0].ops[0][0], Recurrent)


def test_learns_shapes_in_seconds() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # unrotated clouds and a one-block, one-direction model: a few seconds
    x, y = point_clouds(128, 64, g, rotate=False)
    x_test, y_test = point_clouds(256, 64, g, rotate=False)
    model = LION(
        output_size=4, hidden_size=16, num_layers=1, grid=8, group_size=32, bidirectional=False
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        i = 32 * (step % 4)
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(-1) == y_test).float().mean())
    assert accuracy >= 0.5, accuracy  # chance is 0.25 (four balanced classes)


@pytest.mark.experiment
def test_point_shapes_score_in_the_docs(tmp_path: Path) -> None:
    """The run docs/tasks.md reports: ``rnnkit train --task point_shapes`` (its defaults)."""
    from rnnkit.tasks.trainer import train

    result = train(
        task="point_shapes", out=str(tmp_path / "run"), progress=False, plot=False, verbose=False
    )
    # chance is 0.25; docs/tasks.md reports 0.66 (seed 0)
    assert result.test["accuracy"] >= 0.6, result.test
