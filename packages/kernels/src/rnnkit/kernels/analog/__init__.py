"""``rnnkit.kernels.analog``: an analog in-memory-computing simulator for recurrent cells.

Weights live on differential memristor pairs (:mod:`.devices`, :mod:`.tile`); sigmoid and tanh
are computed by ramp ADCs whose memristor-programmed ramp is pre-distorted to ``f^-1``
(:mod:`.ramp_adc`); gated cells map onto one tile each (:mod:`.cells`); :mod:`.cost` estimates
latency, energy and area. See ``docs/analog.md``.

**Reference.** The simulator is tested against :data:`REFERENCE`, the digital cell it simulates:
the generic loop over ``Cell.recur`` (:func:`rnnkit.core.reference.reference_forward`). With
ideal devices and periphery and no NL-ADCs (``AnalogConfig.ideal(nl_adc=False)``) it must equal
it within the dtype's tolerance, gradients included; with ideal NL-ADCs, within their rounding.
``tests/test_form_analog.py`` checks both for every analog backend on odd shapes.
"""

from __future__ import annotations

from rnnkit.core.reference import reference_forward as REFERENCE
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
    "REFERENCE",
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
