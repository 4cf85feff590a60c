"""Real-series forecasting (statsmodels' sunspots, CO2, El Niño): windows, splits, baselines."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.core.cli import main as cli_main
from rnnkit.core.errors import RnnkitError
from rnnkit.tasks import Split, get_task
from rnnkit.tasks import series as S

HAVE_STATSMODELS = importlib.util.find_spec("statsmodels") is not None
needs_statsmodels = pytest.mark.skipif(
    not HAVE_STATSMODELS, reason="needs statsmodels: pip install 'rnnkit-tasks[series]'"
)


def _scored_times(split: Split) -> torch.Tensor:
    """Time indices of the scored targets of windows cut from ``arange`` (as float32)."""
    y = split.targets[..., 0]
    times: torch.Tensor = y[~torch.isnan(y)].long()
    return times


@pytest.mark.parametrize(("window", "warmup"), [(7, 0), (10, 3), (9, 8)])
def test_time_windows_on_a_clock(window: int, warmup: int) -> None:
    L = 103
    clock = torch.arange(L, dtype=torch.float64)[:, None]  # value = time index
    first, stop = 61, 97
    # evaluation: every target of [first, stop) scored exactly once
    ev = S.time_windows(clock, first, stop, window=window, warmup=warmup, stride=None)
    assert ev.inputs.shape[1:] == (window, 1)
    assert sorted(_scored_times(ev).tolist()) == list(range(first, stop))
    # one step ahead everywhere: target = input + 1 (also at unscored steps' inputs)
    assert torch.equal(ev.inputs[:, 1:], ev.inputs[:, :-1] + 1)
    scored = ~torch.isnan(ev.targets)
    assert torch.equal(ev.targets[scored], ev.inputs[scored] + 1)
    assert torch.isnan(ev.targets[:, :warmup]).all()
    assert int(ev.inputs.max()) == stop - 2 and int(ev.inputs.min()) >= first - 1 - warmup
    # training: overlapping windows inside [first - 1 - warmup, stop), last target stop - 1
    stride = min(2, window - warmup)  # a stride up to the scored length covers every target
    tr = S.time_windows(clock, warmup + 1, first, window=window, warmup=warmup, stride=stride)
    assert int(tr.inputs.min()) == 0 and int(_scored_times(tr).max()) == first - 1
    assert int(torch.nan_to_num(tr.targets, -1).max()) == first - 1
    assert set(_scored_times(tr).tolist()) == set(range(warmup + 1, first))
    with pytest.raises(ValueError, match="warmup"):
        S.time_windows(clock, first, stop, window=5, warmup=5, stride=None)
    with pytest.raises(ValueError, match="cannot cut"):
        S.time_windows(clock, warmup + 1, window, window=window, warmup=warmup, stride=None)


def test_monthly_means_average_and_interpolate() -> None:
    years = np.array([2000, 2000, 2000, 2000, 2000, 2000])
    months = np.array([1, 1, 2, 2, 4, 5])
    values = np.array([1.0, 3.0, np.nan, 6.0, 10.0, 7.0])
    got = S.monthly_means(years, months, values)
    # Jan: mean(1, 3); Feb: 6 (NaN left out); Mar: no reading -> between 6 and 10; Apr; May
    np.testing.assert_allclose(got, [2.0, 6.0, 8.0, 10.0, 7.0])
    yrs = np.array([1999, 2000, 2000])
    got = S.monthly_means(yrs, np.array([12, 1, 3]), np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(got, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="first and the last month"):
        S.monthly_means(years[:3], months[:3], np.array([1.0, 2.0, np.nan]))


def _fake(monkeypatch: pytest.MonkeyPatch, values: torch.Tensor, season: int) -> None:
    fake = S.RealSeries("fake", values, "0", "month", season, "test")
    monkeypatch.setattr(S, "load_series", lambda name: fake)


@pytest.mark.parametrize("difference", [False, True])
def test_series_data_splits_in_time_without_leakage(
    monkeypatch: pytest.MonkeyPatch, difference: bool
) -> None:
    L = 400
    t = torch.arange(L, dtype=torch.float64)
    # levels whose changes encode time too: x_t = t^2 / 2 -> x_t - x_{t-1} = t - 1/2
    levels = t.square() / 2 if difference else t
    _fake(monkeypatch, levels, 12)
    d = S.series_data(0, name="fake", window=30, warmup=12, difference=difference)
    n = L - 1 if difference else L
    n_tr, n_va = int(0.7 * n), int(0.15 * n)
    assert d.info["points"] == (n_tr, n_va, n - n_tr - n_va)

    def times(x: torch.Tensor) -> torch.Tensor:
        v = x.double() * d.info["std"] + d.info["mean"]  # undo the z-score
        return torch.round(v + 0.5).long() - 1 if difference else torch.round(v).long()

    # the z-score uses the training stretch only
    x = levels[1:] - levels[:-1] if difference else levels
    assert d.info["mean"] == pytest.approx(float(x[:n_tr].mean()))
    tr, va, te = d.train, d.valid, d.test
    tr_t = times(tr.targets[~torch.isnan(tr.targets)])
    assert int(times(tr.inputs).max()) < n_tr and int(tr_t.max()) == n_tr - 1
    for split, (a, b) in ((va, (n_tr, n_tr + n_va)), (te, (n_tr + n_va, n))):
        got = times(split.targets[~torch.isnan(split.targets)])
        assert sorted(got.tolist()) == list(range(a, b))  # each scored once, none outside
        assert int(times(split.inputs).max()) == b - 2  # inputs are past values only
    # fixed data: the seed changes nothing
    again = S.series_data(5, name="fake", window=30, warmup=12, difference=difference)
    assert torch.equal(again.test.inputs, te.inputs)


def test_baselines_match_direct_level_forecasts(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    L, m = 300, 12
    t = torch.arange(L, dtype=torch.float64)
    levels = 0.05 * t + torch.sin(2 * math.pi * t / m) + 0.1 * torch.randn(L, generator=g)
    levels = levels + 0.002 * t.square()  # a trend whose change grows
    for difference in (False, True):
        _fake(monkeypatch, levels, m)
        d = S.series_data(0, name="fake", window=40, warmup=12, difference=difference)
        n = L - 1 if difference else L
        n_tr, n_va = int(0.7 * n), int(0.15 * n)
        # the test stretch's level targets and the baselines' level forecasts, in float64
        off = 1 if difference else 0  # model target index i is levels[i + off]
        idx = torch.arange(n_tr + n_va, n) + off
        truth = levels[idx]
        direct = {"naive": levels[idx - 1], "snaive": levels[idx - m]}
        if difference:
            direct["snaive_change"] = levels[idx - 1] + levels[idx - m] - levels[idx - m - 1]
        scale = float((levels[: n_tr + off][m:] - levels[: n_tr + off][:-m]).abs().mean())
        got = S.series_metrics(d.test.inputs, d.test.targets, d.test.inputs, d.info)
        baselines = {k.removesuffix("_mase") for k in got if k.endswith("_mase") and k != "mase"}
        assert baselines == set(direct)
        for name, pred in direct.items():
            want = float((pred - truth).abs().mean()) / scale
            assert got[f"{name}_mase"] == pytest.approx(want, rel=1e-5), (difference, name)


def test_mase_and_skill_of_a_perfect_and_a_naive_model(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.arange(200, dtype=torch.float64)
    _fake(monkeypatch, torch.sin(t / 3.0) + 0.01 * t, 1)
    d = S.series_data(0, name="fake", window=20, warmup=4)
    perfect = S.series_metrics(
        d.test.targets.nan_to_num(0.0), d.test.targets, d.test.inputs, d.info
    )
    assert perfect["mase"] == 0.0 and perfect["skill"] == 1.0 and perfect["naive_mase"] > 0.1
    naive = S.series_metrics(d.test.inputs, d.test.targets, d.test.inputs, d.info)
    assert naive["mase"] == pytest.approx(naive["naive_mase"]) and naive["skill"] == 0.0
    assert "snaive_mase" not in naive  # no season


def test_missing_statsmodels_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    S.load_series.cache_clear()
    monkeypatch.setitem(sys.modules, "statsmodels", None)  # import statsmodels -> ImportError
    monkeypatch.setitem(sys.modules, "statsmodels.datasets", None)
    hint = r"pip install 'rnnkit-tasks\[series\]'"
    try:
        for name in ("sunspots", "co2", "elnino", "sunspots_pi", "co2_pi"):
            with pytest.raises(ModuleNotFoundError, match=hint) as info:
                get_task(name).data(0)
            assert isinstance(info.value, RnnkitError) and info.value.name == "statsmodels"
        # the CLI turns it into a one-line error
        argv = ["train", "--task", "co2", "--no-progress", "--no-plot", "--out", str(tmp_path)]
        assert cli_main(argv) == 2
        assert re.search(r"rnnkit train: error: .*" + hint, capsys.readouterr().err)
    finally:
        S.load_series.cache_clear()
    with pytest.raises(ValueError, match="unknown series"):
        S.load_series("nile")


@needs_statsmodels
def test_statsmodels_series() -> None:
    sun, co2, nino = (S.load_series(n) for n in ("sunspots", "co2", "elnino"))
    assert sun.values.shape == (309,) and sun.start == "1700" and float(sun.values[0]) == 5.0
    assert nino.values.shape == (732,) and nino.start == "1950-01" and nino.season == 12
    assert float(nino.values[1]) == pytest.approx(24.2)  # Feb 1950, the table's 2nd column
    assert co2.values.shape == (526,) and co2.start == "1958-03" and co2.season == 12
    for s in (sun, co2, nino):
        assert torch.isfinite(s.values).all() and s.values.dtype == torch.float64
    # the monthly CO2 mean is the mean of the month's weekly readings (March 1958: 4 weeks)
    weekly = S.statsmodels_datasets().co2.load_pandas().data["co2"]
    march = weekly["1958-03"].to_numpy()
    assert float(co2.values[0]) == pytest.approx(float(np.nanmean(march)))


@needs_statsmodels
@pytest.mark.parametrize("name", ["sunspots", "co2", "elnino"])
def test_series_tasks(name: str) -> None:
    task = get_task(name)
    a, b = task.data(0), task.data(1)
    _, n_va, n_te = a.info["points"]
    for split, count in (("train", None), ("valid", n_va), ("test", n_te)):
        sa, sb = a.split(split), b.split(split)
        assert torch.equal(sa.inputs, sb.inputs)  # fixed series: deterministic, seed-free
        assert torch.equal(sa.targets.nan_to_num(-9.0), sb.targets.nan_to_num(-9.0))
        assert torch.isfinite(sa.inputs).all()
        if count is not None:
            assert int((~torch.isnan(sa.targets)).sum()) == count
    # every baseline is defined at every scored step, and the model metrics are finite
    m = task.metrics(a.test.inputs, a.test.targets, a.test.inputs, a.info)
    assert all(math.isfinite(v) for v in m.values()), m
