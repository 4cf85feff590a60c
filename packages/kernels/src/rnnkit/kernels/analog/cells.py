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

``config.nl_adc=False`` replaces every NL-ADC by the conventional ADC plus the exact digital
function (the aihwkit-style baseline).

Programming is cached per cell and redone when a parameter changes. In training mode a fresh
noisy copy of the weights is sampled on every forward (hardware-aware training); DAC, ADC and
NL-ADC quantisation pass gradients straight through.
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
from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.devices import program_conductances
from rnnkit.kernels.analog.ramp_adc import RampADC, ThresholdTable
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

SUPPORTED_KINDS = ("elman", "lstm", "gru")
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
            f"cell kind {kind!r} has no crossbar mapping (supported: {', '.join(SUPPORTED_KINDS)}; "
            "sLSTM's exponential gates and normaliser state are not mapped yet)"
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
    """Let the programmed conductances of every converted cell drift to ``t_inference`` s."""
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
    tile = AnalogTile(m, cfg.replace(t_inference=b.t or cfg.t_inference), b.gen, nl_columns=nl_cols)
    b.tile, b.version = tile, _versions(cell)
    if not b.adcs:
        H = int(cell.hidden_size)
        for fn in sorted({p[0] for p in plan}):
            n = sum(e - s for f, s, e in plan if f == fn)
            b.adcs[fn] = _make_adc(fn, n, cfg, b.gen)
        if cfg.state_activation == "nl_adc" and cell.kind in ("lstm", "gru"):
            b.adcs["state_tanh"] = _make_adc("tanh", H, cfg, b.gen)
    return tile


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
    if not (cell.training and cfg.train_noise_scale > 0) and not _needs_grad(cell, x, state):
        with torch.no_grad():
            return _fast_forward(cell, call, b, tile, state)
    m = _tile_matrix(cell)
    w_norm: Tensor | None = None
    if cell.training and cfg.train_noise_scale > 0:
        # hardware-aware training: a fresh programming-noise sample every forward.
        dev, s = cfg.device, tile.scale
        wn = (m.detach() / s).clamp(-1, 1) * dev.g_range
        gp = program_conductances(
            dev, dev.g_min + wn.clamp_min(0), b.gen, noise_scale=cfg.train_noise_scale, faults=False
        )
        gm = program_conductances(
            dev,
            dev.g_min + (-wn).clamp_min(0),
            b.gen,
            noise_scale=cfg.train_noise_scale,
            faults=False,
        )
        w_norm = (gp - gm) / dev.g_range
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
        z = tile.mvm(torch.cat(parts, 1), use_w, read_generator=b.read_gen, w_norm=w_norm)
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


