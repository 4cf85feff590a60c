"""Task experiments of the analog simulator: digital vs crossbar, with and without
hardware-aware training, over several programming-noise seeds.

One protocol serves keyword spotting (``kws``, accuracy) and the character LM (``charlm``, BPC):

1. Train the task's default LSTM digitally (AdamW, gradient clipping 1.0); optionally keep
   the checkpoint with the best validation score (``select_every``; the fine-tuning of step 3
   then selects its checkpoint the same way, scored on the crossbar programmed with the
   training seed, so an overfitting task is compared at its best, not at its budget's end).
2. Score it digitally on the evaluation split; as a control, also score a copy after the
   same fine-tuning as in step 3 but without any hardware model.
3. For every NL-ADC resolution ``n``: map it with ``AnalogConfig.preset(preset, nl_bits=n)``
   and score it once per noise seed (each seed programs the crossbar anew: programming noise,
   ramps, faults, per-read noise), **as trained** and **after hardware-aware fine-tuning**
   (``finetune_steps`` steps in training mode: fresh programming noise on every forward,
   straight-through DAC/ADC/NL-ADC quantisation; see ``docs/analog.md``). The fine-tuned model
   is reprogrammed with each evaluation seed.

Needs ``rnnkit-tasks`` (imported only when an experiment runs).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rnnkit.kernels.analog.cells import program_analog, to_analog
from rnnkit.kernels.analog.config import AnalogConfig

__all__ = ["fit", "format_hw", "hw_rows", "load_task", "plot_hw"]


def load_task(name: str) -> Any:
    """The registered task ``name`` of ``rnnkit-tasks``; a clear ``SystemExit`` without it."""
    try:
        import rnnkit.tasks as tasks
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            f"rnnkit analog {name} needs the rnnkit-tasks package (pip install rnnkit-tasks, "
            f"or the monorepo's packages/tasks): {exc}"
        ) from exc
    return tasks.get_task(name)


def fit(
    task: Any,
    model: nn.Module,
    train: Any,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    *,
    valid: Any = None,
    info: Any = None,
    metric: str | None = None,
    select_every: int = 0,
) -> float | None:
    """``steps`` AdamW steps on random ``batch``-example batches of ``train`` (clip 1.0).

    With ``select_every > 0`` (and ``valid``, ``info``, ``metric``) the model is scored on
    ``valid`` every ``select_every`` steps and at the end, and the best checkpoint is loaded
    back; its validation score is returned (``None`` otherwise). Leaves the model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    n = train.inputs.shape[0]
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    key = metric if (select_every > 0 and valid is not None) else None

    def score(key: str) -> float:
        from rnnkit.tasks.trainer import evaluate

        return float(evaluate(task, model, valid, info, device=torch.device("cpu"))[key])

    sign = 1.0 if task.higher_is_better else -1.0
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(0, n, (batch,), generator=gen)
        out = model(train.inputs[idx])
        s, c = task.loss(out, train.targets[idx])
        opt.zero_grad()
        (s / c).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if key is not None and (step % select_every == 0 or step == steps):
            v = score(key)
            if best is None or sign * v > sign * best[0]:
                best = (v, copy.deepcopy(model.state_dict()))
    model.eval()
    if best is None:
        return None
    model.load_state_dict(best[1])
    return best[0]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def hw_rows(
    task_name: str,
    *,
    metric: str,
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
) -> list[dict[str, Any]]:
    """Run the protocol of the module docstring on ``task_name`` and return one row per config.

    Rows: ``config`` (label), ``bits`` (``None`` for digital), ``hw_aware`` (fine-tuned),
    ``values`` (the score per noise seed; one value for digital), ``mean``, ``std`` (sample std
    over seeds), ``delta`` (``mean`` minus the digital score). The first row is the digital
    model; it also carries ``valid`` (the selected checkpoint's validation score, or ``None``).
    With ``finetune_steps > 0`` the second row is a control: the digital model after the same
    fine-tuning (batches, learning rate, selection) without any hardware model.
    """
    if not noise_seeds:
        raise ValueError("noise_seeds must name at least one seed")
    from rnnkit.tasks.trainer import evaluate

    task = load_task(task_name)
    torch.manual_seed(seed)
    data = task.data(seed=seed)
    info, test = data.info, data.test
    if eval_examples is not None:
        test = type(test)(test.inputs[:eval_examples], test.targets[:eval_examples])
    over = {} if hidden_size is None else {"hidden_size": hidden_size}
    model = task.build_model(**over)
    valid = fit(
        task,
        model,
        data.train,
        steps,
        batch_size,
        lr,
        seed,
        valid=data.valid,
        info=info,
        metric=metric,
        select_every=select_every,
    )
    cpu = torch.device("cpu")

    def score(m: nn.Module) -> float:
        return float(evaluate(task, m, test, info, device=cpu)[metric])

    digital = score(model)
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

    def finetune(m: torch.nn.Module) -> None:
        """The one fine-tune protocol (batches, lr, selection) of the control and of HW-aware."""
        fit(
            task,
            m,
            data.train,
            finetune_steps,
            batch_size,
            finetune_lr,
            seed + 2,
            valid=data.valid,
            info=info,
            metric=metric,
            select_every=select_every,
        )

    if finetune_steps > 0:
        # control: the same fine-tune (batches, lr, selection) without hardware, so the effect
        # of hardware-aware training is not confused with that of training longer.
        control = copy.deepcopy(model)
        finetune(control)
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
    for n in bits:
        cfg = AnalogConfig.preset(preset, nl_bits=n, t_inference=t_inference)
        plain = [score(to_analog(model, cfg.replace(seed=s))) for s in noise_seeds]
        # hardware-aware fine-tune: its training noise comes from a seed no evaluation uses.
        tuned = to_analog(model, cfg.replace(seed=10_000 + seed))
        finetune(tuned)
        aware = []
        for s in noise_seeds:
            program_analog(tuned, seed=s)
            aware.append(score(tuned))
        for hw, vals in ((False, plain), (True, aware)):
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


def plot_hw(rows: list[dict[str, Any]], path: str, label: str, *, scale: float = 1.0) -> bool:
    """Score against NL-ADC bits (as trained and HW-aware, error bars = std over seeds) with
    the digital score as a line; ``False`` (nothing written) without matplotlib."""
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
    if not all(math.isfinite(scale * float(r["mean"])) for r in rows):
        ax.set_title("(non-finite scores omitted)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
