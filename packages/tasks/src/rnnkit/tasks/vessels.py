"""Vessel tracks reported at irregular AIS-like times: forecast the next report's position.

Tracks are simulated on a fine time grid (15 s) with piecewise-constant turn rates (straight
legs and turns) and speed changes, then read at irregular report times (gaps mostly 0.5-3
minutes, sometimes up to 15). At report ``t`` the model reads the displacement since the
previous report, the reported speed and course (noisy), the gap since the previous report
and the gap to the next one (known in advance, as when forecasting for a given time), and
predicts the displacement to the next report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks._util import drop_seen, generator, lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

KM_SCALE = 1.0  # displacements are given in km
FEATURES = (
    "dx_km",
    "dy_km",
    "speed_kn/10",
    "sin_course",
    "cos_course",
    "gap_prev_min/10",
    "gap_next_min/10",
)


def simulate_tracks(n: int, reports: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` simulated tracks read at irregular report times.

    Returns ``(times, state)``: report times ``(n, reports)`` in minutes (the first is 0) and
    the true state at those times ``(n, reports, 4)``: east and north position (km), speed
    (knots) and course (radians, clockwise from north).
    """
    dt = 0.25  # minutes
    gaps = torch.where(
        torch.rand(n, reports, generator=g) < 0.9,
        0.5 + 2.5 * torch.rand(n, reports, generator=g),
        3.0 + 12.0 * torch.rand(n, reports, generator=g),
    )
    gaps[:, 0] = 0.0
    times = gaps.cumsum(1)
    steps = math.ceil(float(times.max()) / dt) + 1
    speed = 6.0 + 14.0 * torch.rand(n, generator=g)  # knots
    target_speed = speed.clone()
    course = 2 * math.pi * torch.rand(n, generator=g)
    turn = torch.zeros(n)  # rad / min
    x = torch.zeros(n, 2)
    traj = torch.empty(n, steps, 4)
    r = torch.rand(steps, 5, n, generator=g)  # all per-step draws at once
    for k in range(steps):
        traj[:, k, :2] = x
        traj[:, k, 2] = speed
        traj[:, k, 3] = course
        # manoeuvres: ~every 10 minutes a leg ends; half the new legs are turns (<= 15°/min)
        new_turn = torch.where(r[k, 1] < 0.5, 0.0, (r[k, 2] * 2 - 1) * math.radians(15.0))
        turn = torch.where(r[k, 0] < dt / 10.0, new_turn, turn)
        # ~every 20 minutes a new speed (4-22 kn), reached in ~3 minutes
        target_speed = torch.where(r[k, 3] < dt / 20.0, 4.0 + 18.0 * r[k, 4], target_speed)
        speed = speed + (target_speed - speed) * (dt / 3.0)
        course = course + turn * dt
        v = speed * 1.852 / 60.0  # km / min
        x = x + dt * v[:, None] * torch.stack([torch.sin(course), torch.cos(course)], 1)
    idx = (times / dt).round().long().clamp(max=steps - 1)
    state = traj.gather(1, idx[:, :, None].expand(-1, -1, 4))
    return times, state


def vessel_data(
    seed: int,
    *,
    reports: int = 40,
    warmup: int = 4,
    sizes: tuple[int, int, int] = (2000, 300, 300),
) -> TaskData:
    """Inputs ``(N, reports - 1, 7)`` (see ``FEATURES``; position noise 10 m, speed noise
    0.3 kn, course noise 2 degrees), targets ``(N, reports - 1, 2)`` = the true displacement
    (km, east and north) to the next report; the first ``warmup`` targets are NaN."""
    splits = []
    for stream, size in enumerate(sizes):
        g = generator(seed, stream)
        times, state = simulate_tracks(size, reports, g)
        pos = state[..., :2] + 0.01 * torch.randn(size, reports, 2, generator=g)
        sog = state[..., 2] + 0.3 * torch.randn(size, reports, generator=g)
        cog = state[..., 3] + math.radians(2.0) * torch.randn(size, reports, generator=g)
        gaps = times.diff(dim=1)  # (size, reports - 1)
        prev_gap = torch.cat([torch.zeros(size, 1), gaps[:, :-1]], 1)
        disp = torch.cat([torch.zeros(size, 1, 2), pos.diff(dim=1)[:, :-1]], 1)
        x = torch.cat(
            [
                disp,
                sog[:, :-1, None] / 10.0,
                torch.sin(cog[:, :-1, None]),
                torch.cos(cog[:, :-1, None]),
                prev_gap[..., None] / 10.0,
                gaps[..., None] / 10.0,
            ],
            -1,
        )
        y = state[:, 1:, :2] - state[:, :-1, :2]
        y[:, :warmup] = float("nan")
        splits.append(Split(x.contiguous(), y.contiguous()))
    train, valid, test = splits
    valid = drop_seen(valid, train)
    test = drop_seen(test, train, valid)
    return TaskData(train, valid, test, {"features": list(FEATURES)})


