"""``rnnkit train`` and ``rnnkit compare`` (the comparison itself: :mod:`rnnkit.tasks.compare`).

Options default to ``None`` on the command line, so that ``--resume`` and ``--config FILE``
can tell the options given from those left out: left out, they take the value of the file
(:mod:`rnnkit.tasks.runconfig`), else the value the run was started with (stored in its
checkpoint) when resuming; given, they win over the file and must agree with the stored run.

Output (:mod:`rnnkit.core.output`): the results (the metrics table, the comparison table) go to
stdout, the trainer's messages to stderr through :mod:`logging`; ``--json`` prints the content
of ``final.json`` (``compare.json``) instead of the table, ``-q/--quiet`` nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rnnkit.core.errors import unknown_name
from rnnkit.core.listing import format_table
from rnnkit.core.output import add_output_options, is_quiet, print_json, shows_text, wants_json
from rnnkit.tasks._util import add_threads_option, parse_set
from rnnkit.tasks.callbacks import TensorBoardCallback, TrainerCallback
from rnnkit.tasks.distributed import is_main_process
from rnnkit.tasks.runconfig import apply_config_file, config_document, format_toml
from rnnkit.tasks.trainer import (
    DEFAULT_TASK,
    RunResult,
    TrainConfig,
    train,
)

TRAIN_HELP = (
    "train a model on a task. With no arguments: an LSTM on digits_rows (8x8 digits read "
    "row by row), seconds of training on 2 CPU cores, to a test accuracy of at least 0.95; "
    "results (final.json), checkpoint, plots and report.md go to runs/<task>-<model>-<time>/"
)
COMPARE_HELP = (
    "train several models (or cells) on one task, over one or more seeds, and compare them: a "
    "table (mean ± std), a plot with bands, compare.json and report.md; runs already in --out "
    "are reused"
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        help=f"registered task (default: {DEFAULT_TASK}; see `rnnkit list tasks`)",
    )
    p.add_argument("--cell", help="cell of the model's recurrent stack (default: the task's)")
    p.add_argument(
        "--backend",
        help="kernel backend (default: auto; final.json records the kernel that ran each cell)",
    )
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
    p.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        help="use only deterministic kernels (torch.use_deterministic_algorithms; default: no)",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    add_threads_option(p)
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        help="bfloat16 autocast on CUDA (default: on; ignored on CPU)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--plot", action=argparse.BooleanOptionalAction, help="write PNG plots (default: yes)"
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        help="write TensorBoard event files into each run directory's tb/ (needs the "
        "tensorboard extra: pip install 'rnnkit-tasks[tensorboard]'; default: no)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read options from a TOML or JSON file (keys: the option names with _ for -, "
        "model keywords under model_config); options given here override it",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as TOML (JSON with --json), usable as --config "
        "FILE, and exit without training",
    )
    add_output_options(p)


def configure_train(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit train``."""
    _add_common(p)
    p.add_argument("--seed", type=int, help="seed of data, initialisation and batches (default 0)")
    p.add_argument("--model", help="registered model (default: the task's)")
    p.add_argument("--out", help="run directory (default: runs/<task>-<model>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its checkpoint, with the arguments "
        "it was started with (an argument given again must have the same value)",
    )
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")


