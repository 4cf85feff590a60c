"""Task experiments of the analog simulator: digital vs crossbar, with and without
hardware-aware training, over several programming-noise seeds.

One protocol serves keyword spotting (``kws``, accuracy) and the character LM (``charlm``, BPC);
every training in it is a :class:`~rnnkit.tasks.trainer.Trainer` run on the task (AdamW with
weight decay 0.01, gradient clipping 1.0, constant learning rate, the trainer's seeded batches):

1. Train the task's default LSTM digitally. With ``select_every > 0`` the trainer scores the
   validation split every ``select_every`` steps and keeps the best checkpoint of the task's
   primary metric (otherwise the last one); the fine-tuning of step 3 selects its checkpoint the
   same way, scored on the crossbar programmed with the training seed, so an overfitting task is
   compared at its best, not at its budget's end.
2. Score it digitally on the test split; as a control, also score a copy after the same
   fine-tuning as in step 3 but without any hardware model.
3. For every NL-ADC resolution ``n``: map it with ``AnalogConfig.preset(preset, nl_bits=n)``
   (:func:`~rnnkit.kernels.analog.to_analog`) and score it once per noise seed (each seed
   programs the crossbar anew: programming noise, ramps, faults, per-read noise), **as
   trained** and **after hardware-aware fine-tuning** (``finetune_steps`` trainer steps on the
   mapped model in training mode: fresh programming noise on every forward, straight-through
   DAC/ADC/NL-ADC quantisation; see ``docs/analog.md``). The fine-tuned model is reprogrammed
   with each evaluation seed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit.kernels.analog import AnalogConfig, program_analog, to_analog
from rnnkit.tasks.base import Split, TaskData
from rnnkit.tasks.registry import get_task
from rnnkit.tasks.trainer import TrainConfig, Trainer, evaluate

__all__ = [
    "WEIGHT_DECAY",
    "charlm_rows",
    "format_charlm",
    "format_hw",
    "format_kws",
    "hw_rows",
    "kws_rows",
    "plot_hw",
]

#: AdamW weight decay of every training of the protocol (torch's AdamW default, which the
#: experiments have always used; the tasks' own budgets use 0).
WEIGHT_DECAY = 0.01


def _trainer(
    task: str,
    out: Path,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    select_every: int,
    model_config: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    data: TaskData | None = None,
) -> Trainer:
    """One trainer run of the protocol (CPU, quiet, run directory ``out``), built (data and
    model ready, nothing written yet) but not run."""
    config = TrainConfig(
        task=task,
        model_config=dict(model_config or {}),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=WEIGHT_DECAY,
        clip=1.0,
        # one evaluation at the end when not selecting: the trainer then keeps the last state
        eval_every=select_every if select_every > 0 else steps,
        patience=0,
        schedule="constant",
        seed=seed,
        device="cpu",
        amp=False,
        out=str(out),
        progress=False,
        plot=False,
        verbose=False,
        threads=1,
    )
    return Trainer(config, data=data, model=model)


def _train(task: str, out: Path, **kwargs: Any) -> Trainer:
    """:func:`_trainer` run: returns the trainer, whose ``model`` is left at the selected
    checkpoint in eval mode."""
    trainer = _trainer(task, out, **kwargs)
    trainer.run_to_end()
    trainer.model.eval()
    return trainer


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def hw_rows(
    task_name: str,
    *,
    metric: str | None = None,
    steps: int,
    finetune_steps: int,
    bits: Sequence[int],
    noise_seeds: Sequence[int],
    batch_size: int,
    lr: float = 5e-3,
    finetune_lr: float = 1e-3,
    preset: str = "pcm",
    t_inference: float = 0.0,
    hidden_size: int | None = None,
    eval_examples: int | None = None,
    select_every: int = 0,
    seed: int = 0,
    data: TaskData | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run the protocol of the module docstring on ``task_name`` and return one row per config.

    Args:
        task_name: a registered task whose default model has gated cells (LSTM, ...).
        metric: the test metric reported (default: the task's primary metric; checkpoints are
            always selected on the primary metric, as the trainer does).
        steps, batch_size, lr: the digital training.
        finetune_steps, finetune_lr: the control's and every HW-aware fine-tuning (0: none).
        bits: NL-ADC resolutions; preset: ``"pcm"``, ``"reram"`` or ``"ideal"`` devices;
            t_inference: seconds of conductance drift before reading.
        noise_seeds: one score per seed and crossbar configuration.
        hidden_size: overrides the task model's width.
        eval_examples: score on the first ``eval_examples`` test examples only.
        select_every: validation interval of checkpoint selection (0: keep the last step).
        seed: training seed (data, initialisation, batches).
        data: replaces the task's splits (smaller data in tests).
        out: keep the trainer's run directories under this folder (``digital``, ``control``,
            ``<preset>-<n>bit-hw-aware``); default: a temporary folder, deleted at the end.

    Returns:
        Rows with ``config`` (label), ``bits`` (``None`` for digital), ``hw_aware``
        (fine-tuned), ``values`` (the score per noise seed; one value for digital), ``mean``,
        ``std`` (sample std over seeds), ``delta`` (``mean`` minus the digital score). The
        first row is the digital model; it also carries ``valid`` (the selected checkpoint's
        validation score with ``select_every > 0``, else ``None``). With
        ``finetune_steps > 0`` the second row is a control: the digital model after the same
        fine-tuning (batches, learning rate, selection) without any hardware model.

    Raises:
        ValueError: before any training, for an argument out of range (a bit width, the
            preset, ``t_inference``, ``eval_examples``, ``select_every``, ...) or a task whose
            evaluation has no ``metric`` (checked on the untrained model).
    """
    if not noise_seeds:
        raise ValueError("noise_seeds must name at least one seed")
    if steps < 1 or finetune_steps < 0:
        raise ValueError(
            f"steps must be >= 1 and finetune_steps >= 0, got {steps} and {finetune_steps}"
        )
    if eval_examples is not None and eval_examples < 1:
        raise ValueError(f"eval_examples must be >= 1 (None: all), got {eval_examples}")
    if select_every < 0:
        raise ValueError(f"select_every must be >= 0 (0: keep the last step), got {select_every}")
    # every crossbar configuration is checked before the digital training, not after it
    configs = [AnalogConfig.preset(preset, nl_bits=n, t_inference=t_inference) for n in bits]
    task = get_task(task_name)
    metric = metric or task.primary
    over = {} if hidden_size is None else {"hidden_size": hidden_size}
    cpu = torch.device("cpu")
    with contextlib.ExitStack() as stack:
        if out is None:
            out = stack.enter_context(tempfile.TemporaryDirectory(prefix="rnnkit-analog-"))
        root = Path(out)
        # Data and initialisation as `rnnkit train` makes them: the trainer seeds, then
        # builds the task's splits (unless given) and model.
        trainer = _trainer(
            task_name,
            root / "digital",
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            select_every=select_every,
            model_config=over,
            data=data,
        )
        model, data = trainer.model, trainer.data
        test = data.test
        if eval_examples is not None:
            test = Split(test.inputs[:eval_examples], test.targets[:eval_examples])
            data = replace(data, test=test)
        info = data.info

        def score(m: nn.Module) -> float:
            return float(evaluate(task, m, test, info, device=cpu)[metric])

        # The untrained model's metrics (eval mode, no gradients, no random draws): a task
        # without the reported metric stops here, before any training.
        named = evaluate(task, model, test, info, device=cpu)
        if metric not in named:
            raise ValueError(
                f"task {task_name!r} has no {metric!r} metric (its metrics: "
                f"{', '.join(named)}); choose a task scored by {metric}"
            )
        trainer.run_to_end()
        model = trainer.model.eval()

        def finetune(m: nn.Module, name: str) -> None:
            """The one fine-tune protocol (batches, lr, selection) of the control and of
            HW-aware training, in place on ``m``."""
            _train(
                task_name,
                root / name,
                steps=finetune_steps,
                batch_size=batch_size,
                lr=finetune_lr,
                seed=seed + 2,
                select_every=select_every,
                model=m,
                data=data,
            )

        digital = score(model)
        valid = trainer.state.best_score if select_every > 0 else None
        rows: list[dict[str, Any]] = [
            {
                "config": "digital",
                "bits": None,
                "hw_aware": False,
                "values": [digital],
                "mean": digital,
                "std": 0.0,
                "delta": 0.0,
                "valid": valid,
            }
        ]
        if finetune_steps > 0:
            # control: the same fine-tune (batches, lr, selection) without hardware, so the
            # effect of hardware-aware training is not confused with that of training longer.
            control = copy.deepcopy(model)
            finetune(control, "control")
            v = score(control)
            rows.append(
                {
                    "config": "digital + fine-tune (control)",
                    "bits": None,
                    "hw_aware": True,
                    "values": [v],
                    "mean": v,
                    "std": 0.0,
                    "delta": v - digital,
                }
            )
        for n, cfg in zip(bits, configs, strict=True):
            plain = [score(to_analog(model, cfg.replace(seed=s))) for s in noise_seeds]
            aware = []
            if finetune_steps > 0:
                # its training noise comes from a seed no evaluation uses.
                tuned = to_analog(model, cfg.replace(seed=10_000 + seed))
                finetune(tuned, f"{preset}-{n}bit-hw-aware")
                for s in noise_seeds:
                    program_analog(tuned, seed=s)
                    aware.append(score(tuned))
            for hw, vals in ((False, plain), (True, aware)):
                if not vals:
                    continue
                mean, std = _mean_std(vals)
                label = f"{preset} {n}-bit NL-ADC" + (" + HW-aware" if hw else "")
                rows.append(
                    {
                        "config": label,
                        "bits": n,
                        "hw_aware": hw,
                        "values": vals,
                        "mean": mean,
                        "std": std,
                        "delta": mean - digital,
                    }
                )
    return rows


