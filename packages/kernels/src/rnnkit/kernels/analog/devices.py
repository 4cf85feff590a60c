"""Memristive device models: conductance programming, read noise, drift and stuck devices.

All conductances are in microsiemens (µS). A :class:`DeviceModel` describes one device
technology; the functions below act elementwise on tensors of conductances of any shape.

Sources (see ``/work/shared/reference/analog-crossbars.md``, and the equations of aihwkit's
public ``PCMLikeNoiseModel``, which the notes summarise and which were checked against its
published source text; no code is taken from it):

- PCM (Nandakumar et al., ICECS 2019, as implemented in aihwkit's ``PCMLikeNoiseModel``), with
  ``g_T`` the target, ``g_P`` the programmed and ``g_D`` the drifted conductance, ``t`` the
  seconds since programming:

  - programming: ``g_P = max(g_T + σ_P(g_T) ξ, 0)``, ``σ_P = c0 + c1 u + c2 u^2`` µS with
    ``u = g_T / g_max``, ``c = (0.26348, 1.9650, -1.1731)`` at ``g_max = 25`` µS (rescaled by
    ``g_max / 25``);
  - drift exponent, drawn once per device from the *target*:
    ``ν = |μ_ν + σ_ν ξ|``, ``μ_ν = clamp(-0.0155 ln u + 0.0244, 0.049, 0.1)``,
    ``σ_ν = clamp(-0.0125 ln u - 0.0059, 0.008, 0.045)``, ``u = max(g_T / g_max, 1e-7)``;
  - drift: ``g_D = g_P ((t + t0) / t0)^-ν``, ``t0 = 20`` s;
  - 1/f read noise accumulated up to ``t``: ``g = max(g_D + |g_D| σ_R ξ, 0)`` with
    ``σ_R = Q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))``,
    ``Q_s = min(0.0088 / max(u_P^0.65, 1e-3), 0.2)``, ``u_P = |g_P| / g_max`` (the
    *programmed* conductance, not the drifted one), ``t_read = 250`` ns. In the model this is
    one realisation per inference time (:data:`PER_TIME`); :data:`PER_READ` draws it afresh on
    every read instead.

- ReRAM: the notes give the *form* of aihwkit's ``ReRamWan2022NoiseModel`` (a 4th-order
  polynomial referenced to ``g_max = 40`` µS, plus ``w_noise ≈ 0.01`` read noise advised in its
  docstring) but **not its coefficients**. The ReRAM-like preset therefore uses ``g_max = 40``
  µS, a read noise of 1 % of ``g_max`` per device (the advised value, which aihwkit applies
  once per *weight*; here on each device of the pair, so a pair's read noise is 1.41 %
  of the weight range: an assumption either way) and an **assumed** programming noise
  of 2 % of ``g_max`` (the wider of the two acceptance ranges of IBM's CMO/HfOx write-verify,
  0.2 % and 2 %, also from the notes). It has no power-law drift (ReRAM relaxation is not
  modelled). Treat it, and every figure computed with it, as a plausible stand-in, not a
  published fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "IDEAL_DEVICE",
    "PCM_DEVICE",
    "PER_READ",
    "PER_TIME",
    "RERAM_DEVICE",
    "DeviceModel",
    "check_time",
    "device_preset",
    "drift_exponents",
    "drifted",
    "pcm_1f_sigma",
    "program_conductances",
    "programming_sigma",
    "read_noise_at",
    "read_sigma",
]

#: ``read_noise_draw``: one 1/f realisation per inference time (the model's).
PER_TIME = "per_time"
#: ``read_noise_draw``: a fresh 1/f draw on every read.
PER_READ = "per_read"
#: floor of ``g / g_max`` in the drift-exponent fits (their ``ln`` is unbounded at 0).
NU_U_FLOOR = 1e-7


@dataclass(frozen=True)
class DeviceModel:
    """One memristive device technology.

    Attributes:
        name: label used in tables.
        g_min, g_max: the programmable conductance window in µS (``g_min < g_max``).
        levels: number of discrete programmable levels in ``[g_min, g_max]`` (``None``: analog).
        prog_coeffs: programming-noise polynomial ``σ(g) = Σ_k c_k (g/g_max)^k`` in µS,
            referenced to ``prog_ref_gmax`` (scaled by ``g_max / prog_ref_gmax``).
        prog_ref_gmax: the ``g_max`` the coefficients were fitted at.
        read_noise: ``"pcm_1f"`` (PCM 1/f model), ``"constant"`` (``read_noise_rel * g_max``
            per device and read) or ``"none"``.
        read_noise_rel: relative read noise for ``"constant"``.
        read_noise_draw: when the ``"pcm_1f"`` noise is drawn: :data:`PER_TIME` (the model's:
            one realisation when the devices are drifted to an inference time, then fixed for
            every read at that time) or :data:`PER_READ` (afresh on every read). ``"constant"``
            read noise is always drawn per read.
        drift: whether conductances drift as ``((t + t0) / t0)^-ν`` (PCM model).
        t0: drift reference time in seconds.
        t_read: read duration in seconds (1/f read noise).
        stuck_on, stuck_off: fractions of devices stuck at ``g_max`` / ``g_min``.
    """

    name: str = "ideal"
    g_min: float = 0.0
    g_max: float = 25.0
    levels: int | None = None
    prog_coeffs: tuple[float, ...] = ()
    prog_ref_gmax: float = 25.0
    read_noise: str = "none"
    read_noise_rel: float = 0.0
    read_noise_draw: str = PER_TIME
    drift: bool = False
    t0: float = 20.0
    t_read: float = 250e-9
    stuck_on: float = 0.0
    stuck_off: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.g_min) and math.isfinite(self.g_max)):
            raise ValueError(f"g_min and g_max must be finite, got {self.g_min}, {self.g_max}")
        if self.g_min < 0:
            raise ValueError(f"g_min must be >= 0 µS, got {self.g_min}")
        if self.g_min >= self.g_max:
            raise ValueError(f"g_min must be < g_max, got g_min={self.g_min}, g_max={self.g_max}")
        if self.levels is not None and self.levels < 2:
            raise ValueError(f"levels must be None or >= 2, got {self.levels}")
        if self.read_noise_draw not in (PER_TIME, PER_READ):
            raise ValueError(
                f"read_noise_draw must be {PER_TIME!r} or {PER_READ!r}, "
                f"got {self.read_noise_draw!r}"
            )
        if self.read_noise not in ("pcm_1f", "constant", "none"):
            raise ValueError(
                f"read_noise must be 'pcm_1f', 'constant' or 'none', got {self.read_noise!r}"
            )
        for name in ("stuck_on", "stuck_off"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {v}")
        if self.stuck_on + self.stuck_off > 1.0:
            raise ValueError("stuck_on + stuck_off must not exceed 1")
        if self.t0 <= 0 or self.t_read <= 0 or self.prog_ref_gmax <= 0:
            raise ValueError("t0, t_read and prog_ref_gmax must be positive")

    @property
    def g_range(self) -> float:
        """``g_max - g_min`` in µS: the conductance that represents one full-scale weight."""
        return self.g_max - self.g_min


#: noise-free, drift-free device with an analog window [0, 25] µS.
IDEAL_DEVICE = DeviceModel()

#: PCM-like device: aihwkit's PCMLikeNoiseModel coefficients as quoted in the reference notes.
PCM_DEVICE = DeviceModel(
    name="pcm",
    g_min=0.0,
    g_max=25.0,
    prog_coeffs=(0.26348, 1.9650, -1.1731),
    prog_ref_gmax=25.0,
    read_noise="pcm_1f",
    drift=True,
)

#: ReRAM-like device: g_max and read noise from the notes, programming noise ASSUMED (see the
#: module docstring: the Wan 2022 polynomial coefficients are not in the notes).
RERAM_DEVICE = DeviceModel(
    name="reram",
    g_min=0.0,
    g_max=40.0,
    prog_coeffs=(0.02 * 40.0,),
    prog_ref_gmax=40.0,
    read_noise="constant",
    read_noise_rel=0.01,
    drift=False,
)

_PRESETS = {"ideal": IDEAL_DEVICE, "pcm": PCM_DEVICE, "reram": RERAM_DEVICE}


def check_time(name: str, t: float) -> float:
    """``t`` if it is a finite time ``>= 0`` s, else a ``ValueError`` naming ``name``: times
    count from the end of programming, and the drift and 1/f laws are undefined before it."""
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"{name} must be a finite time >= 0 s since programming, got {t!r}")
    return t


def device_preset(name: str) -> DeviceModel:
    """The device preset ``"ideal"``, ``"pcm"`` or ``"reram"``."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown device preset {name!r} (known: {', '.join(_PRESETS)})") from None


