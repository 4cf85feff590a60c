"""The initial parameters of Mamba and Mamba-2 for a fixed seed, to the bit: each is rebuilt
here from the initialisation's equations, replaying the default generator's draws in the
constructor's order (torch's ``Linear`` initialises the projections, first in their own
constructors, then again in ``reset_parameters``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit.models.cells import Mamba, Mamba2


def _uniform(shape: tuple[int, ...], bound: float) -> Tensor:
    return torch.empty(shape).uniform_(-bound, bound)


def _linear_weight(fan_in: int, fan_out: int) -> Tensor:
    """One draw of torch's ``Linear`` initialisation (no bias)."""
    return nn.Linear(fan_in, fan_out, bias=False).weight.detach()


def _dt_bias(size: int, dt_min: float, dt_max: float, dt_floor: float) -> Tensor:
    """``b = softplus^{-1}(max(dt, dt_floor))``, ``dt = exp(U(log dt_min, log dt_max))``."""
    u = torch.rand(size, dtype=torch.float64)
    dt = torch.exp(math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min)))
    dt = torch.maximum(dt, torch.tensor(dt_floor, dtype=torch.float64))
    return (dt + torch.log(-torch.expm1(-dt))).float()


def _assert_bit_identical(cell: nn.Module, want: dict[str, Tensor]) -> None:
    got = dict(cell.named_parameters())
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert torch.equal(got[name], value), name


def test_mamba_initial_parameters_for_a_fixed_seed() -> None:
    d, E, N, K, R = 5, 6, 3, 4, 2
    dt_min, dt_max, dt_floor = 1e-3, 1e-1, 1e-2  # a floor above dt_min: some steps clamp
    kw = {"dt_min": dt_min, "dt_max": dt_max, "dt_floor": dt_floor}
    torch.manual_seed(7)
    cell = Mamba(d, E, d_state=N, d_conv=K, dt_rank=R, **kw)

    torch.manual_seed(7)
    # the constructors of in_proj, x_proj, dt_proj (weight and bias) and out_proj
    _linear_weight(d, 2 * E), _linear_weight(E, R + 2 * N), nn.Linear(R, E), _linear_weight(E, d)
    # reset_parameters
    w_in, w_x, w_out = _linear_weight(d, 2 * E), _linear_weight(E, R + 2 * N), _linear_weight(E, d)
    conv_w, conv_b = _uniform((E, K), K**-0.5), _uniform((E,), K**-0.5)
    w_dt = _uniform((E, R), R**-0.5)
    b_dt = _dt_bias(E, dt_min, dt_max, dt_floor)
    assert (b_dt == b_dt[0]).sum() < E  # the draw spreads the steps
    want = {
        "in_proj.weight": w_in,
        "conv_weight": conv_w,
        "conv_bias": conv_b,
        "x_proj.weight": w_x,
        "dt_proj.weight": w_dt,
        "dt_proj.bias": b_dt,
        "A_log": torch.log(torch.arange(1, N + 1, dtype=torch.float64)).float().expand(E, N),
        "D": torch.ones(E),
        "out_proj.weight": w_out,
    }
    _assert_bit_identical(cell, want)


def test_mamba2_initial_parameters_for_a_fixed_seed() -> None:
    d, E, N, P, G, K = 4, 8, 3, 2, 2, 3
    heads, conv_dim = E // P, E + 2 * G * N
    dt_min, dt_max, dt_floor = 2e-3, 5e-2, 1e-4
    torch.manual_seed(11)
    cell = Mamba2(
        d, E, d_state=N, headdim=P, ngroups=G, d_conv=K, a_range=(1.0, 16.0),
        dt_min=dt_min, dt_max=dt_max, dt_floor=dt_floor,
    )  # fmt: skip

    torch.manual_seed(11)
    # the constructors of in_proj and out_proj
    _linear_weight(d, E + conv_dim + heads), _linear_weight(E, d)
    # reset_parameters
    w_in, w_out = _linear_weight(d, E + conv_dim + heads), _linear_weight(E, d)
    conv_w, conv_b = _uniform((conv_dim, K), K**-0.5), _uniform((conv_dim,), K**-0.5)
    dt_bias = _dt_bias(heads, dt_min, dt_max, dt_floor)
    A = torch.empty(heads, dtype=torch.float64).uniform_(1.0, 16.0)
    want = {
        "in_proj.weight": w_in,
        "conv_weight": conv_w,
        "conv_bias": conv_b,
        "dt_bias": dt_bias,
        "A_log": torch.log(A).float(),
        "D": torch.ones(heads),
        "norm_weight": torch.ones(E),
        "out_proj.weight": w_out,
    }
    _assert_bit_identical(cell, want)
