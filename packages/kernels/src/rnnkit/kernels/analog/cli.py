"""``rnnkit analog``: experiments of the analog simulator.

- ``rnnkit analog adc-error``: NL-ADC approximation error of sigmoid and tanh against bits and
  device programming noise, with INL/DNL; prints a table, writes a PNG if matplotlib is there.
- ``rnnkit analog cost``: the cost model's motivation figure and bit-width comparison.
- ``rnnkit analog ramp-drift``: NL-ADC error (LSB) over time as the ramp devices drift, with and
  without recalibration.
- ``rnnkit analog kws``, ``charlm`` and ``drift``: task experiments (a trained LSTM scored on
  crossbars, ``drift`` over time). They train models, so they live in ``rnnkit-tasks``
  (:mod:`rnnkit.tasks.analog`), which adds them here through :func:`register_experiment` from
  its ``rnnkit_register_commands`` hook. Without ``rnnkit-tasks`` the names still parse and
  say what to install (:data:`TASK_EXPERIMENTS`).

The extension point: another distribution adds ``rnnkit analog NAME`` by calling
:func:`register_experiment` (typically from its own ``rnnkit_register_commands`` hook, which
the plugin host runs before the command line is built). This package imports nothing of it.

Every subcommand writes into its folder, ``--out DIR`` (default ``runs/analog-<name>-<time>``):
``rows.json`` (the numbers of the table it prints, with its settings) and its PNG
(``--plot NAME``, inside the folder unless a path with a directory is given; ``''`` for none).
Nothing is written to the current folder. Every subcommand takes ``-q/--quiet`` (print
nothing but errors) and ``--json`` (print the content of ``rows.json`` and nothing else on
stdout), as the other ``rnnkit`` commands do (:mod:`rnnkit.core.output`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rnnkit.core.output import add_output_options, is_quiet, print_json, shows_text, wants_json
from rnnkit.kernels.analog.devices import device_preset
from rnnkit.kernels.analog.ramp_adc import MAX_BITS, MIN_BITS, RampADC

__all__ = [
    "TASK_EXPERIMENTS",
    "AnalogExperiment",
    "adc_error_rows",
    "check_bits",
    "check_flag",
    "check_rate",
    "check_times",
    "configure",
    "experiments",
    "format_ramp_drift",
    "format_rows",
    "output_dir",
    "ramp_drift_rows",
    "register_experiment",
    "report_rows",
    "run",
    "write_rows",
]


@dataclass(frozen=True)
class AnalogExperiment:
    """An ``rnnkit analog NAME`` subcommand contributed by another distribution.

    ``configure(parser)`` adds its arguments to the subcommand's parser; ``run(args)`` runs it
    and returns the exit status (the same contract as a top-level command).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: The experiments registered so far in this process, by name.
_EXPERIMENTS: dict[str, AnalogExperiment] = {}

#: The subcommands ``rnnkit-tasks`` provides, with their help: without it they stay on the
#: command line and explain what to install instead of failing as unknown choices.
TASK_EXPERIMENTS: dict[str, str] = {
    "kws": "keyword-spotting accuracy: digital vs PCM crossbars with NL-ADCs",
    "charlm": "charlm BPC: digital vs PCM crossbars with NL-ADCs",
    "drift": "accuracy over time (1 s to 1 year) of kws and charlm LSTMs on drifting PCM",
}

#: The subcommands of this package itself; an experiment cannot take these names.
BUILTIN: tuple[str, ...] = ("adc-error", "cost", "ramp-drift")

#: the times of ``ramp-drift`` (seconds after programming): 1 s, 1 h, 1 day, 1 month, 1 year.
RAMP_TIMES: tuple[float, ...] = (1.0, 3600.0, 86400.0, 30 * 86400.0, 365 * 86400.0)


