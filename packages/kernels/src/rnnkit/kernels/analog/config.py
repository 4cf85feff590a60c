"""``AnalogConfig``: everything the crossbar simulator needs to know, with presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rnnkit.kernels.analog.devices import (
    IDEAL_DEVICE,
    PCM_DEVICE,
    RERAM_DEVICE,
    DeviceModel,
)

__all__ = ["AnalogConfig"]

_NM = ("abs_max", "none")
_STATE = ("digital", "nl_adc")
_BM = ("none", "iterative")
_COMP = ("probe", "exact")


def _check_bits(name: str, bits: int | None, lo: int, hi: int) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or int(bits) != bits or not lo <= bits <= hi:
        raise ValueError(f"{name} must be None or an int in [{lo}, {hi}], got {bits!r}")


@dataclass(frozen=True)
class AnalogConfig:
    """Configuration of the analog crossbar simulator (weights, periphery, NL-ADCs).

    Units: weights are normalised per output column to ``[-1, 1]`` (``w / max|w|``) before they
    are mapped to conductances, inputs to ``[-inp_bound, inp_bound]``; ``out_noise``,
    ``out_bound`` and the ADC act on the normalised column sum ``Σ_i w̃_ij x̃_i`` (one full-scale
    device driven at full input = 1), the convention of aihwkit's ``IOParameters``.

    Attributes:
        device: the weight devices (:class:`~rnnkit.kernels.analog.devices.DeviceModel`).
        ramp_device: the NL-ADC ramp and bias devices (``None``: same as ``device``).
        prog_noise_scale: multiplies the device's programming noise (0 turns it off).
        inp_bits, inp_bound: input DAC resolution (``None``: ideal) and range.
        noise_management: ``"abs_max"`` divides each input vector by its max-abs before the
            DAC (and multiplies the output back); ``"none"`` clips inputs to ``±inp_bound``.
        bound_management: what happens when the DAC input or a conventional ADC saturates:
            ``"none"`` clips; ``"iterative"`` scales the input vector down by a power of two
            that fits the DAC, then halves it again and repeats the read while any ADC column
            of that vector saturates, multiplying the output back digitally (see
            :mod:`~rnnkit.kernels.analog.bound`).
        bm_max_factor: the largest total down-scaling bound management may use (>= 1); a
            vector still saturated at this factor is clipped.
        out_bits, out_bound, out_noise: conventional output ADC (``None``: ideal), its range and
            the Gaussian noise on every column sum.
        max_rows, max_cols: the largest physical tile; bigger matrices are split (see
            :class:`~rnnkit.kernels.analog.tile.AnalogTile`).
        ir_drop: first-order IR-drop strength (wire-segment resistance times the window
            ``g_max - g_min``, the conductance the tile normalises by; dimensionless; 0 turns
            it off).
        t_inference: seconds since programming (drift and PCM read noise).
        drift_compensation: global drift compensation (a one-hot probe read at program time
            and at ``t_inference``; the ratio of the mean absolute outputs rescales the outputs).
        compensation_read: how the probe is read: ``"probe"`` through the tile as it is
            (noisy devices, DAC, output noise, ADC; the model's, and what hardware can do) or
            ``"exact"`` (the noise-free programmed and drifted weights).
        nl_bits: NL-ADC resolution (1..10).
        nl_adc: compute sigmoid/tanh gates with NL-ADCs (``False``: conventional ADC then exact
            digital activations).
        ramp_bias_devices: devices per NL-ADC column setting the ramp start (the paper: 5).
        bias_calibration: trim the ramp start per column after programming (the last bias
            device is the fine trim).
        comparator_offset, comparator_noise: per-column static offset and per-conversion noise
            of the NL-ADC comparators (standard deviations in pre-activation units).
        v_read, v_read_actual: nominal and actual read voltage (V); ``v_read_actual`` differs
            from ``v_read`` to study supply variation (``None``: nominal). The MAC current and
            the memristor ramp both scale with it (ratiometric); a conventional ADC does not.
        state_activation: how a nonlinearity of a *digital* quantity is computed (``tanh(c_t)``
            of the LSTM, the GRU's ``n`` gate): ``"digital"`` (exact torch function) or
            ``"nl_adc"`` (DAC the value on ``±state_bound`` and convert it with an NL-ADC).
        state_bound: DAC range for ``state_activation="nl_adc"``.
        train_noise_scale: programming-noise scale injected on every forward in training mode
            (hardware-aware training).
        seed: seeds every random draw (programming, faults, per-read noise).
    """

    device: DeviceModel = PCM_DEVICE
    ramp_device: DeviceModel | None = None
    prog_noise_scale: float = 1.0
    inp_bits: int | None = 7
    inp_bound: float = 1.0
    noise_management: str = "abs_max"
    bound_management: str = "none"
    bm_max_factor: float = 1024.0
    out_bits: int | None = 9
    out_bound: float = 12.0
    out_noise: float = 0.06
    max_rows: int = 512
    max_cols: int = 512
    ir_drop: float = 0.0
    t_inference: float = 0.0
    drift_compensation: bool = True
    compensation_read: str = "probe"
    nl_bits: int = 5
    nl_adc: bool = True
    ramp_bias_devices: int = 5
    bias_calibration: bool = True
    comparator_offset: float = 0.0
    comparator_noise: float = 0.0
    v_read: float = 0.2
    v_read_actual: float | None = None
    state_activation: str = "digital"
    state_bound: float = 4.0
    train_noise_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_bits("inp_bits", self.inp_bits, 2, 16)
        _check_bits("out_bits", self.out_bits, 2, 16)
        _check_bits("nl_bits", self.nl_bits, 1, 10)
        if self.noise_management not in _NM:
            raise ValueError(
                f"noise_management must be one of {_NM}, got {self.noise_management!r}"
            )
        if self.bound_management not in _BM:
            raise ValueError(
                f"bound_management must be one of {_BM}, got {self.bound_management!r}"
            )
        if not self.bm_max_factor >= 1:
            raise ValueError(f"bm_max_factor must be >= 1, got {self.bm_max_factor!r}")
        if self.compensation_read not in _COMP:
            raise ValueError(
                f"compensation_read must be one of {_COMP}, got {self.compensation_read!r}"
            )
        if self.state_activation not in _STATE:
            raise ValueError(
                f"state_activation must be one of {_STATE}, got {self.state_activation!r}"
            )
        for name in ("inp_bound", "out_bound", "v_read", "state_bound"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in (
            "prog_noise_scale",
            "out_noise",
            "ir_drop",
            "t_inference",
            "comparator_offset",
            "comparator_noise",
            "train_noise_scale",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_rows < 1 or self.max_cols < 1:
            raise ValueError("max_rows and max_cols must be positive")
        if self.ramp_bias_devices < 1:
            raise ValueError("ramp_bias_devices must be >= 1")
        if self.v_read_actual is not None and not self.v_read_actual > 0:
            raise ValueError(f"v_read_actual must be positive, got {self.v_read_actual!r}")

    @property
    def ramp(self) -> DeviceModel:
        """The device model of the NL-ADC ramp columns."""
        return self.ramp_device if self.ramp_device is not None else self.device

    @property
    def v_read_ratio(self) -> float:
        """``v_read_actual / v_read``: the gain every analog current sees."""
        return 1.0 if self.v_read_actual is None else self.v_read_actual / self.v_read

    def replace(self, **changes: Any) -> AnalogConfig:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # --- presets ------------------------------------------------------------------------------

    @classmethod
    def ideal(cls, nl_bits: int = 8, **changes: Any) -> AnalogConfig:
        """Noise-free, drift-free, ideal DAC and ADC; only the NL-ADC quantises (``nl_bits``)."""
        base = cls(
            device=IDEAL_DEVICE,
            inp_bits=None,
            out_bits=None,
            out_noise=0.0,
            nl_bits=nl_bits,
            drift_compensation=False,
        )
        return base.replace(**changes)

    @classmethod
    def pcm(cls, **changes: Any) -> AnalogConfig:
        """PCM-like devices, 7-bit DAC, 9-bit ADC, out_noise 0.06, 5-bit NL-ADCs (the paper's)."""
        return cls(device=PCM_DEVICE).replace(**changes)

    @classmethod
    def reram(cls, **changes: Any) -> AnalogConfig:
        """ReRAM-like devices (assumed programming noise, see ``devices``), else as ``pcm``."""
        return cls(device=RERAM_DEVICE).replace(**changes)

    @classmethod
    def preset(cls, name: str, **changes: Any) -> AnalogConfig:
        """``"ideal"``, ``"pcm"`` or ``"reram"``."""
        makers = {"ideal": cls.ideal, "pcm": cls.pcm, "reram": cls.reram}
        if name not in makers:
            raise ValueError(f"unknown analog preset {name!r} (known: {', '.join(makers)})")
        return makers[name](**changes)
