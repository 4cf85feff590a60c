"""``rnnkit analog``: experiments of the analog simulator.

- ``rnnkit analog adc-error``: NL-ADC approximation error of sigmoid and tanh against bits and
  device programming noise, with INL/DNL; prints a table, writes a PNG if matplotlib is there.
- ``rnnkit analog cost``: the cost model's motivation figure and bit-width comparison.
- ``rnnkit analog charlm``: the ``charlm`` task's LSTM trained digitally, then scored (BPC) on
  PCM-like crossbars with 3/4/5/8-bit NL-ADCs, without and with hardware-aware fine-tuning
  (needs ``rnnkit-tasks``, imported only inside the command).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch import nn

from rnnkit.kernels.analog.config import AnalogConfig
from rnnkit.kernels.analog.devices import device_preset
from rnnkit.kernels.analog.ramp_adc import RampADC

__all__ = ["adc_error_rows", "charlm_rows", "configure", "format_charlm", "run"]


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


def _tasks() -> Any:
    try:
        import rnnkit.tasks as tasks
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "rnnkit analog charlm needs the rnnkit-tasks package (pip install rnnkit-tasks, or "
            f"the monorepo's packages/tasks): {exc}"
        ) from exc
    return tasks


def _fit(
    task: Any, model: nn.Module, train: Any, steps: int, batch: int, lr: float, seed: int
) -> None:
    """``steps`` AdamW steps on random ``batch``-example batches of ``train`` (clip 1.0)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    n = train.inputs.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        out = model(train.inputs[idx])
        s, c = task.loss(out, train.targets[idx])
        opt.zero_grad()
        (s / c).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def charlm_rows(
    *,
    steps: int = 400,
    finetune_steps: int = 60,
    bits: list[int] | None = None,
    batch_size: int = 32,
    lr: float = 5e-3,
    finetune_lr: float = 1e-3,
    hidden_size: int | None = None,
    eval_examples: int | None = None,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Experiment (c): ``charlm`` BPC, digital vs PCM-like crossbars with NL-ADCs.

    The task's default LSTM is trained digitally (``steps`` x ``batch_size``). For every NL-ADC
    resolution in ``bits`` the trained model is mapped with ``AnalogConfig.pcm(nl_bits=n)``
    (PCM programming and read noise, 7-bit DAC, 9-bit ADC) and scored on the test split (a)
    as is and (b) after ``finetune_steps`` of hardware-aware fine-tuning (a fresh programming-
    noise sample every forward, straight-through DAC/ADC/NL-ADC quantisation), then programmed
    again with the evaluation seed. Rows: ``config``, ``bpc``, ``delta`` (vs digital).
    """
    from rnnkit.kernels.analog.cells import to_analog

    tasks = _tasks()
    from rnnkit.tasks.trainer import evaluate

    bits = bits or [3, 4, 5, 8]
    torch.manual_seed(seed)
    task = tasks.get_task("charlm")
    data = task.data(seed=seed)
    info = data.info
    test = data.test
    if eval_examples is not None:
        test = type(test)(test.inputs[:eval_examples], test.targets[:eval_examples])
    over = {} if hidden_size is None else {"hidden_size": hidden_size}
    model = task.build_model(**over)
    _fit(task, model, data.train, steps, batch_size, lr, seed)
    cpu = torch.device("cpu")

    def bpc(m: nn.Module) -> float:
        return float(evaluate(task, m, test, info, device=cpu)["bpc"])

    digital = bpc(model)
    rows: list[dict[str, object]] = [{"config": "digital", "bpc": digital, "delta": 0.0}]
    for n in bits:
        cfg = AnalogConfig.pcm(nl_bits=n, seed=seed + 1)
        plain = to_analog(model, cfg)
        v = bpc(plain)
        rows.append({"config": f"pcm {n}-bit NL-ADC", "bpc": v, "delta": v - digital})
        tuned = to_analog(model, cfg)
        _fit(task, tuned, data.train, finetune_steps, batch_size, finetune_lr, seed + 2)
        v = bpc(tuned)
        rows.append({"config": f"pcm {n}-bit NL-ADC + HW-aware", "bpc": v, "delta": v - digital})
    return rows


def format_charlm(rows: list[dict[str, object]]) -> str:
    """The ``charlm`` table as Markdown."""
    out = ["| config | BPC | delta vs digital |", "|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['config']} | {float(str(r['bpc'])):.3f} | {float(str(r['delta'])):+.3f} |"
        )
    return "\n".join(out)


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
    e = sub.add_parser("charlm", help="charlm BPC: digital vs PCM crossbars with NL-ADCs")
    e.add_argument("--steps", type=int, default=400, help="digital training steps")
    e.add_argument("--finetune-steps", type=int, default=60, help="HW-aware steps per config")
    e.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 8])
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--hidden-size", type=int, default=None, help="default: the task's (128)")
    e.add_argument("--eval-examples", type=int, default=None, help="test examples (all)")
    e.add_argument("--seed", type=int, default=0)


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
    if cmd == "charlm":
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        rows = charlm_rows(
            steps=args.steps,
            finetune_steps=args.finetune_steps,
            bits=list(args.bits),
            batch_size=args.batch_size,
            hidden_size=args.hidden_size,
            eval_examples=args.eval_examples,
            seed=args.seed,
        )
        print(
            f"charlm LSTM, {args.steps} digital steps, {args.finetune_steps} HW-aware steps per "
            f"config, batch {args.batch_size}, seed {args.seed} ({time.perf_counter() - t0:.0f} s)"
        )
        print(format_charlm(rows))
        return 0
    print("usage: rnnkit analog {adc-error,cost,charlm} [options]", file=sys.stderr)
    return 2
