"""The PCM model over time (issue 20): the published equations in float64, when the 1/f noise is
drawn, train/eval consistency under drift, probe-based drift compensation, ramp drift."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rnnkit.core.cells import LSTM
from rnnkit.kernels.analog import PCM_DEVICE, AnalogConfig, AnalogTile, RampADC, to_analog
from rnnkit.kernels.analog.cells import drift_analog
from rnnkit.kernels.analog.devices import (
    PER_READ,
    DeviceModel,
    drift_exponents,
    pcm_1f_sigma,
    read_noise_at,
    read_sigma,
)

HOUR, DAY, YEAR = 3600.0, 86400.0, 365.0 * 86400.0
TIMES = [0.0, 1.0, HOUR, DAY, 30 * DAY, YEAR]
G_MAX, T0, T_READ = 25.0, 20.0, 250e-9


def _q_s(u: float) -> float:
    """``Q_s = min(0.0088 / max(u^0.65, 1e-3), 0.2)``, in plain float64 arithmetic."""
    return min(0.0088 / max(u**0.65, 1e-3), 0.2)


def _sigma_1f(u_prog: float, t: float) -> float:
    """The model's relative 1/f sigma at ``t`` s after programming (``t0 = 20`` s)."""
    return _q_s(u_prog) * math.sqrt(math.log((t + T0 + T_READ) / (2 * T_READ)))


# --- item 1: the formulas against a float64 evaluation of the published equations ------------


