"""Gated cells on crossbars: one tile per cell, NL-ADC gates, ``to_analog``.

Layout (one tile per cell, unlike aihwkit's two-tile LSTM): the tile stores
``M = [W_ih | R_dense | b]`` with shape ``(G*H, I + H + 1)`` and is driven by
``u_t = [x_t, h_{t-1}, 1]``, so input, recurrent and bias contributions sum on the bit line
before the column's converter. Per cell kind:

- **LSTM** (i, f, g, o): i, f, o columns end in sigmoid NL-ADCs and g columns in tanh NL-ADCs;
  ``c_t = f c_{t-1} + i g`` is digital; ``tanh(c_t)`` follows ``state_activation``
  (``"digital"``: exact; ``"nl_adc"``: DAC on ``±state_bound`` then a tanh NL-ADC bank).
- **Elman tanh**: tanh NL-ADCs. **Elman relu**: conventional ADC and a digital ReLU (a sign test).
- **GRU** (r, z, n): r and z columns end in sigmoid NL-ADCs. ``n = tanh(a_n + r (q_n + b_hn))``
  needs ``r`` to multiply the recurrent part only, so no single bit-line sum exists: the tile
  holds ``a_n = [W_n | 0 | b_n]`` and ``q_n = [0 | R_n | b_hn]`` as separate columns read by the
  conventional ADC, and ``tanh`` follows ``state_activation``.
- **sLSTM** (i, f, z, o; block-diagonal heads placed dense): f, o columns end in sigmoid
  NL-ADCs, z in tanh NL-ADCs, ĩ goes through the conventional ADC; the stabilised exponential
  gating is digital (its ``exp`` per ``state_activation``). Why: :mod:`.slstm`.

``config.nl_adc=False`` replaces every NL-ADC by the conventional ADC plus the exact digital
function (the aihwkit-style baseline).

Programming is cached per cell and redone when a parameter changes. In training mode a fresh
noisy copy of the weights is sampled on every forward (hardware-aware training), at the same
time since programming as in eval mode: drift, the noise of that time and the compensation gain
of the sample, so a model used without ``.eval()`` simulates the same crossbar as in eval
mode, one fresh programming per forward. DAC, ADC and NL-ADC quantisation pass gradients
straight through.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall
from rnnkit.core.state import apply_resets
from rnnkit.kernels.analog import slstm as _slstm
from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.devices import check_time
from rnnkit.kernels.analog.inference import InferencePlan, fast_forward
from rnnkit.kernels.analog.ramp_adc import RampADC
from rnnkit.kernels.analog.tile import AnalogTile, quantize_ste

__all__ = [
    "SUPPORTED_KINDS",
    "AnalogBinding",
    "analog_forward",
    "analog_reason",
    "drift_analog",
    "is_analog",
    "program_analog",
    "to_analog",
]

SUPPORTED_KINDS = ("elman", "lstm", "gru", "slstm")
_ATTR = "_rnnkit_analog"


@dataclass
class AnalogBinding:
    """The analog state attached to a converted cell.

    Attributes:
        config: the simulator configuration.
        converted: whether :func:`to_analog` attached it (``backend="auto"`` then picks analog).
        tile: the programmed tile (``None`` until first use).
        adcs: NL-ADC banks by function name.
        version: parameter versions the tile was programmed from.
    """

    config: AnalogConfig
    converted: bool = True
    tile: AnalogTile | None = None
    adcs: dict[str, RampADC] = field(default_factory=dict)
    version: tuple[int, ...] = ()
    t: float | None = None
    gen: torch.Generator = field(default_factory=torch.Generator)
    fast: Any = None

    def __post_init__(self) -> None:
        self.gen.manual_seed(self.config.seed)
        self.read_gen = torch.Generator().manual_seed(self.config.seed + 1)

    def __deepcopy__(self, memo: dict[int, Any]) -> AnalogBinding:
        # generators and tiles are not deep-copyable in general; a copy reprograms lazily.
        return AnalogBinding(self.config, self.converted, t=self.t)


def analog_reason(cell: Any) -> str | None:
    """Why ``cell`` cannot be mapped to a crossbar (``None`` when it can)."""
    kind = getattr(cell, "kind", "")
    if kind not in SUPPORTED_KINDS:
        return (
            f"cell kind {kind!r} has no crossbar mapping (supported: {', '.join(SUPPORTED_KINDS)})"
        )
    if not all(hasattr(cell, a) for a in ("weight_ih", "recurrent", "dense_recurrent")):
        return f"{type(cell).__name__} is not a gated cell with weight_ih/recurrent parameters"
    return None


def is_analog(cell: Any) -> bool:
    """Whether :func:`to_analog` converted ``cell``."""
    b = getattr(cell, _ATTR, None)
    return isinstance(b, AnalogBinding) and b.converted


def _binding(cell: Any) -> AnalogBinding:
    b = getattr(cell, _ATTR, None)
    if not isinstance(b, AnalogBinding):
        # a direct analog_forward call on an unconverted cell: default (PCM) configuration.
        b = AnalogBinding(AnalogConfig(), converted=False)
        object.__setattr__(cell, _ATTR, b)
    return b


def to_analog(
    model: nn.Module, config: AnalogConfig | None = None, *, inplace: bool = False
) -> nn.Module:
    """Convert every gated cell inside ``model`` to run on simulated crossbars.

    After conversion ``backend="auto"`` runs the converted cells on the ``analog`` backend.
    Weights stay ordinary parameters (train, save and load as before); they are programmed to
    conductances on first use and reprogrammed whenever they change.

    Args:
        model: a cell, a ``Recurrent`` stack or any module containing cells.
        config: the configuration (default ``AnalogConfig()``: PCM-like, 5-bit NL-ADCs).
        inplace: convert ``model`` itself instead of a deep copy.

    Returns:
        The converted model.

    Raises:
        ValueError: naming the first layer that cannot be mapped and why (a cell kind without a
            mapping, or a ``torch.nn`` recurrent module, which must be converted with
            ``Recurrent.from_torch`` first), or if the model contains no cell.
    """
    config = config or AnalogConfig()
    target = model if inplace else copy.deepcopy(model)
    cells: list[tuple[str, Cell[Any]]] = []
    for name, mod in target.named_modules():
        label = name or "<root>"
        if isinstance(mod, nn.RNNBase):
            raise ValueError(
                f"layer {label!r} ({type(mod).__name__}) cannot be mapped: torch.nn recurrent "
                "modules have no cell ABI; convert it with rnnkit.core.Recurrent.from_torch first"
            )
        if isinstance(mod, Cell):
            reason = analog_reason(mod)
            if reason is not None:
                raise ValueError(
                    f"layer {label!r} ({type(mod).__name__}) cannot be mapped: {reason}"
                )
            cells.append((label, mod))
    if not cells:
        raise ValueError(f"{type(model).__name__} contains no recurrent cell to map to crossbars")
    for _, cell in cells:
        object.__setattr__(cell, _ATTR, AnalogBinding(config))
    return target


def _cells(model: nn.Module) -> list[Any]:
    return [m for m in model.modules() if isinstance(getattr(m, _ATTR, None), AnalogBinding)]


def program_analog(model: nn.Module, *, seed: int | None = None) -> None:
    """(Re)program every converted cell now, optionally with a new seed."""
    for cell in _cells(model):
        b: AnalogBinding = getattr(cell, _ATTR)
        if seed is not None:
            b.config = b.config.replace(seed=seed)
        nb = AnalogBinding(b.config, b.converted, t=b.t)
        object.__setattr__(cell, _ATTR, nb)
        _program(cell, nb)


def drift_analog(model: nn.Module, t_inference: float) -> None:
    """Let the programmed conductances of every converted cell drift to ``t_inference`` s.

    Raises:
        ValueError: if ``t_inference`` is negative or not finite.
    """
    check_time("t_inference", t_inference)
    for cell in _cells(model):
        b: AnalogBinding = getattr(cell, _ATTR)
        b.t = t_inference
        if b.tile is not None:
            b.tile.set_time(t_inference)


# --- the mapping ------------------------------------------------------------------------------


def _tile_matrix(cell: Any) -> Tensor:
    """``(G*H, I + H [+ 1])``: ``[W_ih | R_dense | b]`` (GRU: split n into a_n and q_n;
    LSTM: gate columns in the order i, f, o, g)."""
    H, n_in = int(cell.hidden_size), int(cell.input_size)
    w, r, b = cell.weight_ih, cell.dense_recurrent(), cell.bias
    if cell.kind == "gru":
        zeros_i, zeros_h = w.new_zeros(H, n_in), r.new_zeros(H, H)
        top = torch.cat([w[: 2 * H], r[: 2 * H]], 1)
        a_n = torch.cat([w[2 * H :], zeros_h], 1)
        q_n = torch.cat([zeros_i, r[2 * H :]], 1)
        m = torch.cat([top, a_n, q_n], 0)
        if b is not None:
            bhn = cell.bias_hn if cell.bias_hn is not None else b.new_zeros(H)
            m = torch.cat([m, torch.cat([b, bhn])[:, None]], 1)
        return m
    m = torch.cat([w, r], 1)
    if b is not None:
        m = torch.cat([m, b[:, None]], 1)
    if cell.kind == "lstm":
        # columns reordered i, f, o | g so each NL-ADC bank reads one contiguous range.
        i, f, g, o = m.chunk(4, 0)
        m = torch.cat([i, f, o, g], 0)
    if cell.kind == "slstm":
        m = _slstm.tile_rows(m)  # f, o | z | i (see the slstm module)
    return m


def _column_plan(cell: Any, cfg: AnalogConfig) -> list[tuple[str, int, int]]:
    """``(function, start, stop)`` column ranges converted by NL-ADCs."""
    H = int(cell.hidden_size)
    if not cfg.nl_adc:
        return []
    if cell.kind == "lstm":
        return [("sigmoid", 0, 3 * H), ("tanh", 3 * H, 4 * H)]
    if cell.kind == "gru":
        return [("sigmoid", 0, 2 * H)]
    if cell.kind == "slstm":
        return _slstm.column_plan(H, cfg.nl_adc)
    if cell.kind == "elman" and cell.nonlinearity == "tanh":
        return [("tanh", 0, H)]
    return []


def _versions(cell: Any) -> tuple[int, ...]:
    return tuple(int(p._version) for p in cell.parameters()) + tuple(
        p.data_ptr() for p in cell.parameters()
    )


def _make_adc(fn: str, columns: int, cfg: AnalogConfig, gen: torch.Generator) -> RampADC:
    return RampADC(
        fn,
        cfg.nl_bits,
        columns,
        device=cfg.ramp,
        generator=gen,
        noise_scale=cfg.prog_noise_scale,
        bias_devices=cfg.ramp_bias_devices,
        calibrate=cfg.bias_calibration,
        comparator_offset=cfg.comparator_offset,
        comparator_noise=cfg.comparator_noise,
    )


def _program(cell: Any, b: AnalogBinding) -> AnalogTile:
    cfg = b.config
    m = _tile_matrix(cell).detach()
    plan = _column_plan(cell, cfg)
    nl_cols = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    for _, s, e in plan:
        nl_cols[s:e] = True
    # drift_analog's time wins over the config's, t = 0 included (a time, not "unset").
    t = cfg.t_inference if b.t is None else b.t
    tile = AnalogTile(m, cfg.replace(t_inference=t), b.gen, nl_columns=nl_cols)
    b.tile, b.version = tile, _versions(cell)
    if not b.adcs:
        H = int(cell.hidden_size)
        for fn in sorted({p[0] for p in plan}):
            n = sum(e - s for f, s, e in plan if f == fn)
            b.adcs[fn] = _make_adc(fn, n, cfg, b.gen)
        if cfg.state_activation == "nl_adc" and cell.kind in ("lstm", "gru"):
            b.adcs["state_tanh"] = _make_adc("tanh", H, cfg, b.gen)
        if cfg.state_activation == "nl_adc" and cell.kind == "slstm":
            b.adcs["state_exp"] = RampADC(
                torch.exp,
                cfg.nl_bits,
                H,
                device=cfg.ramp,
                generator=b.gen,
                noise_scale=cfg.prog_noise_scale,
                bias_devices=cfg.ramp_bias_devices,
                calibrate=cfg.bias_calibration,
                comparator_offset=cfg.comparator_offset,
                comparator_noise=cfg.comparator_noise,
                domain=_slstm.exp_domain(cfg.state_bound),
            )
    return tile


def _state_exp(v: Tensor, b: AnalogBinding) -> Tensor:
    """``exp(v)`` of a digital ``v <= 0`` (sLSTM's stabilised gates), per ``state_activation``."""
    cfg = b.config
    if cfg.state_activation == "digital":
        return torch.exp(v)
    q = quantize_ste(v, cfg.inp_bits, cfg.state_bound)
    return b.adcs["state_exp"](q, generator=b.read_gen)


def _state_tanh(v: Tensor, b: AnalogBinding) -> Tensor:
    cfg = b.config
    if cfg.state_activation == "digital":
        return torch.tanh(v)
    q = quantize_ste(v, cfg.inp_bits, cfg.state_bound)
    return b.adcs["state_tanh"](q, generator=b.read_gen)


def analog_forward(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``analog`` kernel: run ``call`` step by step on the cell's simulated crossbar.

    Shapes as :class:`~rnnkit.core.dispatch.Kernel`: ``y (B, T, H)`` and the final state.
    """
    cell: Any = call.cell
    x = call.x
    B, T = x.shape[0], x.shape[1]
    b = _binding(cell)
    cfg = b.config
    state: Any = (
        call.state if call.state is not None else cell.init_state(B, device=x.device, dtype=x.dtype)
    )
    if T == 0:
        return x.new_empty(B, 0, cell.output_size), state
    if b.tile is None or b.version != _versions(cell):
        _program(cell, b)
    tile = b.tile
    assert tile is not None
    fast_ok = cfg.bound_management == "none"  # the fast path reads each step once
    if (
        fast_ok
        and not (cell.training and cfg.train_noise_scale > 0)
        and not _needs_grad(cell, x, state)
    ):
        with torch.no_grad():
            return _fast_forward(cell, call, b, tile, state)
    m = _tile_matrix(cell)
    w_norm: Tensor | None = None
    gain: float | None = None
    if cell.training and cfg.train_noise_scale > 0:
        # hardware-aware training: a fresh programming-noise sample every forward, read at the
        # same time t as in eval mode (drift, its noise and its compensation gain included).
        w_norm, gain = tile.sample(m, b.gen, cfg.train_noise_scale)
    use_w = m if (torch.is_grad_enabled() and m.requires_grad) else None
    plan = _column_plan(cell, cfg)
    ratio = cfg.v_read_ratio
    ones = x.new_ones(B, 1) if cell.bias is not None else None
    initial = (
        cell.init_state(B, device=x.device, dtype=x.dtype) if call.resets is not None else None
    )
    resets = call.resets.unbind(1) if call.resets is not None else None
    banks = [(b.adcs[fn], s, e) for fn, s, e in plan]  # one contiguous range per function
    width = int(cell.num_gates) * int(cell.hidden_size)
    ys = []
    for t, x_t in enumerate(x.unbind(1)):
        if resets is not None:
            state = apply_resets(state, initial, resets[t])
        parts = [x_t, state.h] if ones is None else [x_t, state.h, ones]
        z = tile.mvm(
            torch.cat(parts, 1), use_w, read_generator=b.read_gen, w_norm=w_norm, gain=gain
        )
        if banks:
            # NL-ADC columns become the activations; the rest stay linear pre-activations.
            pieces, pos = [], 0
            for adc, c0, c1 in banks:
                if pos < c0:
                    pieces.append(z[:, pos:c0])
                pieces.append(adc(z[:, c0:c1], v_read_ratio=ratio, generator=b.read_gen))
                pos = c1
            if pos < width:
                pieces.append(z[:, pos:])
            z = torch.cat(pieces, 1)
        h, state = _gate_update(cell, z, state, plan != [], b)
        ys.append(h)
    return torch.stack(ys, 1), state


def _needs_grad(cell: Any, x: Tensor, state: Any) -> bool:
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or any(p.requires_grad for p in cell.parameters()):
        return True
    return any(isinstance(s, Tensor) and s.requires_grad for s in state)


def _fast_forward(
    cell: Any, call: KernelCall, b: AnalogBinding, tile: AnalogTile, state: Any
) -> tuple[Tensor, Any]:
    """Inference (no gradient, no training noise) through the cached
    :class:`~rnnkit.kernels.analog.inference.InferencePlan` of the tile: the same model and
    random draws (in the same order) as the step-by-step path."""
    x = call.x
    plan = b.fast
    if not (isinstance(plan, InferencePlan) and plan.matches(tile, x.dtype, x.device)):
        banks = [(b.adcs[fn], s, e) for fn, s, e in _column_plan(cell, tile.config)]
        plan = InferencePlan(
            tile,
            banks,
            input_size=int(cell.input_size),
            hidden_size=int(cell.hidden_size),
            bias=cell.bias is not None,
            bounded_h=cell.kind == "lstm",  # h = sigmoid * tanh, converted or exact
            dtype=x.dtype,
            device=x.device,
        )
        b.fast = plan
    nl = plan.banks != []

    def update(z: Tensor, st: Any) -> tuple[Tensor, Any]:
        return _gate_update(cell, z, st, nl, b)

    return fast_forward(cell, call, plan, state, update, b.read_gen)


def _gate_update(
    cell: Any, z: Tensor, state: Any, nl: bool, b: AnalogBinding
) -> tuple[Tensor, Any]:
    """Digital part of the step from ``z (B, G*H)`` (activations where ``nl``)."""
    st = type(state)
    if cell.kind == "slstm":
        return _slstm.gate_update(z, state, nl=nl, exp_neg=lambda v: _state_exp(v, b))
    if cell.kind == "lstm":
        i, f, o, g = z.chunk(4, dim=-1)
        if not nl:
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * state.c + i * g
        h = o * _state_tanh(c, b)
        return h, st(h, c)
    if cell.kind == "gru":
        H = int(cell.hidden_size)
        r, zg = z[:, :H], z[:, H : 2 * H]
        a_n, q_n = z[:, 2 * H : 3 * H], z[:, 3 * H :]
        if not nl:
            r, zg = torch.sigmoid(r), torch.sigmoid(zg)
        n = _state_tanh(a_n + r * q_n, b)
        h = n + zg * (state.h - n)
        return h, st(h)
    # relu: conventional ADC, then a digital sign test; tanh: the NL-ADC output as is.
    h = torch.relu(z) if cell.nonlinearity == "relu" else (z if nl else torch.tanh(z))
    return h, st(h)