def programming_sigma(dev: DeviceModel, g: Tensor) -> Tensor:
    """Standard deviation (µS) of the programming error at target conductances ``g`` (µS)."""
    if not dev.prog_coeffs:
        return torch.zeros_like(g)
    u = (g / dev.g_max).clamp(0.0, 1.0)
    sigma = torch.zeros_like(g)
    for k, c in enumerate(dev.prog_coeffs):
        sigma = sigma + c * u**k
    return (sigma * (dev.g_max / dev.prog_ref_gmax)).clamp_min(0.0)


def program_conductances(
    dev: DeviceModel,
    target: Tensor,
    generator: torch.Generator | None,
    *,
    noise_scale: float = 1.0,
    faults: bool = True,
) -> Tensor:
    """Program devices to ``target`` conductances (µS, any shape) and return what they hold.

    Steps, in the order a write-verify loop meets them: clip to ``[g_min, g_max]``, snap to the
    nearest of ``levels`` discrete levels (if any), add Gaussian programming noise
    ``programming_sigma(g) * noise_scale``, clamp at zero (a conductance cannot be negative),
    then replace a random ``stuck_on`` / ``stuck_off`` fraction by ``g_max`` / ``g_min``.
    """
    g = target.clamp(dev.g_min, dev.g_max)
    if dev.levels is not None:
        step = dev.g_range / (dev.levels - 1)
        g = dev.g_min + torch.round((g - dev.g_min) / step) * step
    if noise_scale > 0 and dev.prog_coeffs:
        noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
        g = (g + noise * programming_sigma(dev, g) * noise_scale).clamp_min(0.0)
    if faults and (dev.stuck_on > 0 or dev.stuck_off > 0):
        u = torch.rand(g.shape, generator=generator, dtype=g.dtype, device=g.device)
        g = torch.where(u < dev.stuck_on, torch.full_like(g, dev.g_max), g)
        off = (u >= dev.stuck_on) & (u < dev.stuck_on + dev.stuck_off)
        g = torch.where(off, torch.full_like(g, dev.g_min), g)
    return g


