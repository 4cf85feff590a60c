"""The analog inference fast path (``analog.inference``) and its NL-ADC tables
(``analog.threshold``) against straightforward references.

- ``ThresholdTable`` against counting ``#{k : T_k <= v}`` (exact, any ramp, both layouts).
- The fast path against the step-by-step path (``AnalogTile.mvm`` per step, taken whenever a
  gradient is needed): in float64 the two agree to rounding in every configuration, noisy ones
  included, because the fast path draws the same noise samples in the same order.
- The noise of the fast path against the model's analytic moments (independent of that
  sample-level agreement): mean ``s α Σ w̃ x̃`` and variance ``(s α)² (Σ σ² x̃² + σ_out²)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from rnnkit.core.cells import GRU, LSTM, Elman
from rnnkit.kernels.analog import (
    PCM_DEVICE,
    AnalogConfig,
    DeviceModel,
    RampADC,
    drift_analog,
    to_analog,
)
from rnnkit.kernels.analog import inference as inference_mod
from rnnkit.kernels.analog.cells import _binding
from rnnkit.kernels.analog.threshold import ThresholdTable

F64 = torch.float64
B, T, I, H = 3, 7, 5, 6  # noqa: E741


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt() / b.square().mean().sqrt().clamp_min(1e-300))


# --- ThresholdTable ---------------------------------------------------------------------------


def _probe(th: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Values ``(n, C)`` in ``th``'s dtype: random, every threshold and its two neighbours,
    NaN, +-inf and a huge value."""
    C, dt = th.shape[0], th.dtype
    inf = torch.tensor(math.inf, dtype=dt)
    rows = [
        torch.randn(200, C, dtype=F64, generator=gen).to(dt) * 3,
        th.T,
        torch.nextafter(th.T, -inf),
        torch.nextafter(th.T, inf),
        torch.full((1, C), math.nan, dtype=dt),
        torch.full((1, C), math.inf, dtype=dt),
        torch.full((1, C), -math.inf, dtype=dt),
        torch.full((1, C), 1e30, dtype=dt),
    ]
    return torch.cat(rows)


RAMPS: list[tuple[int, DeviceModel | None, float]] = [
    (1, PCM_DEVICE, 0.2),
    (5, PCM_DEVICE, 0.2),
    (8, PCM_DEVICE, 0.0),  # clustered levels: cells that overflow
    (8, None, 0.0),  # ideal: identical columns share cells
    (3, DeviceModel(stuck_off=0.3, stuck_on=0.1), 0.1),  # missing codes, flat runs
]