class _FastPlan:
    """Everything of an inference pass that does not change per step, for one programmed tile.

    The tile input is ``u_t = [x_t, h_{t-1}, 1]``. Its bit-line sums are linear in the DAC
    outputs, so the rows driven by ``x_t`` and the bias row (the *static* rows) are multiplied
    for all steps at once, and only the ``h`` rows are multiplied per step; the two parts are
    summed before the noise, IR drop and converters, exactly as on the bit line. The same split
    holds for the read-noise variance (linear in the squared inputs) and for the two line
    currents of the first-order IR drop. Noise management divides ``u_t`` by
    ``α_t = max|u_t|``: the static part is computed with ``max|[x_t, 1]|`` and a step whose
    ``max|h|`` exceeds it is recomputed whole (an LSTM with a bias never needs to: ``|h| < 1``).
    """

    def __init__(self, cell: Any, b: AnalogBinding, tile: AnalogTile, x: Tensor) -> None:
        cfg = tile.config
        dt, dv = x.dtype, x.device
        self.key = (id(tile), tile.t, tile.gain, dt, dv)
        I, H = int(cell.input_size), int(cell.hidden_size)  # noqa: E741
        self.bias = cell.bias is not None
        self.ir = cfg.ir_drop
        self.read_noise = tile.has_read_noise
        self.out = tile.out_features
        self.blocks: list[dict[str, Any]] = []
        wn = tile.w_norm.to(dt)
        var = tile.read_var.to(dt)
        gp, gm = tile._gp_n.to(dt), tile._gm_n.to(dt)
        for r0, r1 in tile.row_blocks:
            n = r1 - r0
            rows = torch.arange(r0, r1, device=dv)
            dyn = (rows >= I) & (rows < I + H)
            pos = (rows - r0).to(dt) / n
            mats = [wn[:, r0:r1]]
            if self.ir > 0:
                g_p, g_m = gp[:, r0:r1], gm[:, r0:r1]
                mats += [g_p, g_p * pos, g_m, g_m * pos]
            lin = torch.cat(mats, 0).T  # (n, k * out): every product linear in the inputs
            vb = var[:, r0:r1].T
            blk: dict[str, Any] = {"n": n}
            s_idx = (rows[~dyn] - r0, rows[~dyn])
            d_lo = max(r0, I) - r0
            d_hi = min(r1, I + H) - r0
            # static rows: positions in u (x rows keep their index, the bias row is I + H).
            blk["s_u"] = torch.where(s_idx[1] >= I + H, s_idx[1] - H, s_idx[1])
            blk["s_lin"] = lin[s_idx[0]].contiguous() if s_idx[0].numel() else None
            blk["s_var"] = vb[s_idx[0]].contiguous() if s_idx[0].numel() else None
            blk["d"] = (d_lo + r0 - I, d_hi + r0 - I) if d_hi > d_lo else None
            blk["d_lin"] = lin[d_lo:d_hi].contiguous() if d_hi > d_lo else None
            blk["d_var"] = vb[d_lo:d_hi].contiguous() if d_hi > d_lo else None
            self.blocks.append(blk)
        self.nl_mask = tile.nl_columns
        self.any_adc, self.any_nl = tile._any_adc, tile._any_nl
        self.mixed = self.any_adc and self.any_nl
        self.col_scale = (tile.scale.squeeze(1) * tile.gain).to(dt)
        # NL-ADC banks of the step, merged into one table when they share a resolution.
        plan = _column_plan(cell, cfg)
        self.banks = [(b.adcs[fn], s, e) for fn, s, e in plan]
        self.table: ThresholdTable | None = None
        if self.banks:
            ratio = cfg.v_read_ratio
            tabs = [adc.table(ratio, dt, "cpu") for adc, _, _ in self.banks]
            if len({t.levels for t in tabs}) == 1 and all(a.nl.sign > 0 for a, _, _ in self.banks):
                th = torch.cat(
                    [a.thresholds(ratio, torch.float64, "cpu") for a, _, _ in self.banks]
                )
                codes = torch.arange(tabs[0].levels + 1)
                vals = torch.cat(
                    [a.values(codes, dt).expand(a.columns, -1) for a, _, _ in self.banks]
                )
                self.table = ThresholdTable(th.to(dt), vals, dtype=dt, device=dv)
        self.nl_lo = self.banks[0][1] if self.banks else 0
        self.nl_hi = self.banks[-1][2] if self.banks else 0
        contiguous = all(
            self.banks[k][2] == self.banks[k + 1][1] for k in range(len(self.banks) - 1)
        )
        if not contiguous:
            self.table = None

    def static_parts(
        self, u: Tensor, cfg: AnalogConfig, alpha: Tensor
    ) -> list[tuple[Tensor, Tensor | None] | None]:
        """Per block: the static rows' linear products ``(…, k out)`` and read-noise variance
        ``(…, out)`` (``None`` without read noise); ``None`` for a block without static rows."""
        xs = quantize_ste(u / alpha, cfg.inp_bits, cfg.inp_bound)
        parts: list[tuple[Tensor, Tensor | None] | None] = []
        for blk in self.blocks:
            if blk["s_lin"] is None:
                parts.append(None)
                continue
            xb = xs.index_select(-1, blk["s_u"])
            var = xb.square() @ blk["s_var"] if self.read_noise else None
            parts.append((xb @ blk["s_lin"], var))
        return parts