def charlm_rows(
    *,
    steps: int = 400,
    finetune_steps: int = 60,
    bits: list[int] | None = None,
    noise_seeds: list[int] | None = None,
    batch_size: int = 32,
    lr: float = 5e-3,
    finetune_lr: float = 1e-3,
    hidden_size: int | None = None,
    eval_examples: int | None = None,
    select_every: int = 0,
    preset: str = "pcm",
    t_inference: float = 0.0,
    seed: int = 0,
    task: str = "charlm",
    data: TaskData | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Experiment (c): ``charlm`` test BPC, digital vs crossbars with 3/4/5/8-bit NL-ADCs, as
    trained and hardware-aware fine-tuned, over ``noise_seeds`` (default ``[seed + 1]``).

    ``task`` may name another character-LM task with a ``bpc`` metric (``charlm_shakespeare``).
    The protocol, the rows, ``data`` and ``out`` are those of :func:`hw_rows`.
    """
    return hw_rows(
        task,
        metric="bpc",
        steps=steps,
        finetune_steps=finetune_steps,
        bits=bits or [3, 4, 5, 8],
        noise_seeds=noise_seeds or [seed + 1],
        batch_size=batch_size,
        lr=lr,
        finetune_lr=finetune_lr,
        preset=preset,
        t_inference=t_inference,
        hidden_size=hidden_size,
        eval_examples=eval_examples,
        select_every=select_every,
        seed=seed,
        data=data,
        out=out,
    )


def kws_rows(
    *,
    steps: int = 400,
    finetune_steps: int = 100,
    bits: list[int] | None = None,
    noise_seeds: list[int] | None = None,
    batch_size: int = 64,
    lr: float = 5e-3,
    finetune_lr: float = 1e-3,
    hidden_size: int | None = None,
    eval_examples: int | None = None,
    select_every: int = 0,
    preset: str = "pcm",
    t_inference: float = 0.0,
    seed: int = 0,
    task: str = "kws",
    data: TaskData | None = None,
    out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Experiment (b): ``kws`` (keyword spotting, LSTM 64 with mean pooling) test accuracy,
    digital vs crossbars with 3/4/5/8-bit NL-ADCs, as trained and hardware-aware fine-tuned,
    over ``noise_seeds`` (default ``[seed + 1]``).

    ``task`` may name another classification task with an ``accuracy`` metric (``kws12``).
    The protocol, the rows, ``data`` and ``out`` are those of :func:`hw_rows`.
    """
    return hw_rows(
        task,
        metric="accuracy",
        steps=steps,
        finetune_steps=finetune_steps,
        bits=bits or [3, 4, 5, 8],
        noise_seeds=noise_seeds or [seed + 1],
        batch_size=batch_size,
        lr=lr,
        finetune_lr=finetune_lr,
        preset=preset,
        t_inference=t_inference,
        hidden_size=hidden_size,
        eval_examples=eval_examples,
        select_every=select_every,
        seed=seed,
        data=data,
        out=out,
    )


def format_charlm(rows: list[dict[str, Any]]) -> str:
    """The ``charlm`` table as Markdown (BPC, 3 decimals)."""
    return format_hw(rows, "BPC", digits=3)


def format_kws(rows: list[dict[str, Any]]) -> str:
    """The ``kws`` table as Markdown (accuracy in %, 2 decimals)."""
    return format_hw(rows, "accuracy %", scale=100.0, digits=2)


def format_hw(
    rows: list[dict[str, Any]], label: str, *, scale: float = 1.0, digits: int = 3
) -> str:
    """The rows as a Markdown table: ``config | label (mean ± std) | delta vs digital``.

    ``scale`` multiplies every score (100 for accuracy in %), ``digits`` sets the decimals.
    """
    seeds = max(len(r["values"]) for r in rows)
    out = [
        f"| config | {label} (mean ± std, {seeds} noise seeds) | delta vs digital |",
        "|---|---|---|",
    ]
    for r in rows:
        m, s, d = (scale * float(r[k]) for k in ("mean", "std", "delta"))
        val = f"{m:.{digits}f}" if r["bits"] is None else f"{m:.{digits}f} ± {s:.{digits}f}"
        out.append(f"| {r['config']} | {val} | {d:+.{digits}f} |")
    return "\n".join(out)


def plot_hw(
    rows: list[dict[str, Any]], path: str, label: str, *, scale: float = 1.0, title: str = ""
) -> bool:
    """Score against NL-ADC bits (as trained and HW-aware, error bars = std over seeds) with
    the digital score as a named line; ``False`` (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    digital = scale * float(rows[0]["mean"])
    ax.axhline(digital, color="black", lw=1, label="digital")
    for r in rows[1:]:
        if r["bits"] is None:
            ax.axhline(scale * float(r["mean"]), color="grey", lw=1, ls=":", label=r["config"])
    for hw, style in ((False, "o-"), (True, "s--")):
        sel = [r for r in rows if r["bits"] is not None and r["hw_aware"] == hw]
        if not sel:
            continue
        ax.errorbar(
            [r["bits"] for r in sel],
            [scale * float(r["mean"]) for r in sel],
            yerr=[scale * float(r["std"]) for r in sel],
            fmt=style,
            capsize=3,
            label="HW-aware" if hw else "as trained",
        )
    ax.set_xlabel("NL-ADC bits")
    ax.set_ylabel(label)
    bits = sorted({int(r["bits"]) for r in rows if r["bits"] is not None})
    if bits:
        ax.set_xticks(bits)
    ax.legend(fontsize=8)
    note = (
        ""
        if all(math.isfinite(scale * float(r["mean"])) for r in rows)
        else " (non-finite scores omitted)"
    )
    ax.set_title((title or f"{label} against NL-ADC bits") + note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
