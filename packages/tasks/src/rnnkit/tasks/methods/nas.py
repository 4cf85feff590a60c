"""Training-free architecture scores: the hidden-covariance score of Serianni & Kalita
(ACL 2023, arXiv 2306.00288), and how well it ranks the registered cells.

For one batch of ``B`` inputs through an *untrained* network, the outputs of its first
recurrent layer over all ``T`` steps are concatenated per example into ``H: (B, T · d)``;
with ``λ_i`` the eigenvalues of the ``B × B`` Pearson correlation matrix of the rows of ``H``,

    score = −Σ_i [log(λ_i + k) + 1/(λ_i + k)],   k = 1e-5,

higher being better (examples whose hidden trajectories are less correlated). It is
NASWOT's Jacobian-covariance formula applied to hidden states.

:func:`rank_cells` builds the task's model with every registered cell, scores it at
initialisation, trains it for a short budget and reports Kendall's τ-b and Spearman's ρ
between the score and the trained test metric (for a loss-like metric the sign is flipped,
so that a positive correlation always means that the score ranks the better cells higher).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "CellScore",
    "NASReport",
    "hidden_covariance_score",
    "kendall_tau",
    "rank_cells",
    "spearman_rho",
]

NAS_HELP = (
    "training-free architecture search: the hidden-covariance score of every registered cell "
    "at initialisation on a task, and its rank correlation with the score after a short "
    "training"
)


def hidden_covariance_score(hidden: Tensor, k: float = 1e-5) -> float:
    """The score of ``hidden: (B, T, d)`` or ``(B, F)`` (higher is better; see the module
    docstring). Rows with zero variance count as uncorrelated with the rest (their
    correlations are set to 0, the diagonal to 1)."""
    if hidden.dim() < 2 or hidden.shape[0] < 2:
        raise ValueError(f"hidden must be (B, ...) with B >= 2, got {tuple(hidden.shape)}")
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    h = hidden.detach().reshape(hidden.shape[0], -1).double()
    if h.is_complex():
        h = torch.view_as_real(h).reshape(h.shape[0], -1)
    h = h - h.mean(1, keepdim=True)
    norm = h.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, h / norm.clamp_min(1e-300), torch.zeros_like(h))
    corr = unit @ unit.T
    corr.fill_diagonal_(1.0)
    lam = torch.linalg.eigvalsh(corr).clamp_min(0.0)
    return float(-(torch.log(lam + k) + 1.0 / (lam + k)).sum())


def _ranks(x: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on mean ranks); NaN if a side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y must have the same length >= 2, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b (ties corrected); NaN if a side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y must have the same length >= 2, got {len(x)} and {len(y)}")
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom > 0 else math.nan


def first_layer_outputs(model: nn.Module, inputs: Tensor) -> Tensor:
    """``(B, T, d)``: the outputs of the first recurrent cell of ``model`` on ``inputs``."""
    from rnnkit.core.cell import Cell

    cell = next((m for m in model.modules() if isinstance(m, Cell)), None)
    if cell is None:
        raise ValueError("the model has no recurrent cell")
    seen: list[Tensor] = []

    def hook(_: nn.Module, __: object, out: object) -> None:
        if not seen:
            seen.append(out[0] if isinstance(out, tuple) else out)  # type: ignore[arg-type]

    handle = cell.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the model's first cell was not called by its forward")
    return seen[0]


@dataclass(frozen=True)
class CellScore:
    """One cell: its ``score`` at initialisation, its trained test ``metric`` (``None`` when
    it failed, with the ``error``), and its parameter count."""

    cell: str
    score: float | None
    metric: float | None
    params: int = 0
    error: str = ""


@dataclass(frozen=True)
class NASReport:
    """What :func:`rank_cells` measured: per cell, and the rank correlations over the cells
    that were scored and trained."""

    task: str
    metric: str
    higher_is_better: bool
    cells: list[CellScore]
    kendall: float
    spearman: float


def rank_cells(
    *,
    task: str = "digits_rows",
    cells: Sequence[str] | None = None,
    hidden_size: int = 32,
    batch: int = 64,
    steps: int = 150,
    seed: int = 0,
) -> NASReport:
    """Score every cell (default: every registered one) at initialisation on ``batch``
    training examples of ``task``, train each for ``steps`` and correlate (see the module
    docstring)."""
    from rnnkit.core.plugins import get_host
    from rnnkit.tasks.methods import quiet_config
    from rnnkit.tasks.registry import get_task
    from rnnkit.tasks.trainer import Trainer, evaluate

    for name, value in (("hidden_size", hidden_size), ("steps", steps)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if batch < 2:
        raise ValueError(f"batch must be at least 2, got {batch}")
    host = get_host()
    names = list(cells) if cells is not None else host.cells.names()
    for c in names:
        host.cells.get(c)  # unknown names fail here, with the closest ones
    t = get_task(task)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in names:
            config = quiet_config(
                task,
                f"{tmp}/{c}",
                cell=c,
                model_config={"hidden_size": hidden_size},
                steps=steps,
                eval_every=steps,
                seed=seed,
            )
            try:
                trainer = Trainer(config)
                x = trainer.data.train.inputs[:batch]
                score = hidden_covariance_score(first_layer_outputs(trainer.model, x))
                params = sum(p.numel() for p in trainer.model.parameters())
                trainer.run_to_end()
                metrics = evaluate(
                    t,
                    trainer.model,
                    trainer.data.test,
                    trainer.data.info,
                    device=torch.device("cpu"),
                )
                metric = float(metrics[t.primary])
                finite = metric if math.isfinite(metric) else None
                results.append(CellScore(c, score, finite, params))
            except Exception as exc:  # one cell's failure is that cell's row
                text = str(exc).strip().splitlines()
                results.append(
                    CellScore(
                        c, None, None, error=f"{type(exc).__name__}: {text[0] if text else ''}"
                    )
                )
    ok = [r for r in results if r.score is not None and r.metric is not None]
    sign = 1.0 if t.higher_is_better else -1.0
    xs = [float(r.score) for r in ok]  # type: ignore[arg-type]
    ys = [sign * float(r.metric) for r in ok]  # type: ignore[arg-type]
    tau = kendall_tau(xs, ys) if len(ok) >= 2 else math.nan
    rho = spearman_rho(xs, ys) if len(ok) >= 2 else math.nan
    return NASReport(task, t.primary, t.higher_is_better, results, tau, rho)


def configure_nas(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit nas``."""
    p.add_argument("--task", default="digits_rows", help="default digits_rows")
    p.add_argument("--cells", help="comma-separated cells (default: every registered cell)")
    p.add_argument("--hidden-size", type=int, default=32, help="default 32")
    p.add_argument("--batch", type=int, default=64, help="examples scored (default 64)")
    p.add_argument("--steps", type=int, default=150, help="training steps per cell (150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")


def run_nas(args: argparse.Namespace) -> int:
    """Run ``rnnkit nas``."""
    from rnnkit.core.listing import format_table

    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    report = rank_cells(
        task=args.task,
        cells=cells,
        hidden_size=args.hidden_size,
        batch=args.batch,
        steps=args.steps,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(asdict(report), indent=1))
        return 0
    rows = sorted(report.cells, key=lambda r: -math.inf if r.score is None else -r.score)
    table = [
        [
            r.cell,
            "-" if r.score is None else f"{r.score:.1f}",
            "-" if r.metric is None else f"{r.metric:.4f}",
            f"{r.params:,}",
            r.error[:60],
        ]
        for r in rows
    ]
    print(format_table(table, ["cell", "score", report.metric, "params", "error"]))
    n = sum(r.score is not None and r.metric is not None for r in report.cells)
    print(
        f"\n{report.task}: over {n} cells, Kendall tau {report.kendall:.3f}, Spearman rho "
        f"{report.spearman:.3f} (positive: a higher score goes with a better {report.metric})"
    )
    return 0
