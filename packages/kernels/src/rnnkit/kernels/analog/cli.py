"""``rnnkit analog``: experiments of the analog simulator.

- ``rnnkit analog adc-error``: NL-ADC approximation error of sigmoid and tanh against bits and
  device programming noise, with INL/DNL; prints a table, writes a PNG if matplotlib is there.
- ``rnnkit analog cost``: the cost model's motivation figure and bit-width comparison.
- ``rnnkit analog kws`` and ``rnnkit analog charlm``: the ``kws`` (accuracy) and ``charlm``
  (BPC) tasks' LSTMs trained digitally, then scored on PCM-like crossbars with 3/4/5/8-bit
  NL-ADCs over several programming-noise seeds, without and with hardware-aware fine-tuning
  (:mod:`~rnnkit.kernels.analog.experiments`; needs ``rnnkit-tasks``, imported only when the
  command runs); each prints a table and writes a plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from rnnkit.kernels.analog.devices import device_preset
from rnnkit.kernels.analog.experiments import format_hw, hw_rows, plot_hw
from rnnkit.kernels.analog.ramp_adc import RampADC

__all__ = [
    "adc_error_rows",
    "charlm_rows",
    "configure",
    "format_charlm",
    "format_kws",
    "kws_rows",
    "run",
]


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
) -> list[dict[str, Any]]:
    """Experiment (c): ``charlm`` test BPC, digital vs crossbars with 3/4/5/8-bit NL-ADCs, as
    trained and hardware-aware fine-tuned, over ``noise_seeds`` (default ``[seed + 1]``).

    ``task`` may name another character-LM task with a ``bpc`` metric. The protocol and the
    rows are those of :func:`~rnnkit.kernels.analog.experiments.hw_rows`.
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
) -> list[dict[str, Any]]:
    """Experiment (b): ``kws`` (keyword spotting, LSTM 64 with mean pooling) test accuracy,
    digital vs crossbars with 3/4/5/8-bit NL-ADCs, as trained and hardware-aware fine-tuned,
    over ``noise_seeds`` (default ``[seed + 1]``).

    The protocol and the rows are those of :func:`~rnnkit.kernels.analog.experiments.hw_rows`.
    """
    return hw_rows(
        "kws",
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
    )


def format_charlm(rows: list[dict[str, Any]]) -> str:
    """The ``charlm`` table as Markdown (BPC, 3 decimals)."""
    return format_hw(rows, "BPC", digits=3)


