"""Dynamical-systems reconstruction (DSR): metrics of generated trajectories, and the
``lorenz63_dsr`` / ``rossler_dsr`` tasks.

A DSR model is judged by the long-term statistics of the trajectories it *generates*, not by
its one-step error (which chaos makes meaningless over long horizons):

- :func:`state_space_divergence` (``D_stsp``): the Kullback-Leibler divergence between the
  occupancy of state space by the true and the generated trajectory, estimated on a grid of
  bins;
- :func:`power_spectrum_distance` (``D_H``): the Hellinger distance between the smoothed,
  normalised power spectra of each dimension, averaged over dimensions.

Both follow the definitions in ``reference/tasks.md`` (section 5), written fresh from the
formulas.

The tasks cut one long z-scored trajectory in time: training windows (overlapping, stride a
quarter window) for teacher-forced training, then valid and test stretches of a few long
windows each. In evaluation the trainer calls the model without targets, so the default model
(:class:`rnnkit.models.dsr.ALRNNReconstructor`) free-runs from the first observation of each
evaluation window and the metrics compare that generated trajectory with the true one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.core.validation import check_positive_int
from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import generator
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData
from rnnkit.tasks.dynamics import rossler_rk4
from rnnkit.tasks.forecasting import rk4

#: Refuse grids with more cells than this (a dense histogram of that many float64 cells is
#: 128 MiB); high-dimensional systems need a Gaussian-mixture estimate instead.
MAX_CELLS = 1 << 24


def _points(x: Tensor, name: str) -> Tensor:
    """``(..., N)`` -> ``(n, N)`` float64."""
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (..., T, N) or (T, N), got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1]).double()


def state_space_divergence(
    true: Tensor,
    generated: Tensor,
    *,
    bins: int = 30,
    margin: float = 0.1,
    smoothing: float = 1e-5,
) -> float:
    """``D_stsp = KL(p_true || p_gen)`` between binned state-space occupancies.

    Each of the ``N`` dimensions is cut into ``bins`` equal bins spanning the true data's range
    widened by ``margin`` standard deviations on each side, giving ``K = bins**N`` cells. With
    ``h`` the count of points per cell, both occupancies are Laplace-smoothed,
    ``p = (h + smoothing) / (n + smoothing * K)``, where ``n`` is the number of points of that
    trajectory, so generated points that leave the grid (or are not finite) still count in
    ``n``: they take probability away from every cell, and a trajectory that diverges scores
    badly instead of being ignored.

    Args:
        true, generated: ``(..., N)`` points (any leading shape; all points are pooled).
        bins: bins per dimension (30 in the AL-RNN paper's settings).
        margin: widening of the range in standard deviations of each true dimension.
        smoothing: the Laplace pseudo-count added to every cell.

    Returns:
        ``sum_k p_true[k] log(p_true[k] / p_gen[k])`` in nats: 0 for identical occupancies,
        ``log((n_gen + s K) / s) + sum_k p_true log p_true - O(s)`` when the generated points
        avoid every cell the true ones occupy.
    """
    check_positive_int("bins", bins)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if not math.isfinite(smoothing) or smoothing <= 0:
        raise ValueError(f"smoothing must be a finite number > 0, got {smoothing!r}")
    t, g = _points(true, "true"), _points(generated, "generated")
    if t.shape[1] != g.shape[1]:
        raise ValueError(f"true and generated differ in dimension: {t.shape[1]} vs {g.shape[1]}")
    if t.shape[0] == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError("true must hold at least one point, all finite")
    dims = t.shape[1]
    cells = bins**dims
    if cells > MAX_CELLS:
        raise ValueError(f"bins**N = {bins}**{dims} cells is more than {MAX_CELLS}: use fewer bins")
    std = t.std(0, unbiased=False) if t.shape[0] > 1 else torch.zeros(dims, dtype=t.dtype)
    lo = t.min(0).values - margin * std
    hi = t.max(0).values + margin * std
    width = torch.where(hi > lo, hi - lo, torch.ones_like(hi))  # a constant dimension: 1 bin

    def counts(x: Tensor) -> Tensor:
        pos = (x - lo) / width * bins
        inside = torch.isfinite(pos).all(1) & (pos >= 0).all(1) & (pos <= bins).all(1)
        idx = pos[inside].floor().long().clamp_(0, bins - 1)  # the top edge joins the last bin
        flat = (idx * bins ** torch.arange(dims, dtype=torch.long)).sum(1)
        return torch.bincount(flat, minlength=cells).double()

    p = (counts(t) + smoothing) / (t.shape[0] + smoothing * cells)
    q = (counts(g) + smoothing) / (g.shape[0] + smoothing * cells)
    return float((p * (p.log() - q.log())).sum())


def _power_spectra(x: Tensor) -> Tensor:
    """``(B, T, N)`` -> the per-dimension power spectrum averaged over the ``B`` sequences,
    ``(N, T // 2 + 1)``, of each series z-scored along time (a constant series has none)."""
    mean = x.mean(1, keepdim=True)
    std = x.std(1, unbiased=False, keepdim=True)
    z = torch.where(std > 0, (x - mean) / torch.where(std > 0, std, 1.0), 0.0)
    power: Tensor = torch.fft.rfft(z, dim=1).abs().square() * (2.0 / x.shape[1])
    return power.mean(0).T


def gaussian_smooth(spectra: Tensor, sigma: float) -> Tensor:
    """Convolve each row of ``spectra (N, F)`` with a normalised Gaussian of ``sigma`` bins,
    truncated at ``ceil(4 sigma)`` bins, zero beyond the ends (``sigma = 0``: unchanged)."""
    if sigma == 0:
        return spectra
    radius = math.ceil(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=spectra.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out: Tensor = F.conv1d(spectra[:, None], kernel[None, None], padding=radius)
    return out[:, 0]


def power_spectrum_distance(true: Tensor, generated: Tensor, *, smoothing: float = 20.0) -> float:
    """``D_H``: the Hellinger distance between power spectra, averaged over dimensions.

    For every dimension, each sequence is z-scored along time, its power spectrum
    ``|rfft|² · 2 / T`` is taken and averaged over the sequences, smoothed by a Gaussian of
    ``smoothing`` frequency bins (:func:`gaussian_smooth`) and normalised to sum 1; then
    ``H = sqrt(1 - sum_f sqrt(p_f q_f))``.

    Args:
        true, generated: ``(T, N)`` or ``(B, T, N)`` with the same shape.
        smoothing: the Gaussian's standard deviation in bins (20 in the reference settings; 0
            for none).

    Returns:
        The mean over dimensions, in ``[0, 1]``: 0 for identical spectra, 1 for spectra with no
        overlap. A generated dimension that is constant or not finite has no spectrum to
        compare and scores 1.
    """
    if not math.isfinite(smoothing) or smoothing < 0:
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    if true.shape != generated.shape or true.dim() not in (2, 3):
        raise ValueError(
            f"true and generated must have one shape, (T, N) or (B, T, N), got "
            f"{tuple(true.shape)} and {tuple(generated.shape)}"
        )
    t, g = true.double(), generated.double()
    if t.dim() == 2:
        t, g = t[None], g[None]
    if t.shape[1] < 2:
        raise ValueError(f"need at least 2 time steps, got {t.shape[1]}")
    finite = torch.isfinite(g).all(1).all(0)  # (N,)
    g = torch.where(torch.isfinite(g), g, 0.0)
    p = gaussian_smooth(_power_spectra(t), smoothing)
    q = gaussian_smooth(_power_spectra(g), smoothing)
    p_sum, q_sum = p.sum(1, keepdim=True), q.sum(1, keepdim=True)
    valid = finite & (q_sum[:, 0] > 0) & (p_sum[:, 0] > 0)
    p = p / torch.where(p_sum > 0, p_sum, 1.0)
    q = q / torch.where(q_sum > 0, q_sum, 1.0)
    overlap = torch.sqrt(p * q).sum(1).clamp(max=1.0)
    h = torch.where(valid, torch.sqrt(1.0 - overlap), 1.0)
    return float(h.mean())


def dsr_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``dstsp`` (:func:`state_space_divergence`, 30 bins), ``dh``
    (:func:`power_spectrum_distance`, smoothing ``info["spectrum_smoothing"]``) and ``mse``
    between generated ``outputs`` and true ``targets``, both ``(B, T, N)``.

    In evaluation the outputs are the model's free-running trajectory, so ``mse`` measures how
    long it stays near the truth (large for any chaotic system over long windows)."""
    return {
        "dstsp": state_space_divergence(targets, outputs),
        "dh": power_spectrum_distance(
            targets, outputs, smoothing=float(info.get("spectrum_smoothing", 20.0))
        ),
        "mse": M.mse(outputs, targets),
    }


def _dsr_splits(
    traj: Tensor, *, window: int, train: int, eval_window: int, valid: int, test: int
) -> tuple[Split, Split, Split]:
    """``traj (L, N)`` z-scored with the training stretch's statistics, then cut in time:
    ``train`` samples as overlapping windows of ``window`` (stride ``window // 4``), then
    ``valid`` and ``test`` windows of ``eval_window`` each (inputs ``x_t``, targets
    ``x_{t+1}``)."""
    mean, std = traj[:train].mean(0), traj[:train].std(0)
    z = ((traj - mean) / std).float()
    stride = max(window // 4, 1)
    starts = range(0, train - window, stride)
    x_tr = torch.stack([z[s : s + window] for s in starts])
    y_tr = torch.stack([z[s + 1 : s + window + 1] for s in starts])

    def long_windows(lo: int, count: int) -> Split:
        xs = [z[lo + i * eval_window : lo + (i + 1) * eval_window] for i in range(count)]
        ys = [z[lo + i * eval_window + 1 : lo + (i + 1) * eval_window + 1] for i in range(count)]
        return Split(torch.stack(xs).contiguous(), torch.stack(ys).contiguous())

    va = long_windows(train, valid)
    te = long_windows(train + valid * eval_window, test)
    return Split(x_tr.contiguous(), y_tr.contiguous()), va, te


def _length(train: int, eval_window: int, valid: int, test: int) -> int:
    return train + (valid + test) * eval_window + 1


def lorenz63_dsr_data(
    seed: int,
    *,
    dt: float = 0.01,
    window: int = 200,
    train: int = 50_000,
    eval_window: int = 5000,
    valid: int = 2,
    test: int = 4,
) -> TaskData:
    """Lorenz-63 (σ=10, ρ=28, β=8/3), RK4 with step ``dt``, every step kept.

    One trajectory from a random initial condition after 20 time units of burn-in: ``train``
    samples for training (windows of ``window``), then ``valid`` and ``test`` windows of
    ``eval_window`` samples; z-scored with the training statistics.
    """
    g = generator(seed, 1)
    r = (torch.randn(3, generator=g, dtype=torch.float64) * 5.0).tolist()
    burn = int(20 / dt)
    n = _length(train, eval_window, valid, test)
    traj = rk4((r[0], r[1], r[2] + 25.0), dt, burn + n)[burn:]
    tr, va, te = _dsr_splits(
        traj, window=window, train=train, eval_window=eval_window, valid=valid, test=test
    )
    return TaskData(tr, va, te, {"dt": dt, "lyapunov": 0.9056, "spectrum_smoothing": 20.0})


def rossler_dsr_data(
    seed: int,
    *,
    dt: float = 0.05,
    every: int = 2,
    window: int = 300,
    train: int = 30_000,
    eval_window: int = 5000,
    valid: int = 2,
    test: int = 4,
) -> TaskData:
    """Rössler (a = b = 0.2, c = 5.7), RK4 with ``dt``, sampled every ``every`` steps.

    Laid out as :func:`lorenz63_dsr_data` after 100 time units of burn-in, from ``x, y``
    drawn near the attractor and ``z = 0`` (a large ``z`` can escape to infinity).
    """
    r = (torch.randn(2, generator=generator(seed, 2), dtype=torch.float64) * 2.0).tolist()
    burn = int(100 / dt)
    n = _length(train, eval_window, valid, test)
    traj = rossler_rk4((r[0], r[1] - 5.0, 0.0), dt, burn + n * every)[burn + every - 1 :: every]
    tr, va, te = _dsr_splits(
        traj[:n], window=window, train=train, eval_window=eval_window, valid=valid, test=test
    )
    return TaskData(tr, va, te, {"dt": dt * every, "lyapunov": 0.0714, "spectrum_smoothing": 20.0})


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="lorenz63_dsr",
        description="Lorenz-63 reconstruction: free-running AL-RNN scored by D_stsp and D_H",
        kind="regress",
        make_data=lorenz63_dsr_data,
        metric_fn=dsr_metrics,
        primary="dstsp",
        higher_is_better=False,
        io={"input_size": 3, "output_size": 3},
        model="alrnn_dsr",
        model_config={"hidden_size": 20, "pwl_units": 2, "tau": 16, "alpha": 1.0, "noise": 0.05},
        budget=Budget(steps=1500, batch_size=16, lr=1e-3, eval_every=250, clip=10.0),
        target=None,
        reference=(
            "Brenner et al. (AL-RNN, NeurIPS 2024): M=20, P=2, sparse TF tau=16, windows of "
            "200, 100,000 RAdam steps; D_stsp/D_H shown in figures (numbers not retrieved)"
        ),
        details=(
            "RK4 dt 0.01; 50,000 training samples (windows of 200, stride 50), valid 2 x 5,000"
            " and test 4 x 5,000 free-running steps from the first true point of each window."
        ),
    ),
    Task(
        name="rossler_dsr",
        description="Rössler reconstruction: free-running AL-RNN scored by D_stsp and D_H",
        kind="regress",
        make_data=rossler_dsr_data,
        metric_fn=dsr_metrics,
        primary="dstsp",
        higher_is_better=False,
        io={"input_size": 3, "output_size": 3},
        model="alrnn_dsr",
        model_config={"hidden_size": 20, "pwl_units": 1, "tau": 8, "alpha": 1.0, "noise": 0.05},
        budget=Budget(steps=1500, batch_size=16, lr=5e-3, eval_every=250, clip=10.0),
        target=None,
        reference=(
            "Brenner et al. (AL-RNN, NeurIPS 2024): M=20, P=1, sparse TF tau=8, windows of "
            "300, lr 5e-3; D_stsp/D_H shown in figures (numbers not retrieved)"
        ),
        details=(
            "RK4 dt 0.05 sampled every 0.1; 30,000 training samples (windows of 300, stride "
            "75), valid 2 x 5,000 and test 4 x 5,000 free-running steps."
        ),
    ),
)
