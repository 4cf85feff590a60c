"""``rnnkit train`` and ``rnnkit compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rnnkit.core.errors import unknown_name
from rnnkit.core.listing import format_table
from rnnkit.tasks.trainer import (
    DEFAULT_TASK,
    RunResult,
    TrainConfig,
    make_run_dir,
    timestamp,
    train,
)

TRAIN_HELP = (
    "train a model on a task. With no arguments: an LSTM on digits_rows (8x8 digits read "
    "row by row), about 12 s of training on 2 CPU cores, to a test accuracy of at least 0.95; "
    "results, checkpoint and plots go to runs/<task>-<model>-<time>/"
)
COMPARE_HELP = "train several models (or cells) on one task and compare them in a table and a plot"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default=DEFAULT_TASK,
        help=f"registered task (default: {DEFAULT_TASK}; see `rnnkit list tasks`)",
    )
    p.add_argument("--cell", help="cell of the model's recurrent stack (default: the task's)")
    p.add_argument("--backend", default="auto", help="kernel backend (default: auto)")
    p.add_argument("--steps", type=int, help="training steps (default: the task's budget)")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--clip", type=float, help="gradient-norm clip (0: none)")
    p.add_argument("--eval-every", type=int, help="steps between validations")
    p.add_argument(
        "--patience",
        type=int,
        help="stop after this many validations without improvement (0: never)",
    )
    p.add_argument("--schedule", choices=("constant", "cosine"))
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--layers", type=int, dest="num_layers")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model keyword (VALUE parsed as JSON when it can be), repeatable",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="use only deterministic kernels (torch.use_deterministic_algorithms)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on CPU)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="do not write PNG plots")


def configure_train(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit train``."""
    _add_common(p)
    p.add_argument("--model", help="registered model (default: the task's)")
    p.add_argument("--out", help="run directory (default: runs/<task>-<model>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its checkpoint",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")


def configure_compare(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit compare``."""
    _add_common(p)
    p.add_argument(
        "--models", required=True, help="comma-separated model or cell names, e.g. lstm,gru,elman"
    )
    p.add_argument("--out", help="directory for the runs (default: runs/compare-<task>-<time>)")


def _model_config(args: argparse.Namespace) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.hidden_size is not None:
        cfg["hidden_size"] = args.hidden_size
    if args.num_layers is not None:
        cfg["num_layers"] = args.num_layers
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            cfg[key] = json.loads(raw)
        except json.JSONDecodeError:
            cfg[key] = raw
    return cfg


def _config(args: argparse.Namespace, **extra: Any) -> TrainConfig:
    return TrainConfig(
        task=args.task,
        cell=args.cell,
        model_config=_model_config(args),
        backend=args.backend,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip=args.clip,
        eval_every=args.eval_every,
        patience=args.patience,
        schedule=args.schedule,
        seed=args.seed,
        deterministic=args.deterministic,
        device=args.device,
        amp=not args.no_amp,
        progress=False if args.no_progress else None,
        plot=not args.no_plot,
        threads=args.threads,
        **extra,
    )


def _check_names(task: str, models: list[str]) -> None:
    """Fail early, with the closest names, on an unknown task, model or cell."""
    from rnnkit.core.plugins import get_host

    host = get_host()
    host.tasks.get(task)
    for m in models:
        if m not in host.models and m not in host.cells:
            raise unknown_name("model or cell", m, [*host.models.names(), *host.cells.names()])


def _reached(r: RunResult) -> str:
    if r.target is None or r.reached is None:
        return "-"
    return ("yes" if r.reached else "no") + f" (target {r.target:g})"


def _print_result(r: RunResult) -> None:
    keys = list(dict.fromkeys([r.primary, *r.test]))
    rows = [
        [k, f"{r.valid.get(k, float('nan')):.4f}", f"{r.test.get(k, float('nan')):.4f}"]
        for k in keys
    ]
    print()
    print(format_table(rows, ["metric", "valid", "test"]))
    print()
    print(
        f"task {r.task}, model {r.model}, {r.params:,} parameters, {r.steps} steps in "
        f"{r.seconds:.1f} s" + (" (stopped early)" if r.stopped_early else "")
    )
    if r.target is not None:
        word = "reached" if r.reached else "NOT reached"
        print(f"test {r.primary} {r.score:.4f}: target {r.target:g} {word}")
    out = Path(r.out)
    print(
        f"files: {out}/final.json, metrics.jsonl, checkpoint.safetensors, model.safetensors, "
        "config.json" + (", curves.png" if (out / "curves.png").exists() else "")
    )


def run_train(args: argparse.Namespace) -> int:
    """Run ``rnnkit train``; exit status 0, or 130 when interrupted (resumable)."""
    if args.list:
        from rnnkit.tasks.registry import get_task, list_tasks

        rows = [[n, get_task(n).description] for n in list_tasks()]
        print(format_table(rows, ["task", "description"]))
        return 0
    _check_names(args.task, [args.model] if args.model else [])
    config = _config(
        args,
        model=args.model,
        out=args.out,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    result = train(config)
    if result.interrupted:
        print(
            f"\nstopped at step {result.steps}; continue with: rnnkit train --resume "
            f"--out {result.out} (and the same arguments)"
        )
        return 130
    _print_result(result)
    return 0


def _resolve_entry(entry: str) -> tuple[str | None, str | None]:
    """A ``--models`` item -> ``(model, cell)``: a registered model, else a cell name."""
    from rnnkit.core.plugins import get_host

    host = get_host()
    if entry in host.models:
        return entry, None
    if entry in host.cells:
        return None, entry
    raise unknown_name("model or cell", entry, [*host.models.names(), *host.cells.names()])


def run_compare(args: argparse.Namespace) -> int:
    """Run ``rnnkit compare``: one run per entry, then a table and ``compare.png``."""
    from rnnkit.tasks.plots import plot_compare
    from rnnkit.tasks.registry import get_task

    entries = [e.strip() for e in args.models.split(",") if e.strip()]
    if not entries:
        raise ValueError("--models needs at least one name")
    task = get_task(args.task)
    resolved = [_resolve_entry(e) for e in entries]
    created: list[Path] = []
    if args.out:
        root = Path(args.out)
    else:  # exclusive, like a run's default directory: two compares never share one
        root, created = make_run_dir(Path("runs") / f"compare-{task.name}-{timestamp()}")
    results: list[RunResult] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    try:
        for entry, (model, cell) in zip(entries, resolved, strict=True):
            cfg = _config(args, model=model, out=str(root / entry))
            if cell is not None:
                cfg.cell = cell
            print(f"\n== {entry} ==")
            r = train(cfg)
            results.append(r)
            with (Path(r.out) / "metrics.jsonl").open() as f:
                histories[entry] = [json.loads(line) for line in f if line.strip()]
    except BaseException:
        for d in reversed(created):  # nothing to show for it: no empty directory left
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    rows = [
        [
            e,
            f"{r.params:,}",
            str(r.steps),
            f"{r.seconds:.1f}",
            f"{r.valid.get(r.primary, float('nan')):.4f}",
            f"{r.score:.4f}",
            _reached(r),
        ]
        for e, r in zip(entries, results, strict=True)
    ]
    print()
    print(
        format_table(
            rows,
            [
                "model",
                "params",
                "steps",
                "seconds",
                f"valid {task.primary}",
                f"test {task.primary}",
                "target reached",
            ],
        )
    )
    summary = [
        {
            "entry": e,
            "model": r.model,
            "params": r.params,
            "steps": r.steps,
            "seconds": r.seconds,
            "valid": r.valid,
            "test": r.test,
            "out": r.out,
        }
        for e, r in zip(entries, results, strict=True)
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not args.no_plot:
        plot_compare(histories, task.primary, root / "compare.png", title=f"{task.name}")
    print(f"\nfiles: {root}/compare.json" + ("" if args.no_plot else f", {root}/compare.png"))
    return 0


__all__ = [
    "COMPARE_HELP",
    "TRAIN_HELP",
    "configure_compare",
    "configure_train",
    "run_compare",
    "run_train",
]
