"""Benchmark of the selective scan (Mamba-1's recurrence): every implementation, forward and
forward + backward, on the CPU.

    python tools/bench/selective.py                 # B=4, T=1024, D=256, N=16, 2 threads
    python tools/bench/selective.py --quick         # B=2, T=512, D=128
    python tools/bench/selective.py --batch 8 --time 2048 --dim 512   # the issue's shape
    python tools/bench/selective.py --clock cpu     # process CPU time (loaded machine)

Implementations, on the same float32 inputs ``x, dt: (B, T, D)``, ``A: (D, N)``,
``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``:

- ``reference``: the step loop (``rnnkit.kernels.selective.REFERENCE``) under autograd;
- ``materialising``: pure torch that builds the ``(B, T, D, N)`` decays, inputs and states
  (the straightforward vectorised way), then reads them out with one einsum;
- ``selective_torch``: the step loop in chunks recomputed in the backward;
- ``selective_cpp``: the native lanes with the backward by recomputation.

Prints, per implementation, the fastest time of ``forward`` (under ``torch.no_grad``) and of
``forward + backward`` (gradients of every input), the ratio of the reference's time to it
(measured in the same process), and memory from torch's profiler: the bytes the forward keeps
for the backward and the largest single allocation of the forward and backward, next to the
bytes of the scan's inputs and output. On a machine shared with other jobs the times are noisy;
the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from rnnkit.kernels.selective import REFERENCE, cpp, selective_scan_cpp, selective_scan_torch

Scan = Callable[..., tuple[Tensor, Tensor]]


def materialising(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    h0: Tensor,
    *,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scan with every ``(B, T, D, N)`` tensor built: decays, inputs and states."""
    a = torch.exp(dt.unsqueeze(-1) * A)  # (B, T, D, N)
    b = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, T, D, N)
    h, hs = h0, []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1), strict=True):
        h = a_t * h + b_t
        hs.append(h)
    states = torch.stack(hs, 1)  # (B, T, D, N)
    y = torch.einsum("btdn,btn->btd", states, C) + D * x
    return y, h


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--time", type=int, default=1024)
    p.add_argument("--dim", type=int, default=256, help="channels D (d_inner)")
    p.add_argument("--nstate", type=int, default=16, help="state entries per channel N")
    p.add_argument("--quick", action="store_true", help="B=2, T=512, D=128, fewer repeats")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated implementations to leave out")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time of all threads (less sensitive to a loaded machine)",
    )
    return p.parse_args()


def _time(fn: Callable[[], None], repeats: int, clock: str) -> float:
    """Fastest of ``repeats`` calls after one warm-up call."""
    fn()
    now = time.process_time if clock == "cpu" else time.perf_counter
    out = []
    for _ in range(repeats):
        t0 = now()
        fn()
        out.append(now() - t0)
    return min(out)


def _memory(scan: Scan, inputs: list[Tensor]) -> tuple[int, int]:
    """Bytes the forward keeps for the backward, and the largest single allocation of the
    forward and the backward (torch's profiler, CPU)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as fwd:
        y, h = scan(*leaves)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as bwd:
        (y.sum() + h.sum()).backward()
    kept = sum(e.self_cpu_memory_usage for e in fwd.events())
    largest = max(
        (e.self_cpu_memory_usage for p in (fwd, bwd) for e in p.events() if e.name != "[memory]"),
        default=0,
    )
    return kept, largest


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.time, args.dim, args.repeats = 2, 512, 128, 2
    Bt, T, D, N = args.batch, args.time, args.dim, args.nstate
    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(Bt, T, D, generator=g),
        F.softplus(torch.randn(Bt, T, D, generator=g)),
        -torch.exp(torch.randn(D, N, generator=g)),
        torch.randn(Bt, T, N, generator=g),
        torch.randn(Bt, T, N, generator=g),
        torch.randn(D, generator=g),
        torch.randn(Bt, D, N, generator=g),
    ]
    io = sum(t.numel() * 4 for t in inputs) + Bt * T * D * 4  # with y
    scans: dict[str, Scan] = {
        "reference": REFERENCE,
        "materialising": materialising,
        "selective_torch": selective_scan_torch,
    }
    if cpp.available() is None:
        scans["selective_cpp"] = selective_scan_cpp
    else:
        print(f"selective_cpp unavailable: {cpp.available()}")
    skip = {s for s in args.skip.split(",") if s}
    scans = {k: v for k, v in scans.items() if k not in skip}
    states = Bt * T * D * N * 4
    print(
        f"selective scan, CPU, {args.threads} threads, float32, B={Bt} T={T} D={D} N={N}; "
        f"inputs + output {io / 2**20:.1f} MiB, (B, T, D, N) states {states / 2**20:.1f} MiB; "
        f"clock {args.clock}"
    )
    rows = []
    for name, scan in scans.items():

        def forward(scan: Scan = scan) -> None:
            with torch.no_grad():
                scan(*inputs)

        def train(scan: Scan = scan) -> None:
            leaves = [t.detach().requires_grad_() for t in inputs]
            y, h = scan(*leaves)
            (y.sum() + h.sum()).backward()

        t_fwd = _time(forward, args.repeats, args.clock)
        t_train = _time(train, args.repeats, args.clock)
        kept, largest = _memory(scan, inputs)
        rows.append((name, t_fwd, t_train, kept, largest))
    ref = {r[0]: r for r in rows}.get("reference")
    head = f"{'implementation':<16} {'fwd ms':>9} {'x ref':>6} {'fwd+bwd ms':>11} {'x ref':>6}"
    print(head + f" {'kept MiB':>9} {'largest MiB':>12}")
    for name, t_fwd, t_train, kept, largest in rows:
        r_f = f"{ref[1] / t_fwd:6.1f}" if ref else "     -"
        r_t = f"{ref[2] / t_train:6.1f}" if ref else "     -"
        print(
            f"{name:<16} {t_fwd * 1e3:9.1f} {r_f} {t_train * 1e3:11.1f} {r_t} "
            f"{kept / 2**20:9.2f} {largest / 2**20:12.2f}"
        )


if __name__ == "__main__":
    main()
