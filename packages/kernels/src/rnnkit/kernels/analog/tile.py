"""Crossbar tiles: a weight matrix on differential conductance pairs, read with DACs and ADCs.

Model of one matrix-vector product ``z = W u`` with ``W: (out, in)`` (``out`` columns = bit
lines, ``in`` rows = word lines):

1. **Mapping.** Each output column is scaled by ``s_j = max_i |W_ji|`` so ``w̃ = W / s`` lies in
   ``[-1, 1]``; ``w̃ > 0`` goes on the plus device, ``w̃ < 0`` on the minus device of a
   differential pair: ``g± = g_min + max(±w̃, 0) (g_max - g_min)``. The pair's difference divided
   by ``g_max - g_min`` is the stored weight, so ``g_min`` cancels (except in programming and
   read noise, drift and IR drop, which see the absolute conductances).
2. **Programming** (once, seeded): discrete levels, programming noise ``σ(g)``, stuck devices
   (:func:`~rnnkit.kernels.analog.devices.program_conductances`), drift exponents.
3. **Drift** to ``t_inference`` (PCM: ``g ((t + t0) / t0)^-ν``, then the 1/f noise accumulated
   up to ``t``, one realisation per inference time by default; see
   :mod:`~rnnkit.kernels.analog.devices`) with **global drift compensation**: one digital gain
   per tile, the ratio of the mean absolute outputs of a one-hot probe read right after
   programming and again at ``t``. ``compensation_read="probe"`` reads the probe through the
   tile as it is (programmed and drifted devices with their noise, DAC, output noise, ADC: what
   hardware can do, and the model's); ``"exact"`` uses the noise-free programmed and drifted
   weights instead.
4. **Input**: noise management (divide by ``α = max |u|`` per vector, or clip), optional
   bound management (:mod:`~rnnkit.kernels.analog.bound`: scale down and read again while the
   DAC or an ADC saturates), DAC quantisation to ``inp_bits`` on ``±inp_bound``.
5. **MVM per physical tile** (at most ``max_rows x max_cols``): read noise on every device at
   every read (sampled exactly, in distribution, as output noise with variance
   ``Σ_i σ_ij² x̃_i²`` — one extra product instead of a fresh noisy matrix per read), first-order
   IR drop, output noise, read-voltage gain ``v_read_actual / v_read``.
6. **Partial sums**: row-split tiles each convert with the conventional ADC and their results are
   added digitally. Columns that feed an NL-ADC cannot be digitised before the nonlinearity; for
   those the row-split partial currents are summed on the shared integration node (analog) and
   handed to the NL-ADC unquantised (an assumption: the paper's arrays fit one tile).

Column splitting has no numerical effect (columns are independent), so only rows are looped.

Gradients: the forward value is the analog one, the backward is that of the ideal ``u W^T``
(straight-through for the DAC/ADC rounding, noise detached), which is what hardware-aware
training needs.
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

from rnnkit.kernels.analog.bound import bound_managed
from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.devices import (
    check_time,
    drift_exponents,
    drifted,
    program_conductances,
    read_noise_at,
    read_sigma,
)

__all__ = ["AnalogTile", "quantize_ste"]


def quantize_ste(x: Tensor, bits: int | None, bound: float) -> Tensor:
    """Clip to ``±bound`` and round to ``2^bits - 2`` uniform steps; straight-through gradient.

    ``bits=None`` only clips. Values inside the range keep gradient 1, clipped ones get 0.
    Shapes: any.
    """
    y = x.clamp(-bound, bound)
    if bits is None:
        return y
    step = 2.0 * bound / (2**bits - 2)
    out: Tensor = y + (torch.round(y / step) * step - y).detach()
    return out


class AnalogTile:
    """A weight matrix ``(out, in)`` programmed on crossbar tiles of at most
    ``max_rows x max_cols`` devices (pairs).

    Args:
        weight: ``(out, in)``, the matrix to program (detached).
        config: the simulator configuration.
        generator: seeds programming, faults and drift exponents; per-read noise uses
            ``read_generator`` of :meth:`mvm`.
        nl_columns: bool ``(out,)``: columns that feed NL-ADCs (summed in analog across
            row-split tiles and not digitised here); ``None``: none.

    Attributes:
        scale: ``(out, 1)`` per-column weight scale ``s``.
        g_plus, g_minus: ``(out, in)`` programmed conductances at ``t = 0`` (µS).
        row_blocks: the ``(start, stop)`` row ranges of the physical tiles.
        n_tiles: number of physical tiles (row blocks times column blocks).
    """

    def __init__(
        self,
        weight: Tensor,
        config: AnalogConfig,
        generator: torch.Generator | None = None,
        *,
        nl_columns: Tensor | None = None,
        noise_scale: float | None = None,
    ) -> None:
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        self.config = config
        dev = config.device
        w = weight.detach()
        out_f, in_f = w.shape
        self.out_features, self.in_features = out_f, in_f
        self.row_blocks = [
            (r, min(r + config.max_rows, in_f)) for r in range(0, in_f, config.max_rows)
        ]
        self.n_tiles = len(self.row_blocks) * math.ceil(out_f / config.max_cols)
        self.nl_columns = (
            nl_columns.to(w.device)
            if nl_columns is not None
            else torch.zeros(out_f, dtype=torch.bool, device=w.device)
        )
        self._any_adc = bool((~self.nl_columns).any())
        self._any_nl = bool(self.nl_columns.any())
        # Per-column scaling: each column's largest weight uses the full conductance window.
        self.scale = w.abs().amax(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        wn = w / self.scale
        gr = dev.g_range
        ns = config.prog_noise_scale if noise_scale is None else noise_scale
        target_plus = dev.g_min + wn.clamp_min(0) * gr
        target_minus = dev.g_min + (-wn).clamp_min(0) * gr
        self.g_plus = program_conductances(dev, target_plus, generator, noise_scale=ns)
        self.g_minus = program_conductances(dev, target_minus, generator, noise_scale=ns)
        # the model draws each device's drift exponent from its target conductance.
        self.nu_plus = drift_exponents(dev, target_plus, generator)
        self.nu_minus = drift_exponents(dev, target_minus, generator)
        # seeds the draws of each inference time (1/f noise, probe reads): a function of the
        # programming seed and t, so drifting to the same t again gives the same realisation.
        self._seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        #: counts set_time calls (caches built on one time's weights compare it).
        self.epoch = 0
        self._probe_ref: float | None = None
        self.set_time(config.t_inference)

    def _time_generator(self, t: float, salt: int = 0) -> torch.Generator:
        bits = int.from_bytes(struct.pack("<d", float(t)), "little")
        return torch.Generator().manual_seed((self._seed ^ bits ^ (salt << 61)) % 2**63)

    def _at_time(
        self,
        g_plus: Tensor,
        g_minus: Tensor,
        t: float,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Programmed pairs at ``t``: ``(w_norm, read_var, gp_n, gm_n, w_drift)``, all
        ``(out, in)``: the read weights (drift and the per-time noise), the per-read variance,
        both devices' read conductances over ``g_range``, and the noise-free drifted weights."""
        dev = self.config.device
        gr = dev.g_range
        dp = drifted(dev, g_plus, self.nu_plus, t)
        dm = drifted(dev, g_minus, self.nu_minus, t)
        gp = read_noise_at(dev, g_plus, dp, t, generator)
        gm = read_noise_at(dev, g_minus, dm, t, generator)
        sp, sm = read_sigma(dev, g_plus, dp, t), read_sigma(dev, g_minus, dm, t)
        var = (sp.square() + sm.square()) / gr**2
        # flush denormals (tiny conductances squared): they make CPU matmuls 10x slower.
        var = torch.where(var < 1e-20, torch.zeros_like(var), var)
        return (gp - gm) / gr, var, gp / gr, gm / gr, (dp - dm) / gr

    def _compensation(
        self,
        g_plus: Tensor,
        g_minus: Tensor,
        state: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        generator: torch.Generator | None,
        reference: float | None,
        ref_generator: torch.Generator | None,
    ) -> tuple[float, float | None]:
        """Global drift compensation gain of pairs programmed to ``g_plus, g_minus`` read at
        ``state`` (:meth:`_at_time`; ``generator`` seeds that read), and the program-time
        probe reading (``reference``; ``None``: read now, seeded by ``ref_generator``)."""
        cfg, dev = self.config, self.config.device
        if not (cfg.drift_compensation and dev.drift):
            return 1.0, reference
        gr = dev.g_range
        w0 = (g_plus - g_minus) / gr
        w_t, var_t, gp_t, gm_t, w_drift = state
        if cfg.compensation_read == "exact":
            # noise-free: programmed against drifted weights.
            num = float(w0.abs().mean())
            return num / max(float(w_drift.abs().mean()), 1e-12), reference
        if reference is None:
            var0 = read_sigma(dev, g_plus, g_plus, 0.0).square()
            var0 = var0 + read_sigma(dev, g_minus, g_minus, 0.0).square()
            reference = self._probe(w0, var0 / gr**2, g_plus / gr, g_minus / gr, ref_generator)
        now = self._probe(w_t, var_t, gp_t, gm_t, generator)
        return reference / now, reference

    def _probe(
        self,
        wn: Tensor,
        read_var: Tensor,
        gp_n: Tensor,
        gm_n: Tensor,
        generator: torch.Generator | None,
    ) -> float:
        """Mean absolute output of the one-hot probe (every row driven alone at full input)
        read through the tile with weights ``wn`` (``(out, in)``, with their per-read variance
        and read conductances), clamped at ``1e-4``."""
        eye = torch.eye(self.in_features, dtype=wn.dtype, device=wn.device)
        with torch.no_grad():
            z, _ = self._read(eye, wn, generator, detect=False, read_var=read_var, g_n=(gp_n, gm_n))
        return max(float(z.abs().mean()), 1e-4)

    def set_time(self, t: float) -> None:
        """Drift the programmed conductances to ``t`` seconds, draw the noise of that time, and
        refresh what depends on it (the compensation gain included).

        Raises:
            ValueError: if ``t`` is negative or not finite (``t`` counts from the end of
                programming; the drift and 1/f laws are undefined before it).
        """
        self.t = check_time("t", t)
        gen = self._time_generator(t)
        state = self._at_time(self.g_plus, self.g_minus, t, gen)
        #: (out, in) stored normalised weights at time t (what a read sees, before read noise).
        self.w_norm = state[0]
        #: (out, in) per-read variance of each pair, normalised to g_range.
        self.read_var = state[1]
        self.has_read_noise = bool((self.read_var > 0).any())
        self._gp_n, self._gm_n = state[2], state[3]
        self.gain, self._probe_ref = self._compensation(
            self.g_plus, self.g_minus, state, gen, self._probe_ref, self._time_generator(0.0, 1)
        )
        self.epoch += 1

    def sample(
        self, weight: Tensor, generator: torch.Generator | None, noise_scale: float
    ) -> tuple[Tensor, float]:
        """A fresh programming of ``weight`` ``(out, in)`` on this tile's devices (its column
        scales and drift exponents, no stuck devices), read at the tile's time ``t``: the
        normalised weights ``(out, in)`` (drift and per-time noise included) and their own
        compensation gain. Hardware-aware training uses one per forward, so training-mode
        outputs are those of a crossbar at the same ``t`` as in eval mode."""
        dev = self.config.device
        gr = dev.g_range
        wn = (weight.detach() / self.scale).clamp(-1, 1) * gr
        gp = program_conductances(
            dev, dev.g_min + wn.clamp_min(0), generator, noise_scale=noise_scale, faults=False
        )
        gm = program_conductances(
            dev, dev.g_min + (-wn).clamp_min(0), generator, noise_scale=noise_scale, faults=False
        )
        state = self._at_time(gp, gm, self.t, generator)
        gain, _ = self._compensation(gp, gm, state, generator, None, generator)
        return state[0], gain

    def effective_weight(self) -> Tensor:
        """``(out, in)``: what the tile stores, in the units of the original ``weight``
        (drift and its compensation included, noise-free read)."""
        return self.w_norm * self.scale * self.gain

    def mvm(
        self,
        u: Tensor,
        weight: Tensor | None = None,
        *,
        read_generator: torch.Generator | None = None,
        w_norm: Tensor | None = None,
        gain: float | None = None,
    ) -> Tensor:
        """Analog ``u W^T``.

        Args:
            u: ``(B, in)`` inputs.
            weight: ``(out, in)`` the current digital weights, for straight-through gradients
                (``None``: no gradient to the weights).
            read_generator: seeds the per-read noise.
            w_norm: ``(out, in)`` normalised weights to use instead of the programmed ones
                (hardware-aware training samples fresh noisy weights every forward).
            gain: the drift compensation gain of ``w_norm`` (``None``: the tile's).

        Returns:
            ``(B, out)`` in the units of ``u W^T``: ADC-converted for ordinary columns, the
            unquantised analog sum for ``nl_columns``; both include the read-voltage gain.
        """
        cfg = self.config
        wn = self.w_norm if w_norm is None else w_norm
        scale = self.scale.squeeze(1)
        if weight is not None:
            # forward value: programmed weights; backward: d/dW of u W^T (straight-through).
            wn = weight / self.scale + (wn - weight / self.scale).detach()
        if cfg.noise_management == "abs_max":
            alpha = u.detach().abs().amax(-1, keepdim=True).clamp_min(1e-12)
        else:
            alpha = torch.ones_like(u[..., :1])
        if cfg.bound_management == "none":
            z, _ = self._read(u / alpha, wn, read_generator, detect=False)
        else:
            # repeat saturated reads at smaller input scales (see the bound module).
            z = bound_managed(
                lambda v: self._read(v, wn, read_generator, detect=True), u / alpha, cfg
            )
        return z * alpha * (scale * (self.gain if gain is None else gain))

    def _read(
        self,
        v: Tensor,
        wn: Tensor,
        read_generator: torch.Generator | None,
        *,
        detect: bool,
        read_var: Tensor | None = None,
        g_n: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One read of ``v (B, in)`` (noise-managed): DAC, MVM per physical tile, noise, IR
        drop, ADC. Returns the column outputs ``(B, out)`` in normalised units and, when
        ``detect``, whether a conventional-ADC column of each vector clipped ``(B,)``.
        ``read_var`` and ``g_n`` (the per-read variance and both devices' conductances over
        ``g_range``, ``(out, in)``) default to the tile's at its time."""
        cfg = self.config
        rv = self.read_var if read_var is None else read_var
        has_read_noise = self.has_read_noise if read_var is None else bool((rv > 0).any())
        x = quantize_ste(v, cfg.inp_bits, cfg.inp_bound)
        ratio = cfg.v_read_ratio
        any_adc, any_nl = self._any_adc, self._any_nl
        adc_sum: Tensor | None = None
        nl_sum: Tensor | None = None
        sat = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        for r0, r1 in self.row_blocks:
            xb = x[..., r0:r1]
            zb = xb @ wn[:, r0:r1].T
            noise = torch.zeros_like(zb.detach())
            if cfg.ir_drop > 0:
                noise = noise - self._ir_drop(xb.detach(), r0, r1, g_n)
            # read noise and output noise are independent Gaussians: draw their sum at once.
            if has_read_noise:
                var = xb.detach().square() @ rv[:, r0:r1].T
                sd = (var + cfg.out_noise**2).sqrt()
                noise = noise + sd * self._randn(zb, read_generator)
            elif cfg.out_noise > 0:
                noise = noise + cfg.out_noise * self._randn(zb, read_generator)
            zb = (zb + noise) * ratio
            if any_adc:
                q = quantize_ste(zb, cfg.out_bits, cfg.out_bound)
                adc_sum = q if adc_sum is None else adc_sum + q
                if detect:
                    clipped = (zb.detach().abs() > cfg.out_bound) & ~self.nl_columns
                    sat = sat | clipped.any(-1)
            if any_nl:
                nl_sum = zb if nl_sum is None else nl_sum + zb
        if adc_sum is None:
            assert nl_sum is not None
            z = nl_sum
        elif nl_sum is None:
            z = adc_sum
        else:
            z = torch.where(self.nl_columns, nl_sum, adc_sum)
        return z, sat

    def _ir_drop(
        self, xb: Tensor, r0: int, r1: int, g_n: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """First-order IR drop of one row block: ``(B, out)`` current lost.

        Device ``i`` sits ``d_i = i - r0`` wire segments from the sense end of its bit line
        (word line drop neglected). To first order the line voltage there sags by
        ``ir_drop * (J / n) * d_i`` where ``J`` is the line's total (normalised) current and
        ``n`` the rows of the tile, so the line loses ``ir_drop * J * Σ_i (d_i / n) ĝ_i x_i / n``.
        Applied to the plus and the minus line separately (they carry different currents).
        """
        n = r1 - r0
        pos = torch.arange(n, device=xb.device, dtype=xb.dtype) / n
        loss = torch.zeros(xb.shape[0], self.out_features, device=xb.device, dtype=xb.dtype)
        gp, gm = (self._gp_n, self._gm_n) if g_n is None else g_n
        for g, sign in ((gp, 1.0), (gm, -1.0)):
            gb = g[:, r0:r1]
            j = xb @ gb.T
            p = (xb * pos) @ gb.T
            loss = loss + sign * self.config.ir_drop * j * p / n
        return loss

    @staticmethod
    def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
