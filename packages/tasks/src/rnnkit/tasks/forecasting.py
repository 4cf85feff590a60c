"""One-step-ahead forecasting: AR(p) with known coefficients, and Lorenz-63 (RK4).

A long series is generated, cut into consecutive train / valid / test stretches (disjoint in
time), and each stretch into windows. Inputs are ``x_t`` ``(N, T, D)``, targets ``x_{t+1}``
``(N, T, D)``; the first ``warmup`` targets of each window are NaN (ignored) so the model has
some context before it is scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import generator, lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

AR_COEFFS = (0.2, 0.3, -0.5)


def ar_series(coeffs: Tensor, length: int, noise: float, g: torch.Generator) -> Tensor:
    """``x_t = Σ_i a_i x_{t-i} + ε_t``, ``ε ~ N(0, noise²)``; returns ``(length,)`` float64.

    The first 500 steps are discarded as burn-in.
    """
    burn = 500
    a = [float(c) for c in coeffs]
    eps = (torch.randn(length + burn, generator=g, dtype=torch.float64) * noise).tolist()
    hist = [0.0] * len(a)  # x_{t-1}, x_{t-2}, ...
    out = []
    for e in eps:
        v = sum(ai * hi for ai, hi in zip(a, hist, strict=True)) + e
        hist = [v, *hist[:-1]]
        out.append(v)
    return torch.tensor(out[burn:], dtype=torch.float64)


def _windows(series: Tensor, window: int, warmup: int) -> Split:
    """Non-overlapping windows: ``series (L, D)`` -> inputs/targets ``(N, window, D)``."""
    n = (series.shape[0] - 1) // window
    x = series[: n * window].reshape(n, window, -1)
    y = series[1 : n * window + 1].reshape(n, window, -1).clone()
    y[:, :warmup] = float("nan")
    return Split(x.float().contiguous(), y.float().contiguous())


def ar_data(
    seed: int,
    *,
    coeffs: tuple[float, ...] = AR_COEFFS,
    noise: float = 0.1,
    length: int = 20000,
    window: int = 50,
    warmup: int = 10,
) -> TaskData:
    """AR(p) forecasting (AR-Net's setting: fixed coefficients ``[0.2, 0.3, -0.5]``, σ=0.1).

    The series is demeaned and scaled by the training stretch's std; 70/15/15 % in time.
    ``info`` holds ``coeffs``, ``noise`` and ``scale`` (the std divided out).
    """
    a = torch.tensor(coeffs, dtype=torch.float64)
    s = ar_series(a, length, noise, generator(seed))
    n_tr, n_va = int(0.7 * length), int(0.15 * length)
    mean, std = s[:n_tr].mean(), s[:n_tr].std()
    s = ((s - mean) / std)[:, None]
    parts = (s[:n_tr], s[n_tr : n_tr + n_va], s[n_tr + n_va :])
    train, valid, test = (_windows(p, window, warmup) for p in parts)
    info = {"coeffs": list(coeffs), "noise": noise, "scale": float(std)}
    return TaskData(train, valid, test, info)


def implied_ar_coefficients(inputs: Tensor, outputs: Tensor, targets: Tensor, p: int) -> Tensor:
    """Least-squares AR(p) coefficients that best explain the model's forecasts.

    Regresses the forecasts ``outputs[:, t]`` on the lags ``inputs[:, t], …, inputs[:, t-p+1]``
    over the scored (non-NaN) steps. For a model that learned the process these are the true
    coefficients. ``inputs, outputs, targets: (N, T, 1)``; returns ``(p,)`` float64.
    """
    x, yh = inputs[..., 0].double(), outputs[..., 0].double()
    scored = ~torch.isnan(targets[..., 0])
    scored[:, : p - 1] = False
    lags = torch.stack([torch.roll(x, i, dims=1) for i in range(p)], -1)  # (N, T, p)
    design, response = lags[scored], yh[scored]
    sol: Tensor = torch.linalg.lstsq(design, response[:, None]).solution
    return sol[:, 0]


def ar_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``mse`` (in units of the scaled series), ``mse_ratio`` (MSE / noise variance: 1.0 is the
    best any forecaster can do) and ``stpe`` of the model's implied AR coefficients."""
    err = M.mse(outputs, targets)
    noise_var = (float(info["noise"]) / float(info["scale"])) ** 2
    true = torch.tensor(info["coeffs"], dtype=torch.float64)
    est = implied_ar_coefficients(inputs, outputs, targets, true.shape[0])
    return {"mse": err, "mse_ratio": err / noise_var, "stpe": M.stpe(est, true)}


# --- Lorenz-63 ---------------------------------------------------------------------------------


def lorenz63_rhs(
    s: tuple[float, float, float], sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0
) -> tuple[float, float, float]:
    """The Lorenz-63 vector field at ``s = (x, y, z)``."""
    x, y, z = s
    return (sigma * (y - x), x * (rho - z) - y, x * y - beta * z)


def rk4(s: tuple[float, float, float], dt: float, steps: int) -> Tensor:
    """Integrate Lorenz-63 with classical RK4 from ``s``; returns ``(steps, 3)`` float64.

    Plain Python floats: for a 3-dimensional system this is much faster than tensor ops.
    """
    out = []
    x, y, z = s
    h = 0.5 * dt
    for _ in range(steps):
        a = lorenz63_rhs((x, y, z))
        b = lorenz63_rhs((x + h * a[0], y + h * a[1], z + h * a[2]))
        c = lorenz63_rhs((x + h * b[0], y + h * b[1], z + h * b[2]))
        d = lorenz63_rhs((x + dt * c[0], y + dt * c[1], z + dt * c[2]))
        x += dt / 6.0 * (a[0] + 2 * b[0] + 2 * c[0] + d[0])
        y += dt / 6.0 * (a[1] + 2 * b[1] + 2 * c[1] + d[1])
        z += dt / 6.0 * (a[2] + 2 * b[2] + 2 * c[2] + d[2])
        out.append((x, y, z))
    return torch.tensor(out, dtype=torch.float64)


def lorenz_data(
    seed: int,
    *,
    dt: float = 0.01,
    every: int = 5,
    length: int = 12000,
    window: int = 60,
    warmup: int = 10,
) -> TaskData:
    """Lorenz-63 (σ=10, ρ=28, β=8/3), RK4 with ``dt``, sampled every ``every`` steps.

    A random initial condition is run for 20 time units of burn-in; ``length`` samples are
    kept, z-scored with the training stretch's statistics, split 70/15/15 % in time.
    """
    g = generator(seed)
    r = (torch.randn(3, generator=g, dtype=torch.float64) * 5.0).tolist()
    s0 = (r[0], r[1], r[2] + 25.0)
    burn = int(20 / dt)
    traj = rk4(s0, dt, burn + length * every)[burn::every][:length]
    n_tr, n_va = int(0.7 * length), int(0.15 * length)
    mean, std = traj[:n_tr].mean(0), traj[:n_tr].std(0)
    traj = (traj - mean) / std
    parts = (traj[:n_tr], traj[n_tr : n_tr + n_va], traj[n_tr + n_va :])
    train, valid, test = (_windows(p, window, warmup) for p in parts)
    return TaskData(train, valid, test, {"dt": dt * every, "lyapunov": 0.9056})


def lorenz_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``mse`` and ``nrmse`` of one-step forecasts, and ``skill`` = 1 − MSE / MSE(persistence)
    (persistence predicts ``x_{t+1} = x_t``; 1 is perfect, 0 no better than persistence)."""
    err = M.mse(outputs, targets)
    persist = M.mse(inputs, targets)
    return {"mse": err, "nrmse": M.nrmse(outputs, targets), "skill": 1.0 - err / persist}


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="ar",
        description="AR(3) forecasting, coefficients [0.2, 0.3, -0.5], noise 0.1",
        kind="regress",
        make_data=ar_data,
        metric_fn=ar_metrics,
        primary="mse_ratio",
        higher_is_better=False,
        io={"input_size": 1, "output_size": 1},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=600, batch_size=32, lr=5e-3, eval_every=100),
        target=1.1,
        reference=(
            "Triebe et al. (AR-Net, 2019): recovers the least-squares AR coefficients "
            "(sTPE near 0; numeric tables not retrieved)"
        ),
        details=(
            "mse_ratio = MSE / noise variance (1.0 is optimal); stpe compares the "
            "coefficients implied by the model's forecasts with the true ones."
        ),
    ),
    Task(
        name="lorenz63",
        description="Lorenz-63 one-step forecasting (RK4, dt 0.01, sampled every 0.05)",
        kind="regress",
        make_data=lorenz_data,
        metric_fn=lorenz_metrics,
        primary="nrmse",
        higher_is_better=False,
        io={"input_size": 3, "output_size": 3},
        model="sequence_tagger",
        model_config=lstm_config(64),
        budget=Budget(steps=1000, batch_size=32, lr=5e-3, eval_every=100),
        target=0.01,
        reference="dysts: largest Lyapunov exponent ≈ 0.9 (no forecasting number)",
        details="z-scored, windows of 60 samples (3 time units), first 10 unscored.",
    ),
)
