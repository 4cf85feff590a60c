"""``rnnkit analog kws``, ``charlm`` and ``drift``: the task experiments on crossbars.

``rnnkit analog`` belongs to rnnkit-kernels (the simulator and its ``adc-error`` and ``cost``
subcommands); rnnkit-tasks adds these three with :func:`register`, which its
``rnnkit_register_commands`` hook calls when rnnkit-kernels is installed. Like every
``rnnkit analog`` subcommand they take ``-q/--quiet`` and ``--json`` (the content of
``rows.json``); the trainer's messages go to stderr through :mod:`logging`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnkit.core.output import add_output_options, shows_text

__all__ = [
    "DRIFT_HELP",
    "EXPERIMENTS",
    "Experiment",
    "configure",
    "configure_drift",
    "register",
    "run",
    "run_drift",
]

#: ``rnnkit analog drift``'s one-line help.
DRIFT_HELP = "accuracy over time (1 s to 1 year) of kws and charlm LSTMs on drifting PCM"
#: the quick settings of ``rnnkit analog drift`` (its --help epilog; timed in docs/analog.md).
DRIFT_QUICK = "--tasks charlm --steps 60 --finetune-steps 10 --noise-seeds 2 --eval-examples 64"


@dataclass(frozen=True)
class Experiment:
    """One ``rnnkit analog NAME`` experiment and its defaults."""

    name: str
    help: str
    task: str  # default --task
    metric: str  # reported test metric
    steps: int
    finetune_steps: int
    batch_size: int
    quick: str  # the options of a quick check (--help's epilog; timed in docs/analog.md)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "kws",
            "keyword-spotting accuracy: digital vs PCM crossbars with NL-ADCs",
            task="kws",
            metric="accuracy",
            steps=400,
            finetune_steps=100,
            batch_size=64,
            quick="--steps 200 --select-every 50 --finetune-steps 20 --bits 3 5 --noise-seeds 2",
        ),
        Experiment(
            "charlm",
            "charlm BPC: digital vs PCM crossbars with NL-ADCs",
            task="charlm",
            metric="bpc",
            steps=400,
            finetune_steps=60,
            batch_size=32,
            quick="--steps 200 --select-every 50 --finetune-steps 20 --bits 3 5 --noise-seeds 2",
        ),
    )
}


def configure(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the options of experiment ``name`` (``"kws"`` or ``"charlm"``) to ``parser``."""
    exp = EXPERIMENTS[name]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        f"{exp.help}. The task's LSTM is trained digitally by rnnkit's trainer, mapped to "
        "simulated crossbars (rnnkit-kernels) and scored per NL-ADC width and noise seed, as "
        "trained and after hardware-aware fine-tuning. See docs/analog.md."
    )
    parser.epilog = (
        "quick check (a minute or less on 2 CPU cores; the first kws run also synthesises its "
        f"clips):\n  rnnkit analog {name} {exp.quick}"
    )
    parser.add_argument("--task", default=exp.task, help=f"a task with a {exp.metric} metric")
    parser.add_argument("--steps", type=int, default=exp.steps, help="digital training steps")
    parser.add_argument(
        "--finetune-steps", type=int, default=exp.finetune_steps, help="HW-aware steps per config"
    )
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 8])
    parser.add_argument("--noise-seeds", type=int, default=3, help="programming-noise seeds")
    parser.add_argument("--batch-size", type=int, default=exp.batch_size)
    parser.add_argument("--lr", type=float, default=5e-3, help="digital learning rate")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="HW-aware learning rate")
    parser.add_argument("--hidden-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--eval-examples", type=int, default=None, help="test examples (all)")
    parser.add_argument(
        "--select-every",
        type=int,
        default=0,
        help="keep the digital checkpoint with the best validation score, scored every N "
        "steps (0: the last one)",
    )
    parser.add_argument("--preset", default="pcm", choices=["pcm", "reram", "ideal"])
    parser.add_argument("--t-inference", type=float, default=0.0, help="seconds of drift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default=f"analog_{name}.png",
        help=f"PNG file name inside --out, or a path (default analog_{name}.png; '' for none)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="the experiment's folder: rows.json, the PNG and the trainer's run directories "
        f"(metrics.jsonl, final.json) (default: a new runs/analog-{name}-<time>)",
    )
    add_output_options(parser)


