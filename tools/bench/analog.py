"""Benchmark analog (crossbar-simulated) inference of an LSTM layer against the digital layer.

One table per run; every ratio compares timings taken in this process, interleaved round-robin
(best of ``--reps``), so machine load hits every candidate alike. Rows:

- ``digital (reference)``: the ``reference`` backend (autograd loop over ``Cell.recur``).
- ``digital (auto)``: whatever ``backend="auto"`` picks for the plain cell (fused/torch).
- ``analog ideal``: noise-free crossbar, 8-bit NL-ADCs.
- ``analog pcm``: PCM devices, 7-bit DAC, 9-bit ADC, 5-bit NL-ADCs, read and output noise.

``x ref`` is ``t_reference / t`` (above 1: faster than the reference loop); ``/ref`` is its
inverse, the slowdown the issue's target (at most 3x the digital time) is about. The output
error of each analog run is its relative RMS against the float64 reference.

Usage::

    python tools/bench/analog.py [--quick] [--threads 1] [--reps 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.core.cells import LSTM
from rnnkit.kernels.analog import AnalogConfig, to_analog


def _time(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, I, H = (8, 64, 64, 128) if args.quick else (16, 256, 128, 256)  # noqa: E741
    torch.manual_seed(0)
    cell = LSTM(I, H).eval()
    x = torch.randn(B, T, I)
    with torch.no_grad():
        exact, _ = cell.double()(x.double(), backend="reference")
        cell.float()
    cands: dict[str, Callable[[], Tensor]] = {
        "digital (reference)": lambda: cell(x, backend="reference")[0],
        "digital (auto)": lambda: cell(x)[0],
    }
    for name, cfg in (
        ("analog ideal", AnalogConfig.ideal(nl_bits=8)),
        ("analog pcm", AnalogConfig.pcm()),
    ):
        acell = to_analog(cell, cfg).eval()
        cands[name] = lambda acell=acell: acell(x)[0]  # type: ignore[misc]
    best = dict.fromkeys(cands, float("inf"))
    errs: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in cands.items():  # warm-up, and program the tiles
            y = fn()
            errs[name] = float(
                (y.double() - exact).square().mean().sqrt() / exact.square().mean().sqrt()
            )
        for _ in range(args.reps):
            for name, fn in cands.items():
                best[name] = min(best[name], _time(fn))
    ref = best["digital (reference)"]
    print(f"LSTM B={B} T={T} I={I} H={H}, CPU fp32, {args.threads} threads, best of {args.reps}")
    print(f"{'candidate':<22} {'ms':>9} {'x ref':>7} {'/ref':>6} {'rel RMS err':>12}")
    for name, t in best.items():
        print(f"{name:<22} {t * 1e3:>9.1f} {ref / t:>7.2f} {t / ref:>6.2f} {errs[name]:>12.2e}")


if __name__ == "__main__":
    main()
