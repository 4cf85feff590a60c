"""Online learning of a small RNN forecaster: RTRL, UORO, SnAp-1, truncated BPTT and DNI.

The setting of Pohl et al. (arXiv 2403.01607) on the simulated marker traces of the
``breathing`` task (:func:`rnnkit.tasks.breathing.breathing_traces`): a vanilla RNN

    v_t = [x_{t-1}; u_t; 1],   z_t = W v_t,   x_t = tanh(z_t),   ŷ_t = W_out x_t,

with ``W = [W_a | W_b | b]: (q, q + m + 1)`` and loss ``½‖ŷ_t − y_t‖²``, updates its weights by
one clipped gradient step at every time step while it forecasts. The learners differ only in
how they get ``∂L_t/∂W`` through the recurrence (``D_t = diag(1 − x_t²)``):

- ``rtrl``: the exact influence ``M_t = ∂x_t/∂W: (q, q, q + m + 1)``,
  ``M_t = D_t (W_a M_{t−1} + I_t)`` with ``I_t[k, i, j] = δ_ki v_t[j]``; ``O(q⁴)`` per step.
- ``uoro``: an unbiased rank-one estimate ``M_t ≈ x̃ θ̃ᵀ`` (Tallec & Ollivier) with random
  signs ``ν``: ``x̃ ← ρ₀ D_t W_a x̃ + ρ₁ ν``, ``θ̃ ← θ̃ / ρ₀ + (νᵀ ∂x_t/∂W) / ρ₁``, with
  ``ρ₀ = √(‖θ̃‖ / ‖D_t W_a x̃‖)`` and ``ρ₁ = √(‖νᵀ ∂x_t/∂W‖ / ‖ν‖)`` (the forward product is
  exact here, not a finite difference); ``O(q (q + m))``.
- ``snap1``: SnAp-1 keeps only the influence of row ``W[i]`` on unit ``i``:
  ``J_t[i] = (1 − x_{t,i}²)(W_a[i, i] J_{t−1}[i] + v_t)``; ``O(q (q + m))``. With a diagonal
  ``W_a`` (an IndRNN) nothing is dropped and it equals RTRL.
- ``tbptt``: backpropagation through the last ``truncation`` steps (the stored ``v``, ``D``
  and ``W_a`` of each), ``O(truncation · q (q + m))``.
- ``dni``: decoupled neural interfaces: no influence at all, but a synthetic credit
  ``c_t = [x_t, y*_t, 1] A ≈ ∂(Σ_{s≥t} L_s)/∂x_t`` (``y*_t`` the step's target), the
  gradient ``(c_t ⊙ φ'(z_t)) v_tᵀ``, and ``A`` fit online to the bootstrapped credit
  ``∂L_t/∂x_t + c_{t+1} diag(φ'(z_{t+1})) W_a`` one step late (:class:`DNI` gives the
  timing); ``O(q (q + m + p))``.

Online protocol (:func:`run_online`): each subject's trace is z-scored with its first minute;
the input ``u_t`` is the last ``history`` positions (9 channels each). For horizon ``h`` the
training stream runs ``h`` samples behind the present, since the target of ``u_s`` (the
position at ``s + h``) is known only at time ``s + h``: at time ``t`` the learner steps on
``u_{t−h}`` with target ``y(t)`` and updates, then runs the ``h`` newer inputs forward
without learning to forecast ``y(t + h)``. Every horizon gets its own learner, every subject
its own weights (subjects run as a batch of independent networks). nRMSE (Pohl et al.'s,
:func:`~rnnkit.tasks.breathing.pohl_nrmse`) is scored in mm after the first minute, per
subject, then averaged; latency is the wall time of one step (update and forecast) of one
network on the CPU (the median over ``latency_steps`` steps).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

__all__ = [
    "DNI",
    "METHODS",
    "HorizonScore",
    "Learner",
    "OnlineConfig",
    "OnlineResult",
    "RNNWeights",
    "make_learner",
    "rnn_step",
    "run_online",
    "window_gradient",
]

#: the online learners, by command-line name
METHODS: tuple[str, ...] = ("rtrl", "uoro", "snap1", "tbptt", "dni")

ONLINE_HELP = (
    "online learning on simulated breathing traces: a small RNN updates its weights at every "
    "step (RTRL, UORO, SnAp-1, truncated BPTT or DNI) while forecasting; nRMSE per horizon and "
    "per-step latency"
)


@dataclass
class RNNWeights:
    """A batch of independent vanilla RNNs (one per example).

    Attributes:
        w: ``(B, q, q + m + 1)``: ``[W_a | W_b | b]``.
        w_out: ``(B, p, q)``.
        diagonal: keep ``W_a`` diagonal (an IndRNN): its off-diagonal gradient is dropped.
    """

    w: Tensor
    w_out: Tensor
    diagonal: bool = False

    @property
    def hidden(self) -> int:
        return int(self.w.shape[1])

    @property
    def w_a(self) -> Tensor:
        """``(B, q, q)``: the recurrent matrix."""
        return self.w[:, :, : self.hidden]

    @staticmethod
    def init(
        batch: int,
        hidden: int,
        inputs: int,
        outputs: int,
        *,
        generator: torch.Generator,
        diagonal: bool = False,
        radius: float = 0.9,
        dtype: torch.dtype = torch.float64,
    ) -> RNNWeights:
        """Random weights: ``W_a`` scaled to spectral radius about ``radius`` (diagonal:
        entries uniform in ``±radius``), ``W_b`` and ``W_out`` ~ N(0, 1/fan-in), bias 0."""
        for name, value in (("batch", batch), ("hidden", hidden), ("inputs", inputs)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if outputs < 1:
            raise ValueError(f"outputs must be a positive integer, got {outputs}")
        if diagonal:
            u = torch.rand(batch, hidden, generator=generator, dtype=dtype)
            w_a = torch.diag_embed(radius * (2.0 * u - 1.0))
        else:
            w_a = torch.randn(batch, hidden, hidden, generator=generator, dtype=dtype)
            w_a *= radius / math.sqrt(hidden)
        w_b = torch.randn(batch, hidden, inputs, generator=generator, dtype=dtype)
        w_b /= math.sqrt(inputs)
        bias = torch.zeros(batch, hidden, 1, dtype=dtype)
        w_out = torch.randn(batch, outputs, hidden, generator=generator, dtype=dtype)
        w_out /= math.sqrt(hidden)
        return RNNWeights(torch.cat([w_a, w_b, bias], 2), w_out, diagonal)


def rnn_step(w: Tensor, x_prev: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step: ``(v, z, x)`` with ``v = [x_prev; u; 1]: (B, q + m + 1)``, ``z = W v`` and
    ``x = tanh(z): (B, q)``; ``w: (B, q, q + m + 1)``, ``x_prev: (B, q)``, ``u: (B, m)``."""
    ones = torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)
    v = torch.cat([x_prev, u, ones], 1)
    z = torch.bmm(w, v[:, :, None])[:, :, 0]
    return v, z, torch.tanh(z)


