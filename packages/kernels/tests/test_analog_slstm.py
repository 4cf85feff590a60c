"""sLSTM on crossbars (``rnnkit.kernels.analog.slstm`` and its mapping in ``cells``)."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from rnnkit.core.cells import SLSTM
from rnnkit.core.cells._gated import GatedCell
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.recurrent import Recurrent
from rnnkit.kernels.analog import AnalogBinding, AnalogConfig, is_analog, to_analog
from rnnkit.kernels.analog.slstm import tile_rows

B, T, I, H = 3, 11, 5, 6  # noqa: E741
F64 = torch.float64


def _cell(heads: int = 1, seed: int = 0) -> SLSTM:
    torch.manual_seed(seed)
    return SLSTM(I, H, heads=heads, dtype=F64)


def _x(seed: int = 1, scale: float = 2.0) -> Tensor:
    # scaled so the exponential input gate really swings (the stabiliser is exercised)
    return scale * torch.randn(B, T, I, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _binding(cell: nn.Module) -> AnalogBinding:
    b = getattr(cell, "_rnnkit_analog", None)
    assert isinstance(b, AnalogBinding)
    return b


def _rel_rms(a: Tensor, ref: Tensor) -> float:
    return float((a - ref).square().mean().sqrt() / ref.square().mean().sqrt())


@pytest.mark.parametrize("heads", [1, 2])
def test_ideal_periphery_without_nl_adc_is_exact(heads: int) -> None:
    cell = _cell(heads)
    x = _x()
    ref, ref_state = cell(x, backend="reference")
    y, state = to_analog(cell, AnalogConfig.ideal(nl_adc=False))(x)
    torch.testing.assert_close(y, ref)
    for a, r in zip(state, ref_state, strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("heads", [1, 2])
def test_ideal_nl_adc_slstm_converges_to_digital_with_bits(heads: int) -> None:
    # The only error left is the NL-ADCs' half LSB on sigma(f), sigma(o), tanh(z) (relative
    # step 2^-bits of the output range), carried a few steps by the recurrence: the relative RMS
    # error of h must shrink with the LSB and stay within 2 LSB at 5, 8 and 10 bits.
    cell = _cell(heads)
    x = _x()
    ref, _ = cell(x, backend="reference")
    errors = []
    for bits in (5, 8, 10):
        y, _ = to_analog(cell, AnalogConfig.ideal(nl_bits=bits))(x)
        errors.append(_rel_rms(y.detach(), ref.detach()))
        assert errors[-1] <= 2.0 * 2.0**-bits, (bits, errors[-1])
    assert errors[0] > errors[1] > errors[2]
    assert float((y - ref).detach().abs().max()) < 0.02  # 10 bits


def test_nl_adc_state_activation_and_resets() -> None:
    # exp of the stabilised gate difference by an exp NL-ADC (10 bits on [-4, 0], 12-bit DAC)
    cell = _cell(2)
    x = _x()
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, 4] = True
    ref, _ = cell(x, backend="reference", resets=resets)
    cfg = AnalogConfig.ideal(nl_bits=10, state_activation="nl_adc", inp_bits=12)
    acell = to_analog(cell, cfg)
    y, _ = acell(x, resets=resets)
    assert float((y - ref).detach().abs().max()) < 0.05
    assert _rel_rms(y.detach(), ref.detach()) < 0.02
    assert "state_exp" in _binding(acell).adcs


def test_tile_order_and_block_diagonal_layout() -> None:
    m = torch.arange(8.0)[:, None].repeat(1, 3)  # rows i i f f z z o o (H = 2)
    assert tile_rows(m)[:, 0].tolist() == [2.0, 3.0, 6.0, 7.0, 4.0, 5.0, 0.0, 1.0]
    cell = _cell(heads=2)
    acell = to_analog(cell, AnalogConfig.ideal(nl_adc=False))
    acell(_x())
    tile = _binding(acell).tile
    assert tile is not None
    assert tile.w_norm.shape == (4 * H, I + H + 1)
    w = tile.effective_weight()
    rec = w[:, I : I + H]
    D = H // 2
    off = torch.ones(4 * H, H, dtype=torch.bool)
    for g in range(4):
        for n in range(2):
            off[g * H + n * D : g * H + (n + 1) * D, n * D : (n + 1) * D] = False
    assert float(rec[off].abs().max()) == 0.0  # off-block pairs hold zero weight
    assert float(rec[~off].abs().min()) > 0.0


@pytest.mark.parametrize("preset", ["ideal", "pcm"])
def test_fast_inference_matches_stepwise(preset: str) -> None:
    cell = _cell(2)
    x = _x()
    cfg = AnalogConfig.preset(preset, seed=3, max_rows=4)
    slow, _ = to_analog(cell, cfg).eval()(x)
    with torch.no_grad():
        fast, _ = to_analog(cell, cfg).eval()(x)
    assert float((fast - slow.detach()).abs().mean()) < 1e-3
    assert float((fast - slow.detach()).abs().max()) < 0.2


def test_pcm_slstm_runs_and_backpropagates() -> None:
    cell = _cell(2)
    x = _x()
    ref, _ = cell(x, backend="reference")
    acell = to_analog(cell, AnalogConfig.pcm(seed=5))
    y, _ = acell(x)
    err = _rel_rms(y.detach(), ref.detach())
    assert 1e-3 < err < 0.5  # noisy, but the same function
    acell.train()
    xg = x.clone().requires_grad_(True)
    y, _ = acell(xg)
    y.square().sum().backward()
    for name, p in acell.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_to_analog_model_with_slstm() -> None:
    torch.manual_seed(0)
    model = Recurrent("slstm", I, 8, 2, heads=2, dtype=F64)
    ref, _ = model(_x(), backend="reference")
    amodel = to_analog(model, AnalogConfig.ideal(nl_adc=False))
    cells: Any = amodel.cells
    assert all(is_analog(c) for c in cells)
    assert select(KernelCall(cells[0], _x(), None, None, False)).backend == "analog"
    y, _ = amodel(_x())
    torch.testing.assert_close(y, ref)


class _ToyState(NamedTuple):
    h: Tensor


class _ToyCell(GatedCell[_ToyState]):
    """A third-party gated cell with no crossbar mapping."""

    kind = "toy_gate"
    num_gates = 1
    gate_names: ClassVar[tuple[str, ...]] = ("a",)
    state_type = _ToyState

    def recur(self, px_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        h = torch.sin(px_t + self.recurrent_term(state.h))
        return h, _ToyState(h)


def test_unmappable_layer_beside_slstm_is_named() -> None:
    model = nn.ModuleDict({"enc": SLSTM(I, H), "mix": _ToyCell(H, H)})
    with pytest.raises(ValueError, match=r"layer 'mix' \(_ToyCell\) cannot be mapped: .*toy_gate"):
        to_analog(model)
    converted: Any = to_analog(nn.ModuleDict({"enc": SLSTM(I, H)}))
    assert is_analog(converted["enc"])
