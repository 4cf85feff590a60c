"""Benchmark analog (crossbar-simulated) inference of an LSTM layer against the digital layer.

One table per run; every ratio compares timings taken in this process. Timing is process CPU
time in ``--reps`` rounds; each round runs every candidate once, back to back, so a change of
machine load hits every candidate of that round alike. Two figures per ratio:

- ``best``: best time of the candidate over the rounds divided by the baseline's best time;
- ``med``: the median over rounds of (candidate time / baseline time *in the same round*),
  which follows the load a round saw (the more honest figure on a shared, loaded machine).

**Baselines.** The issue's target is "analog inference of an LSTM layer at most 3x the time of
the digital layer". Two digital times are fair for different questions, so both are reported:

- ``/ref``: against the ``reference`` backend, the generic loop over ``Cell.recur`` (one GEMM
  and the gate math per step, from Python). The analog simulation has the same structure, a
  Python loop of per-step tensor ops, and cannot be anything else: its per-step noise draws
  and converters have no fused whole-sequence kernel. This is the simulator's *overhead*.
- ``/fast``: against the fastest digital backend for inference measured here (the minimum of
  ``fused``, ``torch`` -- oneDNN's whole-sequence LSTM -- and what ``auto`` picks): what a
  user gives up by simulating instead of running the digital layer as fast as rnnkit can.

Rows:

- ``digital (<backend>)``: the plain cell on that backend.
- ``analog ideal``: noise-free crossbar, ideal DAC/ADC, 8-bit NL-ADCs.
- ``analog pcm``: PCM devices, 7-bit DAC, 9-bit ADC, 5-bit NL-ADCs, read and output noise.
- with ``--stepwise``, ``... step-by-step``: the same analog cells on the per-step path that
  training uses (autograd on), for the speed-up of the inference path in the same run.
- with ``--floor``, ``floor: pcm products + draws``: a loop doing only what PCM read noise
  forces on any simulator of this model -- the static products of ``[x, 1]`` and their
  variance, per step the MVM of ``h`` and its variance product, ``B x 4H`` normal draws -- and
  exact digital gates, no converters (random matrices of the tile's shapes). The PCM row
  cannot go below it.

``rel RMS err`` is each output's relative RMS error against the float64 reference.

Usage::

    python tools/bench/analog.py [--quick] [--threads 1] [--reps 9] [--stepwise] [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.core.cells import LSTM
from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.kernels.analog import AnalogConfig, to_analog

DIGITAL = ("reference", "fused", "torch")


def _time(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _digital_backends(cell: LSTM, x: Tensor) -> list[str]:
    """The digital backends of the table that can run ``cell`` on ``x`` here."""
    call = KernelCall(cell, x, None, None, False)
    ok = {k.backend for k in kernels_for(cell) if k.supports(call) is None}
    return [b for b in DIGITAL if b in ok]


def _pcm_floor(x: Tensor, hidden: int) -> Callable[[], Tensor]:
    """The ``--floor`` loop (see the module docstring) for inputs ``x (B, T, I)``."""
    B, T, n_in = x.shape
    g = torch.Generator().manual_seed(0)
    w_s, w_h = torch.randn(n_in + 1, 4 * hidden) * 0.05, torch.randn(hidden, 4 * hidden) * 0.05
    v_s, v_h = torch.rand(n_in + 1, 4 * hidden) * 1e-4, torch.rand(hidden, 4 * hidden) * 1e-4

    def run() -> Tensor:
        xs = torch.cat([x.transpose(0, 1), x.new_ones(T, B, 1)], -1)
        lin, var = (xs @ w_s).unbind(0), (xs.square() @ v_s).unbind(0)
        h, c, eps, ys = (
            x.new_zeros(B, hidden),
            x.new_zeros(B, hidden),
            x.new_empty(B, 4 * hidden),
            [],
        )
        for t in range(T):
            z = lin[t].addmm_(h, w_h)
            z.addcmul_(var[t].addmm_(h.square(), v_h).sqrt_(), eps.normal_(generator=g))
            i, f, o, gg = torch.sigmoid(z).chunk(4, 1)
            c = f * c + i * gg
            h = o * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys, 1)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=9, help="rounds (every candidate once each)")
    ap.add_argument("--stepwise", action="store_true", help="also time the per-step path")
    ap.add_argument("--floor", action="store_true", help="also time the PCM noise floor loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, T, I, H = (8, 64, 64, 128) if args.quick else (16, 256, 128, 256)  # noqa: E741
    torch.manual_seed(0)
    cell = LSTM(I, H).eval()
    x = torch.randn(B, T, I)
    with torch.no_grad():
        exact, _ = cell.double()(x.double(), backend="reference")
        cell.float()
    # (function, whether it runs with autograd on)
    cands: dict[str, tuple[Callable[[], Tensor], bool]] = {}
    for be in _digital_backends(cell, x):
        cands[f"digital ({be})"] = (lambda be=be: cell(x, backend=be)[0], False)  # type: ignore[misc]
    cands["digital (auto)"] = (lambda: cell(x)[0], False)
    for name, cfg in (
        ("analog ideal", AnalogConfig.ideal(nl_bits=8)),
        ("analog pcm", AnalogConfig.pcm()),
    ):
        acell = to_analog(cell, cfg).eval()
        cands[name] = (lambda acell=acell: acell(x)[0], False)  # type: ignore[misc]
        if args.stepwise:
            cands[f"{name} step-by-step"] = (lambda acell=acell: acell(x)[0], True)  # type: ignore[misc]
    if args.floor:
        cands["floor: pcm products + draws"] = (_pcm_floor(x, H), False)
    times: dict[str, list[float]] = {name: [] for name in cands}
    errs: dict[str, float] = {}

    def grad_mode(on: bool) -> contextlib.AbstractContextManager[None]:
        return torch.enable_grad() if on else torch.no_grad()

    for name, (fn, grad) in cands.items():  # warm-up, and program the tiles
        with grad_mode(grad):
            y = fn().detach()
        if name.startswith("floor"):
            errs[name] = float("nan")  # random matrices: not the layer
            continue
        errs[name] = float(
            (y.double() - exact).square().mean().sqrt() / exact.square().mean().sqrt()
        )
    load0 = os.getloadavg()[0]
    for _ in range(args.reps):
        for name, (fn, grad) in cands.items():
            with grad_mode(grad):
                times[name].append(_time(fn))
    load1 = os.getloadavg()[0]
    best = {name: min(ts) for name, ts in times.items()}
    ref_name = "digital (reference)"
    fast_name = min((n for n in best if n.startswith("digital")), key=best.__getitem__)

    def ratios(name: str, base: str) -> tuple[float, float]:
        """(best / best, median over rounds of the same-round ratio) of ``name`` to ``base``."""
        per_round = [a / b for a, b in zip(times[name], times[base], strict=True)]
        return best[name] / best[base], statistics.median(per_round)

    print(
        f"LSTM B={B} T={T} I={I} H={H}, CPU fp32, {args.threads} thread(s), {args.reps} rounds, "
        f"load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs"
    )
    print("baselines, the same LSTM cell (same weights, same input) run digitally in this process:")
    print(f"  /ref:  the `reference` backend (generic loop over Cell.recur), {ref_name}")
    print(f"  /fast: the fastest digital backend measured here, {fast_name}")
    print("  best: best time / best baseline time; med: median of same-round ratios")
    head = f"{'candidate':<30} {'best ms':>8} {'/ref best':>9} {'/ref med':>8}"
    print(f"{head} {'/fast best':>10} {'/fast med':>9} {'rel RMS err':>12}")
    for name in cands:
        rb, rm = ratios(name, ref_name)
        fb, fm = ratios(name, fast_name)
        print(
            f"{name:<30} {best[name] * 1e3:>8.1f} {rb:>9.2f} {rm:>8.2f} {fb:>10.2f} {fm:>9.2f} "
            f"{errs[name]:>12.2e}"
        )


if __name__ == "__main__":
    main()
