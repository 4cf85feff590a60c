"""The inference fast path of analog cells: the same crossbar model with less work per step.

Used by :func:`~rnnkit.kernels.analog.cells.analog_forward` when no gradient is needed and no
training noise is injected. It simulates exactly what the step-by-step path
(:meth:`~rnnkit.kernels.analog.tile.AnalogTile.mvm` per step, then the NL-ADCs) simulates,
with the same random draws in the same order, so for a seed the two agree up to float
rounding (summation order, and ``a * (1/b)`` for ``a / b``), which can move a value that lies
within rounding of a DAC, ADC or NL-ADC threshold by one level. What is reorganised, and why
each step keeps the model's semantics:

1. **Static rows for all steps at once.** The tile input is ``u_t = [x_t, h_{t-1}, 1]`` and
   each bit line sums ``Σ_i w̃_ij x̃_i`` over all its rows *before* noise and conversion. The
   sum is linear, so the rows driven by ``x_t`` and the bias row are multiplied for a chunk of
   steps in one GEMM and only the ``h`` rows per step; the two are added before the noise, IR
   drop and converters see the column, as on the bit line. The read-noise variance
   ``Σ_i σ_ij² x̃_i²`` and the two line currents of the first-order IR drop are linear in
   (squared) inputs too and split the same way. The DAC quantises each input element on its
   own, so quantising ``[x_t, 1]`` ahead of time is the same as quantising ``u_t``, given the
   same noise-management scale ``α_t = max|u_t|``: it is taken from ``[x_t, 1]``, and a step
   whose ``max|h|`` is larger recomputes its static part with the larger ``α_t``. An LSTM with
   a bias row never needs to after the first step (``|h| <= 1 <= α_t``), so it skips the test.
2. **Units folded into constants.** The tile computes in normalised units (weights divided by
   the column scale ``s_j``, inputs by ``α``) and multiplies back by ``α s_j`` and the
   read-voltage ratio after conversion. Those factors commute with every linear operation and
   with Gaussian noise (a scaled standard deviation), so the per-column factor is folded into
   the weight and variance matrices and ``α`` into the inputs (the dequantised DAC outputs
   ``x̃ α``). Only conventional-ADC columns, whose quantiser acts in normalised units, are
   divided back by ``α`` around their quantiser.
3. **Noise** is drawn per step and per row block into a preallocated buffer, from the same
   generator, in the same order (tile blocks, then comparators bank by bank) as the
   step-by-step path: the same distribution, and the same samples.
4. **NL-ADCs** convert through one :class:`~rnnkit.kernels.analog.threshold.ThresholdTable`
   for all banks of a step (exact ``#{k: T_k <= v}`` with a fixed number of passes).
5. The static part is computed in chunks of steps, so memory stays bounded for long sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.core.state import apply_resets
from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.ramp_adc import RampADC
from rnnkit.kernels.analog.threshold import ThresholdTable
from rnnkit.kernels.analog.tile import AnalogTile

__all__ = ["InferencePlan", "fast_forward"]

#: ``(adc, first column, last column + 1)`` NL-ADC banks of a tile, in column order.
Banks = list[tuple[RampADC, int, int]]
#: the digital part of a step: ``(z (B, G*H), state) -> (h (B, H), state)``.
StepUpdate = Callable[[Tensor, Any], tuple[Tensor, Any]]
#: one step's static products and noise term per row block, ``(B, k out)`` and ``(B, out)``.
Parts = list[tuple[Tensor | None, Tensor | None]]

#: elements of the per-chunk static products (steps x batch x products; 4 MiB in float32):
#: bounds their memory for long sequences. Between 2^18 and 2^22 the chunk size made no
#: difference beyond the noise of the shared 2-core machine (B=16, H=256, PCM preset).
CHUNK_ELEMS = 1 << 20


def _runs(mask: Tensor) -> list[tuple[int, int]]:
    """The ``(start, stop)`` runs where the bool vector ``mask`` is true."""
    runs: list[tuple[int, int]] = []
    start = None
    for j, v in enumerate(mask.tolist()):
        if v and start is None:
            start = j
        elif not v and start is not None:
            runs.append((start, j))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


class _Block:
    """One row block (physical tile row range) split into static and ``h`` rows.

    ``n_static``: the static rows of the whole tile (``I`` or ``I + 1``); ``s_cols``:
    positions in ``[x, 1]`` of this block's static rows; ``s_lin`` ``(ns, k out)`` and
    ``s_var`` ``(ns, out)``; ``d``: the ``h`` index range, with ``d_lin`` ``(nd, k out)`` and
    ``d_var`` ``(nd, out)``. ``k = 5`` with IR drop (the column sum, then the plus and minus
    line currents and their position-weighted versions), else 1.
    """

    def __init__(
        self,
        r0: int,
        r1: int,
        n_in: int,
        hidden: int,
        n_static: int,
        lin: Tensor,
        var: Tensor | None,
    ) -> None:
        rows = torch.arange(r0, r1)
        dyn = (rows >= n_in) & (rows < n_in + hidden)
        st = rows[~dyn]
        self.n = r1 - r0
        self.s_cols = torch.where(st >= n_in + hidden, st - hidden, st).to(lin.device)
        #: the block holds every static row, in order: no gather needed.
        self.s_all = bool(torch.equal(self.s_cols.cpu(), torch.arange(n_static)))
        self.s_lin = lin[st - r0].contiguous() if st.numel() else None
        self.s_var = var[st - r0].contiguous() if (var is not None and st.numel()) else None
        d_lo, d_hi = max(r0, n_in) - r0, min(r1, n_in + hidden) - r0
        self.d = (d_lo + r0 - n_in, d_hi + r0 - n_in) if d_hi > d_lo else None
        self.d_full = self.d == (0, hidden)
        self.d_lin = lin[d_lo:d_hi].contiguous() if self.d else None
        self.d_var = var[d_lo:d_hi].contiguous() if (var is not None and self.d) else None


class InferencePlan:
    """Everything of an inference pass that is fixed for one programmed tile and dtype.

    Args:
        tile: the programmed tile ``(G*H, I + H [+ 1])`` driven by ``[x_t, h_{t-1} [, 1]]``.
        banks: the NL-ADC banks of the tile's columns.
        input_size, hidden_size: ``I`` and ``H``.
        bias: whether the tile has the bias row.
        bounded_h: whether every ``h`` the cell produces satisfies ``|h| <= 1`` (an LSTM: a
            sigmoid times a tanh, both converted or exact).
        dtype, device: of the inputs.
    """

    def __init__(
        self,
        tile: AnalogTile,
        banks: Banks,
        *,
        input_size: int,
        hidden_size: int,
        bias: bool,
        bounded_h: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        cfg: AnalogConfig = tile.config
        self.tile, self.cfg = tile, cfg
        self.key = (tile.t, tile.epoch, tile.gain, dtype, device)
        self.I, self.H, self.bias = input_size, hidden_size, bias
        self.out = tile.out_features
        self.abs_max = cfg.noise_management == "abs_max"
        # |h| <= 1 <= α (the bias input is 1): noise management never needs h's scale.
        self.skip_h_scale = bounded_h and bias
        dt, dv = dtype, device
        # DAC: x̃ = clamp(round(v / Δ), ±M) Δ, with M = bound / Δ an integer.
        self.dac_step = (
            None if cfg.inp_bits is None else 2.0 * cfg.inp_bound / (2**cfg.inp_bits - 2)
        )
        self.dac_max = 0.0 if self.dac_step is None else round(cfg.inp_bound / self.dac_step)
        # with |v| <= 1 <= bound the DAC's clip (no quantiser) is the identity.
        self.dac_clip = self.dac_step is None and not (self.abs_max and cfg.inp_bound >= 1.0)
        # With noise management every input is divided by an α >= its max-abs (α = max|[x, 1]|,
        # and fast_forward makes α >= max|h|, or the cell bounds h), so |v / (α Δ)| <= 1 / Δ
        # <= bound / Δ = dac_max, an integer: the rounded code is within range and the DAC's
        # clamp is the identity (one pass fewer per step and per chunk).
        self.dac_clamp = not (self.abs_max and cfg.inp_bound >= 1.0)
        self.read_noise = tile.has_read_noise
        self.out_noise = cfg.out_noise
        self.ir = cfg.ir_drop
        ratio = cfg.v_read_ratio
        nl = tile.nl_columns.to(dv)
        col_scale = (tile.scale.squeeze(1) * tile.gain).to(device=dv, dtype=dt)
        # per-column factor folded into the matrices: everything but the ADC columns' scale.
        fold = torch.where(nl, col_scale * ratio, torch.full_like(col_scale, ratio))
        self.adc_runs = _runs(~nl.cpu())
        self.adc_scale = col_scale  # applied after an ADC column's quantiser
        self.out_step = (
            None if cfg.out_bits is None else 2.0 * cfg.out_bound / (2**cfg.out_bits - 2)
        )
        self.out_max = 0.0 if self.out_step is None else round(cfg.out_bound / self.out_step)
        self.noise_sd = self.out_noise * fold  # (out,) output noise, final units
        wn = tile.w_norm.to(device=dv, dtype=dt)
        var = tile.read_var.to(device=dv, dtype=dt) if self.read_noise else None
        self.blocks: list[_Block] = []
        self.ir_fold: list[Tensor] = []
        n_static = tile.in_features - hidden_size  # x rows and the bias row
        for r0, r1 in tile.row_blocks:
            n = r1 - r0
            mats = [wn[:, r0:r1] * fold[:, None]]
            if self.ir > 0:
                pos = torch.arange(n, device=dv, dtype=dt) / n
                gp = tile._gp_n[:, r0:r1].to(device=dv, dtype=dt)
                gm = tile._gm_n[:, r0:r1].to(device=dv, dtype=dt)
                mats += [gp, gp * pos, gm, gm * pos]
                # IR loss ir / n (J+ P+ - J- P-) in normalised units, times fold; the line
                # currents carry α twice, so one α is divided back per step.
                self.ir_fold.append(fold * (self.ir / n))
            lin = torch.cat(mats, 0).T  # (rows, k out): every product linear in the inputs
            vb = None if var is None else (var[:, r0:r1] * fold[:, None].square()).T
            blk = _Block(r0, r1, input_size, hidden_size, n_static, lin, vb)
            if blk.s_var is not None:
                # the output noise is one more input: α, with variance (σ_out fold_j)².
                blk.s_var = torch.cat([blk.s_var, self.noise_sd.square()[None]], 0)
            self.blocks.append(blk)
        self.banks = banks
        self.table: ThresholdTable | None = None
        self.nl_lo = banks[0][1] if banks else 0
        self.nl_hi = banks[-1][2] if banks else 0
        contiguous = all(banks[k][2] == banks[k + 1][1] for k in range(len(banks) - 1))
        if banks and contiguous and all(a.nl.sign > 0 for a, _, _ in banks):
            th = [a.thresholds(ratio, torch.float64, "cpu") for a, _, _ in banks]
            if len({t.shape[1] for t in th}) == 1:
                codes = torch.arange(th[0].shape[1] + 1)
                vals = torch.cat([a.values(codes, dt).expand(a.columns, -1) for a, _, _ in banks])
                self.table = ThresholdTable(torch.cat(th), vals, dtype=dt, device=dv)
        self._eps: dict[torch.Size, Tensor] = {}
        self._sq: dict[torch.Size, Tensor] = {}

    def matches(self, tile: AnalogTile, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this plan is still valid for ``tile`` (same object, time, dtype)."""
        return self.tile is tile and self.key == (tile.t, tile.epoch, tile.gain, dtype, device)

    # --- the static rows ---------------------------------------------------------------------

    def _dac(self, v: Tensor, alpha: Tensor) -> Tensor:
        """Dequantised DAC output ``x̃ α`` of ``v`` (original units) with scale ``alpha``."""
        if self.dac_step is None:
            if not self.dac_clip:
                return v
            b = self.cfg.inp_bound
            return (v / alpha).clamp_(-b, b).mul_(alpha)
        a = alpha * self.dac_step
        q: Tensor = (v / a).round_()
        if self.dac_clamp:
            q = q.clamp_(-self.dac_max, self.dac_max)
        return q.mul_(a)

    def static(self, xs: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, list[Parts]]:
        """Noise management's ``α`` ``(n, B, 1)`` and, per step, the static :data:`Parts` of
        the inputs ``xs (n, B, I)`` (views into per-chunk tensors); with read noise the noise
        term is a variance, or a standard deviation for a block without ``h`` rows.
        ``alpha (n, B, 1)`` overrides noise management."""
        n, B = xs.shape[0], xs.shape[1]
        us = torch.cat([xs, xs.new_ones(n, B, 1)], -1) if self.bias else xs
        if alpha is None:
            if self.abs_max:
                # max |u| in one pass, without a temporary |u| (exact: a max of magnitudes).
                alpha = torch.linalg.vector_norm(us, math.inf, -1, keepdim=True)
                alpha = alpha.clamp_min_(1e-12)
            else:
                alpha = us.new_ones(n, B, 1)
        xq = self._dac(us, alpha)
        cols: list[tuple[list[Tensor] | None, list[Tensor] | None]] = []
        for blk in self.blocks:
            flat: Tensor | None = None
            lins: list[Tensor] | None = None
            if blk.s_lin is not None:
                xb = xq if blk.s_all else xq.index_select(-1, blk.s_cols)
                flat = xb.reshape(n * B, -1)
                lins = list((flat @ blk.s_lin).view(n, B, -1).unbind(0))
            vrs: list[Tensor] | None = None
            if self.read_noise:
                a2 = alpha.reshape(n * B, 1).square()
                if flat is not None and blk.s_var is not None:
                    var = torch.cat([flat.square(), a2], 1) @ blk.s_var
                else:
                    var = a2 * self.noise_sd.square()
                if blk.d is None:
                    var = var.sqrt_()  # nothing per step: store the deviation
                vrs = list(var.view(n, B, self.out).unbind(0))
            cols.append((lins, vrs))
        parts = [
            [(None if ls is None else ls[j], None if vs is None else vs[j]) for ls, vs in cols]
            for j in range(n)
        ]
        return alpha, parts

    # --- one step ----------------------------------------------------------------------------

    def dac_scales(self, alpha: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(α Δ, 1 / (α Δ))`` for the DAC of ``h`` at scales ``alpha`` (``None`` without a
        quantising DAC)."""
        if self.dac_step is None:
            return None
        a = alpha * self.dac_step
        return a, a.reciprocal()

    def _dac_h(self, h: Tensor, alpha: Tensor, scales: tuple[Tensor, Tensor] | None) -> Tensor:
        """:meth:`_dac` of one step's ``h`` ``(B, H)`` with precomputed ``scales``."""
        if scales is None:
            return self._dac(h, alpha)
        a, inv = scales
        q = torch.mul(h, inv).round_()
        if self.dac_clamp:
            q = q.clamp_(-self.dac_max, self.dac_max)
        return q.mul_(a)

    def _normal(self, zb: Tensor, gen: torch.Generator) -> Tensor:
        """Standard normal draws shaped like ``zb (B, out)`` (a reused buffer)."""
        buf = self._eps.get(zb.shape)
        if buf is None:
            buf = self._eps[zb.shape] = zb.new_empty(zb.shape)
        return buf.normal_(generator=gen)

    def _square(self, hb: Tensor) -> Tensor:
        """``hb ** 2`` into a reused buffer (one allocation per plan, not per step)."""
        buf = self._sq.get(hb.shape)
        if buf is None:
            buf = self._sq[hb.shape] = hb.new_empty(hb.shape)
        return torch.mul(hb, hb, out=buf)

    def columns(
        self,
        h: Tensor,
        alpha: Tensor,
        scales: tuple[Tensor, Tensor] | None,
        parts: Parts,
        gen: torch.Generator,
    ) -> Tensor:
        """The tile's column outputs ``(B, out)`` in final units (before NL-ADCs) for the
        previous output ``h (B, H)``, ``α (B, 1)``, its DAC ``scales`` (:meth:`dac_scales`)
        and the static ``parts`` of this step (overwritten)."""
        hq = self._dac_h(h, alpha, scales)
        total: Tensor | None = None
        out = self.out
        for k, (blk, (lin, var)) in enumerate(zip(self.blocks, parts, strict=True)):
            hb: Tensor | None = None
            if blk.d is not None:
                assert blk.d_lin is not None
                hb = hq if blk.d_full else hq[:, blk.d[0] : blk.d[1]]
                acc = hb @ blk.d_lin if lin is None else lin.addmm_(hb, blk.d_lin)
            else:
                assert lin is not None
                acc = lin
            if self.ir > 0:
                zb = acc[:, :out]
                jp, pp = acc[:, out : 2 * out], acc[:, 2 * out : 3 * out]
                jm, pm = acc[:, 3 * out : 4 * out], acc[:, 4 * out : 5 * out]
                loss = (jp * pp).sub_(jm * pm).mul_(self.ir_fold[k]).div_(alpha)
                zb = zb.sub_(loss)
            else:
                zb = acc
            if var is not None:
                if hb is not None:
                    assert blk.d_var is not None
                    var = var.addmm_(self._square(hb), blk.d_var).sqrt_()
                zb = zb.addcmul_(var, self._normal(zb, gen))
            elif self.out_noise > 0:
                zb = zb.addcmul_(alpha * self.noise_sd, self._normal(zb, gen))
            if self.adc_runs:
                self._adc(zb, alpha)
            total = zb if total is None else total.add_(zb)
        assert total is not None
        return total

    def _adc(self, z: Tensor, alpha: Tensor) -> None:
        """Quantise the conventional-ADC columns of ``z (B, out)`` in place: back to
        normalised units (``/ α`` and the column scale), ADC, and forward again."""
        cfg = self.cfg
        for a0, a1 in self.adc_runs:
            seg = z[:, a0:a1]
            if self.out_step is None:
                v = (seg / alpha).clamp_(-cfg.out_bound, cfg.out_bound)
            else:
                v = (seg / (alpha * self.out_step)).round_()
                v = v.clamp_(-self.out_max, self.out_max).mul_(self.out_step)
            seg.copy_(v.mul_(alpha).mul_(self.adc_scale[a0:a1]))

    def convert(self, z: Tensor, gen: torch.Generator) -> Tensor:
        """``z (B, out)`` with its NL-ADC columns converted (comparator noise drawn bank by
        bank, in column order, as in the step-by-step path)."""
        ratio = self.cfg.v_read_ratio
        if self.table is None:
            for adc, c0, c1 in self.banks:
                z[:, c0:c1] = adc(z[:, c0:c1], v_read_ratio=ratio, generator=gen)
            return z
        lo, hi = self.nl_lo, self.nl_hi
        if self.cfg.comparator_noise > 0:
            us = [adc.comparator_input(z[:, c0:c1], gen) for adc, c0, c1 in self.banks]
            u = us[0] if len(us) == 1 else torch.cat(us, 1)
        else:
            u = z if (lo == 0 and hi == self.out) else z[:, lo:hi]
        y = self.table.lookup(u)
        if lo == 0 and hi == self.out:
            return y
        z[:, lo:hi] = y
        return z


def fast_forward(
    cell: Any,
    call: KernelCall,
    plan: InferencePlan,
    state: Any,
    update: StepUpdate,
    read_generator: torch.Generator,
) -> tuple[Tensor, Any]:
    """Run ``call`` (no gradient) on the crossbar of ``plan``: ``y (B, T, H)`` and the final
    state. ``update`` is the digital part of the step, ``read_generator`` seeds every per-read
    draw (the same stream as the step-by-step path)."""
    x = call.x
    B, T = x.shape[0], x.shape[1]
    nl = plan.banks != []
    initial = (
        cell.init_state(B, device=x.device, dtype=x.dtype) if call.resets is not None else None
    )
    resets = call.resets.unbind(1) if call.resets is not None else None
    xs = x.transpose(0, 1)  # (T, B, I): a chunk of steps is one GEMM operand
    k_out = plan.out * (5 if plan.ir > 0 else 1) + plan.out
    chunk = max(1, min(T, CHUNK_ELEMS // max(1, B * k_out)))
    ys: list[Tensor] = []
    check_scale = plan.abs_max
    for t0 in range(0, T, chunk):
        alpha_c, parts_c = plan.static(xs[t0 : t0 + chunk])
        n = alpha_c.shape[0]
        alphas = alpha_c.unbind(0)
        sc = plan.dac_scales(alpha_c)
        scales: list[tuple[Tensor, Tensor] | None] = (
            [None] * n if sc is None else list(zip(sc[0].unbind(0), sc[1].unbind(0), strict=True))
        )
        for j in range(n):
            t = t0 + j
            if resets is not None:
                assert initial is not None
                state = apply_resets(state, initial, resets[t])
            h = state.h
            alpha, scale, parts = alphas[j], scales[j], parts_c[j]
            if check_scale:
                a_h = h.abs().amax(-1, keepdim=True)
                if bool((a_h > alpha).any()):
                    # h sets this step's input scale: redo its static part with it.
                    a_new = torch.maximum(alpha, a_h)[None]
                    alpha_1, parts_1 = plan.static(xs[t : t + 1], a_new)
                    alpha, parts = alpha_1[0], parts_1[0]
                    scale = plan.dac_scales(alpha)
                # |h| <= 1 <= α from here on for an LSTM with a bias row.
                check_scale = not plan.skip_h_scale
            z = plan.columns(h, alpha, scale, parts, read_generator)
            if nl:
                z = plan.convert(z, read_generator)
            y_t, state = update(z, state)
            ys.append(y_t)
    return torch.stack(ys, 1), state