def configure_compare(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit compare``."""
    _add_common(p)
    p.add_argument(
        "--models",
        help="comma-separated model or cell names, e.g. lstm,gru,elman (required); an entry "
        "may carry its own model keywords: NAME:KEY=VALUE[:KEY=VALUE...], e.g. "
        "hybrid_rnn:update=additive:attention=8",
    )
    p.add_argument(
        "--metrics",
        help="comma-separated test metrics shown beside the primary one, e.g. nrmse_10,nrmse_40",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        help="comma-separated seeds, e.g. 0,1,2: one run per model and seed; the table and plot "
        "show mean ± sample standard deviation (default: --seed)",
    )
    seeds.add_argument("--seed", type=int, help="one seed (default 0)")
    p.add_argument(
        "--out",
        help="directory of the comparison and its runs (<out>/<model>/seed-<seed>); finished "
        "runs found there with the same arguments are reused, stopped ones resumed "
        "(default: a new runs/compare-<task>-<time>)",
    )


def _model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model keywords: ``model_config`` of ``--config FILE``, overridden by
    ``--hidden-size``, ``--layers`` and ``--set``.

    Raises:
        ValueError: naming the option, for a ``--hidden-size`` or ``--layers`` below 1 (here,
            before anything is created: ``rnnkit compare`` would otherwise fail every run
            with the model's own message, which names the keyword, not the option).
    """
    for flag, value in (("--hidden-size", args.hidden_size), ("--layers", args.num_layers)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    cfg: dict[str, Any] = dict(getattr(args, "config_model_config", None) or {})
    if args.hidden_size is not None:
        cfg["hidden_size"] = args.hidden_size
    if args.num_layers is not None:
        cfg["num_layers"] = args.num_layers
    cfg.update(parse_set(args.set))
    return cfg


#: command-line option of each TrainConfig field that defines a run (in error messages)
FLAGS: dict[str, str] = {
    "task": "--task",
    "model": "--model",
    "cell": "--cell",
    "backend": "--backend",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "clip": "--clip",
    "eval_every": "--eval-every",
    "patience": "--patience",
    "schedule": "--schedule",
    "seed": "--seed",
    "deterministic": "--deterministic",
    "device": "--device",
    "amp": "--amp",
    "checkpoint_every": "--checkpoint-every",
    "threads": "--threads",
}


def given_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The run-defining :class:`TrainConfig` fields set on the command line (see the module
    docstring); ``model_config`` holds the model keywords given (``--hidden-size``,
    ``--layers``, ``--set``)."""
    out: dict[str, Any] = {}
    for name in FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    model_config = _model_config(args)
    if model_config:
        out["model_config"] = model_config
    return out


def _config(args: argparse.Namespace, **extra: Any) -> TrainConfig:
    """The :class:`TrainConfig` of the arguments given (the rest: defaults), with ``extra``."""
    fields = {**given_arguments(args), **extra}
    return TrainConfig(**fields, **_display(args))


def _display(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of how a run is shown: ``--progress`` (off with
    ``--quiet``) and ``--plot``."""
    progress = False if is_quiet(args) else args.progress
    return {"progress": progress, "plot": args.plot is not False}


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The configuration of ``rnnkit train --resume --out DIR``: the arguments the run in
    ``DIR`` was started with (stored in its checkpoint), checked against those given again.

    Raises:
        ValueError: naming the option, when a given argument conflicts with the stored one.
        CheckpointError: when ``DIR`` holds no readable checkpoint.
    """
    from rnnkit.tasks.record import stored_arguments

    if not args.out:
        raise ValueError("--resume needs --out DIR (the run directory to continue)")
    stored, resolved = stored_arguments(Path(args.out))
    given = given_arguments(args)

    def conflict(flag: str, value: Any, before: Any) -> ValueError:
        sep = "" if flag.endswith("=") else " "
        return ValueError(
            f"{flag}{sep}{value!r} conflicts with the run in {args.out}, started with {before!r}; "
            f"leave {flag} out to resume with the stored value, or choose another --out for a "
            "new run"
        )

    for name, value in given.items():
        if name == "model_config":
            have = stored.get("model_config") or {}
            was = resolved.get("model_config", {})
            from_set = {item.partition("=")[0] for item in args.set}
            for key, v in value.items():
                if have.get(key) != v and was.get(key) != v:
                    flag = {"hidden_size": "--hidden-size", "num_layers": "--layers"}.get(key)
                    if flag is None or key in from_set:
                        flag = f"--set {key}="
                    before = have.get(key, was.get(key, "the model's default"))
                    raise conflict(flag, v, before)
        elif value != stored.get(name) and value != resolved.get(name, _MISSING):
            if isinstance(value, bool):  # --amp/--no-amp, --deterministic/--no-...
                flag = FLAGS[name] if value else "--no-" + FLAGS[name].removeprefix("--")
                raise ValueError(
                    f"{flag} conflicts with the run in {args.out}, started with "
                    f"{FLAGS[name].removeprefix('--')} {'off' if value else 'on'}; leave {flag} "
                    "out to resume it, or choose another --out for a new run"
                )
            before = stored.get(name)
            raise conflict(FLAGS[name], value, resolved.get(name) if before is None else before)
    fields = {k: v for k, v in stored.items() if k in FLAGS or k == "model_config"}
    return TrainConfig(**fields, out=args.out, resume=True, **_display(args))


_MISSING = object()


def _check_names(task: str, models: list[str]) -> None:
    """Fail early, with the closest names, on an unknown task or model; a cell name given as
    ``--model`` says to pass it as ``--cell`` (``rnnkit compare --models`` takes both)."""
    from rnnkit.core.plugins import get_host

    host = get_host()
    host.tasks.get(task)
    for m in models:
        if m in host.models:
            continue
        if m in host.cells:
            raise ValueError(
                f"--model {m!r} is a cell, not a model: pass --cell {m} (the task's model "
                "built with that cell)"
            )
        raise unknown_name("model", m, host.models.names())


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
        f"files: {out}/final.json, metrics.jsonl, checkpoint.safetensors"
        + (", model.safetensors, config.json" if (out / "config.json").exists() else "")
        + (", curves.png" if (out / "curves.png").exists() else "")
        + (", report.md" if (out / "report.md").exists() else "")
        + (", tb/ (TensorBoard)" if (out / "tb").is_dir() else "")
    )


def callbacks_of(args: argparse.Namespace) -> list[TrainerCallback]:
    """The callbacks the options ask for: ``--tensorboard``. Made before anything is
    created, so that a missing extra is reported first."""
    return [TensorBoardCallback()] if args.tensorboard else []


def print_config(args: argparse.Namespace, command: str, config: TrainConfig) -> None:
    """``--print-config``: the resolved configuration of ``config`` (with the display options
    and, for ``compare``, ``models`` and ``seeds`` of ``args``), TOML or (``--json``) JSON."""
    settings: dict[str, Any] = {k: getattr(config, k) for k in FLAGS}
    settings.update(
        out=config.out,
        progress=args.progress,
        plot=args.plot,
        tensorboard=args.tensorboard,
    )
    if command == "compare":
        settings.update(models=args.models, seeds=args.seeds, seed=args.seed)
    doc = config_document(command, settings, config.model_config)
    if wants_json(args):
        print_json(doc)
    else:
        header = f"rnnkit {command} --config FILE (written by --print-config)"
        print(format_toml(doc, header=header), end="")


def run_train(args: argparse.Namespace) -> int:
    """Run ``rnnkit train``; exit status 0, or 130 when interrupted (resumable)."""
    if args.list:
        from rnnkit.tasks.registry import get_task, list_tasks

        rows = [[n, get_task(n).description] for n in list_tasks()]
        if wants_json(args):
            print_json([{"task": n, "description": d} for n, d in rows])
        elif not is_quiet(args):
            print(format_table(rows, ["task", "description"]))
        return 0
    apply_config_file(args, "train")
    if args.resume:
        config = resume_config(args)
    else:
        _check_names(args.task or DEFAULT_TASK, [args.model] if args.model else [])
        config = _config(args, model=args.model, out=args.out)
    if args.print_config:
        print_config(args, "train", config)
        return 0
    result = train(config, callbacks=callbacks_of(args))
    if not is_main_process():  # under torchrun only rank 0 prints
        return 130 if result.interrupted else 0
    if wants_json(args):
        print_json(asdict(result))  # what final.json holds
    if result.interrupted:
        if shows_text(args):
            print(
                f"\nstopped at step {result.steps}; continue with: rnnkit train --resume "
                f"--out {result.out}"
            )
        return 130
    if shows_text(args):
        _print_result(result)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Run ``rnnkit compare`` (see :func:`rnnkit.tasks.compare.compare`)."""
    from rnnkit.tasks.compare import compare_command

    return compare_command(args)


__all__ = [
    "COMPARE_HELP",
    "TRAIN_HELP",
    "configure_compare",
    "configure_train",
    "run_compare",
    "run_train",
]
