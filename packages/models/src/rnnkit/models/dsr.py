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
  gradients' growth on chaotic data. ``alpha`` is fixed, or with ``alpha="adaptive"`` that
  paper's rule ``alpha = max(0, 1 - 1/G)``, ``G`` an estimate of the growth (spectral norm) of
  the model's Jacobians along the forced trajectory (:func:`growth_estimate`), re-estimated
  during training: the mixed state's Jacobian ``(1 - alpha) J`` then has norm about ``<= 1``.

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


#: The estimates of the Jacobians' growth ``G`` that ``alpha="adaptive"`` can use.
ALPHA_ESTIMATES = ("geometric", "max", "mean", "bound")


def check_alpha_estimate(alpha_estimate: object) -> str:
    """``alpha_estimate`` if it is one of :data:`ALPHA_ESTIMATES`, else a ``ValueError`` naming
    ``alpha_estimate``."""
    if not isinstance(alpha_estimate, str) or alpha_estimate not in ALPHA_ESTIMATES:
        raise ValueError(
            f"alpha_estimate must be one of {', '.join(ALPHA_ESTIMATES)}, got {alpha_estimate!r}"
        )
    return alpha_estimate


def _spectral_norm(matrices: Tensor) -> Tensor:
    """``||J||_2``, the largest singular value: ``(..., M, M) -> (...)``."""
    norm: Tensor = torch.linalg.matrix_norm(matrices, ord=2)
    return norm


def growth_estimate(jacobians: Tensor, estimate: str, index: Tensor | None = None) -> Tensor:
    """``G``, the growth per step of the Jacobians along a batch of trajectories.

    Args:
        jacobians: ``(B, T, M, M)``, ``J_{b,t}`` the Jacobian of step ``t`` of sequence ``b``;
            or, with ``index``, ``(K, M, M)``: the distinct Jacobians (an AL-RNN has one per
            linear region visited), step ``t`` of sequence ``b`` having ``jacobians[index[b,
            t]]``.
        estimate: ``"geometric"``: the geometric mean of ``||J_{b,t}||_2`` over each sequence's
            ``T`` steps (``prod_t ||J_{b,t}|| = G^T`` bounds the norm of the sequence's
            Jacobian product), the largest over the batch; ``"max"``: the largest
            ``||J_{b,t}||_2`` of the batch; ``"mean"``: ``||mean_{b,t} J_{b,t}||_2``.
            (``"bound"`` needs no trajectory: :func:`parameter_bound`.)
        index: ``(B, T)`` int64 in ``[0, K)``, or ``None``.

    Returns:
        A 0-d tensor (no graph: the caller detaches ``jacobians``).
    """
    if jacobians.dim() != (3 if index is not None else 4) or (
        jacobians.shape[-1] != jacobians.shape[-2]
    ):
        want = "(K, M, M) with an index" if index is not None else "(B, T, M, M)"
        raise ValueError(f"jacobians must be {want}, got {tuple(jacobians.shape)}")
    if estimate not in ("geometric", "max", "mean"):
        raise ValueError(
            f"estimate must be geometric, max or mean (bound: parameter_bound), got {estimate!r}"
        )
    if estimate == "mean":
        if index is None:
            return _spectral_norm(jacobians.mean((0, 1)))
        counts = torch.bincount(index.reshape(-1), minlength=jacobians.shape[0])
        weights = counts.to(jacobians.dtype) / index.numel()
        return _spectral_norm((weights[:, None, None] * jacobians).sum(0))
    norms = _spectral_norm(jacobians)
    if index is not None:
        norms = norms[index]  # (B, T)
    if estimate == "max":
        return norms.max()
    return norms.log().mean(1).max().exp()


