"""Learning-curve plots (matplotlib, Agg backend: no display needed).

Both plots have two panels against the optimiser step: the losses (training loss, averaged over
the steps since the previous validation, and the validation loss; log scale) and the task's
primary validation metric, with the task's target and chance level as named horizontal lines
where it defines them (:meth:`~rnnkit.tasks.base.Task.chance_level`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

History = Sequence[Mapping[str, Any]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _reference_lines(ax: Any, target: float | None, chance: float | None) -> None:
    if target is not None:
        ax.axhline(target, color="tab:green", ls="--", lw=1, label=f"target {target:g}")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance {chance:.3g}")


def plot_curves(
    history: History,
    primary: str,
    path: Path,
    *,
    title: str = "",
    target: float | None = None,
    chance: float | None = None,
    best_step: int | None = None,
) -> None:
    """One run's curves to ``path`` (PNG): training and validation loss, validation
    ``primary`` with the ``target`` and ``chance`` lines, and the step whose model was kept
    (``best_step``, the best validation score) marked on both panels.

    ``history`` holds the records of ``metrics.jsonl`` (``step``, ``train_loss``, ``valid``).
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in history]
    ax1.plot(steps, [r["train_loss"] for r in history], label="train loss")
    ax1.plot(steps, [r["valid"].get("loss", math.nan) for r in history], label="valid loss")
    scores = [r["valid"].get(primary, math.nan) for r in history]
    ax2.plot(steps, scores, color="tab:orange", label=f"valid {primary}")
    _reference_lines(ax2, target, chance)
    if best_step:
        for ax in (ax1, ax2):
            ax.axvline(best_step, color="tab:red", lw=0.8, alpha=0.6)
        if best_step in steps:
            best = scores[steps.index(best_step)]
            ax2.plot([best_step], [best], "o", color="tab:red", label=f"best: step {best_step}")
    ax1.set_ylabel("loss")
    if all(v > 0 for r in history for v in (r["train_loss"], r["valid"].get("loss", 1.0))):
        ax1.set_yscale("log")
    ax2.set_ylabel(f"valid {primary}")
    for ax, name in ((ax1, "loss"), (ax2, f"validation {primary}")):
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, plt, path)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; ``0`` for one value) of the finite
    values; ``(nan, nan)`` without any."""
    ok = [float(v) for v in values if math.isfinite(v)]
    if not ok:
        return math.nan, math.nan
    return statistics.fmean(ok), statistics.stdev(ok) if len(ok) > 1 else 0.0


def _band(histories: Sequence[History], value: Any) -> tuple[list[int], list[float], list[float]]:
    """Steps and per-step mean and standard deviation of ``value(record)`` over the runs
    (a step counts the runs that reached it: an early-stopped seed ends its share)."""
    by_step: dict[int, list[float]] = {}
    for h in histories:
        for r in h:
            by_step.setdefault(int(r["step"]), []).append(float(value(r)))
    steps = sorted(by_step)
    stats = [mean_std(by_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [s for _, s in stats]


def plot_compare(
    runs: Mapping[str, Sequence[History]],
    primary: str,
    path: Path,
    *,
    title: str = "",
    target: float | None = None,
    chance: float | None = None,
) -> None:
    """Several models, each over one or more seeds, to ``path`` (PNG).

    ``runs`` maps a label to the histories of its seeds. Each label gets its mean curve and,
    with two seeds or more, a band of mean ± one (sample) standard deviation: the training
    loss on the left, the validation ``primary`` (with ``target`` and ``chance``) on the right.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, histories in runs.items():
        n = len(histories)
        if not n:
            continue
        name = label + (f" ({n} seeds)" if n > 1 else "")
        for ax, value in (
            (ax1, lambda r: r["train_loss"]),
            (ax2, lambda r: r["valid"].get(primary, math.nan)),
        ):
            steps, mean, std = _band(histories, value)
            (line,) = ax.plot(steps, mean, label=name)
            if n > 1:
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    _reference_lines(ax2, target, chance)
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax2.set_ylabel(f"valid {primary}")
    bands = any(len(h) > 1 for h in runs.values())
    for ax, name in ((ax1, "training loss"), (ax2, f"validation {primary}")):
        ax.set_xlabel("step")
        ax.set_title(name + (" (mean ± std over seeds)" if bands else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save(fig, plt, path)
