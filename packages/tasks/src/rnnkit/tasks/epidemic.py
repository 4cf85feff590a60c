"""Epidemic-like curves with prediction intervals: a noisy multi-region SEIR model.

Each example is one simulated epidemic in ``regions`` coupled regions (daily SEIR with
mobility between regions, a random intervention that lowers transmission, reporting noise).
The model reads the observed daily incidence (``log1p`` of cases per 100k) of every region
and forecasts the next day as quantiles: output channel ``r * Q + q`` is quantile
``QUANTILES[q]`` of region ``r``. Targets repeat the observed value for each of the ``Q``
quantile channels (so the ``regress`` shapes hold) and are scored with the pinball loss.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import drop_seen, generator, lstm_config
from rnnkit.tasks.base import Budget, LossFn, Metrics, Split, Task, TaskData

QUANTILES: tuple[float, ...] = (0.025, 0.5, 0.975)  # a central 95 % interval and the median


def quantile_loss(
    outputs: Tensor, targets: Tensor, quantiles: Sequence[float] = QUANTILES
) -> tuple[Tensor, Tensor]:
    """Summed pinball loss and count over non-NaN targets.

    ``outputs, targets: (..., D)`` with channel ``c`` the quantile ``quantiles[c % Q]``:
    ``ρ_τ(u) = max(τ u, (τ - 1) u)`` with ``u = y - ŷ``.
    """
    q = len(quantiles)
    tau = torch.tensor(quantiles, device=outputs.device).repeat(targets.shape[-1] // q)
    mask = ~torch.isnan(targets)
    u = (targets - outputs.float()).nan_to_num(0.0)
    loss = torch.maximum(tau * u, (tau - 1.0) * u)
    return (loss * mask).sum(), mask.sum().float()


def quantile_loss_fn(quantiles: Sequence[float] = QUANTILES) -> LossFn:
    """:func:`quantile_loss` with fixed ``quantiles``, as a :class:`~rnnkit.tasks.Task` loss."""
    return functools.partial(quantile_loss, quantiles=tuple(quantiles))


def interval_metrics(
    outputs: Tensor,
    targets: Tensor,
    naive: Tensor,
    quantiles: Sequence[float] = QUANTILES,
    lower: int = 0,
    upper: int = -1,
    median: int = 1,
    scale: float | None = None,
) -> Metrics:
    """Quantile-forecast metrics over non-NaN targets (``(..., R * Q)`` tiled, see module).

    ``quantile_loss`` (mean pinball, :func:`~rnnkit.tasks.metrics.pinball_loss`),
    ``coverage`` (PICP: fraction of ``y`` inside ``[q_lower, q_upper]``), ``acd`` =
    |coverage - nominal|, ``width`` (mean interval width), ``msis``
    (:func:`~rnnkit.tasks.metrics.msis`: the mean interval score
    ``(U - L) + (2/α)(L - y)⁺ + (2/α)(y - U)⁺`` divided by ``scale``, by default the mean
    absolute error of the ``naive`` forecast on the same targets, M4's scaling with m = 1 but
    out of sample) and ``mae`` of the median.
    """
    q = len(quantiles)
    tau = torch.tensor(quantiles, dtype=torch.float64).repeat(targets.shape[-1] // q)
    shape = (*targets.shape[:-1], targets.shape[-1] // q, q)
    out, y = outputs.double().reshape(shape), targets.double().reshape(shape)[..., 0]
    nv = naive.double().reshape(shape)[..., 0]
    lo, hi, mid = out[..., lower], out[..., upper], out[..., median]
    keep = ~torch.isnan(y)
    alpha = 1.0 - (quantiles[upper] - quantiles[lower])
    cov = M.interval_coverage(lo, hi, y)
    if scale is None:
        scale = float((y[keep] - nv[keep]).abs().mean())
    return {
        "quantile_loss": M.pinball_loss(outputs, targets, tau),
        "coverage": cov,
        "acd": abs(cov - (1.0 - alpha)),
        "width": float((hi[keep] - lo[keep]).mean()),
        "msis": M.msis(lo, hi, y, alpha, scale) if scale > 0 else float("nan"),
        "mae": float((mid[keep] - y[keep]).abs().mean()),
    }


def naive_error_quantiles(
    naive: Tensor, targets: Tensor, quantiles: Sequence[float] = QUANTILES
) -> list[float]:
    """Empirical ``quantiles`` of ``target - naive`` over the non-NaN targets (the errors of
    the naive forecast on training data), pooled over channels. ``naive, targets``: equal
    shapes, one value per channel (not tiled per quantile)."""
    keep = ~torch.isnan(targets)
    err = (targets[keep] - naive[keep]).double()
    levels = torch.tensor(quantiles, dtype=torch.float64)
    return [float(v) for v in torch.quantile(err, levels)]


def naive_interval(naive: Tensor, error_quantiles: Sequence[float]) -> Tensor:
    """The naive quantile forecast: ``naive`` plus each empirical error quantile.

    ``naive: (..., R)`` -> ``(..., R * Q)`` in the tiled layout (channel ``r * Q + q``): a
    trivial interval forecast for the models to beat.
    """
    offsets = torch.tensor(error_quantiles, dtype=naive.dtype)
    return (naive[..., None] + offsets).flatten(-2)


def seir_incidence(
    n: int, regions: int, days: int, g: torch.Generator, substeps: int = 4
) -> Tensor:
    """Observed daily incidence per 100k, ``(n, days, regions)`` float64 (see module).

    Per example: R0 ~ U(1.5, 3.5), latent period ~ U(2, 5) d, infectious ~ U(4, 8) d,
    populations 10^U(5, 6.5), mobility 0.5-5 % of contacts in other regions, 1-20 initial
    cases in one random region, an intervention at day U(20, 80) that scales transmission by
    U(0.3, 0.9), reporting rate U(0.2, 0.6) with log-normal noise (sd 0.15) and a weekday
    effect (weekend reports x0.7).
    """

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)

    gamma = 1.0 / u(4.0, 8.0, 1)
    sigma = 1.0 / u(2.0, 5.0, 1)
    beta0 = u(1.5, 3.5, 1) * gamma
    pop = 10.0 ** u(5.0, 6.5, regions)
    mob = u(0.005, 0.05, 1)
    mix = (1.0 - mob)[:, :, None] * torch.eye(regions, dtype=torch.float64) + (mob / regions)[
        :, :, None
    ] * torch.ones(regions, regions, dtype=torch.float64)  # (n, R, R)
    day_int = u(20.0, 80.0, 1)
    cut = u(0.3, 0.9, 1)
    report = u(0.2, 0.6, 1)
    seed_region = torch.randint(0, regions, (n,), generator=g)
    e = torch.zeros(n, regions, dtype=torch.float64)
    e[torch.arange(n), seed_region] = u(1.0, 20.0)
    s, i = pop - e, torch.zeros_like(e)
    noise = torch.randn(n, days, regions, generator=g, dtype=torch.float64) * 0.15
    phase = torch.randint(0, 7, (n, 1), generator=g)
    h = 1.0 / substeps
    out = torch.empty(n, days, regions, dtype=torch.float64)
    for d in range(days):
        beta = beta0 * torch.where(torch.tensor(float(d)) >= day_int, cut, torch.ones_like(cut))
        new = torch.zeros_like(e)
        for _ in range(substeps):
            force = torch.bmm(mix, (i / pop)[:, :, None])[:, :, 0]  # infectious fraction met
            inf = h * beta * s * force
            prog = h * sigma * e
            s, e, i = s - inf, e + inf - prog, i + prog - h * gamma * i
            new = new + prog
        weekday = ((phase[:, 0] + d) % 7 >= 5).double()[:, None]
        obs = new * report * (1.0 - 0.3 * weekday) * noise[:, d].exp()
        out[:, d] = obs / pop * 1e5
    return out


def epidemic_data(
    seed: int,
    *,
    regions: int = 4,
    days: int = 120,
    warmup: int = 14,
    quantiles: Sequence[float] = QUANTILES,
    sizes: tuple[int, int, int] = (2000, 300, 300),
) -> TaskData:
    """Next-day quantile forecasts of ``log1p`` incidence per 100k in every region.

    Inputs ``(N, days - 1, regions)`` (day ``t``), targets ``(N, days - 1, regions * Q)``
    (day ``t + 1`` repeated per quantile), the first ``warmup`` days NaN (not scored).
    Train, valid and test are independent epidemics (separate random streams).
    """
    q = len(quantiles)
    splits = []
    for stream, size in enumerate(sizes):
        z = torch.log1p(seir_incidence(size, regions, days, generator(seed, stream))).float()
        x, y = z[:, :-1], z[:, 1:].repeat_interleave(q, -1).clone()
        y[:, :warmup] = float("nan")
        splits.append(Split(x.contiguous(), y.contiguous()))
    train, valid, test = splits
    valid = drop_seen(valid, train)
    test = drop_seen(test, train, valid)
    # the naive forecast's errors on training data, for the naive interval baseline
    err_q = naive_error_quantiles(train.inputs, train.targets[..., ::q], quantiles)
    info = {"quantiles": list(quantiles), "regions": regions, "naive_error_quantiles": err_q}
    return TaskData(train, valid, test, info)


def epidemic_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """:func:`interval_metrics`; the naive forecast (for ``msis``) is today's value.

    Also the same metrics (``naive_quantile_loss``, ``naive_coverage``, ``naive_msis``) of
    the naive interval forecast (:func:`naive_interval`: today's value plus the empirical
    quantiles of the naive forecast's errors on the training split).
    """
    quantiles = tuple(float(v) for v in info["quantiles"])
    naive = inputs.repeat_interleave(len(quantiles), -1)
    out = interval_metrics(outputs, targets, naive, quantiles)
    if "naive_error_quantiles" in info:
        base = interval_metrics(
            naive_interval(inputs, info["naive_error_quantiles"]), targets, naive, quantiles
        )
        out.update({f"naive_{k}": base[k] for k in ("quantile_loss", "coverage", "msis")})
    return out


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="epidemic",
        description="multi-region SEIR incidence: next-day 2.5/50/97.5 % quantiles",
        kind="regress",
        make_data=epidemic_data,
        metric_fn=epidemic_metrics,
        loss_fn=quantile_loss_fn(QUANTILES),
        primary="quantile_loss",
        higher_is_better=False,
        io={"input_size": 4, "output_size": 4 * len(QUANTILES)},
        model="sequence_tagger",
        model_config=lstm_config(64),
        budget=Budget(steps=800, batch_size=32, lr=5e-3, eval_every=100),
        target=None,
        reference=(
            "Mathonsi & van Zyl (MES-LSTM, 2022): coverage/ACD/MSIS on COVID-19 data "
            "(per-dataset numbers not retrieved)"
        ),
        details=(
            "4 coupled regions, 120 days, random R0, periods, intervention and reporting "
            "(log-normal noise, weekend dip); log1p cases per 100k; pinball loss; "
            "coverage of the 95 % interval, ACD and MSIS (naive scale, m = 1) reported."
        ),
    ),
)
