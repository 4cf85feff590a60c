"""Planar geometry tasks of Pointer Networks (Vinyals, Fortunato, Jaitly, NeurIPS 2015).

Points are drawn uniformly in the unit square. Both tasks are ``tag`` tasks whose outputs are
*pointer logits over the input positions*: a model gets ``(B, n, F)`` points and returns
``(B, T_out, C)`` logits where column ``j < n`` means "input point ``j``" (``pointer_net``):

- ``convex_hull``: ``n`` in ``5..10`` points, right-padded to 11 rows of ``(x, y, valid)``
  (padding rows ``(0, 0, 0)``; one more row than points, so that the decoder's one output per
  row has room for END after a 10-point hull). Target: the hull's vertices counter-clockwise,
  starting from the lowest index, then END (column 11), then ``-100``: ``T_out = 11``,
  ``C = 12``. Metrics:
  exact-sequence ``accuracy``, ``area_coverage`` (area of the predicted polygon over the
  hull's, counted as 0 for an invalid polygon: fewer than 3 points, a repeated or padding
  point, or crossing edges), ``fail_rate``.
- ``tsp``: ``n = 10`` cities ``(x, y)``. Target: an optimal closed tour (Held-Karp dynamic
  programming, :func:`held_karp`) starting at city 0, in the direction whose second city has
  the lower index: ``T_out = C = 10``. Metrics: mean ``tour_length`` of the predicted tour
  (greedy decoding; a prediction that is not a permutation counts as the input-order tour and
  in ``invalid_rate``), ``optimal_length``, their ratio, and 2-opt from the input order.

The tasks' loss is the pointer cross-entropy with logits clamped at ``-100``
(:func:`pointer_loss`): decoders mask visited points with the dtype's lowest value, so a
prediction that already used the target point costs a large finite loss instead of inf.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks._util import drop_seen, generator
from rnnkit.tasks.base import IGNORE_INDEX, Budget, Metrics, Split, Task, TaskData, batch_loss

# --- polygons and hulls ------------------------------------------------------------------------


def _cross(o: Sequence[float], a: Sequence[float], b: Sequence[float]) -> float:
    """z of ``(a - o) x (b - o)``: > 0 when ``o, a, b`` turn counter-clockwise."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def convex_hull(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the convex hull's vertices, counter-clockwise from the lowest index.

    Andrew's monotone chain; points on an edge (collinear) are not vertices. ``points`` is a
    sequence of ``(x, y)``; at least 3 points not all on one line.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    if len(order) < 3:
        raise ValueError(f"a hull needs at least 3 points, got {len(order)}")

    def chain(idx: list[int]) -> list[int]:
        out: list[int] = []
        for i in idx:
            while len(out) >= 2 and _cross(points[out[-2]], points[out[-1]], points[i]) <= 0:
                out.pop()
            out.append(i)
        return out[:-1]

    hull = chain(order) + chain(order[::-1])  # lower chain left to right, upper right to left
    if len(hull) < 3:
        raise ValueError("the points are collinear: no hull polygon")
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


def polygon_area(points: Sequence[Sequence[float]], order: Sequence[int]) -> float:
    """Area of the polygon visiting ``points[order]`` (shoelace formula; absolute value)."""
    s = 0.0
    for k in range(len(order)):
        a, b = points[order[k]], points[order[(k + 1) % len(order)]]
        s += a[0] * b[1] - a[1] * b[0]
    return abs(s) / 2.0


def _segments_intersect(
    p: Sequence[float], q: Sequence[float], r: Sequence[float], s: Sequence[float]
) -> bool:
    """Whether closed segments ``pq`` and ``rs`` share a point (touching counts)."""
    d1, d2 = _cross(r, s, p), _cross(r, s, q)
    d3, d4 = _cross(p, q, r), _cross(p, q, s)
    if ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4):
        return True

    def on(a: Sequence[float], b: Sequence[float], c: Sequence[float], d: float) -> bool:
        return (
            d == 0
            and min(a[0], b[0]) <= c[0] <= max(a[0], b[0])
            and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])
        )

    return on(r, s, p, d1) or on(r, s, q, d2) or on(p, q, r, d3) or on(p, q, s, d4)


