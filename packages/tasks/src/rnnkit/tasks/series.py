"""One-step-ahead forecasting of real series that statsmodels ships (sunspots, CO2, El Niño).

statsmodels is an optional extra: ``pip install 'rnnkit-tasks[series]'``. Without it the loaders
raise :class:`MissingExtraError` (a ``ModuleNotFoundError``, and an ``RnnkitError`` so that
``rnnkit train`` prints it as a one-line error) saying what to install; nothing is downloaded
(the data lie inside the statsmodels wheel).

Series (all univariate, ``D = 1``):

* ``sunspots``: yearly mean sunspot number, 1700-2008 (309 values); forecast levels.
* ``co2``: Mauna Loa CO2 in ppm, weekly 1958-03-29 to 2001-12-29 with 59 missing weeks. The
  weekly readings are averaged per calendar month (the missing weeks are left out of the mean);
  the 5 months with no reading at all are filled by linear interpolation between their
  neighbouring months: 526 months, 1958-03 to 2001-12. The series trends upward, so the model
  forecasts the monthly change ``x_{t+1} - x_t`` (a level forecast ``x_t + change`` has the same
  error).
* ``elnino``: monthly Niño 1+2 sea surface temperature, 1950-2010 (732 values); forecast levels.

The (transformed) series is split 70/15/15 % in time and z-scored with the training stretch's
mean and standard deviation. Training windows (:func:`time_windows`) overlap (stride 1) and use
the training stretch only. Validation and test windows tile their stretch so that every target
in it is scored exactly once; their first ``warmup`` steps (unscored, NaN targets) reach back
into the preceding stretch, which is the past of the forecast and so not a leak.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnkit.core.errors import RnnkitError
from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData
from rnnkit.tasks.epidemic import (
    QUANTILES,
    interval_metrics,
    naive_error_quantiles,
    naive_interval,
    quantile_loss_fn,
)

SERIES_EXTRA = "rnnkit-tasks[series]"


class MissingExtraError(RnnkitError, ModuleNotFoundError):
    """An optional dependency of a task is not installed (the message says what to install)."""


@dataclass(frozen=True)
class RealSeries:
    """A univariate series: ``values`` float64 ``(L,)``, equally spaced, no missing values.

    ``start`` labels the first value (``"1700"``, ``"1958-03"``), ``step`` is the spacing
    (``"year"`` or ``"month"``), ``season`` the seasonal period in steps (1 = none).
    """

    name: str
    values: Tensor
    start: str
    step: str
    season: int
    source: str


def statsmodels_datasets() -> Any:
    """``statsmodels.datasets``, or :class:`MissingExtraError` saying what to install."""
    try:
        return importlib.import_module("statsmodels.datasets")
    except ImportError as exc:
        raise MissingExtraError(
            "the real-series forecasting tasks (sunspots, co2, elnino) read their data from "
            f"statsmodels, which is not installed: pip install '{SERIES_EXTRA}' "
            f"(or pip install statsmodels); import error: {exc}",
            name="statsmodels",
        ) from exc


def monthly_means(years: np.ndarray, months: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average irregular readings per calendar month and fill empty months.

    ``years, months, values``: ``(K,)`` (``values`` NaN where missing), sorted in time. Returns
    ``(n_months,)`` float64 from the first to the last month: the mean of the month's non-NaN
    readings; a month with none is linearly interpolated between the nearest months that have
    some (in month index). The first and last months must have readings.
    """
    index = (years - years[0]) * 12 + (months - months[0])
    n = int(index[-1]) + 1
    ok = ~np.isnan(values)
    sums = np.bincount(index[ok], weights=values[ok], minlength=n)
    counts = np.bincount(index[ok], minlength=n)
    have = counts > 0
    if not (have[0] and have[-1]):
        raise ValueError("the first and the last month need at least one reading")
    means = np.zeros(n)
    means[have] = sums[have] / counts[have]
    grid = np.arange(n)
    means[~have] = np.interp(grid[~have], grid[have], means[have])
    return means


