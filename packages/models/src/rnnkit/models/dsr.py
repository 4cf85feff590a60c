"""Dynamical-systems reconstruction (DSR) with an AL-RNN and teacher forcing.

:class:`ALRNNReconstructor` models an observed ``N``-dimensional trajectory as the first ``N``
units of an autonomous AL-RNN (identity observation: ``x̂_t = z_{t,1:N}``). Training is teacher
forcing, in one rule that covers both methods of the DSR literature: every ``tau`` steps the
readout units are pulled towards the data,

    z[:N] <- (1 - alpha) z[:N] + alpha x_t,

- **sparse teacher forcing** (Mikhaeil et al. 2022; the AL-RNN paper): ``alpha = 1`` and
  ``tau > 1``: the readouts are replaced by the data every ``tau`` steps and the network runs
  freely in between; the replaced entries carry no gradient back in time;
- **generalised teacher forcing** (Hess et al., ICML 2023): ``tau = 1`` and ``0 < alpha < 1``:
  a convex mix of the model's and the data's readouts at every step, which bounds the
  gradients' growth on chaotic data (here with a fixed ``alpha``; the adaptive schedule of
  that paper is not implemented).

The trainer passes ``targets`` to :meth:`ALRNNReconstructor.forward` during training only, so
training is forced and evaluation scores the model's own free-running trajectory from the first
observation of each window (what the DSR metrics of :mod:`rnnkit.tasks.dsr` judge).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.validation import check_positive_int
from rnnkit.models.cells._checks import check_finite
from rnnkit.models.cells.alrnn import ALRNN, symbolic_graph


def check_tau(tau: object) -> int:
    """``tau`` as an int if it is an int ``>= 1``, else a ``ValueError`` naming ``tau``."""
    if not isinstance(tau, int) or isinstance(tau, bool) or tau < 1:
        raise ValueError(f"tau (the forcing interval in steps) must be an int >= 1, got {tau!r}")
    return tau


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float if it is a number in ``[0, 1]``, else a ``ValueError`` naming
    ``alpha``."""
    if (
        not isinstance(alpha, (int, float))
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or not 0.0 <= alpha <= 1.0
    ):
        raise ValueError(f"alpha (the forcing strength) must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def teacher_force(z: Tensor, data: Tensor, alpha: float) -> Tensor:
    """Pull the readout units of ``z`` towards ``data``: ``z[..., :N] <- (1-alpha) z[..., :N] +
    alpha data``, the other units unchanged.

    ``z: (..., M)``, ``data: (..., N)`` with ``N <= M``; returns a new ``(..., M)`` tensor. With
    ``alpha = 1`` the readouts are the data and no gradient reaches the replaced entries.
    """
    n = data.shape[-1]
    forced = data if alpha == 1.0 else torch.lerp(z[..., :n], data, alpha)
    return torch.cat((forced, z[..., n:]), dim=-1)


class ALRNNReconstructor(nn.Module):
    """An autonomous AL-RNN whose first ``N`` latent units are the observed variables.

    Args:
        input_size: ``N``, the observed dimensions.
        output_size: must equal ``input_size`` (the readouts are latent units); accepted so
            that tasks can pass their ``io``.
        hidden_size: ``M >= N``, the latent width (paper: 20 for Lorenz-63 and Rössler).
        pwl_units: ``P <= M``, the rectified units (paper: 2 for Lorenz-63, 1 for Rössler).
        tau: forcing interval in steps, ``>= 1`` (paper: 16 for Lorenz-63, 8 for Rössler).
        alpha: forcing strength in ``[0, 1]`` (1: sparse teacher forcing; < 1 with ``tau = 1``:
            generalised teacher forcing).
        noise: standard deviation of Gaussian noise added to the data used for forcing during
            training (the paper's input noise is 0.05); 0 for none.

    The latents the data do not fix start at ``z_0[N:] = x_0 B`` with a learned ``B: (N, M-N)``
    (zero at initialisation).

    Shapes: ``forward(x: (B, T, N)) -> (B, T, N)``, output ``t`` the model's ``x̂_{t+1}``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        *,
        hidden_size: int = 20,
        pwl_units: int = 2,
        tau: int = 16,
        alpha: float = 1.0,
        noise: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if output_size is not None and output_size != input_size:
            raise ValueError(
                f"output_size must equal input_size (identity observation), got {output_size} "
                f"and {input_size}"
            )
        if hidden_size < input_size:
            raise ValueError(
                f"hidden_size must be at least input_size = {input_size} (the readouts are "
                f"latent units), got {hidden_size}"
            )
        self.tau = check_tau(tau)
        self.alpha = check_alpha(alpha)
        self.noise = check_finite("noise", noise)
        if self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.input_size = input_size
        self.output_size = input_size
        self.hidden_size = hidden_size
        self.cell = ALRNN(0, hidden_size, pwl_units=pwl_units)
        self.latent_init = nn.Parameter(torch.zeros(input_size, hidden_size - input_size))

    @property
    def pwl_units(self) -> int:
        """``P``, the rectified units of the cell."""
        return self.cell.pwl_units

    def initial_latent(self, x0: Tensor) -> Tensor:
        """``z_0 = (x_0, x_0 B)``: ``(B, N) -> (B, M)``."""
        return torch.cat((x0, x0 @ self.latent_init.to(x0.dtype)), dim=-1)

    def forward(self, x: Tensor, *, backend: str = "auto", targets: Tensor | None = None) -> Tensor:
        """Forced (``targets`` given: training) or free-running (evaluation) predictions.

        Args:
            x: ``(B, T, N)`` observations ``x_0 .. x_{T-1}``.
            backend: accepted for the trainer's interface; the cell runs its reference step.
            targets: ``(B, T, N)`` (``x_1 .. x_T``); only their presence matters: forcing
                reads the observations ``x`` themselves.

        Returns:
            ``(B, T, N)``: output ``t`` is the readout of ``z_{t+1}``.
        """
        del backend
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, T, {self.input_size}), got {tuple(x.shape)}")
        if targets is None:
            return self.generate(x[:, 0], x.shape[1])
        data = x
        if self.noise > 0:
            data = x + self.noise * torch.randn_like(x)
        z = self.initial_latent(data[:, 0])
        outs = []
        for t, x_t in enumerate(data.unbind(1)):
            if t % self.tau == 0:
                z = teacher_force(z, x_t, self.alpha)
            z = self.cell.step_map(z)
            outs.append(z[:, : self.input_size])
        return torch.stack(outs, 1)

    def generate(self, x0: Tensor, steps: int, *, latents: bool = False) -> Tensor:
        """A free-running trajectory from observations ``x0: (B, N)``.

        Returns the readouts ``(B, steps, N)`` of ``z_1 .. z_steps`` or, with ``latents``, the
        whole states ``(B, steps, M)``.
        """
        z = self.initial_latent(x0)
        outs = []
        for _ in range(steps):
            z = self.cell.step_map(z)
            outs.append(z if latents else z[:, : self.input_size])
        if not outs:
            width = self.hidden_size if latents else self.input_size
            return x0.new_zeros(x0.shape[0], 0, width)
        return torch.stack(outs, 1)

    @torch.no_grad()
    def symbolic_codes(
        self, x0: Tensor, steps: int, *, transient: int = 0
    ) -> tuple[Tensor, Tensor]:
        """The linear regions a free run visits, and the transitions between them.

        Runs ``transient + steps`` steps from ``x0: (B, N)`` and drops the first
        ``transient``. Returns ``codes: (B, steps)`` int64 in ``[0, 2**P)`` (bit ``k`` set when
        rectified unit ``k`` is active, see :func:`rnnkit.models.cells.alrnn.region_codes`) and
        the symbolic graph ``(2**P, 2**P)`` of transition counts (:func:`symbolic_graph`).
        """
        z = self.generate(x0, transient + steps, latents=True)[:, transient:]
        codes = self.cell.region_codes(z)
        return codes, symbolic_graph(codes, self.cell.num_regions)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, alpha={self.alpha}, noise={self.noise}"


def alrnn_dsr(**cfg: Any) -> ALRNNReconstructor:
    """AL-RNN for dynamical-systems reconstruction: sparse (tau) / generalised (alpha) forcing"""
    return ALRNNReconstructor(**cfg)
