"""Float64 oracles of the simulator's equations, written from the published models and the
reference notes (``/work/shared/reference/analog-crossbars.md``), not from the code's helpers.

- PCM (Nandakumar et al., ICECS 2019, as in aihwkit's ``PCMLikeNoiseModel``; notes §2):
  programming noise ``σ_P = (0.26348 + 1.9650 u - 1.1731 u²) g_max / 25`` µS with
  ``u = g_T / g_max``, ``g_P = max(g_T + σ_P ξ, 0)``; drift ``g_D = g_P ((t + t0) / t0)^-ν``,
  ``t0 = 20`` s.
- Pair mapping (aihwkit's ``SinglePairConductanceConverter``, per column here):
  ``g± = g_min + max(±w / s, 0) (g_max - g_min)``, ``s = max|w|`` of the column.
- Periphery (aihwkit's ``IOParameters``, notes §2): noise management ``α = max|x|``, a DAC of
  ``2^b - 2`` uniform steps on ``±inp_bound`` (round to nearest, clip), the same quantiser on the
  output with ``out_bound``, output times ``α s``.
- Global drift compensation (aihwkit's ``GlobalDriftCompensation``): the ratio of
  ``mean|y|`` of a one-hot probe read after programming and at ``t``.
- Ramp NL-ADC (notes §1.2): ``T_k = f^-1(y_min + k Δy)``, ``D(v) = #{k : T_k <= v}``, output
  ``y_min + (D + ½) Δy``.

Every expected value below is computed with Python floats and ``math`` from those equations;
random draws are reproduced from a generator seeded as the code's (the same ``ξ``), which is the
only thing taken from the code.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rnnkit.core.cells import LSTM
from rnnkit.kernels.analog import (
    IDEAL_DEVICE,
    PCM_DEVICE,
    AnalogConfig,
    AnalogTile,
    DeviceModel,
    RampADC,
    drift_analog,
    to_analog,
)
from rnnkit.kernels.analog.cells import _ATTR
from rnnkit.kernels.analog.devices import drifted, program_conductances, programming_sigma
from rnnkit.kernels.analog.tile import quantize_ste

C_PCM = (0.26348, 1.9650, -1.1731)  # µS at g_max = 25 µS
T0 = 20.0
DAY, YEAR = 86400.0, 365.0 * 86400.0


def _sigma_prog(g: float, g_max: float) -> float:
    u = g / g_max
    return (C_PCM[0] + C_PCM[1] * u + C_PCM[2] * u * u) * g_max / 25.0


def _quant(x: float, bits: int | None, bound: float) -> float:
    """Clip to ±bound, round to the nearest of 2^bits - 2 uniform steps."""
    y = min(max(x, -bound), bound)
    if bits is None:
        return y
    step = 2.0 * bound / (2.0**bits - 2.0)
    return round(y / step) * step


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("g_max", [25.0, 50.0])
def test_programming_sigma_is_the_published_polynomial_in_microsiemens(g_max: float) -> None:
    dev = dataclasses.replace(PCM_DEVICE, g_max=g_max)
    us = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    g = torch.tensor([u * g_max for u in us], dtype=torch.float64)
    want = torch.tensor([_sigma_prog(u * g_max, g_max) for u in us], dtype=torch.float64)
    torch.testing.assert_close(programming_sigma(dev, g), want, rtol=1e-14, atol=0)
    # the published values at 25 µS: 0.26348 µS at g = 0 and 1.05538 µS at g_max.
    if g_max == 25.0:
        assert float(programming_sigma(dev, g)[0]) == pytest.approx(0.26348, rel=1e-14)
        assert float(programming_sigma(dev, g)[-1]) == pytest.approx(1.05538, rel=1e-12)


def test_program_conductances_adds_the_noise_clips_and_clamps_at_zero() -> None:
    n = 4000
    gen = torch.Generator().manual_seed(0)
    # targets across (and beyond) the window: beyond g_max they are clipped first.
    target = torch.rand(n, generator=gen, dtype=torch.float64) * 30.0 - 2.0
    got = program_conductances(PCM_DEVICE, target, torch.Generator().manual_seed(7))
    xi = torch.randn(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    want = []
    for g, x in zip(target.tolist(), xi.tolist(), strict=True):
        gt = min(max(g, 0.0), 25.0)
        want.append(max(gt + _sigma_prog(gt, 25.0) * x, 0.0))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    assert int((got == 0).sum()) > 50  # the clamp at zero acted (targets near 0)


@pytest.mark.parametrize("t", [0.0, 1.0, 3600.0, DAY, YEAR])
def test_drift_is_the_power_law_from_t0(t: float) -> None:
    g = torch.tensor([0.5, 3.0, 12.0, 25.0], dtype=torch.float64)
    nu = torch.tensor([0.02, 0.05, 0.08, 0.11], dtype=torch.float64)
    want = [gi * ((t + T0) / T0) ** (-ni) for gi, ni in zip(g.tolist(), nu.tolist(), strict=True)]
    got = drifted(PCM_DEVICE, g, nu, t)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-14, atol=0)
    assert torch.equal(drifted(IDEAL_DEVICE, g, nu, t), g)  # a drift-free device


# --- tile: mapping, DAC, ADC, noise management -------------------------------------------------


def _weights() -> torch.Tensor:
    w = torch.randn(6, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w[0] = 1.0 + 0.1 * w[0].abs()  # w̃ >= 0.8: a constant input saturates its ADC (Σ > 12)
    w[1] *= 1e-3  # a column with a tiny scale: per-column mapping must not care
    return w


def test_pair_mapping_uses_per_column_scale_and_the_window() -> None:
    dev = DeviceModel(name="offset", g_min=2.0, g_max=27.0)
    w = _weights()
    tile = AnalogTile(w, AnalogConfig.ideal(device=dev))
    for j in range(w.shape[0]):
        s = max(abs(v) for v in w[j].tolist())
        assert float(tile.scale[j, 0]) == s
        for i in range(w.shape[1]):
            wn = w[j, i].item() / s
            assert tile.g_plus[j, i].item() == pytest.approx(2.0 + max(wn, 0.0) * 25.0, abs=1e-12)
            assert tile.g_minus[j, i].item() == pytest.approx(2.0 + max(-wn, 0.0) * 25.0, abs=1e-12)
    torch.testing.assert_close(tile.effective_weight(), w, rtol=1e-13, atol=0)


@pytest.mark.parametrize(("inp_bits", "out_bits"), [(7, 9), (4, 5), (None, 9), (7, None)])
def test_tile_read_is_dac_mvm_adc_times_alpha_and_scale(
    inp_bits: int | None, out_bits: int | None
) -> None:
    w = _weights()
    cfg = AnalogConfig.ideal(inp_bits=inp_bits, out_bits=out_bits, out_bound=12.0)
    tile = AnalogTile(w, cfg)
    u = torch.randn(5, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    u[0] = 2.5  # all rows driven at the same value: z_0 = Σ_i w̃_0i > 12 saturates the ADC
    got = tile.mvm(u)
    want = torch.empty_like(got)
    for b in range(u.shape[0]):
        row = u[b].tolist()
        alpha = max(abs(v) for v in row)
        x = [_quant(v / alpha, inp_bits, 1.0) for v in row]
        for j in range(w.shape[0]):
            s = max(abs(v) for v in w[j].tolist())
            z = sum(w[j, i].item() / s * x[i] for i in range(w.shape[1]))
            want[b, j] = _quant(z, out_bits, 12.0) * alpha * s
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if out_bits is not None:
        assert float(got[0, 0]) == pytest.approx(12.0 * 2.5 * float(w[0].abs().max()), rel=1e-12)


def test_quantize_levels_are_aihwkit_inp_res() -> None:
    # inp_res = 1 / (2^7 - 2): 126 steps on [-1, 1], 127 levels including 0 and ±1.
    x = torch.linspace(-1.3, 1.3, 2601, dtype=torch.float64)
    q = quantize_ste(x, 7, 1.0)
    levels = torch.unique(q)
    assert levels.numel() == 127
    torch.testing.assert_close(levels.diff(), torch.full((126,), 2.0 / 126, dtype=torch.float64))
    assert float(levels[0]) == -1.0 and float(levels[-1]) == 1.0
    want = torch.tensor([_quant(v, 7, 1.0) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(q, want, rtol=0, atol=1e-15)


# --- global drift compensation -----------------------------------------------------------------


@pytest.mark.parametrize("t", [DAY, YEAR])
def test_exact_compensation_is_the_ratio_of_mean_abs_weights(t: float) -> None:
    dev = dataclasses.replace(PCM_DEVICE, read_noise="none")
    w = _weights()
    cfg = AnalogConfig.pcm(device=dev, t_inference=t, compensation_read="exact")
    tile = AnalogTile(w, cfg, torch.Generator().manual_seed(1))
    d = ((t + T0) / T0) ** (-tile.nu_plus), ((t + T0) / T0) ** (-tile.nu_minus)
    w0 = (tile.g_plus - tile.g_minus) / 25.0
    wt = (tile.g_plus * d[0] - tile.g_minus * d[1]) / 25.0
    want = float(w0.abs().mean()) / float(wt.abs().mean())
    assert tile.gain == pytest.approx(want, rel=1e-12)
    assert tile.gain > 1.1  # PCM conductances fall: the gain restores them
    torch.testing.assert_close(tile.w_norm, wt, rtol=1e-13, atol=0)


def test_probe_compensation_reads_the_one_hot_probe_through_the_adc() -> None:
    # no noise, a coarse ADC: the probe outputs are the quantised normalised weights, and the
    # gain the ratio of their mean absolute values (clamped at 1e-4), as in aihwkit.
    dev = dataclasses.replace(PCM_DEVICE, read_noise="none", prog_coeffs=())
    w = _weights()
    t = YEAR
    cfg = AnalogConfig.pcm(device=dev, t_inference=t, out_noise=0.0, out_bits=4, out_bound=1.0)
    tile = AnalogTile(w, cfg, torch.Generator().manual_seed(1))
    d = ((t + T0) / T0) ** (-tile.nu_plus), ((t + T0) / T0) ** (-tile.nu_minus)
    w0 = ((tile.g_plus - tile.g_minus) / 25.0).tolist()
    wt = ((tile.g_plus * d[0] - tile.g_minus * d[1]) / 25.0).tolist()
    n = len(w0) * len(w0[0])

    def mean_abs_read(m: list[list[float]]) -> float:
        return max(sum(abs(_quant(v, 4, 1.0)) for row in m for v in row) / n, 1e-4)

    assert tile.gain == pytest.approx(mean_abs_read(w0) / mean_abs_read(wt), rel=1e-12)


# --- ramp NL-ADC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_ideal_ramp_thresholds_and_codes(fn: str, bits: int) -> None:
    n = 2**bits
    y0, y1 = (0.0, 1.0) if fn == "sigmoid" else (-1.0, 1.0)
    dy = (y1 - y0) / n

    def inverse(y: float) -> float:
        return math.log(y / (1.0 - y)) if fn == "sigmoid" else math.atanh(y)

    th = [inverse(y0 + k * dy) for k in range(1, n)]
    adc = RampADC(fn, bits, 3)
    got_th = adc.thresholds()
    want_th = torch.tensor(th, dtype=torch.float64).expand(3, -1)
    torch.testing.assert_close(got_th, want_th, rtol=1e-12, atol=1e-12)
    v = torch.randn(400, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    # keep clear of the thresholds by more than float rounding
    gap = min(abs(a - b) for a in v.flatten().tolist() for b in th)
    assert gap > 1e-9
    got = adc(v)
    want = [[y0 + (sum(1 for tk in th if tk <= a) + 0.5) * dy for a in row] for row in v.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-14)


def test_ramp_span_matches_the_notes_table() -> None:
    # notes §1.2: 5-bit sigmoid thresholds span ±3.43 with steps 0.125 .. 0.73 (5.8x).
    th = RampADC("sigmoid", 5, 1).ideal
    assert float(th[-1]) == pytest.approx(math.log(31.0), rel=1e-12)
    steps = th.diff()
    assert float(steps.min()) == pytest.approx(math.log(17.0 / 15.0), rel=1e-12)
    assert float(steps.max()) == pytest.approx(math.log(31.0 / 15.0), rel=1e-12)
    assert float(steps.max() / steps.min()) == pytest.approx(5.8, abs=0.05)


# --- time: seeded, reproducible, and t = 0 is a time ------------------------------------------


def test_drift_to_zero_before_first_use_is_honoured() -> None:
    torch.manual_seed(0)
    cell = LSTM(4, 5, dtype=torch.float64)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # the config says a day, but the user drifts to t = 0 before the first forward.
    model = to_analog(cell, AnalogConfig.pcm(t_inference=DAY, seed=3)).eval()
    drift_analog(model, 0.0)
    with torch.no_grad():
        y, _ = model(x)
    assert getattr(model, _ATTR).tile.t == 0.0
    ref = to_analog(cell, AnalogConfig.pcm(t_inference=0.0, seed=3)).eval()
    with torch.no_grad():
        y_ref, _ = ref(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


def test_time_noise_is_a_function_of_seed_and_time() -> None:
    w = _weights()
    cfg = AnalogConfig.pcm(t_inference=DAY)
    a = AnalogTile(w, cfg, torch.Generator().manual_seed(5))
    b = AnalogTile(w, cfg.replace(t_inference=0.0), torch.Generator().manual_seed(5))
    b.set_time(YEAR)
    b.set_time(DAY)
    assert torch.equal(a.w_norm, b.w_norm) and a.gain == b.gain
    c = AnalogTile(w, cfg, torch.Generator().manual_seed(6))
    assert not torch.equal(a.w_norm, c.w_norm)


# --- per-read noise moments ----------------------------------------------------------------------


def _sigma_1f(g_prog: float, t: float) -> float:
    """PCM 1/f relative sigma at ``t`` s after programming (``t_read`` = 250 ns, ``t0`` = 20 s)."""
    q_s = min(0.0088 / max((abs(g_prog) / 25.0) ** 0.65, 1e-3), 0.2)
    return q_s * math.sqrt(math.log((t + T0 + 250e-9) / (2 * 250e-9)))


@pytest.mark.parametrize("device", ["pcm_per_read", "reram"])
def test_read_moments_are_the_models(device: str) -> None:
    # n reads of one input: per column the output has mean α s Σ_i w̃_ij x̃_i and variance
    # (α s)² (Σ_i σ_ij² x̃_i² + σ_out²), σ_ij² the two devices' per-read variances over g_range².
    n, t, out_noise = 20_000, DAY, 0.05
    if device == "reram":
        cfg = AnalogConfig.reram(inp_bits=None, out_bits=None, out_noise=out_noise)
    else:
        dev = dataclasses.replace(PCM_DEVICE, read_noise_draw="per_read")
        cfg = AnalogConfig.pcm(device=dev, inp_bits=None, out_bits=None, out_noise=out_noise)
    cfg = cfg.replace(t_inference=t, drift_compensation=False)
    w = _weights()
    tile = AnalogTile(w, cfg, torch.Generator().manual_seed(1))
    u = torch.randn(1, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = tile.mvm(u.expand(n, -1), read_generator=torch.Generator().manual_seed(3))
    alpha = max(abs(v) for v in u[0].tolist())
    x = [v / alpha for v in u[0].tolist()]
    gr = cfg.device.g_range
    mean, var = [], []
    for j in range(w.shape[0]):
        s = max(abs(v) for v in w[j].tolist())
        m_j, v_j = 0.0, out_noise**2
        for i in range(w.shape[1]):
            gp, gm = tile.g_plus[j, i].item(), tile.g_minus[j, i].item()
            if device == "reram":
                dp, dm = gp, gm  # no drift
                sd2 = 2 * (0.01 * 40.0) ** 2
            else:
                dp = gp * ((t + T0) / T0) ** (-tile.nu_plus[j, i].item())
                dm = gm * ((t + T0) / T0) ** (-tile.nu_minus[j, i].item())
                sd2 = (dp * _sigma_1f(gp, t)) ** 2 + (dm * _sigma_1f(gm, t)) ** 2
            m_j += (dp - dm) / gr * x[i]
            v_j += sd2 / gr**2 * x[i] ** 2
        mean.append(alpha * s * m_j)
        var.append((alpha * s) ** 2 * v_j)
    want_mean = torch.tensor(mean, dtype=torch.float64)
    want_var = torch.tensor(var, dtype=torch.float64)
    # the sample mean is within 4.5 standard errors; the sample variance within 5 % (its
    # relative standard error is sqrt(2 / n) = 1 %).
    assert float(((y.mean(0) - want_mean).abs() / (want_var / n).sqrt()).max()) < 4.5
    assert float((y.var(0) / want_var - 1).abs().max()) < 0.05
    # the device noise is a visible part of the variance (the test could see it missing).
    assert float((want_var / ((alpha * torch.tensor(_scales(w))) * out_noise) ** 2).min()) > 1.1


def _scales(w: torch.Tensor) -> list[float]:
    return [max(abs(v) for v in w[j].tolist()) for j in range(w.shape[0])]


@pytest.mark.parametrize("t", [-1.0, -30.0, math.inf, math.nan])
def test_negative_or_non_finite_times_are_refused(t: float) -> None:
    # t counts from the end of programming: before it the drift law is undefined and the 1/f
    # log term is negative for t < -t0 (a math domain error before, silently no drift above).
    tile = AnalogTile(_weights(), AnalogConfig.pcm(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="t must be a finite time"):
        tile.set_time(t)
    torch.manual_seed(0)
    model = to_analog(LSTM(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="t_inference must be a finite time"):
        drift_analog(model, t)