def parameter_bound(cell: ALRNN) -> Tensor:
    """``max_i |A_i| + ||W||_2``, a bound on ``||diag(A) + W D||_2`` over every region (``D``
    a 0/1 diagonal, so ``||W D|| <= ||W||``): a 0-d tensor, no graph."""
    with torch.no_grad():
        return cell.diag.abs().max() + _spectral_norm(cell.recurrent)


def adaptive_alpha(growth: float) -> float:
    """``max(0, 1 - 1/G)``: 0 when the dynamics do not expand (``G <= 1``), towards 1 as they
    expand faster; 1 for an infinite or undefined ``G`` (full forcing is the safe side)."""
    if not math.isfinite(growth):
        return 1.0
    return max(0.0, 1.0 - 1.0 / growth) if growth > 0 else 0.0


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
            generalised teacher forcing), or ``"adaptive"``: ``alpha = max(0, 1 - 1/G)``
            (:func:`adaptive_alpha`), ``G`` from ``alpha_estimate``.
        alpha_estimate: with ``alpha="adaptive"``, how ``G`` is estimated: ``"geometric"``
            (default), ``"max"``, ``"mean"`` (from the Jacobians along a training batch's
            forced trajectory, :func:`growth_estimate`) or ``"bound"`` (from the parameters,
            :func:`parameter_bound`).
        alpha_every: with ``alpha="adaptive"``, re-estimate ``alpha`` on every
            ``alpha_every``-th training batch (default 1: every batch). An estimate from a
            batch's trajectory takes effect from the next batch (the trajectory is forced with
            the ``alpha`` in use); the first batch uses the parameter bound's, and ``"bound"``
            takes effect at once.
        noise: standard deviation of Gaussian noise added to the data used for forcing during
            training (the paper's input noise is 0.05); 0 for none.

    The latents the data do not fix start at ``z_0[N:] = x_0 B`` with a learned ``B: (N, M-N)``
    (zero at initialisation).

    The ``alpha`` in use is :attr:`alpha` (also in ``repr(model)``), the last ``G``
    :attr:`growth`; with ``alpha="adaptive"`` both are buffers, saved in the ``state_dict``.

    Shapes: ``forward(x: (B, T, N)) -> (B, T, N)``, output ``t`` the model's ``x̂_{t+1}``.
    """

    gtf_alpha: Tensor
    gtf_growth: Tensor
    gtf_batches: Tensor

    def __init__(
        self,
        input_size: int,
        output_size: int | None = None,
        *,
        hidden_size: int = 20,
        pwl_units: int = 2,
        tau: int = 16,
        alpha: float | str = 1.0,
        alpha_estimate: str = "geometric",
        alpha_every: int = 1,
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
        if isinstance(alpha, str) and alpha != "adaptive":
            raise ValueError(f"alpha must be a number in [0, 1] or 'adaptive', got {alpha!r}")
        self.adaptive = alpha == "adaptive"
        self._alpha = 0.0 if self.adaptive else check_alpha(alpha)
        self.alpha_estimate = check_alpha_estimate(alpha_estimate)
        self.alpha_every = check_positive_int("alpha_every", alpha_every)
        if not self.adaptive:
            # a fixed alpha is never estimated: refuse the options rather than ignore them
            for name, value, default in (
                ("alpha_estimate", self.alpha_estimate, "geometric"),
                ("alpha_every", self.alpha_every, 1),
            ):
                if value != default:
                    raise ValueError(
                        f"{name} needs alpha='adaptive' (a fixed alpha is not estimated), got "
                        f"{name}={value!r} with alpha={alpha!r}"
                    )
        self.noise = check_finite("noise", noise)
        if self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        self.input_size = input_size
        self.output_size = input_size
        self.hidden_size = hidden_size
        self.cell = ALRNN(0, hidden_size, pwl_units=pwl_units)
        self.latent_init = nn.Parameter(torch.zeros(input_size, hidden_size - input_size))
        if self.adaptive:
            # buffers, so that a resumed run goes on with the alpha it had; fixed-alpha models
            # keep their state_dict keys
            self.register_buffer("gtf_alpha", torch.zeros((), dtype=torch.float64))
            self.register_buffer("gtf_growth", torch.full((), math.nan, dtype=torch.float64))
            self.register_buffer("gtf_batches", torch.zeros((), dtype=torch.int64))

    @property
    def alpha(self) -> float:
        """The forcing strength in use (with ``alpha="adaptive"``: the latest estimate's)."""
        return float(self.gtf_alpha) if self.adaptive else self._alpha

    @alpha.setter
    def alpha(self, alpha: float) -> None:
        if self.adaptive:
            raise ValueError("alpha of a model built with alpha='adaptive' is set by training")
        self._alpha = check_alpha(alpha)

    @property
    def growth(self) -> float:
        """With ``alpha="adaptive"``, the latest ``G`` (NaN before the first training batch);
        NaN for a fixed ``alpha``."""
        return float(self.gtf_growth) if self.adaptive else math.nan

    def _set_growth(self, growth: Tensor) -> None:
        g = float(growth)
        self.gtf_growth.fill_(g)
        self.gtf_alpha.fill_(adaptive_alpha(g))

    def forcing_jacobians(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """The Jacobians of the steps taken from ``states: (B, T, M)`` (the forced states the
        cell steps from), one per linear region visited: ``(K, M, M)`` and the ``(B, T)``
        index of each step's (:meth:`rnnkit.models.cells.alrnn.ALRNN.jacobian`); for
        :func:`growth_estimate`.

        ``J`` depends on the state only through its region (the signs of the ``P`` rectified
        units), so ``K <= min(2**P, B*T)`` matrices stand for the ``B*T`` steps.
        """
        flat = states.reshape(-1, self.hidden_size)
        _, index = torch.unique(self.cell.region_codes(flat), return_inverse=True)
        k = int(index.max()) + 1 if index.numel() else 0
        steps = torch.arange(index.numel(), device=index.device)
        first = torch.full((k,), index.numel(), device=index.device, dtype=torch.int64)
        first.scatter_reduce_(0, index, steps, reduce="amin")
        return self.cell.jacobian(flat[first]), index.reshape(states.shape[:2])

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
        adapt = self.adaptive and self.training
        due = adapt and int(self.gtf_batches) % self.alpha_every == 0
        if adapt and (int(self.gtf_batches) == 0 or (due and self.alpha_estimate == "bound")):
            self._set_growth(parameter_bound(self.cell))
        record = due and self.alpha_estimate != "bound"
        alpha = self.alpha
        z = self.initial_latent(data[:, 0])
        outs, states = [], []
        for t, x_t in enumerate(data.unbind(1)):
            if t % self.tau == 0:
                z = teacher_force(z, x_t, alpha)
            if record:
                states.append(z.detach())
            z = self.cell.step_map(z)
            outs.append(z[:, : self.input_size])
        if record:
            with torch.no_grad():
                stacked = torch.stack(states, 1)
                # the norms need an SVD, which half precision (autocast) does not have
                stacked = stacked.to(torch.promote_types(stacked.dtype, torch.float32))
                jac, index = self.forcing_jacobians(stacked)
                self._set_growth(growth_estimate(jac, self.alpha_estimate, index))
        if adapt:
            self.gtf_batches += 1
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
        if not self.adaptive:
            return f"tau={self.tau}, alpha={self.alpha}, noise={self.noise}"
        return (
            f"tau={self.tau}, alpha=adaptive ({self.alpha_estimate}, every "
            f"{self.alpha_every}; now {self.alpha:.4g}, G={self.growth:.4g}), noise={self.noise}"
        )


def alrnn_dsr(**cfg: Any) -> ALRNNReconstructor:
    """AL-RNN for dynamical-systems reconstruction: sparse (tau) / generalised (alpha, fixed or
    adaptive) forcing"""
    return ALRNNReconstructor(**cfg)