def is_simple_polygon(points: Sequence[Sequence[float]], order: Sequence[int]) -> bool:
    """Whether ``points[order]`` (closed) is a simple polygon: at least 3 distinct vertices,
    every index valid, and no two non-adjacent edges meeting."""
    k = len(order)
    if k < 3 or len(set(order)) != k or any(not 0 <= i < len(points) for i in order):
        return False
    edges = [(points[order[i]], points[order[(i + 1) % k]]) for i in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            if j == i + 1 or (i == 0 and j == k - 1):
                continue  # adjacent edges share a vertex
            if _segments_intersect(*edges[i], *edges[j]):
                return False
    return True


# --- tours -------------------------------------------------------------------------------------


def distances(points: Tensor) -> Tensor:
    """Euclidean distance matrices: ``(B, n, 2)`` -> ``(B, n, n)`` float64."""
    p = points.double()
    return torch.cdist(p, p)


def tour_length(points: Tensor, tours: Tensor) -> Tensor:
    """Length of each closed tour: ``points (B, n, 2)``, ``tours (B, k)`` indices -> ``(B,)``
    float64 (the edge back from the last city to the first included)."""
    p = torch.gather(points.double(), 1, tours.unsqueeze(-1).expand(-1, -1, 2))
    lengths: Tensor = (p - p.roll(-1, 1)).norm(dim=-1).sum(-1)
    return lengths


def held_karp(points: Tensor) -> tuple[Tensor, Tensor]:
    """Optimal closed tours by Held-Karp dynamic programming, batched over instances.

    ``C(S, j)``: the shortest path that starts at city 0, visits exactly the cities of ``S``
    (a set containing ``j``, not 0) and ends at ``j``; ``C({j}, j) = d(0, j)`` and
    ``C(S, j) = min_{k in S - {j}} C(S - {j}, k) + d(k, j)``; the tour length is
    ``min_j C(all, j) + d(j, 0)``. Time ``O(2^n n^2)`` per instance, memory ``O(B 2^n n)``.

    Args:
        points: ``(B, n, 2)`` with ``2 <= n <= 16``.

    Returns:
        ``(lengths (B,) float64, tours (B, n) int64)``, each tour starting at city 0.
    """
    batch, n, _ = points.shape
    if not 2 <= n <= 16:
        raise ValueError(f"held_karp takes 2 to 16 cities, got {n}")
    d = distances(points)
    m = n - 1  # cities 1..n-1 are bits 0..m-1
    full = 1 << m
    inf = torch.finfo(torch.float64).max / 4
    cost = torch.full((batch, full, m), inf, dtype=torch.float64)
    parent = torch.full((batch, full, m), -1, dtype=torch.long)
    for j in range(m):
        cost[:, 1 << j, j] = d[:, 0, j + 1]
    # d_to[b, j, k] = d(city k, city j) between cities 1..n-1
    d_to = d[:, 1:, 1:].transpose(1, 2)[:, None]  # (B, 1, m, m)
    bits = torch.arange(m)
    all_sets = torch.arange(full)
    size = torch.zeros(full, dtype=torch.long)
    for j in range(m):
        size += (all_sets >> j) & 1
    for s in range(2, m + 1):  # layer by layer: every set of s cities at once
        sets = all_sets[size == s]  # (L,)
        has_j = ((sets[:, None] >> bits) & 1).bool()  # (L, m)
        prev = sets[:, None] ^ (1 << bits)  # (L, m): the set without j
        in_prev = ((prev[:, :, None] >> bits) & 1).bool()  # (L, m, m): k in prev
        cand = cost[:, prev, :]  # (B, L, m, m): C(S - {j}, k) ...
        cand += d_to  # ... + d(k, j), in place: this loop is memory-bound
        cand.masked_fill_(~in_prev, inf)
        best, arg = cand.min(-1)  # (B, L, m)
        cost[:, sets, :] = best.masked_fill(~has_j, inf)
        parent[:, sets, :] = arg
    closing = cost[:, full - 1, :] + d[:, 1:, 0]
    lengths, last = closing.min(1)
    tours = torch.zeros(batch, n, dtype=torch.long)
    subset = torch.full((batch,), full - 1, dtype=torch.long)
    city = last  # bit index of the current city (city number - 1)
    rows = torch.arange(batch)
    for pos in range(n - 1, 0, -1):
        tours[:, pos] = city + 1
        nxt = parent[rows, subset, city]
        subset = subset ^ torch.bitwise_left_shift(torch.ones_like(city), city)
        city = nxt
    return lengths, tours


def brute_force_tsp(points: Tensor) -> tuple[float, list[int]]:
    """The optimal closed tour of one instance ``(n, 2)`` by trying every permutation of
    cities ``1..n-1`` (for tests of :func:`held_karp`; ``n <= 9`` is quick)."""
    n = points.shape[0]
    d = distances(points[None])[0].tolist()
    best, best_tour = math.inf, list(range(n))
    for perm in itertools.permutations(range(1, n)):
        tour = (0, *perm)
        length = sum(d[tour[i]][tour[(i + 1) % n]] for i in range(n))
        if length < best:
            best, best_tour = length, list(tour)
    return best, best_tour


def two_opt(points: Tensor, tours: Tensor, max_rounds: int = 1000) -> Tensor:
    """2-opt local search, batched: repeat the best improving reversal of a segment
    ``tour[i+1..j]`` (replacing edges ``(a_i, a_{i+1})``, ``(a_j, a_{j+1})`` by ``(a_i, a_j)``,
    ``(a_{i+1}, a_{j+1})``) in every instance until none improves by more than ``1e-12``.

    Args:
        points: ``(B, n, 2)``.
        tours: ``(B, n)`` permutations (the starting tours).

    Returns:
        ``(B, n)`` 2-optimal tours.
    """
    d = distances(points)
    tours = tours.clone()
    batch, n = tours.shape
    rows = torch.arange(batch)[:, None, None]
    idx = torch.arange(n)
    i_idx, j_idx = idx[:, None].expand(n, n), idx[None, :].expand(n, n)
    # moves with i < j - 1 that do not pick the two edges next to each other around the end
    allowed = (j_idx > i_idx + 1) & ~((i_idx == 0) & (j_idx == n - 1))
    for _ in range(max_rounds):
        a = tours
        b = tours.roll(-1, 1)  # a_{i+1}
        ai, aj = a[:, :, None].expand(-1, n, n), a[:, None, :].expand(-1, n, n)
        bi, bj = b[:, :, None].expand(-1, n, n), b[:, None, :].expand(-1, n, n)
        gain = (d[rows, ai, bi] + d[rows, aj, bj] - d[rows, ai, aj] - d[rows, bi, bj]).masked_fill(
            ~allowed, 0.0
        )
        best, flat = gain.reshape(batch, -1).max(1)
        improve = best > 1e-12
        if not bool(improve.any()):
            break
        i, j = flat // n, flat % n
        # position k in (i, j] takes the element at i + 1 + j - k
        pos = idx[None, :].expand(batch, n)
        inside = (pos > i[:, None]) & (pos <= j[:, None]) & improve[:, None]
        src = torch.where(inside, i[:, None] + 1 + j[:, None] - pos, pos)
        tours = torch.gather(tours, 1, src)
    return tours


# --- data ------------------------------------------------------------------------------------


def hull_data(
    seed: int,
    *,
    n_min: int = 5,
    n_max: int = 10,
    sizes: tuple[int, int, int] = (50000, 1000, 1000),
) -> TaskData:
    """Convex hull examples: inputs ``(N, n_max + 1, 3)`` rows ``(x, y, valid)`` (padding
    rows last, all zero; at least one); targets ``(N, n_max + 1)``: hull indices
    counter-clockwise from the lowest, then ``n_max + 1`` (END, the column after the rows),
    then ``-100``."""
    if not 3 <= n_min <= n_max:
        raise ValueError(f"need 3 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    splits = []
    for stream, size in enumerate(sizes):
        g = generator(seed, stream)
        ns = torch.randint(n_min, n_max + 1, (size,), generator=g)
        pts = torch.rand(size, n_max + 1, 2, generator=g)
        valid = torch.arange(n_max + 1)[None, :] < ns[:, None]
        x = torch.cat([pts, valid[..., None].float()], -1) * valid[..., None]
        y = torch.full((size, n_max + 1), IGNORE_INDEX, dtype=torch.long)
        for b in range(size):
            hull = convex_hull(pts[b, : int(ns[b])].tolist())
            y[b, : len(hull)] = torch.tensor(hull)
            y[b, len(hull)] = n_max + 1
        splits.append(Split(x, y))
    train = splits[0]
    valid_split = drop_seen(splits[1], train)
    test = drop_seen(splits[2], train, valid_split)
    return TaskData(train, valid_split, test, {})


def tsp_data(
    seed: int, *, n: int = 10, sizes: tuple[int, int, int] = (10000, 500, 1000)
) -> TaskData:
    """TSP examples: inputs ``(N, n, 2)`` cities; targets ``(N, n)`` an optimal tour from
    :func:`held_karp` starting at 0, oriented so that ``tour[1] < tour[-1]``."""
    splits = []
    for stream, size in enumerate(sizes):
        g = generator(seed, stream)
        pts = torch.rand(size, n, 2, generator=g)
        tours = torch.cat([held_karp(c)[1] for c in torch.split(pts, 2000)])
        flip = tours[:, 1] > tours[:, -1]
        reverse = torch.cat([tours[:, :1], tours[:, 1:].flip(1)], 1)
        splits.append(Split(pts, torch.where(flip[:, None], reverse, tours)))
    train = splits[0]
    valid_split = drop_seen(splits[1], train)
    test = drop_seen(splits[2], train, valid_split)
    return TaskData(train, valid_split, test, {})


# --- loss and metrics ----------------------------------------------------------------------------

#: pointer logits are clamped here in the loss (masked entries hold the dtype's lowest value)
LOGIT_FLOOR = -100.0


def pointer_loss(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of pointer logits ``(B, T_out, C)`` against ``(B, T_out)`` pointers
    (``-100`` ignored), logits clamped at :data:`LOGIT_FLOOR`; ``(sum, count)``."""
    return batch_loss("tag", outputs.float().clamp_min(LOGIT_FLOOR), targets)


def hull_predictions(outputs: Tensor, end: int) -> list[list[int]]:
    """Each example's predicted pointers before the first END (column ``end``):
    ``outputs (B, T_out, C)`` logits."""
    preds = []
    for row in outputs.argmax(-1).tolist():
        cut = row.index(end) if end in row else len(row)
        preds.append(row[:cut])
    return preds


def hull_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``accuracy`` (exact sequence up to END), ``area_coverage`` (mean of predicted over true
    hull area, 0 for an invalid polygon) and ``fail_rate`` (invalid polygons). END is the
    column after the input rows."""
    end = inputs.shape[1]
    preds = hull_predictions(outputs, end)
    exact, cover, fails = 0, 0.0, 0
    for b, pred in enumerate(preds):
        n = int(inputs[b, :, 2].sum())
        pts = inputs[b, :n, :2].tolist()
        true = [i for i in targets[b].tolist() if i != IGNORE_INDEX and i != end]
        exact += int(pred == true)
        if is_simple_polygon(pts, pred):
            cover += polygon_area(pts, pred) / polygon_area(pts, true)
        else:
            fails += 1
    count = max(len(preds), 1)
    return {"accuracy": exact / count, "area_coverage": cover / count, "fail_rate": fails / count}


def _is_permutation(tours: Tensor) -> Tensor:
    n = tours.shape[1]
    return (tours.sort(1).values == torch.arange(n)).all(1)


def tsp_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """Mean ``tour_length`` of the greedy tours (argmax per step; a non-permutation counts as
    the input-order tour), ``optimal_length`` (the targets), ``length_ratio`` (their means'
    ratio), ``two_opt_length`` (2-opt from the input order), ``invalid_rate``."""
    pts = inputs[..., :2]
    n = pts.shape[1]
    pred = outputs.argmax(-1)[:, :n]
    ok = _is_permutation(pred) if pred.shape[1] == n else torch.zeros(len(pred), dtype=torch.bool)
    identity = torch.arange(n).expand(len(pts), n)
    pred = torch.where(ok[:, None], pred, identity) if pred.shape[1] == n else identity
    model = float(tour_length(pts, pred).mean())
    optimal = float(tour_length(pts, targets).mean())
    return {
        "tour_length": model,
        "optimal_length": optimal,
        "length_ratio": model / optimal,
        "two_opt_length": float(tour_length(pts, two_opt(pts, identity)).mean()),
        "invalid_rate": float((~ok).float().mean()),
    }


# --- the tasks -----------------------------------------------------------------------------------

TASKS: tuple[Task, ...] = (
    Task(
        name="convex_hull",
        description="Pointer Networks: convex hull of 5-10 uniform points, counter-clockwise",
        kind="tag",
        make_data=functools.partial(hull_data, n_min=5, n_max=10),
        metric_fn=hull_metrics,
        primary="accuracy",
        io={"input_size": 3, "output_size": 12},
        model="pointer_net",
        model_config={"hidden_size": 128, "end_token": True, "mask_feature": 2},
        budget=Budget(steps=600, batch_size=128, lr=3e-3, clip=2.0, eval_every=200),
        loss_fn=pointer_loss,
        reference=(
            "Vinyals et al. 2015 [recalled, not checked]: Ptr-Net trained on n = 5-50, "
            "accuracy 92.0 % at n = 5 and 87.0 % at n = 10 (area ~99.9 %); not comparable: "
            "trained on 5-10 here, far fewer examples and steps"
        ),
        details=(
            "Inputs (N, 11, 3): x, y and a validity flag, padding rows last (always at "
            "least one); outputs (N, 11, 12) pointer logits, column 11 = END; 50,000 "
            "training point sets "
            "(paper: ~1M). Scored on the decoder's own greedy decoding (visited points "
            "masked); area_coverage counts invalid polygons as 0. Only pointer models "
            "fit (the output width is the number of rows plus END)."
        ),
    ),
    Task(
        name="tsp",
        description="Pointer Networks: planar TSP with 10 cities, optimal tours by Held-Karp",
        kind="tag",
        make_data=functools.partial(tsp_data, n=10),
        metric_fn=tsp_metrics,
        primary="tour_length",
        higher_is_better=False,
        io={"input_size": 2, "output_size": 10},
        model="pointer_net",
        model_config={"hidden_size": 128, "end_token": False},
        budget=Budget(steps=600, batch_size=128, lr=3e-3, clip=2.0, eval_every=200),
        loss_fn=pointer_loss,
        reference=(
            "Vinyals et al. 2015 [recalled, not checked]: n = 10, optimal 2.87, Ptr-Net 2.88 "
            "(beam search restricted to valid tours, ~1M examples); greedy decoding here"
        ),
        details=(
            "Inputs (N, 10, 2) cities; targets an optimal tour from city 0 (Held-Karp), "
            "the direction with the lower-indexed second city; 10,000 training instances "
            "(paper: ~1M). "
            "Greedy decoding with visited cities masked, so every predicted tour is valid."
        ),
    ),
)
