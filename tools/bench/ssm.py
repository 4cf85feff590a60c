"""Benchmarks of the state space models' fast paths against their loops, on the CPU, each
ratio measured in the same run as its baseline.

    python tools/bench/ssm.py                  # the issue's shapes (minutes on 2 cores)
    python tools/bench/ssm.py --quick          # small shapes, seconds (nox -s bench)
    python tools/bench/ssm.py --only s4d       # one part: selective or s4d
    python tools/bench/ssm.py --json out.json  # the figures as JSON too

Parts:

- ``selective``: Mamba-1's selective scan, float32, fwd+bwd (gradients of every input), at
  B=8, T=2048, d_inner=512, N=16 (``--quick``: 2, 512, 128, 16): ``selective_cpp`` (and
  ``selective_torch``) against the reference step loop, with the peak extra memory of the
  forward and backward together next to the bytes of the scan's inputs and outputs (a
  materialising implementation needs the ``(B, T, D, N)`` states, N times the inputs). The
  implementations, the reference and the timing come from ``tools/bench/selective.py``.
- ``s4d``: an S4D layer (H=64 channels, N=64 states per channel, B=2), forward and fwd+bwd,
  at T=16384 (``--quick``: 2048): the convolution mode (``s4d_conv``) against the recurrent
  loop (``reference``) and the complex scan (``scan``).

Peak extra memory (:func:`peak_extra`) comes from torch's profiler: the allocations and
frees of every op and of the ``[memory]`` events, replayed in time order (an allocation at
the start of the op that made it, a free at its end), the largest running total above the
memory held when the call started. Times are the fastest of ``--repeats`` calls after a
warm-up (the reference loops: one call after the warm-up); on a shared machine use
``--clock cpu`` and read the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selective import Scan, _time, materialising  # the sibling script

from rnnkit.kernels.selective import (
    REFERENCE,
    cpp,
    selective_scan_cpp,
    selective_scan_torch,
)


def peak_extra(fn: Callable[[], Any]) -> int:
    """Bytes: the largest total of CPU memory allocated (and not yet freed) during ``fn()``,
    above what was held when it started (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    moves: list[tuple[float, int]] = []
    for e in prof.events():
        b = int(e.self_cpu_memory_usage)
        if b > 0:
            moves.append((e.time_range.start, b))
        elif b < 0:
            moves.append((e.time_range.end, b))
    moves.sort(key=lambda m: (m[0], -m[1]))  # at one instant, allocations before frees
    now = peak = 0
    for _, b in moves:
        now += b
        peak = max(peak, now)
    return peak


def _selective_inputs(Bt: int, T: int, D: int, N: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(Bt, T, D, generator=g),
        F.softplus(torch.randn(Bt, T, D, generator=g)),
        -torch.exp(torch.randn(D, N, generator=g)),
        torch.randn(Bt, T, N, generator=g),
        torch.randn(Bt, T, N, generator=g),
        torch.randn(D, generator=g),
        torch.randn(Bt, D, N, generator=g),
    ]


def bench_selective(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part ``selective``: rows of ``name, fwd_s, train_s, x_ref_fwd, x_ref_train, peak``."""
    Bt, T, D, N = (2, 512, 128, 16) if args.quick else (8, 2048, 512, 16)
    inputs = _selective_inputs(Bt, T, D, N)
    io = sum(t.numel() * t.element_size() for t in inputs) + Bt * T * D * 4 + Bt * D * N * 4
    scans: dict[str, Scan] = {"reference": REFERENCE}
    if cpp.available() is None:
        scans["selective_cpp"] = selective_scan_cpp
    else:
        print(f"selective_cpp unavailable: {cpp.available()}")
    scans["selective_torch"] = selective_scan_torch
    if args.quick:
        scans["materialising"] = materialising  # its (B, T, D, N) tensors: GiB at full size
    print(
        f"\nselective scan, float32, B={Bt} T={T} D={D} N={N}: inputs + outputs "
        f"{io / 2**20:.1f} MiB, (B, T, D, N) states {Bt * T * D * N * 4 / 2**20:.0f} MiB"
    )
    rows = []
    for name, scan in scans.items():
        if name in args.skip:
            continue

        def forward(scan: Scan = scan) -> None:
            with torch.no_grad():
                scan(*inputs)

        def train(scan: Scan = scan) -> None:
            leaves = [t.detach().requires_grad_() for t in inputs]
            y, h = scan(*leaves)
            (y.sum() + h.sum()).backward()

        repeats = 1 if name == "reference" else args.repeats
        t_fwd = _time(forward, repeats, args.clock)
        t_train = _time(train, repeats, args.clock)
        peak = peak_extra(train) if name != "reference" or not args.no_ref_memory else -1
        rows.append({"name": name, "fwd_s": t_fwd, "train_s": t_train, "peak": peak})
        print(f"  {name}: fwd {t_fwd * 1e3:.1f} ms, fwd+bwd {t_train * 1e3:.1f} ms", flush=True)
    _ratios(rows)
    for r in rows:
        r["peak_over_io"] = r["peak"] / io if r["peak"] >= 0 else None
        r["io_bytes"] = io
    return rows


def bench_s4d(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part ``s4d``: the same S4D cell by each backend, forward and fwd+bwd."""
    from rnnkit.models.cells.s4d import S4D

    Bt, T, H, N = (2, 2048, 64, 64) if args.quick else (2, 16384, 64, 64)
    torch.manual_seed(0)
    cell = S4D(H, N)
    x = torch.randn(Bt, T, H)
    print(f"\nS4D layer, float32, B={Bt} T={T} H={H} N={N}")
    rows = []
    for backend in ("reference", "scan", "s4d_conv"):
        if backend in args.skip:
            continue

        def forward(backend: str = backend) -> None:
            with torch.no_grad():
                cell(x, backend=backend)

        def train(backend: str = backend) -> None:
            cell.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_()
            y, s = cell(xi, backend=backend)
            (y.sum() + s.h.abs().sum()).backward()

        repeats = 1 if backend == "reference" else args.repeats
        t_fwd = _time(forward, repeats, args.clock)
        t_train = _time(train, repeats, args.clock)
        rows.append({"name": backend, "fwd_s": t_fwd, "train_s": t_train})
        print(f"  {backend}: fwd {t_fwd * 1e3:.1f} ms, fwd+bwd {t_train * 1e3:.1f} ms", flush=True)
    _ratios(rows)
    return rows


def _ratios(rows: list[dict[str, Any]]) -> None:
    ref = next((r for r in rows if r["name"] == "reference"), None)
    for r in rows:
        r["x_ref_fwd"] = ref["fwd_s"] / r["fwd_s"] if ref else None
        r["x_ref_train"] = ref["train_s"] / r["train_s"] if ref else None


def _table(title: str, rows: list[dict[str, Any]], memory: bool) -> None:
    print(f"\n{title}")
    head = f"{'implementation':<16} {'fwd ms':>10} {'x ref':>7} {'fwd+bwd ms':>11} {'x ref':>7}"
    print(head + (f" {'peak extra MiB':>15} {'/ io':>6}" if memory else ""))
    for r in rows:
        line = (
            f"{r['name']:<16} {r['fwd_s'] * 1e3:10.1f} {_fmt(r['x_ref_fwd'])} "
            f"{r['train_s'] * 1e3:11.1f} {_fmt(r['x_ref_train'])}"
        )
        if memory:
            peak = r["peak"]
            line += (
                f" {peak / 2**20:15.1f} {r['peak_over_io']:6.2f}"
                if peak >= 0
                else f" {'-':>15} {'-':>6}"
            )
        print(line)


def _fmt(ratio: float | None) -> str:
    return f"{ratio:7.1f}" if ratio is not None else f"{'-':>7}"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes, for nox -s bench")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls of the fast paths (3)")
    p.add_argument("--only", choices=("selective", "s4d"), help="run one part")
    p.add_argument("--skip", default="", help="comma-separated implementations to leave out")
    p.add_argument(
        "--no-ref-memory",
        action="store_true",
        help="do not profile the reference loop's memory (one more slow call)",
    )
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if args.quick:
        args.repeats = min(args.repeats, 2)
    return args


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, clock {args.clock}{', quick' if args.quick else ''}")
    out: dict[str, Any] = {"threads": args.threads, "clock": args.clock, "quick": args.quick}
    if args.only in (None, "selective"):
        out["selective"] = bench_selective(args)
        _table("selective scan (fwd+bwd: gradients of all inputs)", out["selective"], True)
    if args.only in (None, "s4d"):
        out["s4d"] = bench_s4d(args)
        _table("S4D layer", out["s4d"], False)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