def register_experiment(
    name: str,
    *,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add (or replace, by name) the subcommand ``rnnkit analog NAME``.

    Replacing keeps registration idempotent: every plugin host built in a process (tests build
    several) runs the registering hook again.

    Raises:
        ValueError: if ``name`` is empty, has spaces, or is one of :data:`BUILTIN`.
    """
    if not name or name != name.strip() or " " in name or name.startswith("-"):
        raise ValueError(f"analog experiment name must be one word, got {name!r}")
    if name in BUILTIN:
        raise ValueError(f"rnnkit analog {name} is built in; choose another experiment name")
    _EXPERIMENTS[name] = AnalogExperiment(name, help, configure, run)


def output_dir(out: str | None, name: str) -> Path:
    """The folder of ``rnnkit analog NAME``: ``out``, or a new ``runs/analog-<name>-<time>``
    (``-2``, ``-3``, ... appended when taken); created."""
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path("runs") / f"analog-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{base} and 9998 numbered variants exist; choose --out")


def plot_path(folder: Path, plot: str) -> Path | None:
    """Where ``--plot`` puts the PNG: ``None`` for ``''``; a bare file name goes into
    ``folder``, a path with a directory is taken as it is."""
    if not plot:
        return None
    path = Path(plot)
    return path if path.is_absolute() or path.parent != Path(".") else folder / path


def write_rows(folder: Path, experiment: str, settings: dict[str, Any], rows: Any) -> Path:
    """Write ``folder/rows.json``: ``{"experiment", "settings", "rows"}``; its path."""
    path = folder / "rows.json"
    data = {"experiment": experiment, "settings": settings, "rows": rows}
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def report_rows(args: argparse.Namespace, path: Path) -> None:
    """Say where ``rows.json`` went, or with ``--json`` print its content (the command's one
    JSON document); nothing with ``--quiet``."""
    if wants_json(args):
        print_json(json.loads(path.read_text()))
    elif not is_quiet(args):
        print(f"rows written to {path}")


def report_plot(args: argparse.Namespace, png: Path, written: bool) -> None:
    """Say whether the PNG was written (the missing matplotlib on stderr, unless
    ``--quiet``)."""
    if not written:
        if not is_quiet(args):
            print("matplotlib is not installed: no plot written", file=sys.stderr)
    elif shows_text(args):
        print(f"plot written to {png}")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "analog_command", "out", "plot", "quiet", "json"}
    return {
        k: v
        for k, v in vars(args).items()
        if k not in skip and isinstance(v, int | float | str | list | type(None))
    }


def _add_out(p: argparse.ArgumentParser, name: str, png: str | None) -> None:
    p.add_argument(
        "--out",
        default=None,
        help=f"folder for rows.json{' and the PNG' if png else ''} "
        f"(default: a new runs/analog-{name}-<time>)",
    )
    if png:
        p.add_argument(
            "--plot",
            default=png,
            help=f"PNG file name inside --out, or a path (default {png}; '' for none)",
        )
    add_output_options(p)


def experiments() -> dict[str, AnalogExperiment]:
    """The registered experiments by name (a copy)."""
    return dict(_EXPERIMENTS)


def adc_error_rows(
    bits: list[int], devices: list[str], columns: int = 64, seed: int = 0
) -> list[dict[str, object]]:
    """One row per (function, device, bits): max/rms error and worst INL/DNL, in LSB, over
    ``columns`` independently programmed columns (bias calibration on)."""
    rows: list[dict[str, object]] = []
    for fn in ("sigmoid", "tanh"):
        for dev_name in devices:
            dev = device_preset(dev_name)
            for n in bits:
                gen = torch.Generator().manual_seed(seed)
                adc = RampADC(fn, n, columns, device=dev, generator=gen)
                rows.append({"fn": fn, "device": dev_name, "bits": n, **adc.error()})
    return rows


def ramp_drift_rows(
    times: list[float],
    *,
    fn: str = "sigmoid",
    bits: int = 5,
    device: str = "pcm",
    columns: int = 64,
    period: float = 86400.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """NL-ADC error over time as its ramp and bias devices drift (one bank of ``columns``,
    programmed with bias calibration at ``t = 0``; the same programming at every time).

    Per time ``t``: ``none`` (never recalibrated), ``fresh`` (recalibrated at ``t``: just after
    a recalibration) and ``periodic`` (recalibrated at ``t - period``, the worst case of a
    recalibration every ``period`` seconds; equal to ``none`` while ``t < period``), each the
    ``max`` and ``rms`` error in output LSB of :meth:`RampADC.error`.
    """

    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"period must be a finite number of seconds > 0, got {period!r}")

    def adc_at(t: float, cal: float | None) -> RampADC:
        gen = torch.Generator().manual_seed(seed)
        adc = RampADC(fn, bits, columns, device=device_preset(device), generator=gen)
        if cal is not None:
            adc.set_time(cal)
            adc.recalibrate()
        adc.set_time(t)
        return adc

    rows: list[dict[str, float]] = []
    for t in times:
        row: dict[str, float] = {"t": t}
        cals: dict[str, float | None] = {
            "none": None,
            "fresh": t,
            "periodic": t - period if t >= period else None,
        }
        for name, cal in cals.items():
            err = adc_at(t, cal).error()
            row[f"{name}_max"], row[f"{name}_rms"] = err["max"], err["rms"]
        rows.append(row)
    return rows


def format_ramp_drift(rows: list[dict[str, float]]) -> str:
    """The ``ramp-drift`` table as Markdown (output LSB, max / rms over the bank)."""
    out = [
        "| t (s) | no recalibration | recalibrated at t | recalibrated one period before |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r[k + '_max']:.2f} / {r[k + '_rms']:.2f}" for k in ("none", "fresh", "periodic")
        ]
        out.append(f"| {r['t']:g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _plot_ramp_drift(rows: list[dict[str, float]], path: str, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ts = [r["t"] for r in rows]
    for key, style, label in (
        ("none", "o-", "no recalibration"),
        ("periodic", "s--", "recalibrated one period before"),
        ("fresh", "x:", "recalibrated at t"),
    ):
        ax.plot(ts, [r[key + "_rms"] for r in rows], style, label=label)
    # t = 0 (just programmed) has no place on a log axis: linear below 1 s then
    if min(ts) <= 0:
        ax.set_xscale("symlog", linthresh=1.0)
    else:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("rms error (output LSB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def format_rows(rows: list[dict[str, object]]) -> str:
    """The ``adc-error`` table as text."""
    out = [
        f"{'fn':<8} {'device':<6} {'bits':>4} {'max LSB':>8} {'rms LSB':>8} "
        f"{'|INL|':>7} {'|DNL|':>7}"
    ]
    for r in rows:
        out.append(
            f"{r['fn']!s:<8} {r['device']!s:<6} {r['bits']!s:>4} {float(str(r['max'])):>8.3f} "
            f"{float(str(r['rms'])):>8.3f} {float(str(r['inl'])):>7.3f} "
            f"{float(str(r['dnl'])):>7.3f}"
        )
    return "\n".join(out)


def _plot(rows: list[dict[str, object]], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, fn in zip(axes, ("sigmoid", "tanh"), strict=True):
        for dev in sorted({str(r["device"]) for r in rows}):
            sel = [r for r in rows if r["fn"] == fn and r["device"] == dev]
            ax.plot([r["bits"] for r in sel], [r["max"] for r in sel], "o-", label=f"{dev} max")
            ax.plot([r["bits"] for r in sel], [r["rms"] for r in sel], "x--", label=f"{dev} rms")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="1 LSB")
        ax.set_yscale("log")
        ax.set_title(f"NL-ADC {fn}")
        ax.set_xlabel("bits")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("error (output LSB)")
    fig.suptitle("NL-ADC approximation error by device (max and rms over the columns)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def check_flag(flag: str, value: object, ok: bool, need: str) -> None:
    """Refuse a command-line value by its flag's name (``--hidden-size``), before any work: the
    library's own checks name its keyword arguments (``hidden_size``), which the user never
    typed, and some of them run only after minutes of training."""
    if not ok:
        raise ValueError(f"{flag} must be {need}, got {value}")


def check_bits(flag: str, bits: int | Iterable[int]) -> None:
    """NL-ADC resolutions: whole numbers of bits in the simulator's range
    (``[MIN_BITS, MAX_BITS]`` of :mod:`~rnnkit.kernels.analog.ramp_adc`, which refuses others)."""
    values = [bits] if isinstance(bits, int) else list(bits)
    shown = bits if isinstance(bits, int) else values
    ok = all(MIN_BITS <= b <= MAX_BITS for b in values)
    check_flag(flag, shown, ok, f"whole numbers of bits in [{MIN_BITS}, {MAX_BITS}]")


def check_times(flag: str, times: float | Iterable[float]) -> None:
    """Times after programming: finite seconds ``>= 0`` (the drift laws start at programming)."""
    values = [times] if isinstance(times, (int, float)) else list(times)
    ok = all(math.isfinite(t) and t >= 0 for t in values)
    shown = times if isinstance(times, (int, float)) else values
    check_flag(flag, shown, ok, "finite seconds >= 0 since programming")


def check_rate(flag: str, lr: float) -> None:
    """A learning rate: finite and ``>= 0`` (as ``rnnkit train --lr``); a bad one would
    otherwise surface from the optimiser only after the training that comes before it."""
    check_flag(flag, lr, math.isfinite(lr) and lr >= 0, "a finite number >= 0")


def _check_builtin(cmd: str, args: argparse.Namespace) -> None:
    """The flags of ``adc-error``, ``cost`` and ``ramp-drift`` (see :func:`check_flag`)."""
    if cmd == "cost":
        check_flag("--hidden", args.hidden, args.hidden >= 1, "a positive integer")
        return
    check_bits("--bits", args.bits)
    check_flag("--columns", args.columns, args.columns >= 1, "a positive integer")
    if cmd == "ramp-drift":
        check_times("--times", args.times)
        period = args.period
        ok = math.isfinite(period) and period > 0
        check_flag("--period", period, ok, "a finite number of seconds > 0")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``adc-error``, ``cost`` and every registered experiment (see the module docstring)."""
    sub = parser.add_subparsers(dest="analog_command", metavar="EXPERIMENT")
    p = sub.add_parser("adc-error", help="NL-ADC sigmoid/tanh error vs bits and device noise")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    p.add_argument("--devices", nargs="+", default=["ideal", "pcm", "reram"])
    p.add_argument("--columns", type=int, default=64, help="columns programmed per setting")
    p.add_argument("--seed", type=int, default=0)
    _add_out(p, "adc-error", "adc_error.png")
    c = sub.add_parser("cost", help="latency/energy/area: NL-ADC vs conventional ADC + digital NL")
    c.add_argument("--hidden", type=int, default=512)
    _add_out(c, "cost", None)
    r = sub.add_parser(
        "ramp-drift", help="NL-ADC error over time as the ramp drifts, with recalibration"
    )
    r.add_argument("--times", type=float, nargs="+", default=list(RAMP_TIMES))
    r.add_argument("--fn", default="sigmoid", choices=["sigmoid", "tanh"])
    r.add_argument("--bits", type=int, default=5)
    r.add_argument("--device", default="pcm", choices=["ideal", "pcm", "reram"])
    r.add_argument("--columns", type=int, default=64, help="columns programmed")
    r.add_argument("--period", type=float, default=86400.0, help="recalibration period (s)")
    r.add_argument("--seed", type=int, default=0)
    _add_out(r, "ramp-drift", "ramp_drift.png")
    registered = experiments()
    for name in sorted(registered.keys() | TASK_EXPERIMENTS.keys()):
        exp = registered.get(name)
        if exp is not None:
            exp.configure(sub.add_parser(name, help=exp.help, description=exp.help))
            continue
        # Not registered: keep the name and take every argument (--help included) as an
        # opaque word, so that any invocation reaches run(), which says what to install.
        # No argv entry can contain NUL, so with it as the only prefix nothing is an option.
        e = sub.add_parser(
            name,
            help=f"{TASK_EXPERIMENTS[name]} (needs rnnkit-tasks)",
            prefix_chars="\0",
            add_help=False,
        )
        e.add_argument("ignored_arguments", nargs="*")


def _missing_tasks(name: str) -> str:
    """Why ``rnnkit analog NAME`` is not available and what to install."""
    install = (
        "pip install rnnkit-tasks (from a checkout of the rnnkit repository: "
        "pip install -e packages/tasks)"
    )
    what = f"rnnkit analog {name} trains models, which the rnnkit-tasks package provides"
    if importlib.util.find_spec("rnnkit.tasks") is None:
        return f"{what}, and it is not installed: {install}"
    return (
        f"{what}; it is installed but its plugin did not register the experiment (disabled in "
        f"RNNKIT_DISABLE_PLUGINS, or broken: see `rnnkit plugins`); reinstall with {install}"
    )


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment; returns the exit status."""
    cmd = getattr(args, "analog_command", None)
    text = shows_text(args)
    if cmd in BUILTIN:
        _check_builtin(cmd, args)
    if cmd == "adc-error":
        rows = adc_error_rows(list(args.bits), list(args.devices), args.columns, args.seed)
        if text:
            print(format_rows(rows))
        folder = output_dir(args.out, cmd)
        report_rows(args, write_rows(folder, cmd, _settings(args), rows))
        png = plot_path(folder, args.plot)
        if png is not None:
            report_plot(args, png, _plot(rows, str(png)))
        return 0
    if cmd == "ramp-drift":
        rows_t = ramp_drift_rows(
            list(args.times),
            fn=args.fn,
            bits=args.bits,
            device=args.device,
            columns=args.columns,
            period=args.period,
            seed=args.seed,
        )
        if text:
            print(
                f"{args.bits}-bit {args.fn} NL-ADC, {args.columns} {args.device} columns, error "
                f"in output LSB (max / rms), recalibration period {args.period:g} s:"
            )
            print(format_ramp_drift(rows_t))
        folder = output_dir(args.out, cmd)
        report_rows(args, write_rows(folder, cmd, _settings(args), rows_t))
        png = plot_path(folder, args.plot)
        if png is not None:
            title = f"{args.bits}-bit {args.fn} NL-ADC ramp on {args.device}"
            report_plot(args, png, _plot_ramp_drift(rows_t, str(png), title))
        return 0
    if cmd == "cost":
        from rnnkit.kernels.analog.cost import comparison_table, lstm_cost, motivation

        moti = motivation(args.hidden)
        if text:
            print(f"LSTM H={args.hidden}, k=32 digital NL units, 8-bit MAC ADC (256 cycles):")
            for cyc, ratio in moti:
                print(
                    f"  {cyc:>2} cycles per digital activation -> NL time = {ratio:.2f}x MAC time"
                )
            print()
            print(comparison_table(args.hidden))
        folder = output_dir(args.out, cmd)
        rows_c = {
            "motivation": [{"nl_cycles": c, "nl_time_over_mac_time": r} for c, r in moti],
            "comparison": [
                {**asdict(x), "t_ns": x.t_ns, "e_pj": x.e_pj}
                for n in (3, 4, 5, 8)
                for x in (
                    lstm_cost(args.hidden, bits=n, style="nl_adc"),
                    lstm_cost(args.hidden, bits=n, style="conventional"),
                )
            ],
        }
        report_rows(args, write_rows(folder, cmd, _settings(args), rows_c))
        return 0
    exp = experiments().get(cmd) if isinstance(cmd, str) else None
    if exp is not None:
        return exp.run(args)
    if cmd in TASK_EXPERIMENTS:
        print(f"rnnkit analog {cmd}: error: {_missing_tasks(cmd)}", file=sys.stderr)
        return 1
    names = ",".join([*BUILTIN, *sorted(experiments().keys() | TASK_EXPERIMENTS.keys())])
    print(f"usage: rnnkit analog {{{names}}} [options]", file=sys.stderr)
    return 2
