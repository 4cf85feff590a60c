"""Learning-curve plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    history: Sequence[Mapping[str, Any]], primary: str, path: Path, *, title: str = ""
) -> None:
    """Training loss and validation ``primary`` against step, side by side, to ``path`` (PNG).

    ``history`` holds the records of ``metrics.jsonl``.
    """
    plot_compare({"": history}, primary, path, title=title)


def plot_compare(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], primary: str, path: Path, *, title: str = ""
) -> None:
    """Like :func:`plot_curves` with one line per run (``{label: history}``)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, history in runs.items():
        steps = [r["step"] for r in history]
        ax1.plot(steps, [r["train_loss"] for r in history], label=label or None)
        ax2.plot(
            steps, [r["valid"].get(primary, float("nan")) for r in history], label=label or None
        )
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"valid {primary}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if any(runs):
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