def format_kws(rows: list[dict[str, Any]]) -> str:
    """The ``kws`` table as Markdown (accuracy in %, 2 decimals)."""
    return format_hw(rows, "accuracy %", scale=100.0, digits=2)


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
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"NL-ADC {fn}")
        ax.set_xlabel("bits")
    axes[0].set_ylabel("error (output LSB)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``adc-error`` and ``cost`` subcommands."""
    sub = parser.add_subparsers(dest="analog_command", metavar="EXPERIMENT")
    p = sub.add_parser("adc-error", help="NL-ADC sigmoid/tanh error vs bits and device noise")
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    p.add_argument("--devices", nargs="+", default=["ideal", "pcm", "reram"])
    p.add_argument("--columns", type=int, default=64, help="columns programmed per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="adc_error.png", help="PNG path ('' for none)")
    c = sub.add_parser("cost", help="latency/energy/area: NL-ADC vs conventional ADC + digital NL")
    c.add_argument("--hidden", type=int, default=512)
    for name, help_, steps, ft, batch in (
        ("kws", "keyword-spotting accuracy: digital vs PCM crossbars with NL-ADCs", 400, 100, 64),
        ("charlm", "charlm BPC: digital vs PCM crossbars with NL-ADCs", 400, 60, 32),
    ):
        e = sub.add_parser(name, help=help_)
        e.add_argument("--steps", type=int, default=steps, help="digital training steps")
        e.add_argument("--finetune-steps", type=int, default=ft, help="HW-aware steps per config")
        e.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 8])
        e.add_argument("--noise-seeds", type=int, default=3, help="programming-noise seeds")
        e.add_argument("--batch-size", type=int, default=batch)
        e.add_argument("--lr", type=float, default=5e-3, help="digital learning rate")
        e.add_argument("--finetune-lr", type=float, default=1e-3, help="HW-aware learning rate")
        e.add_argument("--hidden-size", type=int, default=None, help="default: the task's")
        e.add_argument("--eval-examples", type=int, default=None, help="test examples (all)")
        e.add_argument(
            "--select-every",
            type=int,
            default=0,
            help="keep the digital checkpoint with the best validation score, scored every N "
            "steps (0: the last one)",
        )
        e.add_argument("--preset", default="pcm", choices=["pcm", "reram", "ideal"])
        e.add_argument("--t-inference", type=float, default=0.0, help="seconds of drift")
        e.add_argument("--seed", type=int, default=0)
        e.add_argument("--plot", default=f"analog_{name}.png", help="PNG path ('' for none)")
        if name == "charlm":
            e.add_argument("--task", default="charlm", help="a character-LM task (metric bpc)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiment; returns the exit status."""
    cmd = getattr(args, "analog_command", None)
    if cmd == "adc-error":
        rows = adc_error_rows(list(args.bits), list(args.devices), args.columns, args.seed)
        print(format_rows(rows))
        if args.plot:
            if _plot(rows, args.plot):
                print(f"plot written to {args.plot}")
            else:
                print("matplotlib is not installed: no plot written", file=sys.stderr)
        return 0
    if cmd == "cost":
        from rnnkit.kernels.analog.cost import comparison_table, motivation

        print(f"LSTM H={args.hidden}, k=32 digital NL units, 8-bit MAC ADC (256 cycles):")
        for cyc, ratio in motivation(args.hidden):
            print(f"  {cyc:>2} cycles per digital activation -> NL time = {ratio:.2f}x MAC time")
        print()
        print(comparison_table(args.hidden))
        return 0
    if cmd in ("kws", "charlm"):
        return _run_task(cmd, args)
    print("usage: rnnkit analog {adc-error,cost,kws,charlm} [options]", file=sys.stderr)
    return 2


def _run_task(cmd: str, args: argparse.Namespace) -> int:
    """``rnnkit analog kws`` / ``charlm``: run, print the table, write the plot."""
    if args.noise_seeds < 1:
        print("--noise-seeds must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [1000 * args.seed + k + 1 for k in range(args.noise_seeds)]
    extra = {"task": args.task} if cmd == "charlm" else {}
    make = kws_rows if cmd == "kws" else charlm_rows
    rows = make(
        **extra,
        steps=args.steps,
        finetune_steps=args.finetune_steps,
        bits=list(args.bits),
        noise_seeds=seeds,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        hidden_size=args.hidden_size,
        eval_examples=args.eval_examples,
        select_every=args.select_every,
        preset=args.preset,
        t_inference=args.t_inference,
        seed=args.seed,
    )
    valid = rows[0].get("valid")
    picked = "" if valid is None else f", best-valid checkpoint (valid {float(valid):.3f})"
    name = extra.get("task", cmd)
    print(
        f"{name} LSTM, {args.steps} digital steps{picked}, {args.finetune_steps} HW-aware steps "
        f"per config, batch {args.batch_size}, {args.preset} devices, t = {args.t_inference:g} s, "
        f"seed {args.seed}, {len(seeds)} noise seeds ({time.perf_counter() - t0:.0f} s)"
    )
    if cmd == "kws":
        print(format_kws(rows))
        label, scale = "test accuracy (%)", 100.0
    else:
        print(format_charlm(rows))
        label, scale = "test BPC", 1.0
    if args.plot:
        if plot_hw(rows, args.plot, label, scale=scale):
            print(f"plot written to {args.plot}")
        else:
            print("matplotlib is not installed: no plot written", file=sys.stderr)
    return 0