def _fast_forward(
    cell: Any, call: KernelCall, b: AnalogBinding, tile: AnalogTile, state: Any
) -> tuple[Tensor, Any]:
    """Inference (no gradient, no training noise) with the per-step work cut to the recurrent
    product, the noise draws and one table conversion; the same model and random draws (in the
    same order) as the step-by-step path of :func:`analog_forward`."""
    x = call.x
    B, T = x.shape[0], x.shape[1]
    cfg = tile.config
    fp = b.fast
    key = (id(tile), tile.t, tile.gain, x.dtype, x.device)
    if not isinstance(fp, _FastPlan) or fp.key != key:
        fp = _FastPlan(cell, b, tile, x)
        b.fast = fp
    H = int(cell.hidden_size)
    # static inputs [x_t, 1] (time-major) and their share of noise management.
    xs = x.transpose(0, 1)
    if fp.bias:
        xs = torch.cat([xs, xs.new_ones(T, B, 1)], -1)
    if cfg.noise_management == "abs_max":
        a_s = xs.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    else:
        a_s = xs.new_ones(T, B, 1)
    static = fp.static_parts(xs, cfg, a_s)
    abs_max = cfg.noise_management == "abs_max"
    ratio = cfg.v_read_ratio
    out = fp.out
    nl = fp.banks != []
    initial = (
        cell.init_state(B, device=x.device, dtype=x.dtype) if call.resets is not None else None
    )
    resets = call.resets.unbind(1) if call.resets is not None else None
    width = int(cell.num_gates) * H
    ys = []
    for t in range(T):
        if resets is not None:
            assert initial is not None
            state = apply_resets(state, initial, resets[t])
        h = state.h
        alpha = a_s[t]
        parts = [
            None if p is None else (p[0][t], None if p[1] is None else p[1][t]) for p in static
        ]
        if abs_max:
            a_h = h.abs().amax(-1, keepdim=True)
            if bool((a_h > alpha).any()):
                # h dominates the input scale of some rows: redo this step's static part.
                alpha = torch.maximum(alpha, a_h)
                parts = fp.static_parts(xs[t], cfg, alpha)
        hq = quantize_ste(h / alpha, cfg.inp_bits, cfg.inp_bound)
        adc_sum: Tensor | None = None
        nl_sum: Tensor | None = None
        for blk, sp in zip(fp.blocks, parts, strict=True):
            d = blk["d"]
            var: Tensor | None = None
            if d is None:
                assert sp is not None
                acc, var = sp
            else:
                hb = hq[:, d[0] : d[1]]
                if sp is None:
                    acc = hb @ blk["d_lin"]
                    if fp.read_noise:
                        var = hb.square() @ blk["d_var"]
                else:
                    acc = torch.addmm(sp[0], hb, blk["d_lin"])
                    if fp.read_noise:
                        assert sp[1] is not None
                        var = torch.addmm(sp[1], hb.square(), blk["d_var"])
            zb = acc[:, :out]
            if fp.ir > 0:
                n = blk["n"]
                jp, pp = acc[:, out : 2 * out], acc[:, 2 * out : 3 * out]
                jm, pm = acc[:, 3 * out : 4 * out], acc[:, 4 * out : 5 * out]
                zb = zb - (fp.ir * jp * pp / n - fp.ir * jm * pm / n)
            if var is not None:
                sd = var.add_(cfg.out_noise**2).sqrt_()
                zb = torch.addcmul(zb, sd, AnalogTile._randn(zb, b.read_gen))
            elif cfg.out_noise > 0:
                zb = zb + cfg.out_noise * AnalogTile._randn(zb, b.read_gen)
            if ratio != 1.0:
                zb = zb * ratio
            if fp.any_adc:
                q = quantize_ste(zb, cfg.out_bits, cfg.out_bound)
                adc_sum = q if adc_sum is None else adc_sum + q
            if fp.any_nl:
                nl_sum = zb if nl_sum is None else nl_sum + zb
        if adc_sum is None:
            assert nl_sum is not None
            z = nl_sum
        elif nl_sum is None:
            z = adc_sum
        else:
            z = torch.where(fp.nl_mask, nl_sum, adc_sum)
        z = z * alpha * fp.col_scale
        if nl:
            z = _convert(fp, z, width, ratio, b)
        h, state = _gate_update(cell, z, state, nl, b)
        ys.append(h)
    return torch.stack(ys, 1), state


def _convert(fp: _FastPlan, z: Tensor, width: int, ratio: float, b: AnalogBinding) -> Tensor:
    """The NL-ADC columns of ``z`` converted (comparator noise drawn bank by bank, as before)."""
    if fp.table is None:
        pieces, pos = [], 0
        for adc, c0, c1 in fp.banks:
            if pos < c0:
                pieces.append(z[:, pos:c0])
            pieces.append(adc(z[:, c0:c1], v_read_ratio=ratio, generator=b.read_gen))
            pos = c1
        if pos < width:
            pieces.append(z[:, pos:])
        return torch.cat(pieces, 1)
    lo, hi = fp.nl_lo, fp.nl_hi
    us = [adc.comparator_input(z[:, c0:c1], b.read_gen) for adc, c0, c1 in fp.banks]
    u = us[0] if len(us) == 1 else torch.cat(us, 1)
    y = fp.table.lookup(u)
    if lo == 0 and hi == width:
        return y
    return torch.cat([z[:, :lo], y, z[:, hi:]], 1)


def _gate_update(
    cell: Any, z: Tensor, state: Any, nl: bool, b: AnalogBinding
) -> tuple[Tensor, Any]:
    """Digital part of the step from ``z (B, G*H)`` (activations where ``nl``)."""
    st = type(state)
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
