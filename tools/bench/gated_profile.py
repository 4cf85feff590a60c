"""Where the time of one gated-cell training step goes: torch profiler table by op.

    python tools/bench/gated_profile.py --kind lstm --heads 4 --backend fused_cpp

B=16, T=512, input 128, hidden 256 (the shapes of ``gated.py``), CPU float32; the step is run
three times first (warm-up: library load, buffer cache), then once under the profiler. The
table lists ops by self CPU time: the native loops (``rnnkit_fused_cpp::*``), the GEMMs of the
projection and of the weight gradients (``aten::mm``/``addmm``/``bmm``) and copies. For
``fused_cpp`` one more step is run with the team loops' phase timers on
(:func:`rnnkit.kernels.gated.fused_cpp.loop_phases`): packing, prefetch, products, pointwise
passes and barrier waits of the forward and the reverse loop.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["lstm", "gru", "slstm", "elman"], default="lstm")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--backend", default="fused_cpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=14, help="table rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cls = {"lstm": LSTM, "gru": GRU, "slstm": SLSTM, "elman": Elman}[args.kind]
    cell = cls(128, 256, heads=args.heads)
    x = torch.randn(16, 512, 128, requires_grad=True)

    def step() -> None:
        y, _ = cell(x, backend=args.backend)
        y.sum().backward()

    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(
        f"{args.kind} heads={args.heads} backend={args.backend} threads={args.threads}: "
        f"warm-up steps {', '.join(f'{1e3 * t:.1f}' for t in times)} ms"
    )
    with torch.profiler.profile() as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.backend == "fused_cpp":
        print_phases(step)


def print_phases(step: Callable[[], None]) -> None:
    """The phases of the native team loops in one more step (ms summed over threads)."""
    from rnnkit.kernels.gated import fused_cpp

    with fused_cpp.loop_phases() as phases:
        step()
    names = fused_cpp.LOOP_PHASES
    print("team loops, ms summed over threads: " + "  ".join(f"{n:>9}" for n in names))
    for direction, times in phases.items():
        cells = "  ".join(f"{1e3 * times[n]:9.1f}" for n in names)
        print(f"{direction:>35}: {cells}  total {1e3 * sum(times.values()):.1f}")


if __name__ == "__main__":
    main()
