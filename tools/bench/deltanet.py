"""Benchmark of DeltaNet's ``chunked`` backend against the ``reference`` loop.

    python tools/bench/deltanet.py                 # CPU, 2 threads, B=8, T 256/1024
    python tools/bench/deltanet.py --quick         # T=256 only, fewer repeats
    python tools/bench/deltanet.py --clock cpu     # process CPU time (loaded machine)
    python tools/bench/deltanet.py --device cuda

Prints one table: for every (T, H, heads, rule) the fastest wall time of several calls of
``forward`` (under ``torch.no_grad``) and of ``forward + backward`` (gradients of every
parameter and the input) for each backend, and the ratio ``reference / chunked`` measured in
the same process. On a machine shared with other jobs the times are noisy; the ratio is the
figure to read.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rnnkit.kernels.matrix_state import chunked as deltanet_chunked
from rnnkit.models.cells import DeltaNet


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="T=256 only, fewer repeats")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time of all threads (less sensitive to a loaded machine)",
    )
    p.add_argument("--chunk", type=int, default=deltanet_chunked.CHUNK, help="tokens per chunk")
    return p.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], None], device: torch.device, repeats: int, clock: str = "wall") -> float:
    """Fastest of ``repeats`` calls after one warm-up call (the minimum, not the median: on a
    shared machine the slow outliers are the neighbours' load, not the kernel)."""
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        now = time.process_time if clock == "cpu" else time.perf_counter
        t0 = now()
        fn()
        _sync(device)
        out.append(now() - t0)
    return min(out)


def _step(cell: DeltaNet, x: torch.Tensor, backend: str, grad: bool) -> Callable[[], None]:
    """One forward (``grad=False``, under ``no_grad``) or forward + backward call."""

    def fwd_bwd() -> None:
        y, st = cell(x, backend=backend)
        (y.square().sum() + st.S.square().sum()).backward()

    def fwd() -> None:
        with torch.no_grad():
            cell(x, backend=backend)

    return fwd_bwd if grad else fwd


def main() -> None:
    args = _args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    deltanet_chunked.CHUNK = args.chunk
    times = [256] if args.quick else [256, 1024]
    configs = [
        (T, H, nh, rule) for T in times for H in (64, 128) for nh in (1, 2) for rule in ("delta",)
    ] + [(T, 64, 1, "linear") for T in times]
    print(
        f"DeltaNet, B={args.batch}, input_size=H, float32, {device.type}"
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
        + f", chunk {args.chunk}; fastest {args.clock} seconds of several calls"
    )
    head = (
        f"{'T':>5} {'H':>4} {'heads':>5} {'rule':>6} | {'fwd ref':>8} {'fwd chk':>8} {'ratio':>6}"
        f" | {'f+b ref':>8} {'f+b chk':>8} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    torch.manual_seed(0)
    for T, H, nh, rule in configs:
        cell = DeltaNet(H, H, heads=nh, rule=rule, device=device)
        x = torch.randn(args.batch, T, H, device=device)
        xg = x.clone().requires_grad_(True)
        reps_ref = 2 if args.quick or T > 256 else 3
        reps_chk = 3 if args.quick else 10
        row = [
            _time(_step(cell, xg if grad else x, backend, grad), device, reps, args.clock)
            for grad in (False, True)
            for backend, reps in (("reference", reps_ref), ("chunked", reps_chk))
        ]
        fr, fc, br, bc = row
        print(
            f"{T:>5} {H:>4} {nh:>5} {rule:>6} | {fr:8.4f} {fc:8.4f} {fr / fc:6.1f}"
            f" | {br:8.4f} {bc:8.4f} {br / bc:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