class Learner:
    """The gradient of the current step's loss with respect to ``W``, through the past.

    :meth:`update` is called once per step, after the forward step, with the weights that
    step used; it returns ``∂L_t/∂W: (B, q, q + m + 1)`` (exact or estimated).
    """

    name = ""

    def __init__(self, batch: int, hidden: int, width: int, dtype: torch.dtype) -> None:
        self.batch, self.hidden, self.width, self.dtype = batch, hidden, width, dtype

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        """``v: (B, q + m + 1)``, ``x = tanh(z): (B, q)``, ``dl_dx = ∂L_t/∂x_t: (B, q)``,
        ``target: (B, p)`` the step's target (only ``dni`` uses it)."""
        raise NotImplementedError


class RTRL(Learner):
    """Exact real-time recurrent learning (the full influence tensor)."""

    name = "rtrl"

    def __init__(self, batch: int, hidden: int, width: int, dtype: torch.dtype) -> None:
        super().__init__(batch, hidden, width, dtype)
        #: ``(B, q, q, q + m + 1)``: ``M[b, k, i, j] = ∂x_k/∂W[i, j]``
        self.m = torch.zeros(batch, hidden, hidden, width, dtype=dtype)

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        d = 1.0 - x * x
        rec = torch.einsum("bkl,blij->bkij", weights.w_a, self.m)
        idx = torch.arange(self.hidden)
        rec[:, idx, idx, :] += v[:, None, :]
        self.m = d[:, :, None, None] * rec
        return torch.einsum("bk,bkij->bij", dl_dx, self.m)