def _load_sunspots() -> RealSeries:
    frame = statsmodels_datasets().sunspots.load_pandas().data
    years = frame["YEAR"].to_numpy(dtype=np.float64)
    if not np.all(np.diff(years) == 1.0):
        raise ValueError("statsmodels' sunspots series is expected to be yearly without gaps")
    values = torch.from_numpy(frame["SUNACTIVITY"].to_numpy(dtype=np.float64).copy())
    return RealSeries("sunspots", values, f"{int(years[0])}", "year", 1, "statsmodels sunspots")


def _load_co2() -> RealSeries:
    frame = statsmodels_datasets().co2.load_pandas().data
    idx = frame.index
    years = np.asarray(idx.year, dtype=np.int64)
    months = np.asarray(idx.month, dtype=np.int64)
    weekly = frame["co2"].to_numpy(dtype=np.float64)
    values = torch.from_numpy(monthly_means(years, months, weekly))
    return RealSeries(
        "co2", values, f"{years[0]}-{months[0]:02d}", "month", 12, "statsmodels co2 (monthly)"
    )


def _load_elnino() -> RealSeries:
    frame = statsmodels_datasets().elnino.load_pandas().data
    years = frame["YEAR"].to_numpy(dtype=np.float64)
    table = frame.drop(columns="YEAR").to_numpy(dtype=np.float64)  # (years, 12)
    if table.shape[1] != 12 or not np.all(np.diff(years) == 1.0):
        raise ValueError("statsmodels' elnino table is expected to be years x 12 months")
    values = torch.from_numpy(table.reshape(-1).copy())  # row-major: month by month
    return RealSeries("elnino", values, f"{int(years[0])}-01", "month", 12, "statsmodels elnino")


LOADERS: dict[str, Callable[[], RealSeries]] = {
    "sunspots": _load_sunspots,
    "co2": _load_co2,
    "elnino": _load_elnino,
}


@functools.cache
def load_series(name: str) -> RealSeries:
    """The series ``name`` (one of :data:`LOADERS`); needs statsmodels."""
    if name not in LOADERS:
        raise ValueError(f"unknown series {name!r}; choose one of {sorted(LOADERS)}")
    return LOADERS[name]()


