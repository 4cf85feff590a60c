"""The meta-prior study of PV-RNN on switching Lissajous patterns (``rnnkit pvrnn``).

For each meta-prior ``w``: fit a :class:`~rnnkit.models.pvrnn.PVRNN` to the ``patterns``
task's training sequences (ELBO: the reconstruction plus :meth:`PVRNN.regularization`), then
measure

- ``train_mse``: the posterior-mean reconstruction of the training sequences;
- ``kl``: the mean KL(q || p) per step and latent unit;
- generation from the prior from ``t = 0`` (``gen_samples`` sequences): ``gen_fit``, the mean
  squared distance of each generated cycle to its nearest primitive (how pattern-like the
  generation is), ``gen_switch``, how often the nearest primitive changes from one cycle to the
  next (the data switch with probability ``switch``), and ``gen_spread``, the standard
  deviation across samples (0: every sample is the same trajectory);
- error regression on the held-out sequences: observe ``observe`` steps, fit the window's
  latents, predict ``horizon`` steps; ``er_mse`` against the truth, beside ``free_mse`` (the
  prior's mean roll-out without error regression) and ``zero_mse`` (predicting 0).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.models.pvrnn import PVRNN
from rnnkit.tasks.patterns import LISSAJOUS, patterns_data, primitive_cycle

PVRNN_HELP = "PV-RNN meta-prior study on switching Lissajous patterns (error regression)"


@dataclass(frozen=True)
class PVRNNScores:
    """One meta-prior's results (see the module docstring)."""

    meta_prior: float
    train_mse: float
    kl: float
    gen_fit: float
    gen_switch: float
    gen_spread: float
    er_mse: float
    free_mse: float
    zero_mse: float
    seconds: float


def fit(model: PVRNN, ids: Tensor, targets: Tensor, *, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the negative ELBO (MSE + ``model.regularization``); returns the
    reconstruction MSE at every step. ``ids: (N,)``, ``targets: (N, T, D)``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    for i in range(steps):
        opt.zero_grad()
        out = model(ids[:, None].expand(-1, targets.shape[1]))
        mse = (out - targets).square().mean()
        torch.autograd.backward(mse + model.regularization(i / max(steps, 1)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        history.append(float(mse.detach()))
    model.eval()
    return history


def cycle_labels(x: Tensor, period: int) -> tuple[Tensor, Tensor]:
    """Nearest primitive of every whole cycle of ``x: (B, T, 2)``: ``(labels (B, C),
    distance (B, C))`` with ``distance`` the mean squared distance to that primitive."""
    cycles = x.shape[1] // period
    segs = x[:, : cycles * period].reshape(x.shape[0], cycles, 1, period, 2)
    table = torch.stack([primitive_cycle(p, period) for p in range(len(LISSAJOUS))])
    d = (segs - table.to(x.dtype)[None, None]).square().mean((-1, -2))
    best = d.min(-1)
    return best.indices, best.values


def study_one(
    meta_prior: float,
    *,
    steps: int = 400,
    lr: float = 1e-2,
    seed: int = 0,
    observe: int = 45,
    horizon: int = 15,
    window: int = 10,
    iterations: int = 20,
    er_lr: float = 0.09,
    shift: int = 3,
    gen_samples: int = 32,
    model_config: dict[str, Any] | None = None,
) -> PVRNNScores:
    """Train with meta-prior ``w = meta_prior`` and score it (see the module docstring)."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = patterns_data(seed)
    period, t = int(data.info["period"]), int(data.train.targets.shape[1])
    if observe + horizon > t:
        raise ValueError(f"observe + horizon must be <= {t}, got {observe} + {horizon}")
    ids = torch.arange(len(data.train))
    model = PVRNN(2, len(data.train), t, meta_prior=meta_prior, **(model_config or {}))
    fit(model, ids, data.train.targets, steps=steps, lr=lr)
    with torch.no_grad():
        post = model.posterior_of(ids, t)
        r = model.rollout(model.init_state(len(ids)), t, posterior=post)
        train_mse = float((r.outputs - data.train.targets).square().mean())
        kl = float((r.kl / torch.tensor(model.z_sizes, dtype=r.kl.dtype)).mean())
    g = torch.Generator().manual_seed(seed + 1)
    gen = model.generate(gen_samples, t, generator=g)
    labels, dist = cycle_labels(gen, period)
    switch = float((labels[:, 1:] != labels[:, :-1]).float().mean()) if labels.shape[1] > 1 else 0.0
    truth = data.test.targets
    er = model.error_regression(
        truth[:, :observe],
        window=window,
        iterations=iterations,
        lr=er_lr,
        horizon=horizon,
        shift=shift,
    )
    future = truth[:, observe : observe + horizon]
    with torch.no_grad():
        free = model.rollout(model.init_state(len(truth)), observe + horizon).outputs
    return PVRNNScores(
        meta_prior=meta_prior,
        train_mse=train_mse,
        kl=kl,
        gen_fit=float(dist.mean()),
        gen_switch=switch,
        gen_spread=float(gen.std(0).mean()),
        er_mse=float((er.prediction - future).square().mean()),
        free_mse=float((free[:, observe:] - future).square().mean()),
        zero_mse=float(future.square().mean()),
        seconds=time.perf_counter() - start,
    )


def study(meta_priors: Sequence[float], **kw: Any) -> list[PVRNNScores]:
    """:func:`study_one` for each meta-prior."""
    for w in meta_priors:
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"meta_priors must be finite numbers >= 0, got {w!r}")
    return [study_one(float(w), **kw) for w in meta_priors]


def configure_pvrnn(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit pvrnn``."""
    p.add_argument(
        "--meta-prior",
        type=float,
        nargs="+",
        default=[0.0001, 0.01, 1.0],
        help="meta-priors w to compare (default: 0.0001 0.01 1.0)",
    )
    p.add_argument("--steps", type=int, default=400, help="training steps (full batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--iterations", type=int, default=20, help="error-regression Adam steps per window"
    )
    p.add_argument("--window", type=int, default=10, help="error-regression window")
    p.add_argument("--shift", type=int, default=3, help="steps the window moves each time")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the results to FILE as JSON; without FILE, print them as JSON on stdout "
        "and nothing else there",
    )


def run_pvrnn(args: argparse.Namespace) -> int:
    """``rnnkit pvrnn``: print one row per meta-prior."""
    rows = study(
        args.meta_prior,
        steps=args.steps,
        seed=args.seed,
        iterations=args.iterations,
        window=args.window,
        shift=args.shift,
    )
    cols = [
        "meta_prior",
        "train_mse",
        "kl",
        "gen_fit",
        "gen_switch",
        "gen_spread",
        "er_mse",
        "free_mse",
        "zero_mse",
        "seconds",
    ]
    records = [asdict(r) for r in rows]
    if args.json == "-":  # a bare --json prints the JSON document only
        print(json.dumps(records))
        return 0
    print(" ".join(f"{c:>10}" for c in cols))
    for d in records:
        print(" ".join(f"{d[c]:>10.4g}" for c in cols))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0