class SnAp1(Learner):
    """SnAp-1: the influence of each row of ``W`` on its own unit only."""

    name = "snap1"

    def __init__(self, batch: int, hidden: int, width: int, dtype: torch.dtype) -> None:
        super().__init__(batch, hidden, width, dtype)
        #: ``(B, q, q + m + 1)``: ``J[b, i, j] ≈ ∂x_i/∂W[i, j]``
        self.j = torch.zeros(batch, hidden, width, dtype=dtype)

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        d = 1.0 - x * x
        self_loop = torch.diagonal(weights.w_a, dim1=1, dim2=2)
        self.j = d[:, :, None] * (self_loop[:, :, None] * self.j + v[:, None, :])
        return dl_dx[:, :, None] * self.j


class UORO(Learner):
    """Unbiased online recurrent optimisation (a rank-one influence estimate per example)."""

    name = "uoro"
    eps = 1e-7

    def __init__(
        self,
        batch: int,
        hidden: int,
        width: int,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(batch, hidden, width, dtype)
        self.generator = generator
        self.x_tilde = torch.zeros(batch, hidden, dtype=dtype)
        self.theta_tilde = torch.zeros(batch, hidden, width, dtype=dtype)

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        d = 1.0 - x * x
        signs = torch.randint(0, 2, (self.batch, self.hidden), generator=self.generator)
        nu = (2 * signs - 1).to(self.dtype)
        fx = d * torch.bmm(weights.w_a, self.x_tilde[:, :, None])[:, :, 0]
        ftheta = (nu * d)[:, :, None] * v[:, None, :]
        eps = self.eps

        def norm(t: Tensor) -> Tensor:
            out: Tensor = torch.linalg.vector_norm(t.flatten(1), dim=1)
            return out

        rho0 = torch.sqrt((norm(self.theta_tilde) + eps) / (norm(fx) + eps))
        rho1 = torch.sqrt((norm(ftheta) + eps) / (norm(nu) + eps))
        self.x_tilde = rho0[:, None] * fx + rho1[:, None] * nu
        self.theta_tilde = self.theta_tilde / rho0[:, None, None] + ftheta / rho1[:, None, None]
        return (dl_dx * self.x_tilde).sum(1)[:, None, None] * self.theta_tilde


class DNI(Learner):
    """Decoupled neural interfaces: a learned linear synthetic credit for the state.

    The credit of the state ``x_t`` is the derivative of the present and future losses,
    ``δ_t = ∂(Σ_{s≥t} L_s)/∂x_t = ∂L_t/∂x_t + δ_{t+1} D̃_{t+1}`` with
    ``D̃_{t+1} = ∂x_{t+1}/∂x_t = diag(φ'(z_{t+1})) W_a`` (row vectors, ``φ' = 1 − x²``). DNI
    replaces it by ``c_t = x̃_t A`` with ``x̃_t = [x_t, y*_t, 1]: (q + p + 1)`` and
    ``A: (q + p + 1, q)``, where ``y*_t`` is the target of the learner's step ``t`` (in
    :func:`run_online`, the position ``h`` samples after that step's input, known at the
    time the step is taken; NaN entries count 0), and estimates the gradient through step
    ``t`` as ``(c_t ⊙ φ'(z_t)) v_tᵀ: (q, q + m + 1)``. Summed over a window whose credits
    are exact, these terms give BPTT's gradient of the summed loss.

    ``A`` is fit online by one gradient step per time step on the bootstrapped residual
    ``f_t = x̃_t A − (∂L_t/∂x_t + c_{t+1} D̃_{t+1})``, ``½‖f_t‖²``, differentiated through
    both ``c_t`` and ``c_{t+1} = x̃_{t+1} A`` (the target is not held fixed):
    ``∇_A = x̃_tᵀ f_t − x̃_{t+1}ᵀ ((f_t W_aᵀ) ⊙ φ'(z_{t+1}))``. The residual of step ``t``
    needs step ``t + 1``, so :meth:`update` at step ``t + 1``, with that step's ``W_a`` and
    ``φ'(z_{t+1})``, first updates ``A ← A − lr_a ∇_A`` for the pair ``(t, t + 1)`` (the
    first call has no pair and leaves ``A`` alone), then returns step ``t + 1``'s gradient
    with the updated ``A``, then stores ``x̃_{t+1}`` and ``∂L_{t+1}/∂x_{t+1}`` for the next
    call. Each product is a vector times a matrix (``c ⊙ φ'`` before ``W_a``, ``f W_aᵀ``
    before ``⊙ φ'``), so ``D̃`` is never formed and a step costs ``O(q (q + m + p))``.

    Args:
        lr_a: step size of ``A``.
        init_a: ``A``'s initial entries are ``N(0, init_a²)`` (0: zeros, so the first
            gradients are zero until ``A`` has learned something).
        generator: draws the initial ``A``.
    """

    name = "dni"

    def __init__(
        self,
        batch: int,
        hidden: int,
        width: int,
        dtype: torch.dtype,
        outputs: int,
        *,
        lr_a: float = 0.01,
        init_a: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(batch, hidden, width, dtype)
        if outputs < 1:
            raise ValueError(f"outputs must be a positive integer, got {outputs}")
        if not (math.isfinite(lr_a) and lr_a >= 0):
            raise ValueError(f"lr_a must be a non-negative number, got {lr_a}")
        if not (math.isfinite(init_a) and init_a >= 0):
            raise ValueError(f"init_a must be a non-negative number, got {init_a}")
        self.lr_a = lr_a
        #: ``(B, q + p + 1, q)``: the credit ``c = x̃ A``
        self.a = init_a * torch.randn(
            batch, hidden + outputs + 1, hidden, generator=generator, dtype=dtype
        )
        #: ``x̃`` and ``∂L/∂x`` of the previous step (None before the first)
        self.prev: tuple[Tensor, Tensor] | None = None

    def features(self, x: Tensor, target: Tensor) -> Tensor:
        """``x̃ = [x, y*, 1]: (B, q + p + 1)`` from ``x: (B, q)`` and ``target: (B, p)``."""
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        return torch.cat([x, torch.nan_to_num(target, nan=0.0), ones], 1)

    def credit(self, x_tilde: Tensor) -> Tensor:
        """``c = x̃ A: (B, q)`` for ``x_tilde: (B, q + p + 1)``."""
        return torch.bmm(x_tilde[:, None, :], self.a)[:, 0]

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        if target is None:
            raise ValueError("dni needs the step's target (target=...)")
        d = 1.0 - x * x
        x_tilde = self.features(x, target)
        if self.prev is not None and self.lr_a > 0:
            prev_tilde, prev_dl_dx = self.prev
            w_a = weights.w_a
            # c_{t+1} D̃_{t+1} as (c_{t+1} ⊙ φ') W_a: a vector times a matrix
            c_next = self.credit(x_tilde)
            boot = torch.bmm((c_next * d)[:, None, :], w_a)[:, 0]
            f = self.credit(prev_tilde) - prev_dl_dx - boot
            # ∂½‖f‖²/∂c_{t+1} = −(f W_aᵀ) ⊙ φ'
            back = torch.bmm(f[:, None, :], w_a.transpose(1, 2))[:, 0] * d
            grad_a = prev_tilde[:, :, None] * f[:, None, :] - x_tilde[:, :, None] * back[:, None, :]
            self.a = self.a - self.lr_a * grad_a
        self.prev = (x_tilde, dl_dx)
        gz = self.credit(x_tilde) * d
        return gz[:, :, None] * v[:, None, :]


class TBPTT(Learner):
    """Backpropagation through the last ``truncation`` steps, at every step."""

    name = "tbptt"

    def __init__(
        self, batch: int, hidden: int, width: int, dtype: torch.dtype, truncation: int
    ) -> None:
        super().__init__(batch, hidden, width, dtype)
        if truncation < 1:
            raise ValueError(f"truncation must be a positive integer, got {truncation}")
        self.past: deque[tuple[Tensor, Tensor, Tensor]] = deque(maxlen=truncation)

    def update(
        self,
        weights: RNNWeights,
        v: Tensor,
        x: Tensor,
        dl_dx: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        self.past.append((v, 1.0 - x * x, weights.w_a.clone()))
        grad = torch.zeros(self.batch, self.hidden, self.width, dtype=self.dtype)
        delta = dl_dx
        for v_s, d_s, w_a in reversed(self.past):
            gz = delta * d_s
            grad += gz[:, :, None] * v_s[:, None, :]
            delta = torch.bmm(w_a.transpose(1, 2), gz[:, :, None])[:, :, 0]
        return grad


def make_learner(
    method: str,
    batch: int,
    hidden: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float64,
    truncation: int = 10,
    outputs: int = 1,
    lr_a: float = 0.01,
    init_a: float = 0.0,
    generator: torch.Generator | None = None,
) -> Learner:
    """The learner called ``method`` (one of :data:`METHODS`) for ``batch`` networks of
    ``hidden`` units whose ``W`` is ``(hidden, width)``; ``outputs``, ``lr_a`` and
    ``init_a`` are :class:`DNI`'s (``p``, the step size and initial scale of ``A``)."""
    if method == "rtrl":
        return RTRL(batch, hidden, width, dtype)
    if method == "snap1":
        return SnAp1(batch, hidden, width, dtype)
    if method == "uoro":
        return UORO(batch, hidden, width, dtype, generator)
    if method == "tbptt":
        return TBPTT(batch, hidden, width, dtype, truncation)
    if method == "dni":
        return DNI(
            batch, hidden, width, dtype, outputs, lr_a=lr_a, init_a=init_a, generator=generator
        )
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _loss_grads(weights: RNNWeights, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(ŷ, ∂L/∂x, ∂L/∂W_out)`` of ``L = ½‖W_out x − target‖²`` (NaN targets count 0)."""
    y_hat = torch.bmm(weights.w_out, x[:, :, None])[:, :, 0]
    e = torch.nan_to_num(y_hat - target, nan=0.0)
    dl_dx = torch.bmm(weights.w_out.transpose(1, 2), e[:, :, None])[:, :, 0]
    return y_hat, dl_dx, e[:, :, None] * x[:, None, :]


@torch.no_grad()
def window_gradient(
    learner: Learner, weights: RNNWeights, inputs: Tensor, targets: Tensor
) -> Tensor:
    """``Σ_t ∂L_t/∂W: (B, q, q + m + 1)`` over a window with the weights held fixed, as the
    learner sees it (for RTRL and full-window TBPTT: exactly BPTT's gradient of the summed
    loss; for DNI the sum of its synthetic-credit terms). ``inputs: (B, T, m)``,
    ``targets: (B, T, p)``; the state starts at zero."""
    x = torch.zeros(inputs.shape[0], weights.hidden, dtype=inputs.dtype)
    total = torch.zeros_like(weights.w)
    for t in range(inputs.shape[1]):
        v, _, x = rnn_step(weights.w, x, inputs[:, t])
        _, dl_dx, _ = _loss_grads(weights, x, targets[:, t])
        total += learner.update(weights, v, x, dl_dx, targets[:, t])
    return total


@dataclass(frozen=True)
class OnlineConfig:
    """An online-learning run (:func:`run_online`); sizes in samples at 10 Hz.

    Args:
        method: one of :data:`METHODS`.
        hidden: units ``q``.
        history: past positions in the input (``m = 9 · history``).
        horizons: forecast horizons in samples (``5`` = 0.5 s).
        lr: SGD step size.
        clip: per-network gradient-norm clip (0: none).
        truncation: ``tbptt``'s window.
        dni_lr, dni_init: ``dni``'s step size of ``A`` and the standard deviation of its
            initial entries (0: zeros).
        subjects, length: simulated traces (``length`` samples each).
        warm: samples at the start that are not scored (and give the z-scoring statistics).
        seed: seeds the traces and the weights (and UORO's signs).
        latency_steps: steps timed on one network (0: no timing).
    """

    method: str = "snap1"
    hidden: int = 12
    history: int = 3
    horizons: tuple[int, ...] = (1, 2, 5, 10)
    lr: float = 0.02
    clip: float = 1.0
    truncation: int = 10
    dni_lr: float = 0.01
    dni_init: float = 0.0
    subjects: int = 4
    length: int = 1800
    warm: int = 600
    seed: int = 0
    latency_steps: int = 200

    def check(self) -> None:
        """Raise a ValueError naming the first bad argument."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("hidden", "history", "truncation", "subjects"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.horizons or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be positive integers, got {list(self.horizons)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        for name in ("clip", "dni_lr", "dni_init"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if self.warm < self.history or self.length < self.warm + max(self.horizons) + 10:
            raise ValueError(
                f"length ({self.length}) must exceed warm ({self.warm}) by more than the "
                f"longest horizon + 10, and warm must be at least history ({self.history})"
            )
        if self.latency_steps < 0:
            raise ValueError(f"latency_steps must be >= 0, got {self.latency_steps}")


@dataclass(frozen=True)
class HorizonScore:
    """One horizon's result: ``nrmse`` of the learner, ``nrmse_persistence`` of predicting
    the last position, both averaged over subjects; ``latency_ms`` per step of one network."""

    horizon: int
    seconds: float
    nrmse: float
    nrmse_persistence: float
    latency_ms: float


@dataclass(frozen=True)
class OnlineResult:
    """What :func:`run_online` returns (and ``rnnkit online --json`` prints)."""

    config: OnlineConfig
    scores: list[HorizonScore] = field(default_factory=list)
    parameters: int = 0


def _inputs(z: Tensor, history: int) -> Tensor:
    """``(B, T, 9 · history)``: the positions at ``t, t − 1, ...`` (the first one repeated
    before the start)."""
    padded = torch.cat([z[:, :1].expand(-1, history - 1, -1), z], 1)
    return torch.cat([padded[:, history - 1 - k : padded.shape[1] - k] for k in range(history)], 2)


def _clip(g: Tensor, g_out: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    if clip <= 0:
        return g, g_out
    norm = torch.sqrt(g.flatten(1).square().sum(1) + g_out.flatten(1).square().sum(1))
    scale = torch.clamp(clip / (norm + 1e-12), max=1.0)
    return g * scale[:, None, None], g_out * scale[:, None, None]


@torch.no_grad()
def _online_forecast(
    config: OnlineConfig, u: Tensor, y: Tensor, horizon: int, seed: int, steps: int | None = None
) -> tuple[Tensor, float]:
    """Forecasts ``(B, T, p)`` (NaN where none was made) and the median seconds per step
    (the median: other processes on the machine stretch some steps)."""
    batch, length, m = u.shape
    g = torch.Generator().manual_seed(seed)
    weights = RNNWeights.init(batch, config.hidden, m, y.shape[2], generator=g, dtype=torch.float64)
    learner = make_learner(
        config.method,
        batch,
        config.hidden,
        weights.w.shape[2],
        truncation=config.truncation,
        outputs=y.shape[2],
        lr_a=config.dni_lr,
        init_a=config.dni_init,
        generator=g,
    )
    preds = torch.full_like(y, float("nan"))
    x = torch.zeros(batch, config.hidden, dtype=torch.float64)
    end = length if steps is None else min(length, horizon + steps)
    times = []
    for t in range(horizon, end):
        start = time.perf_counter()
        s = t - horizon
        v, _, x = rnn_step(weights.w, x, u[:, s])
        _, dl_dx, g_out = _loss_grads(weights, x, y[:, t])
        grad = learner.update(weights, v, x, dl_dx, y[:, t])
        grad, g_out = _clip(grad, g_out, config.clip)
        if weights.diagonal:
            q = config.hidden
            grad[:, :, :q] = torch.diag_embed(torch.diagonal(grad[:, :, :q], dim1=1, dim2=2))
        weights.w -= config.lr * grad
        weights.w_out -= config.lr * g_out
        xp = x
        for r in range(s + 1, t + 1):
            xp = rnn_step(weights.w, xp, u[:, r])[2]
        if t + horizon < length:
            preds[:, t + horizon] = torch.bmm(weights.w_out, xp[:, :, None])[:, :, 0]
        times.append(time.perf_counter() - start)
    return preds, statistics.median(times) if times else 0.0


def run_online(config: OnlineConfig) -> OnlineResult:
    """Online learning on simulated breathing traces (see the module docstring)."""
    from rnnkit.tasks._util import generator
    from rnnkit.tasks.breathing import breathing_traces, pohl_nrmse

    config.check()
    traces = breathing_traces(config.subjects, config.length, generator(config.seed))
    mean = traces[:, : config.warm].mean(1, keepdim=True)
    std = traces[:, : config.warm].std(1, keepdim=True)
    z = (traces - mean) / std
    u = _inputs(z, config.history)
    scores = []
    for h in config.horizons:
        preds, _ = _online_forecast(config, u, z, h, config.seed)
        latency = 0.0
        if config.latency_steps:
            _, latency = _online_forecast(
                config, u[:1], z[:1], h, config.seed, steps=config.latency_steps
            )
        mm = preds * std + mean
        per_subject, persistence = [], []
        for b in range(config.subjects):
            real = traces[b, config.warm :]
            per_subject.append(pohl_nrmse(mm[b, config.warm :], real))
            persistence.append(pohl_nrmse(traces[b, config.warm - h : -h], real))
        scores.append(
            HorizonScore(
                horizon=h,
                seconds=h / 10.0,
                nrmse=sum(per_subject) / len(per_subject),
                nrmse_persistence=sum(persistence) / len(persistence),
                latency_ms=1000.0 * latency,
            )
        )
    q, m = config.hidden, 9 * config.history
    return OnlineResult(config, scores, parameters=q * (q + m + 1) + 9 * q)


def configure_online(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit online``."""
    d = OnlineConfig()
    p.add_argument("--method", choices=METHODS, default=d.method, help=f"default {d.method}")
    p.add_argument("--hidden", type=int, default=d.hidden, help=f"units (default {d.hidden})")
    p.add_argument(
        "--history",
        type=int,
        default=d.history,
        help=f"past positions per input (default {d.history})",
    )
    p.add_argument(
        "--horizons",
        default=",".join(map(str, d.horizons)),
        help="comma-separated horizons in samples at 10 Hz (default 1,2,5,10)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD step (default {d.lr})")
    p.add_argument("--clip", type=float, default=d.clip, help=f"gradient clip (default {d.clip})")
    p.add_argument("--truncation", type=int, default=d.truncation, help="tbptt window (default 10)")
    p.add_argument(
        "--dni-lr",
        type=float,
        default=d.dni_lr,
        help=f"dni: step size of the synthetic-credit matrix A (default {d.dni_lr})",
    )
    p.add_argument(
        "--dni-init",
        type=float,
        default=d.dni_init,
        help=f"dni: standard deviation of A's initial entries, 0 = zeros (default {d.dni_init})",
    )
    p.add_argument("--subjects", type=int, default=d.subjects, help="traces (default 4)")
    p.add_argument(
        "--length", type=int, default=d.length, help="samples per trace (default 1800 = 3 min)"
    )
    p.add_argument(
        "--warm", type=int, default=d.warm, help="unscored first samples (default 600 = 1 min)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--latency-steps", type=int, default=d.latency_steps, help="steps timed (default 200)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None


def run_online_command(args: argparse.Namespace) -> int:
    """Run ``rnnkit online``."""
    from rnnkit.core.listing import format_table

    config = OnlineConfig(
        method=args.method,
        hidden=args.hidden,
        history=args.history,
        horizons=_int_list(args.horizons, "--horizons"),
        lr=args.lr,
        clip=args.clip,
        truncation=args.truncation,
        dni_lr=args.dni_lr,
        dni_init=args.dni_init,
        subjects=args.subjects,
        length=args.length,
        warm=args.warm,
        seed=args.seed,
        latency_steps=args.latency_steps,
    )
    result = run_online(config)
    if args.json:
        print(json.dumps(asdict(result), indent=1))
        return 0
    rows = [
        [
            f"{s.seconds:.1f}",
            f"{s.nrmse:.4f}",
            f"{s.nrmse_persistence:.4f}",
            f"{s.latency_ms:.3f}",
        ]
        for s in result.scores
    ]
    print(format_table(rows, ["horizon s", "nRMSE", "persistence", "ms/step"]))
    mean = sum(s.nrmse for s in result.scores) / len(result.scores)
    print(
        f"\n{config.method}: {result.parameters} weights, {config.subjects} subjects x "
        f"{config.length / 10:.0f} s, scored after {config.warm / 10:.0f} s; mean nRMSE "
        f"{mean:.4f}"
    )
    return 0