def time_windows(
    series: Tensor, first: int, stop: int, *, window: int, warmup: int, stride: int | None
) -> Split:
    """Windows of one-step forecasts whose scored targets are ``series[first:stop]``.

    ``series: (L, D)``. A window starting at ``p`` has inputs ``series[p : p + window]`` and
    targets ``series[p + 1 : p + window + 1]``, both ``(window, D)``; its first ``warmup``
    targets are NaN (context only). With ``stride`` (training) the windows start at
    ``first - 1 - warmup`` every ``stride`` steps, plus one window ending at ``stop - 1``, so
    targets may be scored in several windows; no input or target lies at or after ``stop``.
    With ``stride=None`` (evaluation) consecutive windows advance by ``window - warmup`` so
    each target in ``[first, stop)`` is scored exactly once (the last window is moved back to
    end at ``stop - 1`` and its already scored targets are NaN). Returns inputs and targets
    ``(N, window, D)`` float32.
    """
    if not 0 <= warmup < window:
        raise ValueError(f"warmup must lie in [0, window), got {warmup} and {window}")
    p0 = first - 1 - warmup
    last = stop - 1 - window  # start of a window whose last target is series[stop - 1]
    if p0 < 0 or last < p0 or stop > series.shape[0]:
        raise ValueError(
            f"cannot cut windows of {window} (warmup {warmup}) scoring targets "
            f"[{first}, {stop}) from a series of length {series.shape[0]}"
        )
    step = window - warmup if stride is None else stride
    starts = list(range(p0, last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    pos = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(window)[None, :]
    target_pos = pos + 1
    scored = torch.ones(pos.shape, dtype=torch.bool)
    scored[:, :warmup] = False
    if stride is None and len(starts) > 1:
        # the moved-back last window: targets already scored by the previous window
        covered = starts[-2] + window  # last target index of the previous window
        scored[-1] &= target_pos[-1] > covered
    x = series[pos]
    y = series[target_pos].clone()
    y[~scored] = float("nan")
    return Split(x.float().contiguous(), y.float().contiguous())


def mase_scale(levels: Tensor, season: int) -> float:
    """In-sample MAE of the (seasonal) naive forecast ``x_t = x_{t-m}`` on ``levels (L,)``."""
    return float((levels[season:] - levels[:-season]).abs().mean())


def series_data(
    seed: int,
    *,
    name: str,
    window: int,
    warmup: int,
    difference: bool = False,
    fractions: tuple[float, float] = (0.7, 0.15),
) -> TaskData:
    """Forecasting data of the real series ``name`` (see the module docstring).

    Inputs and targets ``(N, window, 1)`` float32 in units of the training stretch's standard
    deviation (of the levels, or of the changes with ``difference``). The data do not depend
    on ``seed`` (the series is fixed); training order does. ``info`` holds what the metrics
    need: ``mean`` and ``std`` (the z-score), ``season``, ``difference`` and ``mase_scale``
    (the training stretch's naive, or seasonal naive when ``season > 1``, in-sample MAE of
    the levels, in the same units).
    """
    s = load_series(name)
    levels = s.values
    x = levels[1:] - levels[:-1] if difference else levels
    n = x.shape[0]
    n_tr, n_va = int(fractions[0] * n), int(fractions[1] * n)
    mean, std = float(x[:n_tr].mean()), float(x[:n_tr].std())
    z = ((x - mean) / std)[:, None]
    train = time_windows(z, warmup + 1, n_tr, window=window, warmup=warmup, stride=1)
    valid = time_windows(z, n_tr, n_tr + n_va, window=window, warmup=warmup, stride=None)
    test = time_windows(z, n_tr + n_va, n, window=window, warmup=warmup, stride=None)
    # the training levels: x[:n_tr] are levels[:n_tr], or changes up to levels[n_tr]
    train_levels = levels[: n_tr + 1] if difference else levels[:n_tr]
    info = {
        "series": name,
        "source": s.source,
        "start": s.start,
        "step": s.step,
        "season": s.season,
        "difference": difference,
        "mean": mean,
        "std": std,
        "mase_scale": mase_scale(train_levels, s.season) / std,
        "points": (n_tr, n_va, n - n_tr - n_va),
    }
    return TaskData(train, valid, test, info)


def baseline_forecasts(inputs: Tensor, info: Mapping[str, Any]) -> dict[str, Tensor]:
    """Forecasts of simple baselines from the window inputs, in the model's units.

    ``inputs: (N, T, 1)`` (``z_t`` at step ``t``, forecasting ``z_{t+1}``); returns
    ``{name: (N, T, 1)}``, NaN where a window is too short to form the forecast:

    * ``naive``: the last level, ``x_{t+1} = x_t`` (MASE's reference forecast).
    * ``snaive`` (``season = m > 1``): the level one season back, ``x_{t+1} = x_{t+1-m}``.
    * ``snaive_change`` (``season > 1`` with ``difference``): last season's change,
      ``x_{t+1} - x_t = x_{t+1-m} - x_{t-m}``.
    """
    m = int(info["season"])
    mean, std = float(info["mean"]), float(info["std"])
    z = inputs.double()
    T = z.shape[1]
    out: dict[str, Tensor] = {}
    if not info["difference"]:
        out["naive"] = z.clone()
        if m > 1:
            snaive = torch.full_like(z, float("nan"))
            snaive[:, m - 1 :] = z[:, : T - m + 1]
            out["snaive"] = snaive
        return out
    # model units are standardised changes c_t = x_t - x_{t-1}: z = (c - mean) / std
    out["naive"] = torch.full_like(z, -mean / std)  # change 0
    if m > 1:
        change = z * std + mean
        # x_{t+1-m} - x_t = -(c_{t+2-m} + ... + c_t): a sum of the last m - 1 changes
        csum = torch.cumsum(change, dim=1)
        back = torch.zeros_like(csum)
        back[:, m - 1 :] = csum[:, : T - m + 1]
        snaive = torch.full_like(z, float("nan"))
        snaive[:, m - 2 :] = (-(csum - back)[:, m - 2 :] - mean) / std
        out["snaive"] = snaive
        snaive_change = torch.full_like(z, float("nan"))
        snaive_change[:, m - 1 :] = z[:, : T - m + 1]
        out["snaive_change"] = snaive_change
    return out


def _mae(pred: Tensor, target: Tensor) -> float:
    mask = ~torch.isnan(target)
    if int(mask.sum()) == 0:
        return float("nan")
    return float((pred[mask].double() - target[mask].double()).abs().mean())


def series_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """Model metrics next to the same metrics of simple baselines (:func:`baseline_forecasts`).

    ``mase`` = MAE / ``info["mase_scale"]`` (Hyndman's MASE: below 1 beats the in-sample
    naive forecast), ``mse``, ``nrmse`` (RMSE over the targets' standard deviation, in the
    model's units: of the changes for a differenced series) and, per baseline ``b``,
    ``b_mase``; ``skill`` = 1 − MSE / MSE of the best baseline (by MSE; > 0 beats them all).
    A baseline is undefined (NaN) at scored steps only if ``warmup`` is shorter than a season.
    """
    scale = float(info["mase_scale"])
    err = M.mse(outputs, targets)
    out: Metrics = {
        "mase": _mae(outputs, targets) / scale,
        "mse": err,
        "nrmse": M.nrmse(outputs, targets),
    }
    best = float("inf")
    for name, pred in baseline_forecasts(inputs, info).items():
        out[f"{name}_mase"] = _mae(pred, targets) / scale
        best = min(best, M.mse(pred, targets))
    out["skill"] = 1.0 - err / best
    return out


# --- quantile forecasts (prediction intervals) ------------------------------------------------


def series_quantile_data(
    seed: int,
    *,
    name: str,
    window: int,
    warmup: int,
    difference: bool = False,
    quantiles: Sequence[float] = QUANTILES,
) -> TaskData:
    """:func:`series_data` with quantile targets: each target repeated once per quantile.

    Targets ``(N, window, Q)`` (channel ``q`` is scored as quantile ``quantiles[q]`` by the
    pinball loss). ``info`` adds ``quantiles`` and ``naive_error_quantiles`` (the empirical
    quantiles of the naive forecast's errors over the training windows' scored targets, for
    the naive interval baseline).
    """
    d = series_data(seed, name=name, window=window, warmup=warmup, difference=difference)
    q = len(quantiles)
    naive = baseline_forecasts(d.train.inputs, d.info)["naive"].float()
    err_q = naive_error_quantiles(naive, d.train.targets, quantiles)

    def tile(split: Split) -> Split:
        return Split(split.inputs, split.targets.repeat_interleave(q, -1).contiguous())

    info = {**d.info, "quantiles": list(quantiles), "naive_error_quantiles": err_q}
    return TaskData(tile(d.train), tile(d.valid), tile(d.test), info)


def series_interval_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """Interval metrics (:func:`~rnnkit.tasks.epidemic.interval_metrics`) of the quantile
    forecasts with M4's MSIS scale (the training stretch's in-sample, seasonal when
    ``season > 1``, naive MAE of the levels, ``info["mase_scale"]``), ``mase`` of the median,
    and ``naive_quantile_loss``, ``naive_coverage``, ``naive_msis`` of the naive interval
    forecast (last value plus the training errors' quantiles)."""
    quantiles = tuple(float(v) for v in info["quantiles"])
    q = len(quantiles)
    scale = float(info["mase_scale"])
    naive = baseline_forecasts(inputs, info)["naive"].float()  # (N, T, 1)
    naive_q = naive.repeat_interleave(q, -1)
    median = quantiles.index(0.5) if 0.5 in quantiles else q // 2
    out = interval_metrics(outputs, targets, naive_q, quantiles, median=median, scale=scale)
    out["mase"] = out["mae"] / scale
    base = interval_metrics(
        naive_interval(naive[..., 0:1], info["naive_error_quantiles"]),
        targets,
        naive_q,
        quantiles,
        median=median,
        scale=scale,
    )
    out.update({f"naive_{k}": base[k] for k in ("quantile_loss", "coverage", "msis")})
    out["naive_mase"] = base["mae"] / scale
    return out


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="sunspots",
        description="yearly sunspot numbers 1700-2008 (statsmodels): next year",
        kind="regress",
        make_data=functools.partial(series_data, name="sunspots", window=40, warmup=11),
        metric_fn=series_metrics,
        primary="mase",
        higher_is_better=False,
        io={"input_size": 1, "output_size": 1},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=400, batch_size=32, lr=5e-3, eval_every=50),
        target=0.85,  # measured 0.789 (seed 0)
        details=(
            "Needs statsmodels (pip install 'rnnkit-tasks[series]'). 309 values, split "
            "70/15/15 % in time (216 / 46 / 47 years), z-scored; windows of 40 "
            "years, first 11 unscored; naive (last year) forecast reported next to it."
        ),
    ),
    Task(
        name="co2",
        description="Mauna Loa CO2 1958-2001 (statsmodels), monthly: next month's change",
        kind="regress",
        make_data=functools.partial(series_data, name="co2", window=48, warmup=12, difference=True),
        metric_fn=series_metrics,
        primary="mase",
        higher_is_better=False,
        io={"input_size": 1, "output_size": 1},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=400, batch_size=32, lr=5e-3, eval_every=50),
        target=0.25,  # measured 0.214 (seed 0)
        details=(
            "Needs statsmodels. Weekly readings averaged per month (5 empty months "
            "interpolated linearly): 526 months; monthly changes, split 70/15/15 % in "
            "time, z-scored; windows of 48 months, first 12 unscored; naive, seasonal "
            "naive and last-year's-change forecasts reported next to it."
        ),
    ),
    Task(
        name="elnino",
        description="El Nino 1+2 sea surface temperature 1950-2010 (statsmodels): next month",
        kind="regress",
        make_data=functools.partial(series_data, name="elnino", window=48, warmup=12),
        metric_fn=series_metrics,
        primary="mase",
        higher_is_better=False,
        io={"input_size": 1, "output_size": 1},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=400, batch_size=32, lr=5e-3, eval_every=50),
        target=0.4,  # measured 0.358 (seed 0)
        details=(
            "Needs statsmodels. 732 months, split 70/15/15 % in time, z-scored; windows "
            "of 48 months, first 12 unscored; naive and seasonal naive forecasts "
            "reported next to it."
        ),
    ),
    Task(
        name="sunspots_pi",
        description="sunspots (statsmodels), next year as 2.5/50/97.5 % quantiles",
        kind="regress",
        make_data=functools.partial(series_quantile_data, name="sunspots", window=40, warmup=11),
        metric_fn=series_interval_metrics,
        loss_fn=quantile_loss_fn(QUANTILES),
        primary="quantile_loss",
        higher_is_better=False,
        io={"input_size": 1, "output_size": len(QUANTILES)},
        model="esrnn",
        model_config={"hidden_size": 32, "season": 11},  # the ~11-year solar cycle
        budget=Budget(steps=400, batch_size=32, lr=5e-3, eval_every=50),
        details=(
            "Needs statsmodels. The sunspots data (z-scored levels), targets repeated per "
            "quantile, pinball loss; coverage of the 95 % interval, ACD, MSIS (scale: the "
            "in-sample naive MAE) and the naive interval forecast reported next to them."
        ),
    ),
    Task(
        name="co2_pi",
        description="Mauna Loa CO2 levels (statsmodels), next month as 2.5/50/97.5 % quantiles",
        kind="regress",
        make_data=functools.partial(series_quantile_data, name="co2", window=48, warmup=12),
        metric_fn=series_interval_metrics,
        loss_fn=quantile_loss_fn(QUANTILES),
        primary="quantile_loss",
        higher_is_better=False,
        io={"input_size": 1, "output_size": len(QUANTILES)},
        model="esrnn",
        model_config={"hidden_size": 32, "season": 12, "trend": True},
        budget=Budget(steps=400, batch_size=32, lr=5e-3, eval_every=50),
        details=(
            "Needs statsmodels. The monthly CO2 levels (not changes, unlike co2; z-scored "
            "with the training stretch, so later levels lie above the training range), "
            "targets repeated per quantile, pinball loss; coverage, ACD, MSIS (scale: the "
            "in-sample seasonal naive MAE, m = 12) and the naive interval forecast."
        ),
    ),
)
