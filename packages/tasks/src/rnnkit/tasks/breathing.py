"""Breathing-like marker traces: forecast the positions ``horizon`` samples ahead (latency).

A stand-in for external-marker respiratory motion (Pohl et al.'s setting: 3 markers x
(x, y, z) at 10 Hz, predicting ahead by the system latency): each "subject" breathes with a
Lujan-type waveform ``-cos^(2n)`` whose period (3-5 s) and amplitude drift slowly, with a
wandering baseline, an occasional deep breath, per-channel gains and phase lags (hysteresis)
and measurement noise. Each subject's trace is split 70/15/15 % in time and cut into windows;
inputs are the 9 positions at ``t``, targets the positions at ``t + horizon``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks._util import generator, lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData


def breathing_traces(
    subjects: int, length: int, g: torch.Generator, rate: float = 10.0, channels: int = 9
) -> Tensor:
    """``(subjects, length, channels)`` float64 marker positions in mm, sampled at ``rate`` Hz."""

    def ou(scale: float, tau_s: float) -> Tensor:
        """Ornstein-Uhlenbeck paths ``(subjects, length)``, stationary sd ``scale``."""
        a = math.exp(-1.0 / (rate * tau_s))
        w = torch.randn(subjects, length, generator=g, dtype=torch.float64)
        w *= scale * math.sqrt(1.0 - a * a)
        out = torch.empty_like(w)
        out[:, 0] = scale * torch.randn(subjects, generator=g, dtype=torch.float64)
        for k in range(1, length):
            out[:, k] = a * out[:, k - 1] + w[:, k]
        return out

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(subjects, *shape, generator=g, dtype=torch.float64)

    period = u(3.0, 5.0, 1) * torch.exp(ou(0.12, 20.0))  # s, slowly drifting
    phase = 2.0 * math.pi * torch.cumsum(1.0 / (rate * period), 1)
    amp = u(5.0, 20.0, 1) * torch.exp(ou(0.15, 30.0))  # mm
    deep = (torch.rand(subjects, length, generator=g, dtype=torch.float64) < 0.002).double()
    kernel = torch.exp(-torch.arange(60, dtype=torch.float64) / 15.0)
    boost = torch.nn.functional.conv1d(deep[:, None], kernel.flip(0)[None, None], padding=59)
    amp = amp * (1.0 + 0.8 * boost[:, 0, :length].clamp(max=1.0))
    power = torch.randint(1, 4, (subjects, 1), generator=g).double()
    gain = u(-1.0, 1.0, channels)
    gain[:, 2::3] = u(0.6, 1.0, channels // 3)  # superior-inferior dominates
    lag = u(0.0, 0.6, channels)  # rad
    base = ou(1.0, 60.0)[:, :, None] * u(0.2, 1.0, channels)[:, None]
    shape = -(torch.cos((phase[:, :, None] - lag[:, None]) / 2.0) ** (2 * power[:, :, None]))
    noise = 0.2 * torch.randn(subjects, length, channels, generator=g, dtype=torch.float64)
    return amp[:, :, None] * gain[:, None] * shape + base + noise


def breathing_data(
    seed: int,
    *,
    subjects: int = 12,
    length: int = 2400,
    horizon: int = 5,
    window: int = 100,
    warmup: int = 20,
) -> TaskData:
    """``subjects`` traces of ``length`` samples at 10 Hz (4 minutes), 9 channels.

    Inputs ``(N, window, 9)``: positions at ``t`` (z-scored per channel with the training
    stretch); targets ``(N, window, 9)``: positions at ``t + horizon`` (``horizon`` 5 =
    0.5 s latency), the first ``warmup`` NaN. ``info["scale"]`` holds the per-channel std
    (mm) divided out.
    """
    x = breathing_traces(subjects, length, generator(seed))
    n_tr, n_va = int(0.7 * length), int(0.15 * length)
    mean = x[:, :n_tr].reshape(-1, x.shape[2]).mean(0)
    std = x[:, :n_tr].reshape(-1, x.shape[2]).std(0)
    z = (x - mean) / std
    splits = []
    for lo, hi in ((0, n_tr), (n_tr, n_tr + n_va), (n_tr + n_va, length)):
        part = z[:, lo:hi]
        n = (part.shape[1] - horizon) // window
        xs = part[:, : n * window].reshape(subjects * n, window, -1)
        ys = part[:, horizon : n * window + horizon].reshape(subjects * n, window, -1).clone()
        ys[:, :warmup] = float("nan")
        splits.append(Split(xs.float().contiguous(), ys.float().contiguous()))
    return TaskData(
        splits[0], splits[1], splits[2], {"horizon": horizon, "scale": std.tolist(), "rate": 10.0}
    )


def pohl_nrmse(pred: Tensor, target: Tensor, markers: int = 3) -> float:
    """Pohl et al.'s nRMSE: ``sqrt(Σ_t Σ_j ‖y_j − ŷ_j‖²) / sqrt(Σ_t Σ_j ‖y_j − μ_j‖²)``.

    ``pred, target: (..., 3 * markers)``; ``μ_j`` is marker ``j``'s mean 3-D position over
    the scored targets (the evaluation window); NaN targets are ignored.
    """
    d = target.shape[-1]
    p, t = pred.reshape(-1, d).double(), target.reshape(-1, d).double()
    keep = ~torch.isnan(t).any(-1)
    p, t = p[keep], t[keep]
    if t.shape[0] == 0 or d != 3 * markers:
        return float("nan")
    num = (p - t).square().sum()
    den = (t - t.mean(0)).square().sum()
    return float((num / den).sqrt()) if float(den) > 0 else float("nan")


def breathing_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``nrmse`` (Pohl et al.'s), ``rmse_mm`` (over all channels, in mm) and
    ``nrmse_persistence`` (predicting that the markers stay where they are)."""
    scale = torch.tensor(info["scale"], dtype=torch.float64)
    keep = ~torch.isnan(targets)
    err = (outputs.double() - targets.double()) * scale
    return {
        "nrmse": pohl_nrmse(outputs * scale, targets * scale),
        "rmse_mm": float(err[keep].square().mean().sqrt()),
        "nrmse_persistence": pohl_nrmse(inputs * scale, targets * scale),
    }


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="breathing",
        description="breathing-like traces of 3 markers (9 channels, 10 Hz): 0.5 s ahead",
        kind="regress",
        make_data=breathing_data,
        metric_fn=breathing_metrics,
        primary="nrmse",
        higher_is_better=False,
        io={"input_size": 9, "output_size": 9},
        model="sequence_tagger",
        model_config=lstm_config(64),
        budget=Budget(steps=800, batch_size=32, lr=5e-3, eval_every=100),
        target=None,
        reference=(
            "Pohl et al. (2024): SnAp-1 nRMSE 0.157 at 10 Hz on real marker data (online "
            "RTRL-family learning, horizons up to 2.1 s); not comparable: simulated data"
        ),
        details=(
            "12 simulated subjects x 4 min; period 3-5 s and amplitude drift, baseline "
            "wander, deep breaths, noise 0.2 mm; split 70/15/15 % in time, windows of 10 s "
            "(state not carried across windows; trained offline, not online)."
        ),
    ),
)
