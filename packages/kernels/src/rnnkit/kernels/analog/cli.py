"""``rnnkit analog``: experiments of the analog simulator.

- ``rnnkit analog adc-error``: NL-ADC approximation error of sigmoid and tanh against bits and
  device programming noise, with INL/DNL; prints a table, writes a PNG if matplotlib is there.
- ``rnnkit analog cost``: the cost model's motivation figure and bit-width comparison.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rnnkit.kernels.analog.devices import device_preset
from rnnkit.kernels.analog.ramp_adc import RampADC

__all__ = ["adc_error_rows", "configure", "run"]


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
    print("usage: rnnkit analog {adc-error,cost} [options]", file=sys.stderr)
    return 2