def rpd(pred: Tensor, target: Tensor) -> float:
    """Relative percentage difference of displacement vectors, averaged over scored steps.

    ``RPD = 100 ‖ŷ − y‖ / ((‖ŷ‖ + ‖y‖) / 2)`` (0 to 200 %; the norm over the last dimension;
    steps where both are zero count 0); ``pred, target: (..., D)``, NaN targets ignored.
    """
    keep = ~torch.isnan(target).any(-1)
    p, t = pred[keep].double(), target[keep].double()
    if t.shape[0] == 0:
        return float("nan")
    num = (p - t).norm(dim=-1)
    den = (p.norm(dim=-1) + t.norm(dim=-1)) / 2.0
    val = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(den))
    return float(100.0 * val.mean())


HORIZON_EDGES_MIN = (1.0, 3.0)
HORIZON_NAMES = ("rpd_h_le1min", "rpd_h_1to3min", "rpd_h_gt3min")


def rpd_by_horizon(
    pred: Tensor, target: Tensor, horizon: Tensor, edges: tuple[float, ...] = HORIZON_EDGES_MIN
) -> list[float]:
    """:func:`rpd` per forecast horizon band.

    ``pred, target: (..., D)``; ``horizon: (...)`` the time ahead of each forecast (here the
    gap to the next report, minutes); ``edges`` ascending band edges: band ``i`` holds
    ``edges[i-1] < horizon <= edges[i]`` (band 0: ``horizon <= edges[0]``, the last band:
    ``horizon > edges[-1]``). Returns ``len(edges) + 1`` values (NaN for an empty band).
    """
    if horizon.shape != pred.shape[:-1]:
        raise ValueError(
            f"horizon must have shape {tuple(pred.shape[:-1])} (pred's without its last "
            f"dimension), got {tuple(horizon.shape)}"
        )
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"edges must be ascending, got {edges!r}")
    lo = [-math.inf, *edges]
    hi = [*edges, math.inf]
    out = []
    for a, b in zip(lo, hi, strict=True):
        band = (horizon > a) & (horizon <= b)
        out.append(rpd(pred[band], target[band]))
    return out


def vessel_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``rpd`` (primary), ``error_m`` (mean distance error in metres), ``rpd_dead_reckoning``
    (the RPD of dead reckoning from the reported speed and course over the next gap) and the
    RPD per horizon (the gap to the next report): ``rpd_h_le1min``, ``rpd_h_1to3min``,
    ``rpd_h_gt3min``."""
    keep = ~torch.isnan(targets).any(-1)
    err = (outputs.double() - targets.double()).norm(dim=-1)[keep]
    v = inputs[..., 2:3] * 10.0 * 1.852 / 60.0  # km / min
    dr = v * inputs[..., 6:7] * 10.0 * torch.cat([inputs[..., 3:4], inputs[..., 4:5]], -1)
    per_horizon = rpd_by_horizon(outputs, targets, inputs[..., 6] * 10.0)
    return {
        "rpd": rpd(outputs, targets),
        "error_m": float(err.mean()) * 1000.0 * KM_SCALE,
        "rpd_dead_reckoning": rpd(dr, targets),
        **dict(zip(HORIZON_NAMES, per_horizon, strict=True)),
    }


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="vessels",
        description="AIS-like vessel tracks, irregular report gaps: next displacement",
        kind="regress",
        make_data=vessel_data,
        metric_fn=vessel_metrics,
        primary="rpd",
        higher_is_better=False,
        io={"input_size": len(FEATURES), "output_size": 2},
        model="sequence_tagger",
        model_config=lstm_config(64),
        budget=Budget(steps=800, batch_size=32, lr=5e-3, eval_every=100),
        target=None,
        reference=(
            "Spadon et al. (2023): CNN+FFN+RNN 36-38 % RPD on real AIS (Elman 45-96, GRU "
            "40-52, LSTM 61-129 %); not comparable: simulated tracks here"
        ),
        details=(
            "Simulated legs and turns (<= 15 deg/min), speed changes 4-22 kn; report gaps "
            "0.5-3 min (10 %: 3-15 min) given as inputs; RPD of the displacement vector "
            "(norm form of tasks.md's RPD); dead reckoning's RPD reported for comparison."
        ),
    ),
)