@pytest.mark.parametrize("t", TIMES)
def test_1f_sigma_matches_the_published_equation(t: float) -> None:
    us = [0.0, 1e-5, 1e-3, 0.0082, 0.05, 0.2, 0.5, 0.9, 1.0]
    g = torch.tensor([u * G_MAX for u in us], dtype=torch.float64)
    got = pcm_1f_sigma(PCM_DEVICE, g, t)
    want = torch.tensor([_sigma_1f(u, t) for u in us], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("t", [HOUR, DAY, YEAR])
def test_1f_noise_takes_u_from_the_programmed_conductance_and_clamps_at_zero(t: float) -> None:
    n = 20_000
    gen = torch.Generator().manual_seed(3)
    # programmed conductances over the window, and drift exponents of PCM size.
    g_prog = torch.rand(n, generator=gen, dtype=torch.float64) * G_MAX
    nu = 0.03 + 0.07 * torch.rand(n, generator=gen, dtype=torch.float64)
    g_drift = g_prog * ((t + T0) / T0) ** (-nu)
    got = read_noise_at(PCM_DEVICE, g_prog, g_drift, t, torch.Generator().manual_seed(11))
    xi = torch.randn(n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    want = [
        max(gd + abs(gd) * _sigma_1f(gp / G_MAX, t) * x, 0.0)
        for gp, gd, x in zip(g_prog.tolist(), g_drift.tolist(), xi.tolist(), strict=True)
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-13, atol=0)
    # the clamp acted: small conductances (Q_s = 0.2) get negative draws at these times.
    assert int((got == 0).sum()) > 10
    # taking u from the drifted conductance (the old model) would differ measurably.
    old = g_drift + g_drift.abs() * pcm_1f_sigma(PCM_DEVICE, g_drift, t) * xi
    assert float((old.clamp_min(0) - got).abs().max()) > 1e-3


def test_1f_sigma_growth_the_issue_quotes_is_gone() -> None:
    # x1.18 / x1.30 / x1.56 at an hour / a day / a year at u = 0.5 came from drifted u.
    g = torch.full((1,), 0.5 * G_MAX, dtype=torch.float64)
    for t in (HOUR, DAY, YEAR):
        ratio = float(pcm_1f_sigma(PCM_DEVICE, g, t)) / _sigma_1f(0.5, t)
        assert ratio == pytest.approx(1.0, rel=1e-14)


def test_drift_exponents_are_the_absolute_value_of_the_draw() -> None:
    n = 200_000
    targets = torch.tensor([0.0, 1e-9, 0.01, 0.3, 1.0], dtype=torch.float64) * G_MAX
    g = targets.repeat_interleave(n // 5)
    nu = drift_exponents(PCM_DEVICE, g, torch.Generator().manual_seed(5))
    xi = torch.randn(g.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = [max(v / G_MAX, 1e-7) for v in targets.tolist()]
    mu = [min(max(-0.0155 * math.log(x) + 0.0244, 0.049), 0.1) for x in u]
    sd = [min(max(-0.0125 * math.log(x) - 0.0059, 0.008), 0.045) for x in u]
    mus = torch.tensor(mu, dtype=torch.float64).repeat_interleave(n // 5)
    sds = torch.tensor(sd, dtype=torch.float64).repeat_interleave(n // 5)
    raw = mus + sds * xi
    torch.testing.assert_close(nu, raw.abs(), rtol=1e-15, atol=0)
    negative = raw < 0
    # at small targets (μ = 0.1, σ = 0.045) about 1.3 % of the draws are negative: reflected.
    assert int(negative.sum()) > 1000
    assert bool((nu[negative] > 0).all())


def test_per_read_sigma_uses_programmed_u_and_per_time_has_none() -> None:
    g_prog = torch.tensor([1.0, 5.0, 12.5, 25.0], dtype=torch.float64)
    g_drift = g_prog * 0.7
    per_read = dataclasses.replace(PCM_DEVICE, read_noise_draw=PER_READ)
    got = read_sigma(per_read, g_prog, g_drift, DAY)
    want = [0.7 * gp * _sigma_1f(gp / G_MAX, DAY) for gp in g_prog.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    assert float(read_sigma(PCM_DEVICE, g_prog, g_drift, DAY).abs().max()) == 0.0
    # the per-time draw leaves a per-read device's conductances alone.
    assert torch.equal(read_noise_at(per_read, g_prog, g_drift, DAY, None), g_drift)
    with pytest.raises(ValueError, match="read_noise_draw"):
        DeviceModel(read_noise_draw="sometimes")


# --- item 2: one realisation per inference time ------------------------------------------------


def _w(seed: int = 0, shape: tuple[int, int] = (32, 48)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_tile_draws_the_1f_noise_once_per_inference_time() -> None:
    w = _w()
    cfg = AnalogConfig.pcm(t_inference=DAY)
    tile = AnalogTile(w, cfg, torch.Generator().manual_seed(0))
    assert not tile.has_read_noise  # PCM's 1/f noise is in the weights at t, not per read
    at_day = tile.w_norm.clone()
    # fixed at t: the same realisation however often (and after whatever) it is drifted there.
    tile.set_time(HOUR)
    at_hour = tile.w_norm.clone()
    tile.set_time(DAY)
    torch.testing.assert_close(tile.w_norm, at_day, rtol=0, atol=0)
    assert not torch.equal(at_hour, at_day)
    # it is the model's realisation: drifted programmed pairs plus |g| σ_R ξ, clamped at 0.
    dev = PCM_DEVICE
    dp = tile.g_plus * ((DAY + T0) / T0) ** (-tile.nu_plus)
    dm = tile.g_minus * ((DAY + T0) / T0) ** (-tile.nu_minus)
    resid_p = tile._gp_n * dev.g_range - dp
    rel = resid_p[dp > 1.0] / dp[dp > 1.0]
    sig = pcm_1f_sigma(dev, tile.g_plus, DAY)[dp > 1.0]
    z = rel / sig
    assert abs(float(z.mean())) < 0.1 and float(z.std()) == pytest.approx(1.0, abs=0.05)
    assert bool((tile._gm_n >= 0).all()) and bool((tile._gp_n >= 0).all())
    del dm
    # reads at a fixed time differ only by output noise: without it two reads are equal.
    quiet = AnalogTile(w, cfg.replace(out_noise=0.0), torch.Generator().manual_seed(0))
    u = torch.randn(4, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = quiet.mvm(u, read_generator=torch.Generator().manual_seed(1))
    b = quiet.mvm(u, read_generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_per_read_draw_is_still_available() -> None:
    dev = dataclasses.replace(PCM_DEVICE, read_noise_draw=PER_READ)
    cfg = AnalogConfig.pcm(device=dev, out_noise=0.0, t_inference=DAY)
    tile = AnalogTile(_w(), cfg, torch.Generator().manual_seed(0))
    assert tile.has_read_noise
    u = torch.randn(4, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = tile.mvm(u, read_generator=torch.Generator().manual_seed(1))
    b = tile.mvm(u, read_generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    # its weights are the noise-free drifted ones.
    dp = tile.g_plus * ((DAY + T0) / T0) ** (-tile.nu_plus)
    dm = tile.g_minus * ((DAY + T0) / T0) ** (-tile.nu_minus)
    torch.testing.assert_close(tile.w_norm, (dp - dm) / dev.g_range, rtol=1e-14, atol=0)


# --- item 3: training mode simulates the same crossbar time as eval mode ----------------------


def _lstm(seed: int = 0, i: int = 12, h: int = 16) -> LSTM:
    torch.manual_seed(seed)
    return LSTM(i, h, dtype=torch.float64)


def test_train_mode_forward_drifts_like_eval_mode() -> None:
    # no programming noise, no read or output noise: the training sample is the programmed
    # tile itself, so both modes must give the same outputs at any time.
    dev = dataclasses.replace(PCM_DEVICE, prog_coeffs=(), read_noise="none")
    cfg = AnalogConfig.pcm(device=dev, out_noise=0.0, inp_bits=None, out_bits=None)
    cfg = cfg.replace(nl_adc=False, t_inference=YEAR)
    model = to_analog(_lstm(), cfg)
    x = torch.randn(3, 6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert model.training  # a new cell trains, and to_analog keeps it so
    with torch.no_grad():
        y_train, _ = model(x)
    model.eval()
    with torch.no_grad():
        y_eval, _ = model(x)
    torch.testing.assert_close(y_train, y_eval, rtol=1e-12, atol=1e-12)


def test_train_mode_error_matches_eval_mode_error_under_drift() -> None:
    # the issue's measurement on a smaller model: relative error to digital at a year.
    cell = _lstm(2, 16, 32)
    x = torch.randn(8, 10, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ref, _ = cell.eval()(x, backend="reference")
    model = to_analog(cell.train(), AnalogConfig.pcm(seed=4))
    drift_analog(model, YEAR)

    def rel() -> float:
        with torch.no_grad():
            y, _ = model(x)
        return float((y - ref).norm() / ref.norm())

    train = sum(rel() for _ in range(3)) / 3
    model.eval()
    evaluated = rel()
    # before the fix training mode skipped drift but kept its x2 gain: error about 5x larger.
    assert train < 1.5 * evaluated and evaluated < 1.5 * train


# --- item 4: probe-based global drift compensation --------------------------------------------


def test_probe_compensation_equals_exact_without_noise_and_estimates_it_with_noise() -> None:
    w = _w(1, (64, 80))
    dev = dataclasses.replace(PCM_DEVICE, read_noise="none")
    quiet = AnalogConfig.pcm(device=dev, out_noise=0.0, inp_bits=None, out_bits=None)
    for t in (HOUR, YEAR):
        gains = [
            AnalogTile(
                w,
                quiet.replace(compensation_read=r, t_inference=t),
                torch.Generator().manual_seed(0),
            ).gain
            for r in ("exact", "probe")
        ]
        assert gains[0] > 1.05
        assert gains[1] == pytest.approx(gains[0], rel=1e-12)
    # with the PCM preset's noise the probe reads noisy outputs: an estimate of the same gain.
    noisy = AnalogConfig.pcm(t_inference=YEAR)
    exact = AnalogTile(
        w, noisy.replace(compensation_read="exact"), torch.Generator().manual_seed(0)
    )
    probe = AnalogTile(w, noisy, torch.Generator().manual_seed(0))
    assert noisy.compensation_read == "probe"
    assert probe.gain != exact.gain
    assert probe.gain == pytest.approx(exact.gain, rel=0.1)
    with pytest.raises(ValueError, match="compensation_read"):
        AnalogConfig(compensation_read="psychic")


def test_compensation_off_leaves_gain_one() -> None:
    tile = AnalogTile(_w(), AnalogConfig.pcm(drift_compensation=False, t_inference=YEAR))
    assert tile.gain == 1.0


# --- item 6: the ramp column drifts, recalibration ----------------------------------------------


def _ramp_error(adc: RampADC) -> float:
    return adc.error()["rms"]


def test_ramp_drift_grows_the_error_and_recalibration_recovers_it() -> None:
    adc = RampADC("sigmoid", 5, 32, device=PCM_DEVICE, generator=torch.Generator().manual_seed(0))
    programmed = adc.ramp.clone()
    fresh = _ramp_error(adc)
    errors = []
    for t in (1.0, DAY, YEAR):
        adc.set_time(t)
        errors.append(_ramp_error(adc))
    assert errors[0] < errors[1] < errors[2]
    assert errors[2] > 3 * fresh
    adc.recalibrate()  # at a year
    recal = _ramp_error(adc)
    assert recal < 0.5 * errors[2]
    # the trims stay: a year later again the ramp has drifted less than the uncorrected one.
    adc.set_time(2 * YEAR)
    assert _ramp_error(adc) < errors[2]
    # the same time gives the same ramp; None restores the programmed ramp (trims kept).
    adc.set_time(DAY)
    at_day = adc.ramp.clone()
    adc.set_time(HOUR)
    adc.set_time(DAY)
    torch.testing.assert_close(adc.ramp, at_day, rtol=0, atol=0)
    fresh_adc = RampADC(
        "sigmoid", 5, 32, device=PCM_DEVICE, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(fresh_adc.ramp, programmed, rtol=0, atol=0)
    fresh_adc.set_time(None)
    torch.testing.assert_close(fresh_adc.ramp, programmed, rtol=0, atol=0)
    # before programming, or a time that is no time, is refused (a NaN ramp would silently
    # turn every conversion into the ADC's lowest code) and leaves the ramp as it was.
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="t must be a finite time >= 0 s"):
            adc.set_time(bad)
        torch.testing.assert_close(adc.ramp, at_day, rtol=0, atol=0)


def test_ramp_time_zero_is_a_time_not_none() -> None:
    """``set_time(0.0)``, just programmed, is a time (the devices' noise at 0 s), not ``None``
    (drift not modelled): a recalibration there fits the ramp at 0 s and keeps the time."""
    adc = RampADC("sigmoid", 5, 32, device=PCM_DEVICE, generator=torch.Generator().manual_seed(0))
    adc.set_time(0.0)
    assert adc.time == 0.0
    adc.recalibrate()
    assert adc.time == 0.0
    at_zero = adc.ramp.clone()
    adc.set_time(DAY)
    adc.set_time(0.0)
    torch.testing.assert_close(adc.ramp, at_zero, rtol=0, atol=0)


def test_ideal_ramp_does_not_drift() -> None:
    adc = RampADC("tanh", 4, 3)
    before = adc.ramp.clone()
    adc.set_time(YEAR)
    torch.testing.assert_close(adc.ramp, before, rtol=0, atol=1e-12)
