"""``rnnkit.kernels.analog``: an analog in-memory-computing simulator for recurrent cells.

Weights live on differential memristor pairs (:mod:`.devices`, :mod:`.tile`); sigmoid and tanh
are computed by ramp ADCs whose memristor-programmed ramp is pre-distorted to ``f^-1``
(:mod:`.ramp_adc`); gated cells map onto one tile each (:mod:`.cells`); :mod:`.cost` estimates
latency, energy and area. See ``docs/analog.md``.
"""

from __future__ import annotations

from rnnkit.kernels.analog._register import kernels
from rnnkit.kernels.analog.cells import (
    AnalogBinding,
    drift_analog,
    is_analog,
    program_analog,
    to_analog,
)
from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.devices import (
    IDEAL_DEVICE,
    PCM_DEVICE,
    RERAM_DEVICE,
    DeviceModel,
    device_preset,
)
from rnnkit.kernels.analog.ramp_adc import NLFunction, RampADC, ideal_thresholds
from rnnkit.kernels.analog.tile import AnalogTile

__all__ = [
    "IDEAL_DEVICE",
    "PCM_DEVICE",
    "RERAM_DEVICE",
    "AnalogBinding",
    "AnalogConfig",
    "AnalogTile",
    "DeviceModel",
    "NLFunction",
    "RampADC",
    "device_preset",
    "drift_analog",
    "ideal_thresholds",
    "is_analog",
    "kernels",
    "program_analog",
    "to_analog",
]
