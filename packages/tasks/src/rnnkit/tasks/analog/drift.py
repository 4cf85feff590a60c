"""Accuracy over time: a task's LSTM on PCM crossbars from one second to one year after
programming (``rnnkit analog drift``).

Protocol, per task (every training is a :class:`~rnnkit.tasks.trainer.Trainer` run, as in
:mod:`.experiments`):

1. Train the task's default LSTM digitally and score it on the test split (the digital line).
2. With ``finetune_steps > 0``, fine-tune a copy hardware-aware: mapped to crossbars in training
   mode (a fresh programming-noise sample on every forward, at ``t = 0``; straight-through
   quantisers), on the same batches and learning rate as :mod:`.experiments` uses.
3. For each model (as trained, HW-aware), each noise seed and each compensation setting (off,
   and global drift compensation with the probe read through the noisy tile): program the
   crossbar once (:func:`~rnnkit.kernels.analog.to_analog` with the seed; both compensation
   settings share the programming), then for every time ``t`` let it drift
   (:func:`~rnnkit.kernels.analog.drift_analog`: drift and the 1/f noise of that time) and
   score it. Scores are reported as mean and sample standard deviation over the seeds.

The run folder holds ``rows.json`` (settings and every score), ``drift.md`` (the tables) and
one PNG per task (score against time, log scale, the digital score as a line).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit.kernels.analog import AnalogConfig, drift_analog, to_analog
from rnnkit.tasks.analog.experiments import _train
from rnnkit.tasks.base import Split, TaskData
from rnnkit.tasks.registry import get_task
from rnnkit.tasks.trainer import evaluate

__all__ = ["TIMES", "drift_rows", "format_drift", "plot_drift", "time_label", "write_run"]

#: the times after programming of the experiment, in seconds: 1 s, 1 h, 1 day, 1 month, 1 year.
TIMES: tuple[float, ...] = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)

_LABELS = {1.0: "1 s", 3600.0: "1 h", 86400.0: "1 day", 30 * 86400.0: "1 month"}


def time_label(t: float) -> str:
    """``"1 s"``, ``"1 h"``, ``"1 day"``, ``"1 month"``, ``"1 year"`` or ``"<t> s"``."""
    if t == 365 * 86400.0:
        return "1 year"
    return _LABELS.get(t, f"{t:g} s")


def drift_rows(
    task_name: str,
    *,
    steps: int,
    finetune_steps: int,
    noise_seeds: Sequence[int],
    times: Sequence[float] = TIMES,
    batch_size: int = 32,
    lr: float = 5e-3,
    finetune_lr: float = 1e-3,
    preset: str = "pcm",
    nl_bits: int = 5,
    hidden_size: int | None = None,
    eval_examples: int | None = None,
    seed: int = 0,
    data: TaskData | None = None,
    out: str | Path,
) -> dict[str, Any]:
    """Run the protocol of the module docstring on ``task_name``.

    Args:
        task_name: a registered task whose default model has gated cells.
        steps, batch_size, lr: the digital training; finetune_steps, finetune_lr: the
            HW-aware fine-tuning (0: no HW-aware model).
        noise_seeds: one crossbar programming per seed.
        times: seconds after programming.
        preset, nl_bits: the crossbar (``AnalogConfig.preset(preset, nl_bits=nl_bits)``).
        hidden_size: overrides the task model's width; eval_examples: score on the first
            test examples only; seed: training seed; data: replaces the task's splits.
        out: the run folder (the trainer's run directories go under it).

    Returns:
        ``{"task", "metric", "digital", "times", "rows"}``; each row has ``model`` (``"as
        trained"`` or ``"HW-aware"``), ``compensation`` (bool), and per time (same order as
        ``times``) ``values`` (one score per seed), ``mean`` and ``std`` lists.
    """
    if not noise_seeds:
        raise ValueError("noise_seeds must name at least one seed")
    if steps < 1 or finetune_steps < 0:
        raise ValueError(
            f"steps must be >= 1 and finetune_steps >= 0, got {steps} and {finetune_steps}"
        )
    if not times or any(not (math.isfinite(t) and t >= 0) for t in times):
        raise ValueError(f"times must be finite seconds >= 0, got {list(times)}")
    if eval_examples is not None and eval_examples < 1:
        raise ValueError(f"eval_examples must be >= 1 (None: all), got {eval_examples}")
    if hidden_size is not None and hidden_size < 1:
        raise ValueError(f"hidden_size must be >= 1 (None: the task's), got {hidden_size}")
    base = AnalogConfig.preset(preset, nl_bits=nl_bits)  # refuses a bad preset or width early
    task = get_task(task_name)
    metric = task.primary
    root = Path(out) / task_name
    over = {} if hidden_size is None else {"hidden_size": hidden_size}
    trainer = _train(
        task_name,
        root / "digital",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        select_every=0,
        model_config=over,
        data=data,
    )
    model, data = trainer.model, trainer.data
    test = data.test
    if eval_examples is not None:
        test = Split(test.inputs[:eval_examples], test.targets[:eval_examples])
        data = replace(data, test=test)
    cpu = torch.device("cpu")

    def score(m: nn.Module) -> float:
        return float(evaluate(task, m, test, data.info, device=cpu)[metric])

    models: list[tuple[str, nn.Module]] = [("as trained", model)]
    if finetune_steps > 0:
        tuned = to_analog(copy.deepcopy(model), base.replace(seed=10_000 + seed))
        _train(
            task_name,
            root / f"{preset}-hw-aware",
            steps=finetune_steps,
            batch_size=batch_size,
            lr=finetune_lr,
            seed=seed + 2,
            select_every=0,
            model=tuned,
            data=data,
        )
        models.append(("HW-aware", tuned))
    rows: list[dict[str, Any]] = []
    for label, m in models:
        for comp in (False, True):
            per_time: list[list[float]] = [[] for _ in times]
            for s in noise_seeds:
                analog = to_analog(m, base.replace(seed=s, drift_compensation=comp)).eval()
                for k, t in enumerate(times):
                    drift_analog(analog, t)
                    per_time[k].append(score(analog))
            rows.append(
                {
                    "model": label,
                    "compensation": comp,
                    "values": per_time,
                    "mean": [statistics.fmean(v) for v in per_time],
                    "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_time],
                }
            )
    return {
        "task": task_name,
        "metric": metric,
        "digital": score(model),
        "times": list(times),
        "preset": preset,
        "nl_bits": nl_bits,
        "noise_seeds": list(noise_seeds),
        "rows": rows,
    }


def _scale(metric: str) -> tuple[float, int, str]:
    """(multiplier, decimals, label) of a metric in the tables."""
    return (100.0, 1, "accuracy %") if metric == "accuracy" else (1.0, 3, metric)


def format_drift(result: dict[str, Any]) -> str:
    """One task's result as a Markdown table: a row per model and compensation setting, a
    column per time, ``mean ± std`` over the noise seeds; the digital score in the header."""
    scale, digits, label = _scale(result["metric"])
    times = result["times"]
    seeds = len(result["noise_seeds"])
    head = (
        f"{result['task']}: {label}, digital {scale * result['digital']:.{digits}f}; "
        f"{result['preset']} crossbar, {result['nl_bits']}-bit NL-ADCs, mean ± std over "
        f"{seeds} noise seeds"
    )
    out = [
        head,
        "",
        "| model | drift compensation | " + " | ".join(time_label(t) for t in times) + " |",
        "|---|---|" + "---|" * len(times),
    ]
    for r in result["rows"]:
        cells = [
            f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"
            for m, s in zip(r["mean"], r["std"], strict=True)
        ]
        comp = "global (probe)" if r["compensation"] else "off"
        out.append(f"| {r['model']} | {comp} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_drift(result: dict[str, Any], path: str | Path) -> bool:
    """Score against time after programming (log axis, error bars = std over seeds), the
    digital score as a line; ``False`` (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scale, _, label = _scale(result["metric"])
    times = result["times"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.axhline(scale * result["digital"], color="black", lw=1, label="digital")
    styles = {False: "o--", True: "s-"}
    for r in result["rows"]:
        comp = "compensated" if r["compensation"] else "uncompensated"
        ax.errorbar(
            [max(t, 1e-1) for t in times],
            [scale * m for m in r["mean"]],
            yerr=[scale * s for s in r["std"]],
            fmt=styles[bool(r["compensation"])],
            capsize=3,
            label=f"{r['model']}, {comp}",
        )
    ax.set_xscale("log")
    ax.set_xticks([max(t, 1e-1) for t in times])
    ax.set_xticklabels([time_label(t) for t in times], fontsize=8)
    ax.set_xlabel("time after programming")
    ax.set_ylabel(label)
    ax.set_title(f"{result['task']} on {result['preset']} crossbars", fontsize=9)
    ax.legend(fontsize=7)
    if not all(math.isfinite(m) for r in result["rows"] for m in r["mean"]):
        ax.set_title(
            f"{result['task']} on {result['preset']} crossbars (non-finite scores omitted)",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_run(
    results: list[dict[str, Any]], folder: str | Path, settings: dict[str, Any]
) -> list[Path]:
    """Write ``rows.json`` (``{"experiment": "drift", "settings", "rows"}``, a row per task),
    ``drift.md`` and a PNG per task into ``folder``; the paths."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / "rows.json", root / "drift.md"]
    data = {"experiment": "drift", "settings": settings, "rows": results}
    paths[0].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths[1].write_text("\n\n".join(format_drift(r) for r in results) + "\n")
    for r in results:
        png = root / f"drift_{r['task']}.png"
        if plot_drift(r, png):
            paths.append(png)
    return paths
