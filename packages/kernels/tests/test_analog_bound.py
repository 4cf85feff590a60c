"""Bound management of the analog tile (``rnnkit.kernels.analog.bound``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rnnkit.kernels.analog import AnalogConfig, AnalogTile
from rnnkit.kernels.analog.bound import bound_managed, dac_prescale

OUT, IN, N = 5, 48, 9
F64 = torch.float64


def _problem(seed: int = 0, spread: float = 4.0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, IN, generator=gen, dtype=F64)
    # inputs of very different magnitudes, several far outside a DAC range of ±1
    u = torch.randn(N, IN, generator=gen, dtype=F64) * torch.logspace(-1, math.log10(spread), N)[
        :, None
    ].to(F64)
    return w, u


def _step(bits: int, bound: float) -> float:
    return 2.0 * bound / float(2**bits - 2)


def test_dac_saturation_clips_without_and_is_recovered_with_bound_management() -> None:
    w, u = _problem()
    ideal = u @ w.T
    cfg = AnalogConfig.ideal(inp_bits=8, noise_management="none", inp_bound=1.0)
    plain = AnalogTile(w, cfg).mvm(u)
    managed = AnalogTile(w, cfg.replace(bound_management="iterative")).mvm(u)
    # β is the smallest power of two bringing max|u| into ±inp_bound: the DAC step grows by β.
    beta = torch.exp2(torch.ceil(torch.log2(u.abs().amax(1, keepdim=True).clamp_min(1.0))))
    half_in = 0.5 * _step(8, 1.0)
    bound = beta * half_in * w.abs().sum(1)  # (N, OUT): quantisation error of the DAC at β
    assert bool((beta > 1).any())
    assert bool(((managed - ideal).abs() <= bound + 1e-12).all())
    # without bound management the DAC clips: the result is that of the clipped input
    clipped = u.clamp(-1, 1) @ w.T
    assert bool(((plain - clipped).abs() <= half_in * w.abs().sum(1) + 1e-12).all())
    sat = (u.abs() > 1).any(1)
    assert float((plain - ideal)[sat].abs().max()) > 10 * float(bound[sat].max())


def test_adc_saturation_clips_without_and_is_recovered_with_bound_management() -> None:
    w, u = _problem(1)
    ideal = u @ w.T
    out_bound = 2.0
    cfg = AnalogConfig.ideal(inp_bits=8, out_bits=9, out_bound=out_bound)  # abs_max NM
    tile = AnalogTile(w, cfg)
    plain = tile.mvm(u)
    managed = AnalogTile(w, cfg.replace(bound_management="iterative")).mvm(u)
    alpha = u.abs().amax(1, keepdim=True)
    scale = w.abs().amax(1)
    wt = w / scale[:, None]
    z_norm = (u / alpha) @ wt.T  # the ideal normalised column sums
    e_in = 0.5 * _step(8, 1.0) * wt.abs().sum(1)  # DAC error on a column sum
    half_out = 0.5 * _step(9, out_bound)
    # the halving stops at the first β whose read fits: |z̃|/β + e_in <= out_bound.
    need = (z_norm.abs() / (out_bound - e_in)).amax(1, keepdim=True).clamp_min(1.0)
    beta_max = 2 * need
    bound = beta_max * (e_in + half_out) * alpha * scale
    assert bool((need > 1).any())
    assert bool(((managed - ideal).abs() <= bound + 1e-12).all())
    # without it the ADC clips each normalised column sum at ±out_bound and loses the excess
    assert float((plain / (alpha * scale)).abs().max()) <= out_bound + 1e-12
    excess = (z_norm.abs() - out_bound - e_in).clamp_min(0) * alpha * scale
    assert bool((excess > 0).any())
    assert bool(((plain - ideal).abs() >= excess - 1e-12).all())
    assert float((plain - ideal).abs().max()) > 3 * float((managed - ideal).abs().max())


def test_bound_management_repeats_only_saturated_vectors_and_caps() -> None:
    calls: list[int] = []
    # a DAC range wide enough that only the (fake) ADC saturates
    cfg = AnalogConfig.ideal(bound_management="iterative", bm_max_factor=8.0, inp_bound=1e3)

    def read(x: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(x.shape[0])
        z = 3.0 * x  # one "column" with weight 3 and an ADC bound of 1
        return z.clamp(-1, 1), (z.abs() > 1).any(-1)

    v = torch.tensor([[0.1], [0.5], [1.0], [100.0]], dtype=F64)
    out = bound_managed(read, v, cfg)
    # 0.1 fits at once; 0.5 needs β=2; 1.0 needs β=4; 100 is still saturated at the cap β=8.
    assert calls == [4, 3, 2, 1]
    torch.testing.assert_close(out[:3], 3.0 * v[:3])
    assert float(out[3, 0]) == pytest.approx(8.0)  # clipped at the cap: 1 * 8
    big = torch.tensor([[5.0, -20.0]], dtype=F64)
    assert float(dac_prescale(big, cfg.replace(inp_bound=1.0))[0, 0]) == 8.0  # capped (32)
    assert float(dac_prescale(big, cfg.replace(inp_bound=1.0, bm_max_factor=64.0))[0, 0]) == 32
    assert float(dac_prescale(big, cfg)[0, 0]) == 1.0  # fits the DAC as it is


def test_bound_management_gradient_is_the_ideal_one() -> None:
    w, u = _problem(2)
    # ideal DAC (the weight gradient of the straight-through MVM uses the DAC's output)
    cfg = AnalogConfig.ideal(out_bits=9, out_bound=2.0, bound_management="iterative", max_rows=16)
    weight = w.clone().requires_grad_(True)
    x = u.clone().requires_grad_(True)
    tile = AnalogTile(w, cfg)
    g = torch.randn(N, OUT, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.autograd.backward((tile.mvm(x, weight) * g).sum())
    assert x.grad is not None and weight.grad is not None
    torch.testing.assert_close(x.grad, g @ w)
    torch.testing.assert_close(weight.grad, g.T @ u)


def test_bound_management_config_errors() -> None:
    with pytest.raises(ValueError, match="bound_management"):
        AnalogConfig(bound_management="shift")
    with pytest.raises(ValueError, match="bm_max_factor"):
        AnalogConfig(bm_max_factor=0.5)
