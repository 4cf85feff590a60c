"""First-order latency, energy and area of one LSTM step: NL-ADC vs conventional ADC + digital NL.

What is from the paper / the reference notes (``[paper]``/``[notes]``) and what is **assumed**:

- ``[paper]`` 1 GHz clock, 16 nm CMOS normalisation; 3/4/5/8-bit NL-ADCs compared; LSTM with
  512 hidden units and ``k = 32`` parallel digital NL units, where the NL work takes 2-5x the
  MAC time; ``V_read ≈ 0.2`` V (swept 0.15-0.25 V); 32 ramp + 5 bias devices per 5-bit column.
- ``[notes]`` a ramp conversion takes ``2^n`` cycles (all columns share the ramp and convert in
  parallel); energy per conversion is about ``2^n`` comparator decisions plus the latch, the
  ramp generator amortised; ``g_max = 25`` µS (PCM); read pulse 10 ns (NeuroSim's default).
- **assumed** (no published figure in the notes; change them in :class:`CostAssumptions`):
  cycles per digital activation ``nl_cycles = 8`` (a look-up-table/interpolation pipeline; the
  paper's 2-5x corresponds to 6.4-16 cycles at an 8-bit MAC ADC, see :func:`motivation`),
  comparator energy 1 fJ per decision, latch 0.5 fJ per bit, digital NL energy 10 fJ per cycle,
  SRAM LUT 0.1 µm² per bit, NL-unit logic 150 µm², comparator + latch 4 µm² per column, 1T1R
  memristor 0.05 µm², average weight conductance ``g_max / 4``.

Counting per LSTM step (hidden ``H``, input ``I``): one analog MVM over ``(I + H + 1)`` rows
and ``4H`` columns; ``5H`` activations (3H sigmoid + H tanh gates, H ``tanh(c_t)``).
NL-ADC system: the 4H gate activations are the conversion itself (``2^n`` cycles); ``tanh(c_t)``
takes a second NL-ADC pass (``2^n`` cycles). Conventional system: ``2^n`` cycles of conversion,
then ``ceil(5H / k)`` rounds of ``nl_cycles`` on ``k`` digital units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rnnkit.core.validation import check_positive_int

__all__ = ["CostAssumptions", "LSTMCost", "comparison_table", "lstm_cost", "motivation"]


@dataclass(frozen=True)
class CostAssumptions:
    """Technology numbers of the cost model (see the module docstring for their sources)."""

    clock_hz: float = 1e9
    v_read: float = 0.2
    g_avg_us: float = 25.0 / 4
    g_ramp_avg_us: float = 25.0 / 2
    t_read_s: float = 10e-9
    e_comparator_fj: float = 1.0
    e_latch_fj_per_bit: float = 0.5
    e_digital_nl_fj_per_cycle: float = 10.0
    nl_cycles: int = 8
    nl_units: int = 32
    a_sram_um2_per_bit: float = 0.1
    a_nl_logic_um2: float = 150.0
    a_comparator_um2: float = 4.0
    a_device_um2: float = 0.05
    bias_devices: int = 5


@dataclass(frozen=True)
class LSTMCost:
    """Cost of one LSTM step for one converter style (times in ns, energies in pJ, area µm²)."""

    style: str
    bits: int
    t_mac_ns: float
    t_nl_ns: float
    e_mac_pj: float
    e_conv_pj: float
    e_nl_pj: float
    area_um2: float

    @property
    def t_ns(self) -> float:
        """Latency of the step."""
        return self.t_mac_ns + self.t_nl_ns

    @property
    def e_pj(self) -> float:
        """Energy of the step."""
        return self.e_mac_pj + self.e_conv_pj + self.e_nl_pj


def lstm_cost(
    hidden: int = 512,
    inputs: int | None = None,
    bits: int = 5,
    *,
    style: str = "nl_adc",
    a: CostAssumptions | None = None,
) -> LSTMCost:
    """Latency, energy and periphery area of one step of an LSTM layer.

    Args:
        hidden: ``H``; inputs: ``I`` (default ``H``); bits: converter resolution ``n``.
        style: ``"nl_adc"`` (ramp NL-ADCs) or ``"conventional"`` (ramp ADC + ``k`` digital NL
            units with ``2^n``-entry look-up tables).
        a: technology assumptions.
    """
    a = a or CostAssumptions()
    if style not in ("nl_adc", "conventional"):
        raise ValueError(f"style must be 'nl_adc' or 'conventional', got {style!r}")
    check_positive_int("hidden", hidden)  # 0 or fewer units: no step to cost (and 0 / 0)
    check_positive_int("bits", bits)
    n_in = hidden if inputs is None else check_positive_int("inputs", inputs)
    H, n = hidden, bits
    cyc_ns = 1e9 / a.clock_hz
    cols, rows = 4 * H, n_in + H + 1
    # MAC: every differential pair conducts for the read pulse: V^2 G t (fJ = 1e-15 J).
    e_mac = 2 * rows * cols * a.v_read**2 * a.g_avg_us * 1e-6 * a.t_read_s * 1e12
    conv_ns = 2**n * cyc_ns
    e_one_conv_fj = 2**n * a.e_comparator_fj + n * a.e_latch_fj_per_bit
    if style == "nl_adc":
        # 4H gate conversions + H tanh(c) conversions; the ramp device of each step conducts
        # for one cycle per column (2 devices: step and reference).
        ramp_fj = 2 * 2**n * a.v_read**2 * a.g_ramp_avg_us * 1e-6 * cyc_ns * 1e-9 * 1e15
        e_conv = 5 * H * (e_one_conv_fj + ramp_fj) * 1e-3
        per_col = a.a_comparator_um2 + 2 * (2**n + a.bias_devices) * a.a_device_um2
        return LSTMCost(
            style, n, a.t_read_s * 1e9 + conv_ns, conv_ns, e_mac, e_conv, 0.0, 5 * H * per_col
        )
    e_conv = 4 * H * e_one_conv_fj * 1e-3
    rounds = math.ceil(5 * H / a.nl_units)
    t_nl = rounds * a.nl_cycles * cyc_ns
    e_nl = 5 * H * a.nl_cycles * a.e_digital_nl_fj_per_cycle * 1e-3
    lut = 2 * (2**n) * n * a.a_sram_um2_per_bit  # sigmoid and tanh tables per unit
    area = 4 * H * a.a_comparator_um2 + a.nl_units * (lut + a.a_nl_logic_um2)
    return LSTMCost(style, n, a.t_read_s * 1e9 + conv_ns, t_nl, e_mac, e_conv, e_nl, area)


def motivation(
    hidden: int = 512, k: int = 32, adc_bits: int = 8, nl_cycles: tuple[int, ...] = (4, 8, 16)
) -> list[tuple[int, float]]:
    """``(nl_cycles, t_NL / t_MAC)`` for a conventional LSTM layer: the paper's Fig. 1 claim
    (512 hidden, k = 32: NL work takes 2-5x the MAC time), with ``t_MAC`` the ``2^adc_bits``-cycle
    column-parallel conversion (the read pulse, overlappable, is left out)."""
    check_positive_int("hidden", hidden)
    check_positive_int("k", k)
    check_positive_int("adc_bits", adc_bits)
    out = []
    for c in nl_cycles:
        t_nl = math.ceil(5 * hidden / k) * c
        out.append((c, t_nl / 2**adc_bits))
    return out


def comparison_table(
    hidden: int = 512, bits: tuple[int, ...] = (3, 4, 5, 8), a: CostAssumptions | None = None
) -> str:
    """The 3/4/5/8-bit comparison as a text table (NL-ADC vs conventional + digital NL).

    ``speedup``, ``E ratio`` and ``periph E`` are conventional / NL-ADC (above 1: the NL-ADC
    wins); ``periph E`` leaves out the MAC array energy, which both designs share.
    """
    head = (
        f"{'bits':>4} {'NL-ADC ns':>10} {'conv ns':>9} {'speedup':>8} "
        f"{'NL-ADC pJ':>10} {'conv pJ':>9} {'E ratio':>8} {'periph E':>9} "
        f"{'NL-ADC mm2':>11} {'conv mm2':>9}"
    )
    lines = [head]
    for n in bits:
        x = lstm_cost(hidden, bits=n, style="nl_adc", a=a)
        c = lstm_cost(hidden, bits=n, style="conventional", a=a)
        lines.append(
            f"{n:>4} {x.t_ns:>10.0f} {c.t_ns:>9.0f} {c.t_ns / x.t_ns:>7.2f}x "
            f"{x.e_pj:>10.1f} {c.e_pj:>9.1f} {c.e_pj / x.e_pj:>7.2f}x "
            f"{(c.e_conv_pj + c.e_nl_pj) / (x.e_conv_pj + x.e_nl_pj):>8.2f}x "
            f"{x.area_um2 * 1e-6:>11.4f} {c.area_um2 * 1e-6:>9.4f}"
        )
    return "\n".join(lines)