def drift_exponents(
    dev: DeviceModel, g_target: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Per-device drift exponents ``ν`` (zeros for a drift-free device), same shape as ``g_target``.

    Drawn from the *target* conductances (µS), as the model does:
    ``ν = |μ_ν(u) + σ_ν(u) ξ|`` with ``u = max(g_target / g_max, 1e-7)`` (a negative draw is
    reflected, not clipped to 0).
    """
    if not dev.drift:
        return torch.zeros_like(g_target)
    u = (g_target.abs() / dev.g_max).clamp_min(NU_U_FLOOR)
    mu = (-0.0155 * torch.log(u) + 0.0244).clamp(0.049, 0.1)
    sd = (-0.0125 * torch.log(u) - 0.0059).clamp(0.008, 0.045)
    noise = torch.randn(
        g_target.shape, generator=generator, dtype=g_target.dtype, device=g_target.device
    )
    return (mu + sd * noise).abs()


def drifted(dev: DeviceModel, g: Tensor, nu: Tensor, t: float) -> Tensor:
    """Conductances ``t`` seconds after programming: ``g ((t + t0) / t0)^-ν``."""
    if not dev.drift or t <= 0:
        return g
    return g * ((t + dev.t0) / dev.t0) ** (-nu)


def pcm_1f_sigma(dev: DeviceModel, g_prog: Tensor, t: float) -> Tensor:
    """Relative standard deviation ``σ_R`` of the PCM 1/f noise accumulated up to ``t``.

    ``σ_R = Q_s sqrt(ln((t + t0 + t_read) / (2 t_read)))`` with
    ``Q_s = min(0.0088 / max(u^0.65, 1e-3), 0.2)`` and ``u = |g_prog| / g_max`` taken from the
    *programmed* conductance ``g_prog`` (µS, any shape; not the drifted one). Dimensionless: it
    multiplies ``|g_drift|``. The time origin is the model's: ``t = 0`` is the end of
    programming, ``t0`` seconds after the device's first read.
    """
    u = g_prog.abs() / dev.g_max
    q_s = (0.0088 / (u**0.65).clamp_min(1e-3)).clamp_max(0.2)
    return q_s * math.sqrt(math.log((t + dev.t0 + dev.t_read) / (2 * dev.t_read)))


def read_noise_at(
    dev: DeviceModel,
    g_prog: Tensor,
    g_drift: Tensor,
    t: float,
    generator: torch.Generator | None,
) -> Tensor:
    """The conductances read at ``t``: ``g_drift`` plus the noise drawn once per inference time.

    For ``read_noise="pcm_1f"`` with ``read_noise_draw="per_time"`` (the model's):
    ``max(g_drift + |g_drift| σ_R(g_prog, t) ξ, 0)``, one realisation ``ξ`` per device (see
    :func:`pcm_1f_sigma`). Otherwise ``g_drift`` unchanged (per-read noise is added by
    :func:`read_sigma` at every read). Shapes: any, ``g_prog`` and ``g_drift`` alike.
    """
    if dev.read_noise != "pcm_1f" or dev.read_noise_draw != PER_TIME:
        return g_drift
    noise = torch.randn(
        g_drift.shape, generator=generator, dtype=g_drift.dtype, device=g_drift.device
    )
    return (g_drift + g_drift.abs() * pcm_1f_sigma(dev, g_prog, t) * noise).clamp_min(0.0)


def read_sigma(dev: DeviceModel, g_prog: Tensor, g_drift: Tensor, t: float) -> Tensor:
    """Per-read noise standard deviation (µS) of devices programmed to ``g_prog`` and holding
    ``g_drift`` at time ``t`` (same shapes).

    ``"constant"``: ``read_noise_rel * g_max``. ``"pcm_1f"`` with ``read_noise_draw="per_read"``:
    ``|g_drift| σ_R(g_prog, t)`` (:func:`pcm_1f_sigma`), drawn afresh on every read (the clamp
    at zero of the per-time model cannot act on a noise summed over a bit line, so it is not
    applied). ``"pcm_1f"`` drawn per time and ``"none"``: zeros.
    """
    if dev.read_noise == "constant":
        return torch.full_like(g_drift, dev.read_noise_rel * dev.g_max)
    if dev.read_noise == "pcm_1f" and dev.read_noise_draw == PER_READ:
        return g_drift.abs() * pcm_1f_sigma(dev, g_prog, t)
    return torch.zeros_like(g_drift)
