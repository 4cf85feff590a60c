"""Tests of the analog crossbar simulator (``rnnkit.kernels.analog``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.recurrent import Recurrent
from rnnkit.kernels.analog import (
    PCM_DEVICE,
    AnalogConfig,
    AnalogTile,
    DeviceModel,
    RampADC,
    drift_analog,
    is_analog,
    to_analog,
)
from rnnkit.kernels.analog.cells import analog_forward
from rnnkit.kernels.analog.cost import lstm_cost, motivation

B, T, I, H = 3, 7, 5, 6  # noqa: E741


def _cell(kind: str, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    if kind == "relu":
        return Elman(I, H, nonlinearity="relu", dtype=torch.float64)
    return {"elman": Elman, "lstm": LSTM, "gru": GRU}[kind](I, H, dtype=torch.float64)


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, I, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- NL-ADC ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
@pytest.mark.parametrize("bits", [3, 4, 5, 6, 7, 8])
def test_ideal_nl_adc_within_one_lsb(fn: str, bits: int) -> None:
    adc = RampADC(fn, bits, 2)
    v = torch.linspace(-10, 10, 40001, dtype=torch.float64)[:, None].expand(-1, 2)
    y = adc(v)
    f = torch.sigmoid(v) if fn == "sigmoid" else torch.tanh(v)
    lsb = (1.0 if fn == "sigmoid" else 2.0) / 2**bits
    assert adc.lsb == pytest.approx(lsb)
    assert float((y - f).abs().max()) <= 0.5 * lsb + 1e-12  # ideal: half an LSB (<= 1 LSB)
    inl, dnl = adc.inl_dnl()
    assert float(inl.abs().max()) < 1e-9 and float(dnl.abs().max()) < 1e-9


def test_user_function_and_decreasing() -> None:
    adc = RampADC(lambda v: v**3, 4, 1, domain=(-2, 2))
    v = torch.linspace(-2, 2, 1001, dtype=torch.float64)[:, None]
    assert float((adc(v) - v**3).abs().max()) <= 0.5 * adc.lsb + 1e-9
    dec = RampADC(lambda v: -torch.tanh(v), 5, 1)
    assert float((dec(v) + torch.tanh(v)).abs().max()) <= 0.5 * dec.lsb + 1e-9


def test_non_monotonic_and_bits_errors() -> None:
    with pytest.raises(ValueError, match="not monotonic"):
        RampADC(torch.sin, 4, 1, domain=(-3, 3))
    with pytest.raises(ValueError, match="constant"):
        RampADC(lambda v: v * 0 + 1, 4, 1)
    bad_bits: tuple[Any, ...] = (0, 11, -1, 2.5, True)
    for bits in bad_bits:
        with pytest.raises(ValueError, match=r"bits must be an int in \[1, 10\]"):
            RampADC("sigmoid", bits, 1)
    with pytest.raises(ValueError, match="nl_bits"):
        AnalogConfig(nl_bits=12)


@pytest.mark.parametrize(
    ("field", "bad", "lo", "hi"),
    [
        ("inp_bits", 1, 2, 16),
        ("inp_bits", 17, 2, 16),
        ("out_bits", 1, 2, 16),
        ("out_bits", 32, 2, 16),
        ("nl_bits", 0, 1, 10),
        ("nl_bits", 11, 1, 10),
        ("nl_bits", 4.5, 1, 10),
        ("nl_bits", True, 1, 10),
    ],
)
def test_config_bits_out_of_range_errors(field: str, bad: Any, lo: int, hi: int) -> None:
    # every converter's resolution is checked where the configuration is made, naming it.
    with pytest.raises(ValueError, match=rf"{field} must be None or an int in \[{lo}, {hi}\]"):
        AnalogConfig().replace(**{field: bad})
    assert getattr(AnalogConfig().replace(**{field: hi}), field) == hi  # the bound is valid


def test_g_min_ge_g_max_errors() -> None:
    with pytest.raises(ValueError, match="g_min must be < g_max"):
        DeviceModel(g_min=25.0, g_max=25.0)
    with pytest.raises(ValueError, match="g_min must be < g_max"):
        DeviceModel(g_min=30.0, g_max=25.0)
    # also where a preset's device is replaced, and for the NL-ADC ramp device.
    with pytest.raises(ValueError, match=r"g_min=40\.0, g_max=40\.0"):
        AnalogConfig.pcm(ramp_device=DeviceModel(g_min=40.0, g_max=40.0))


def test_ratiometric_read_voltage() -> None:
    gen = torch.Generator().manual_seed(0)
    adc = RampADC("sigmoid", 5, 8, device=PCM_DEVICE, generator=gen)
    v = torch.randn(200, 8, dtype=torch.float64, generator=gen) * 3
    base = adc.codes(v)
    for r in (0.15 / 0.2, 0.25 / 0.2):
        # MAC current and ramp both scale with V_read: same codes.
        assert torch.equal(adc.codes(v * r, v_read_ratio=r), base)
        # a conventional (fixed-reference) ramp sees a gain error.
        lin = RampADC("linear", 5, 8, domain=(-6, 6))
        assert not torch.equal(lin.codes(v * r), lin.codes(v))


def test_noisy_ramp_accumulates_and_calibration_helps() -> None:
    kw: dict[str, Any] = {"device": PCM_DEVICE, "comparator_offset": 0.3}
    cal = RampADC("sigmoid", 5, 64, generator=torch.Generator().manual_seed(3), **kw)
    raw = RampADC(
        "sigmoid", 5, 64, generator=torch.Generator().manual_seed(3), calibrate=False, **kw
    )
    assert cal.error()["rms"] < raw.error()["rms"]
    inl, _ = raw.inl_dnl()
    assert float(inl.abs().max()) > 0


# --- tiles ----------------------------------------------------------------------------------


def test_tile_split_equals_unsplit() -> None:
    torch.manual_seed(0)
    w = torch.randn(20, 70, dtype=torch.float64)
    u = torch.randn(4, 70, dtype=torch.float64)
    cfg = AnalogConfig.ideal()
    whole = AnalogTile(w, cfg).mvm(u)
    split = AnalogTile(w, cfg.replace(max_rows=16, max_cols=8))
    assert split.n_tiles == 5 * 3
    torch.testing.assert_close(split.mvm(u), whole)
    torch.testing.assert_close(whole, u @ w.T)


def test_tile_seeded_and_noisy() -> None:
    w = torch.randn(16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.randn(4, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cfg = AnalogConfig.pcm(out_bits=None, inp_bits=None)

    def once(seed: int) -> torch.Tensor:
        t = AnalogTile(w, cfg, torch.Generator().manual_seed(seed))
        return t.mvm(u, read_generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(once(0), once(0), rtol=0, atol=0)
    assert not torch.equal(once(0), once(1))
    err = (once(0) - u @ w.T).square().mean().sqrt() / (u @ w.T).square().mean().sqrt()
    assert 0.001 < float(err) < 0.5


def test_drift_compensation_reduces_error() -> None:
    w = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.randn(32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = u @ w.T
    base = AnalogConfig.pcm(inp_bits=None, out_bits=None, out_noise=0.0, prog_noise_scale=0.0)
    base = base.replace(
        device=PCM_DEVICE.__class__(**{**PCM_DEVICE.__dict__, "read_noise": "none"})
    )
    errs = []
    for comp in (False, True):
        t = AnalogTile(w, base.replace(drift_compensation=comp), torch.Generator().manual_seed(0))
        t.set_time(3600.0 * 24 * 30)
        errs.append(float((t.mvm(u) - ref).square().mean().sqrt()))
    assert errs[1] < 0.5 * errs[0]


def test_ir_drop_and_stuck_devices_perturb() -> None:
    w = torch.randn(8, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.rand(4, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ideal = AnalogConfig.ideal()
    ref = AnalogTile(w, ideal).mvm(u)
    assert not torch.allclose(AnalogTile(w, ideal.replace(ir_drop=0.5)).mvm(u), ref)
    dev = DeviceModel(stuck_off=0.2)
    t = AnalogTile(w, ideal.replace(device=dev), torch.Generator().manual_seed(0))
    assert not torch.allclose(t.mvm(u), ref)


# --- cells ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elman", "relu", "lstm", "gru"])
def test_ideal_backend_matches_reference(kind: str) -> None:
    # Tolerance: the only error left is the 10-bit NL-ADC's half LSB per activation (1/1024 of
    # the output range), which the recurrence carries a few steps: max abs error < 0.02.
    cell = _cell(kind)
    x = _x()
    ref, ref_state = cell(x, backend="reference")
    acell = to_analog(cell, AnalogConfig.ideal(nl_bits=10))
    y, state = acell(x)  # auto picks analog for a converted cell
    assert float((y - ref).detach().abs().max()) < 0.02
    for a, r in zip(state, ref_state, strict=True):
        assert float((a - r).detach().abs().max()) < 0.02
    # without NL-ADCs (exact digital activations, ideal periphery) it is exact.
    exact = to_analog(cell, AnalogConfig.ideal(nl_adc=False))
    y2, _ = exact(x)
    torch.testing.assert_close(y2, ref)


def test_nl_adc_state_activation_and_resets() -> None:
    cell = _cell("lstm")
    x = _x()
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 3] = True
    ref, _ = cell(x, backend="reference", resets=resets)
    acell = to_analog(cell, AnalogConfig.ideal(nl_bits=10, state_activation="nl_adc", inp_bits=12))
    y, _ = acell(x, resets=resets)
    assert float((y - ref).detach().abs().max()) < 0.03


def test_auto_never_picks_analog_for_plain_cell() -> None:
    cell = _cell("lstm")
    call = KernelCall(cell, _x(), None, None, False)
    assert select(call).backend != "analog"
    assert not is_analog(cell)
    with pytest.raises(BackendUnavailableError, match="to_analog"):
        cell(_x(), backend="analog")
    acell = to_analog(cell)  # default AnalogConfig(): PCM
    assert select(KernelCall(acell, _x(), None, None, False)).backend == "analog"
    y, _ = acell(_x(), backend="analog")
    assert y.shape == (B, T, H) and torch.isfinite(y).all()


def test_seeded_reproducibility_noisy_cell() -> None:
    cell = _cell("lstm")
    x = _x()
    cfg = AnalogConfig.pcm(seed=7)
    y1, _ = to_analog(cell, cfg).eval()(x)
    y2, _ = to_analog(cell, cfg).eval()(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    y3, _ = to_analog(cell, cfg.replace(seed=8)).eval()(x)
    assert not torch.equal(y1, y3)


def test_drift_analog_runs() -> None:
    acell = to_analog(_cell("gru"), AnalogConfig.pcm())
    x = _x()
    y0, _ = acell(x)
    drift_analog(acell, 86400.0)
    y1, _ = acell(x)
    assert torch.isfinite(y1).all() and not torch.equal(y0, y1)


def test_ste_gradients_flow_in_training() -> None:
    acell = to_analog(_cell("lstm"), AnalogConfig.pcm())
    acell.train()
    x = _x().requires_grad_(True)
    y, _ = acell(x)
    y.square().sum().backward()
    for name, p in acell.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    # training mode injects fresh noise every forward
    y1, _ = acell(_x())
    y2, _ = acell(_x())
    assert not torch.equal(y1, y2)


def test_to_analog_recurrent_stack() -> None:
    torch.manual_seed(0)
    stack = Recurrent("lstm", I, H, 2, bidirectional=True, dtype=torch.float64)
    ref, _ = stack(_x(), backend="reference")
    astack = to_analog(stack, AnalogConfig.ideal(nl_adc=False))
    assert all(is_analog(c) for c in astack.cells)
    assert not any(is_analog(c) for c in stack.cells)  # a copy by default
    y, _ = astack(_x())
    torch.testing.assert_close(y, ref)


def test_to_analog_unmappable_layer_errors() -> None:
    # sLSTM maps now (test_analog_slstm.py tests it and an unmappable third-party cell)
    assert is_analog(to_analog(nn.Sequential(nn.Linear(3, 3), SLSTM(I, H)))[1])
    with pytest.raises(ValueError, match=r"layer 'rnn' \(LSTM\) cannot be mapped: torch.nn"):
        to_analog(nn.ModuleDict({"rnn": nn.LSTM(3, 4)}))
    with pytest.raises(ValueError, match="no recurrent cell"):
        to_analog(nn.Linear(2, 2))


def test_analog_forward_direct_call_shapes() -> None:
    cell = _cell("gru")
    y, st = analog_forward(KernelCall(cell, _x(), None, None, False))
    assert y.shape == (B, T, H) and st.h.shape == (B, H)


# --- cost model -----------------------------------------------------------------------------


def test_cost_model_motivation_and_trend() -> None:
    ratios = dict(motivation(512, 32, 8, (8, 16)))
    assert ratios[8] == pytest.approx(2.5) and ratios[16] == pytest.approx(5.0)
    for n in (3, 4, 5, 8):
        nl, conv = lstm_cost(512, bits=n), lstm_cost(512, bits=n, style="conventional")
        assert nl.t_ns < conv.t_ns
        assert nl.t_nl_ns == 2**n
    assert math.isclose(lstm_cost(512, bits=5).t_mac_ns, 10 + 32)


@pytest.mark.parametrize("hidden", [0, -3])
def test_cost_model_refuses_a_layer_without_units(hidden: int) -> None:
    # hidden 0 divided 0 by 0 in the comparison; a negative width gave negative energies
    for style in ("nl_adc", "conventional"):
        with pytest.raises(ValueError, match=f"hidden must be a positive int, got {hidden}"):
            lstm_cost(hidden, style=style)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        motivation(hidden)
    with pytest.raises(ValueError, match="inputs must be a positive int, got 0"):
        lstm_cost(64, inputs=0)
    with pytest.raises(ValueError, match="bits must be a positive int, got 0"):
        lstm_cost(64, bits=0)


@pytest.mark.parametrize(("option", "value"), [("k", 0), ("k", -2), ("adc_bits", 0)])
def test_motivation_refuses_units_or_bits_below_one(option: str, value: int) -> None:
    # k = 0 divided by zero; adc_bits = 0 gave a one-cycle conversion, a negative one a fraction
    with pytest.raises(ValueError, match=f"{option} must be a positive int, got {value}"):
        motivation(k=value) if option == "k" else motivation(adc_bits=value)


# --- fast inference path and experiments ------------------------------------------------------


@pytest.mark.parametrize("preset", ["ideal", "pcm"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_fast_inference_matches_stepwise(kind: str, preset: str) -> None:
    # the no-grad path precomputes the input part and converts with one table; with the same
    # seed it draws the same noise in the same order, so it matches the step-by-step (grad)
    # path up to float summation order (which may flip an occasional rounding).
    cell = _cell(kind)
    x = _x()
    cfg = AnalogConfig.preset(preset, seed=3, max_rows=4)  # several row blocks
    if preset == "ideal":
        cfg = cfg.replace(ir_drop=0.2)
    slow, _ = to_analog(cell, cfg).eval()(x)
    with torch.no_grad():
        fast, _ = to_analog(cell, cfg).eval()(x)
    assert float((fast - slow.detach()).abs().mean()) < 1e-3
    assert float((fast - slow.detach()).abs().max()) < 0.2


def test_threshold_table_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    for bits in (1, 5, 8):
        adc = RampADC("tanh", bits, 16, device=PCM_DEVICE, generator=gen, comparator_offset=0.2)
        th = adc.thresholds()
        v = torch.cat([torch.randn(300, 16, dtype=torch.float64, generator=gen) * 3, th.T])
        v = torch.cat([v, torch.full((2, 16), math.nan, dtype=torch.float64)])
        ref = (v.unsqueeze(-1) >= th).sum(-1)
        assert torch.equal(adc.codes(v), ref)