@contextlib.contextmanager
def _removed_if_left_empty(folder: Path, *, existed: bool) -> Iterator[None]:
    """Remove ``folder`` when the block fails before writing anything into it and the
    command created it (an argument refused before any training leaves no empty folder)."""
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse bad values of the options ``kws``, ``charlm`` and ``drift`` share by their flags'
    names, before any training or folder (the library checks some of them only after training,
    and by their keyword names)."""
    from rnnkit.kernels.analog.cli import check_bits, check_flag, check_rate

    check_flag("--steps", args.steps, args.steps >= 1, "a positive integer")
    check_rate("--lr", args.lr)
    check_rate("--finetune-lr", args.finetune_lr)
    need = "a whole number >= 0"
    check_flag("--finetune-steps", args.finetune_steps, args.finetune_steps >= 0, need)
    check_flag("--noise-seeds", args.noise_seeds, args.noise_seeds >= 1, "a positive integer")
    check_bits("--bits", args.bits)
    for flag, value in (
        ("--hidden-size", args.hidden_size),
        ("--eval-examples", args.eval_examples),
    ):
        check_flag(flag, value, value is None or value >= 1, "a positive integer")


def run(args: argparse.Namespace) -> int:
    """Run ``rnnkit analog kws`` or ``charlm``: print the table, write the plot."""
    from rnnkit.kernels.analog.cli import (
        check_flag,
        check_times,
        output_dir,
        plot_path,
        report_plot,
        report_rows,
        write_rows,
    )
    from rnnkit.tasks.analog.experiments import format_charlm, format_kws, hw_rows, plot_hw

    exp = EXPERIMENTS[args.analog_command]
    _check_flags(args)
    check_times("--t-inference", args.t_inference)
    need = "a whole number >= 0 (0: the last checkpoint)"
    check_flag("--select-every", args.select_every, args.select_every >= 0, need)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [1000 * args.seed + k + 1 for k in range(args.noise_seeds)]
    folder_existed = args.out is not None and Path(args.out).exists()
    folder = output_dir(args.out, args.analog_command)
    with _removed_if_left_empty(folder, existed=folder_existed):
        rows = hw_rows(
            args.task,
            metric=exp.metric,
            steps=args.steps,
            finetune_steps=args.finetune_steps,
            bits=list(args.bits),
            noise_seeds=seeds,
            batch_size=args.batch_size,
            lr=args.lr,
            finetune_lr=args.finetune_lr,
            preset=args.preset,
            t_inference=args.t_inference,
            hidden_size=args.hidden_size,
            eval_examples=args.eval_examples,
            select_every=args.select_every,
            seed=args.seed,
            out=folder,
        )
    valid = rows[0].get("valid")
    picked = "" if valid is None else f", best-valid checkpoint (valid {float(valid):.3f})"
    text = shows_text(args)
    if text:
        print(
            f"{args.task} LSTM, {args.steps} digital steps{picked}, {args.finetune_steps} "
            f"HW-aware steps per config, batch {args.batch_size}, {args.preset} devices, "
            f"t = {args.t_inference:g} s, seed {args.seed}, {len(seeds)} noise seeds "
            f"({time.perf_counter() - t0:.0f} s)"
        )
    if exp.metric == "accuracy":
        table = format_kws(rows)
        label, scale = "test accuracy (%)", 100.0
    else:
        table = format_charlm(rows)
        label, scale = "test BPC", 1.0
    if text:
        print(table)
    skip = ("plot", "command", "out", "quiet", "json")
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    settings["seconds"] = round(time.perf_counter() - t0, 1)
    report_rows(args, write_rows(folder, exp.name, settings, rows))
    if text:
        print(f"run directories in {folder}")
    png = plot_path(folder, args.plot)
    if png is not None:
        title = f"{args.task}: digital vs {args.preset} crossbars (t = {args.t_inference:g} s)"
        report_plot(args, png, plot_hw(rows, str(png), label, scale=scale, title=title))
    return 0


def configure_drift(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rnnkit analog drift`` to ``parser``."""
    from rnnkit.tasks.analog.drift import TIMES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        f"{DRIFT_HELP}. Each task's LSTM is trained digitally (and fine-tuned hardware-aware) "
        "by rnnkit's trainer, programmed on crossbars once per noise seed and scored at every "
        "time after programming, with and without global drift compensation. Writes a run "
        "folder (rows.json, drift.md, one PNG per task). See docs/analog.md."
    )
    parser.epilog = (
        f"quick check (about a minute on 2 CPU cores):\n  rnnkit analog drift {DRIFT_QUICK}"
    )
    parser.add_argument("--tasks", nargs="+", default=["kws", "charlm"], help="tasks to run")
    parser.add_argument("--steps", type=int, default=300, help="digital training steps")
    parser.add_argument("--finetune-steps", type=int, default=40, help="HW-aware steps (0: none)")
    parser.add_argument("--noise-seeds", type=int, default=3, help="programming-noise seeds")
    parser.add_argument(
        "--times", type=float, nargs="+", default=list(TIMES), help="seconds after programming"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="digital learning rate")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="HW-aware learning rate")
    parser.add_argument("--hidden-size", type=int, default=None, help="default: the task's")
    parser.add_argument("--eval-examples", type=int, default=256, help="test examples scored")
    parser.add_argument("--preset", default="pcm", choices=["pcm", "reram", "ideal"])
    parser.add_argument("--bits", type=int, default=5, help="NL-ADC bits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=None,
        help="the run folder: rows.json, drift.md and a PNG per task (default: a new "
        "runs/analog-drift-<time>)",
    )
    add_output_options(parser)


