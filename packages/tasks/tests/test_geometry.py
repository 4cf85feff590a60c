"""Pointer-network tasks: hulls, polygons, exact TSP, 2-opt and the metrics, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.tasks import get_task
from rnnkit.tasks.geometry import (
    brute_force_tsp,
    convex_hull,
    held_karp,
    hull_data,
    hull_metrics,
    is_simple_polygon,
    pointer_loss,
    polygon_area,
    tour_length,
    tsp_data,
    tsp_metrics,
    two_opt,
)

# a unit square given out of order, plus an interior point (index 2)
SQUARE = [(1.0, 1.0), (0.0, 0.0), (0.5, 0.4), (1.0, 0.0), (0.0, 1.0)]


def test_convex_hull_counter_clockwise_from_the_lowest_index() -> None:
    # counter-clockwise: (0,0) -> (1,0) -> (1,1) -> (0,1); start at index 0 = (1,1)
    assert convex_hull(SQUARE) == [0, 4, 1, 3]
    assert convex_hull([(0.0, 0.0), (1.0, 0.0), (0.5, 0.0), (0.0, 1.0)]) == [0, 1, 3]
    with pytest.raises(ValueError, match="collinear"):
        convex_hull([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)])


def test_polygon_area_and_simplicity_by_hand() -> None:
    assert polygon_area(SQUARE, [0, 4, 1, 3]) == 1.0
    assert polygon_area(SQUARE, [1, 3, 0]) == 0.5  # half the square
    # the interior point pushes in a notch: 1 - triangle (0,0),(1,0),(0.5,0.4) = 1 - 0.2
    assert abs(polygon_area(SQUARE, [1, 2, 3, 0, 4]) - 0.8) < 1e-12
    assert is_simple_polygon(SQUARE, [0, 4, 1, 3])
    assert is_simple_polygon(SQUARE, [3, 1, 4, 0])  # clockwise is still simple
    assert not is_simple_polygon(SQUARE, [0, 1, 4, 3])  # a bow tie
    assert not is_simple_polygon(SQUARE, [0, 4, 0, 3])  # a repeated vertex
    assert not is_simple_polygon(SQUARE, [0, 4])  # two points
    assert not is_simple_polygon(SQUARE, [0, 4, 9])  # an index past the points


def _one_hot(seqs: list[list[int]], steps: int, width: int) -> torch.Tensor:
    out = torch.zeros(len(seqs), steps, width)
    for b, s in enumerate(seqs):
        for t, i in enumerate(s):
            out[b, t, i] = 1.0
    return out


def test_hull_metrics_on_a_known_square() -> None:
    rows = 6  # 5 points and a padding row; END is column 6
    inputs = torch.zeros(4, rows, 3)
    for b in range(4):
        inputs[b, :5, :2] = torch.tensor(SQUARE)
        inputs[b, :5, 2] = 1.0
    true = [0, 4, 1, 3, rows]
    targets = torch.tensor([[*true, -100]] * 4)
    preds = [
        true,  # exact: area 1
        [1, 3, 0, rows],  # a triangle of the hull: area 0.5, not exact
        [0, 1, 4, 3, rows],  # bow tie: invalid, counts 0
        [3, 1, 4, 0, rows],  # clockwise: full area, not exact
    ]
    m = hull_metrics(_one_hot(preds, rows, rows + 1), targets, inputs, {})
    assert m["accuracy"] == 0.25
    assert m["area_coverage"] == (1.0 + 0.5 + 0.0 + 1.0) / 4
    assert m["fail_rate"] == 0.25


def test_hull_data_targets_are_hulls_and_end() -> None:
    d = hull_data(3, sizes=(50, 20, 20))
    x, y = d.train.inputs, d.train.targets
    assert x.shape == (50, 11, 3) and y.shape == (50, 11)
    for b in range(50):
        n = int(x[b, :, 2].sum())
        assert 5 <= n <= 10 and (x[b, n:] == 0).all()
        row = y[b].tolist()
        k = row.index(11)
        assert row[:k] == convex_hull(x[b, :n, :2].tolist())
        assert all(v == -100 for v in row[k + 1 :])
    # an oracle scores 1 on both metrics
    oracle = F.one_hot(torch.where(d.test.targets < 0, 11, d.test.targets), 12).float()
    m = hull_metrics(oracle, d.test.targets, d.test.inputs, d.info)
    assert m == {"accuracy": 1.0, "area_coverage": 1.0, "fail_rate": 0.0}


def test_tour_length_by_hand() -> None:
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    assert float(tour_length(pts, torch.tensor([[0, 1, 2, 3]]))) == 4.0
    crossing = float(tour_length(pts, torch.tensor([[0, 2, 1, 3]])))
    assert abs(crossing - (2 + 2 * math.sqrt(2))) < 1e-12


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_held_karp_equals_brute_force(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    pts = torch.rand(8, n, 2, generator=g)
    lengths, tours = held_karp(pts)
    assert tours.shape == (8, n) and (tours[:, 0] == 0).all()
    for b in range(8):
        best, _ = brute_force_tsp(pts[b])
        assert sorted(tours[b].tolist()) == list(range(n))
        assert abs(float(lengths[b]) - best) < 1e-12
        assert abs(float(tour_length(pts[b : b + 1], tours[b : b + 1])) - best) < 1e-12


def test_two_opt_uncrosses_and_never_lengthens() -> None:
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    out = two_opt(pts, torch.tensor([[0, 2, 1, 3]]))
    assert float(tour_length(pts, out)) == 4.0
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(30, 9, 2, generator=g)
    start = torch.arange(9).expand(30, 9)
    out = two_opt(pts, start)
    assert torch.equal(out.sort(1).values, start)
    assert (tour_length(pts, out) <= tour_length(pts, start) + 1e-12).all()
    assert (tour_length(pts, out) >= held_karp(pts)[0] - 1e-12).all()


def test_tsp_metrics_by_hand() -> None:
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]] * 2)
    targets = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    outputs = _one_hot([[0, 2, 1, 3], [0, 0, 1, 2]], 4, 4)  # crossing; not a permutation
    m = tsp_metrics(outputs, targets, pts, {})
    crossing = 2 + 2 * math.sqrt(2)
    assert abs(m["tour_length"] - (crossing + 4.0) / 2) < 1e-12  # the invalid one: input order
    assert m["optimal_length"] == 4.0
    assert abs(m["length_ratio"] - (crossing + 4.0) / 8) < 1e-12
    assert m["two_opt_length"] == 4.0
    assert m["invalid_rate"] == 0.5


def test_tsp_data_targets_are_optimal_and_oriented() -> None:
    d = tsp_data(1, n=6, sizes=(20, 5, 5))
    for b in range(20):
        tour = d.train.targets[b].tolist()
        assert tour[0] == 0 and tour[1] < tour[-1]
        best, _ = brute_force_tsp(d.train.inputs[b])
        got = float(tour_length(d.train.inputs[b : b + 1], d.train.targets[b : b + 1]))
        assert abs(got - best) < 1e-12


def test_tsp_data_is_deterministic_in_the_seed() -> None:
    a, b, c = (tsp_data(seed, n=7, sizes=(30, 10, 10)) for seed in (0, 0, 1))
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split).inputs, b.split(split).inputs)
        assert torch.equal(a.split(split).targets, b.split(split).targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_pointer_loss_stays_finite_on_masked_targets() -> None:
    out = torch.zeros(1, 2, 3)
    out[0, 1, 0] = torch.finfo(torch.float32).min
    s, c = pointer_loss(out, torch.tensor([[0, 0]]))
    assert torch.isfinite(s) and float(c) == 2.0
    assert float(s) > 100.0  # the masked target costs at least the floor


def test_tasks_are_registered_with_pointer_net() -> None:
    for name in ("convex_hull", "tsp"):
        task = get_task(name)
        assert task.model == "pointer_net" and task.loss_fn is pointer_loss