@pytest.mark.parametrize("layout", [None, "records", "compact"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_threshold_table_equals_counting(layout: str | None, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    for bits, dev, offset in RAMPS:
        kw: dict[str, Any] = {} if dev is None else {"device": dev}
        adc = RampADC("tanh", bits, 12, generator=gen, comparator_offset=offset, **kw)
        th = adc.thresholds().to(dtype)
        values = adc.values(torch.arange(2**bits)).expand(12, -1)
        # default grid; one cell per level (several thresholds per cell: the compact
        # layout's counting rounds); one so coarse every cell overflows
        for cells in (None, 2**bits, 3):
            tab = ThresholdTable(th, values, dtype=dtype, cells=cells, layout=layout)
            v = _probe(th, gen)
            ref = (v.unsqueeze(-1) >= th).sum(-1)  # counting, in the input's dtype
            assert torch.equal(tab.codes(v), ref), (bits, cells, tab.layout)
            assert torch.equal(tab.lookup(v), adc.values(ref, dtype)), (bits, cells)
            assert tab.lookup(v).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_threshold_table_affine_outputs_equal_gathered_outputs(dtype: torch.dtype) -> None:
    # A noisy sigmoid bank (64 different ramps, no equal thresholds): the compact table
    # computes outputs as a + i b from the list index instead of gathering them; it must give
    # the gathered values bit for bit, at the thresholds and their float neighbours too.
    gen = torch.Generator().manual_seed(4)
    adc = RampADC("sigmoid", 5, 64, device=PCM_DEVICE, generator=gen, comparator_offset=0.1)
    th = adc.thresholds().to(dtype)
    values = adc.values(torch.arange(32)).expand(64, -1)
    tab = ThresholdTable(th, values, dtype=dtype, layout="compact")
    assert tab._affine is not None and not tab.overflow
    v = _probe(th, gen)
    fast = tab.lookup(v)
    tab._affine = None
    assert torch.equal(fast, tab.lookup(v))
    assert torch.equal(fast, adc.values((v.unsqueeze(-1) >= th).sum(-1), dtype))
    # not affine in the index: equal thresholds (stuck-off steps), or an LSB that is not a
    # power of two (a linear ramp over +-3 at 3 bits: 0.75) -- those tables gather.
    stuck = RampADC("tanh", 3, 8, device=DeviceModel(stuck_off=0.3), generator=gen)
    assert (
        ThresholdTable(
            stuck.thresholds(),
            stuck.values(torch.arange(8)).expand(8, -1),
            dtype=dtype,
            layout="compact",
        )._affine
        is None
    )
    lin = RampADC("linear", 3, 2, domain=(-3.0, 3.0))
    assert lin.lsb == 0.75
    assert (
        ThresholdTable(
            lin.thresholds(),
            lin.values(torch.arange(8)).expand(2, -1),
            dtype=dtype,
            layout="compact",
        )._affine
        is None
    )


def test_threshold_table_positions_in_float64_when_needed() -> None:
    # thresholds far from zero relative to a fine grid: cell positions around 2e6 cells, where
    # float32 could err by more than the guard, so they are computed in float64; still exact.
    gen = torch.Generator().manual_seed(1)
    th = (1e6 + 100 * torch.rand(4, 31, dtype=F64, generator=gen).sort(1).values).float()
    tab = ThresholdTable(th, dtype=torch.float32, cells=4096)
    assert tab._gdtype == F64
    inf = torch.tensor(math.inf)
    v = torch.cat([th.T, torch.nextafter(th.T, inf), torch.nextafter(th.T, -inf)])
    v = torch.cat([v, (1e6 + 100 * torch.rand(500, 4, dtype=F64, generator=gen)).float()])
    assert torch.equal(tab.codes(v), (v.unsqueeze(-1) >= th).sum(-1))


def test_threshold_table_picks_layout_by_size() -> None:
    gen = torch.Generator().manual_seed(2)
    ideal = RampADC("sigmoid", 8, 256)  # identical columns: one shared row of cells
    tab = ThresholdTable(ideal.thresholds(), dtype=torch.float32)
    assert tab.layout == "records" and tab.depth == 1 and not tab.overflow
    noisy = RampADC("sigmoid", 5, 1024, device=PCM_DEVICE, generator=gen)
    tab = ThresholdTable(noisy.thresholds(), dtype=torch.float32)
    assert tab.layout == "compact"


def test_threshold_table_bad_input() -> None:
    th = torch.linspace(-1, 1, 7, dtype=F64).expand(3, -1)
    with pytest.raises(ValueError, match="non-decreasing"):
        ThresholdTable(th.flip(1))
    with pytest.raises(ValueError, match="finite"):
        ThresholdTable(torch.cat([th[:, :-1], torch.full((3, 1), math.inf, dtype=F64)], 1))
    with pytest.raises(ValueError, match=r"\(C, K\)"):
        ThresholdTable(th[0])
    with pytest.raises(ValueError, match="values"):
        ThresholdTable(th, torch.zeros(3, 7))
    with pytest.raises(ValueError, match="layout"):
        ThresholdTable(th, layout="dense")
    with pytest.raises(ValueError, match="cells"):
        ThresholdTable(th, cells=0)
    tab = ThresholdTable(th)
    with pytest.raises(ValueError, match="without values"):
        tab.lookup(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="columns=3"):
        tab.codes(torch.zeros(2, 4, dtype=F64))


# --- fast path == step-by-step path -----------------------------------------------------------


def _cell(kind: str, *, bias: bool = True, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    if kind == "relu":
        return Elman(I, H, nonlinearity="relu", bias=bias, dtype=F64)
    return {"elman": Elman, "lstm": LSTM, "gru": GRU}[kind](I, H, bias=bias, dtype=F64)


def _x(seed: int = 1, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, T, I, generator=g, dtype=F64)


def _both(cell: Any, cfg: AnalogConfig, x: torch.Tensor, **kw: Any) -> tuple[Any, Any]:
    """``(fast, slow)`` outputs and final states of fresh conversions (same seeds)."""
    slow_y, slow_s = to_analog(cell, cfg).eval()(x, **kw)  # parameters need grad: slow path
    with torch.no_grad():
        fast_y, fast_s = to_analog(cell, cfg).eval()(x, **kw)
    return (fast_y, fast_s), (slow_y.detach(), tuple(s.detach() for s in slow_s))


CONFIGS: dict[str, AnalogConfig] = {
    "ideal": AnalogConfig.ideal(nl_bits=6),
    "ideal-split-ir": AnalogConfig.ideal(nl_bits=6, max_rows=4, ir_drop=0.3),
    "dac-adc": AnalogConfig.ideal(nl_bits=5, inp_bits=6, out_bits=7, out_bound=3.0),
    "digital-activations": AnalogConfig.ideal(nl_adc=False, inp_bits=8, out_bits=8),
    "no-noise-management": AnalogConfig.ideal(noise_management="none", inp_bound=0.8),
    "vread-state-nladc": AnalogConfig.ideal(
        nl_bits=7, v_read_actual=0.23, state_activation="nl_adc", inp_bits=9
    ),
    "pcm": AnalogConfig.pcm(seed=3),
    "pcm-split": AnalogConfig.pcm(seed=4, max_rows=5, comparator_noise=0.05),
    "pcm-drift-ir": AnalogConfig.pcm(seed=5, t_inference=3600.0, ir_drop=0.2),
    "reram-out-noise": AnalogConfig.reram(seed=6, out_noise=0.1, comparator_offset=0.1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("kind", ["lstm", "gru", "elman", "relu"])
def test_fast_path_equals_step_by_step(kind: str, name: str) -> None:
    # float64: the paths differ only in rounding (summation order, a * (1/b) for a / b), far
    # below any quantiser's step, and draw the same noise samples: agreement to ~1e-12.
    cell = _cell(kind)
    (fy, fs), (sy, ss) = _both(cell, CONFIGS[name], _x())
    assert _rel_rms(fy, sy) < 1e-10, _rel_rms(fy, sy)
    for a, b in zip(fs, ss, strict=True):
        assert _rel_rms(a, b) < 1e-10
        assert a.is_contiguous()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fast_path_resets_state_and_no_bias(kind: str) -> None:
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 2] = resets[2, 5] = True
    cell = _cell(kind, bias=False)  # no bias row: α comes from x alone, h may dominate
    g = torch.Generator().manual_seed(7)
    state = tuple(
        torch.randn(B, H, generator=g, dtype=F64) * 2 for _ in range(2 if kind == "lstm" else 1)
    )
    init = cell.state_type(*state)
    for cfg in (CONFIGS["dac-adc"], CONFIGS["pcm"]):
        (fy, _), (sy, _) = _both(cell, cfg, _x(scale=0.05), state=init, resets=resets)
        assert _rel_rms(fy, sy) < 1e-10


def test_fast_path_h_dominates_noise_management() -> None:
    # Elman relu with large weights: |h| grows past max|[x, 1]|, so steps redo their static
    # part with α = max|h|; without that the DAC would clip h.
    cell = _cell("relu")
    with torch.no_grad():
        cell.recurrent.mul_(6.0)
    cfg = AnalogConfig.ideal(inp_bits=7, out_bits=None, out_bound=1e3)
    (fy, _), (sy, _) = _both(cell, cfg, _x())
    assert float(fy.abs().max()) > 2.0  # h did dominate
    assert _rel_rms(fy, sy) < 1e-10


@pytest.mark.parametrize("preset", ["pcm", "ideal"])
def test_fast_path_equals_step_by_step_float32_bench_config(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The configuration tools/bench/analog.py times (float32 LSTM, the presets as they are),
    # at odd sizes, with chunks of 3 steps (the last one short): the same seed gives the same
    # noise samples in both paths, so they agree to float32 rounding. A code flipped by
    # rounding at a threshold would move one output by an LSB (~3 %) and fail the bound.
    torch.manual_seed(0)
    n_in, hidden, steps = 13, 33, 41
    cell = LSTM(n_in, hidden)
    x = torch.randn(5, steps, n_in, generator=torch.Generator().manual_seed(1))
    cfg = AnalogConfig.pcm(seed=2) if preset == "pcm" else AnalogConfig.ideal(nl_bits=8)
    monkeypatch.setattr(inference_mod, "CHUNK_ELEMS", 5 * 3 * 8 * hidden)
    slow_y, slow_s = to_analog(cell, cfg).eval()(x)
    with torch.no_grad():
        fast_y, fast_s = to_analog(cell, cfg).eval()(x)
    assert fast_y.dtype == torch.float32
    assert _rel_rms(fast_y, slow_y.detach()) < 1e-5
    for a, b in zip(fast_s, slow_s, strict=True):
        assert _rel_rms(a, b.detach()) < 1e-5
    # and the noise is there: a second read of the same programmed cell differs.
    acell = to_analog(cell, cfg).eval()
    with torch.no_grad():
        first, _ = acell(x)
        second, _ = acell(x)
    assert torch.equal(first, second) == (preset == "ideal")


def test_fast_path_chunks_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    cell = _cell("lstm")
    cfg = AnalogConfig.pcm(seed=9)
    with torch.no_grad():
        whole, _ = to_analog(cell, cfg).eval()(_x())
        monkeypatch.setattr(inference_mod, "CHUNK_ELEMS", 1)  # one step per chunk
        chunked, _ = to_analog(cell, cfg).eval()(_x())
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13)


def test_fast_path_plan_follows_weights_and_drift() -> None:
    # the cached plan is rebuilt when the tile drifts or is reprogrammed: the fast path then
    # still equals the step-by-step path of the same tile (noise-free devices, so the two
    # paths' different numbers of draws do not matter).
    dev = DeviceModel(name="drifting", drift=True)
    acell: Any = to_analog(_cell("lstm"), AnalogConfig.ideal(device=dev, drift_compensation=True))
    acell.eval()
    x = _x()

    def check() -> torch.Tensor:
        with torch.no_grad():
            fast, _ = acell(x)
        slow, _ = acell(x)
        assert _rel_rms(fast, slow.detach()) < 1e-10
        out: torch.Tensor = fast
        return out

    y0 = check()
    plan = _binding(acell).fast
    drift_analog(acell, 86400.0)
    y1 = check()
    assert _binding(acell).fast is not plan
    with torch.no_grad():
        acell.weight_ih.mul_(0.5)  # reprograms the tile on next use
    y2 = check()
    assert not torch.equal(y0, y1) and not torch.equal(y1, y2)


# --- the fast path's noise has the model's moments --------------------------------------------


def test_fast_path_noise_moments() -> None:
    # One Elman-tanh step with exact digital tanh, ideal DAC/ADC and PCM read + output noise,
    # many copies of one input (x, h0): atanh(y) is the column sum with its noise, whose mean
    # and variance the model gives in closed form (per column, in the output units). The 1/f
    # noise is drawn per read here: drawn per time (the default) it is in the weights and
    # read_var is zero, so only the output noise would be tested (test_analog_equations checks
    # read_var itself against the equations).
    n = 20000
    torch.manual_seed(0)
    cell = Elman(I, H, dtype=F64)
    with torch.no_grad():
        cell.weight_ih.mul_(0.3)
        cell.recurrent.mul_(0.3)
    dev = dataclasses.replace(PCM_DEVICE, read_noise_draw="per_read")
    cfg = AnalogConfig.pcm(
        device=dev, nl_adc=False, inp_bits=None, out_bits=None, out_noise=0.05, seed=1
    )
    acell = to_analog(cell, cfg).eval()
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(1, 1, I, generator=g, dtype=F64)
    h1 = 0.5 * torch.randn(1, H, generator=g, dtype=F64)
    with torch.no_grad():
        y, _ = acell(x1.expand(n, 1, I), cell.state_type(h1.expand(n, H)))
    z = torch.atanh(y[:, 0])
    tile = _binding(acell).tile
    assert tile is not None
    u = torch.cat([x1[0], h1, torch.ones(1, 1, dtype=F64)], 1)  # [x, h, 1]
    alpha = u.abs().max()
    xn = u / alpha
    scale = tile.scale.squeeze(1) * tile.gain * alpha
    mean = scale * (xn @ tile.w_norm.T)[0]
    var = scale.square() * ((xn.square() @ tile.read_var.T)[0] + cfg.out_noise**2)
    se_mean = (var / n).sqrt()
    assert float(((z.mean(0) - mean).abs() / se_mean).max()) < 4.5
    ratio = z.var(0) / var  # relative standard error sqrt(2 / n) = 1 %
    assert float((ratio - 1).abs().max()) < 0.05
    assert float(var.sqrt().min()) > 1e-3  # the noise is not negligible: the test can fail
    assert tile.has_read_noise  # and the devices' per-read noise is part of it