def run_drift(args: argparse.Namespace) -> int:
    """Run ``rnnkit analog drift``: print the tables, write the run folder."""
    from rnnkit.kernels.analog.cli import check_times, output_dir, report_rows
    from rnnkit.tasks.analog.drift import drift_rows, format_drift, write_run

    _check_flags(args)
    check_times("--times", args.times)
    folder = output_dir(args.out, "drift")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [1000 * args.seed + k + 1 for k in range(args.noise_seeds)]
    results = []
    for task in args.tasks:
        result = drift_rows(
            task,
            steps=args.steps,
            finetune_steps=args.finetune_steps,
            noise_seeds=seeds,
            times=list(args.times),
            batch_size=args.batch_size,
            lr=args.lr,
            finetune_lr=args.finetune_lr,
            preset=args.preset,
            nl_bits=args.bits,
            hidden_size=args.hidden_size,
            eval_examples=args.eval_examples,
            seed=args.seed,
            out=folder,
        )
        results.append(result)
        if shows_text(args):
            print(format_drift(result))
            print()
    skip = ("quiet", "json")
    settings = {
        k: v
        for k, v in vars(args).items()
        if isinstance(v, (int, float, str, list)) and not isinstance(v, bool) and k not in skip
    }
    settings["out"] = str(folder)
    settings["seconds"] = round(time.perf_counter() - t0, 1)
    paths = write_run(results, folder, settings)
    if shows_text(args):
        print(
            f"{len(args.tasks)} task(s) in {settings['seconds']:.0f} s; wrote "
            + ", ".join(str(p) for p in paths)
        )
    else:
        report_rows(args, paths[0])
    return 0


def register(register_experiment: Callable[..., None]) -> None:
    """Add every experiment of :data:`EXPERIMENTS` and ``drift`` through
    ``register_experiment`` (the signature of
    :func:`rnnkit.kernels.analog.cli.register_experiment`)."""
    for name, exp in EXPERIMENTS.items():
        register_experiment(
            name,
            help=exp.help,
            configure=functools.partial(configure, name=name),
            run=run,
        )
    register_experiment("drift", help=DRIFT_HELP, configure=configure_drift, run=run_drift)
