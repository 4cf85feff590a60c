"""Benchmark the ``newton`` backend against the sequential reference loop (ParaGRU, fp32).

Prints one table: forward+backward time of the reference loop and of Newton, their ratio,
Newton's ratio to a memory floor (a copy moving the bytes of 8 ``B*T*D`` fp32 arrays, about
what one forward+backward must read and write), the Newton iterations, and the max abs
deviation of ``y`` from the sequential result. All baselines run in the same process.

    python tools/bench/newton.py            # B=8,T=4096,D=256 and B=1,T=65536,D=64
    python tools/bench/newton.py --quick    # smaller T for the second case; under a minute
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rnnkit.kernels.newton import last_solve_info
from rnnkit.models.cells import ParaGRU


def _timeit(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _case(batch: int, steps: int, width: int, repeats: int, ref_repeats: int) -> dict[str, object]:
    torch.manual_seed(0)
    cell = ParaGRU(width, width)
    x = torch.randn(batch, steps, width, requires_grad=True)

    def fwd_bwd(backend: str) -> torch.Tensor:
        cell.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = cell(x, backend=backend)
        y.sum().backward()
        return y.detach()

    t_ref = _timeit(lambda: fwd_bwd("reference"), ref_repeats)
    t_newton = _timeit(lambda: fwd_bwd("newton"), repeats)
    info = last_solve_info()
    src = torch.randn(8 * batch * steps * width)
    dst = torch.empty_like(src)
    t_floor = _timeit(lambda: dst.copy_(src), max(repeats, 3))
    with torch.no_grad():
        y_ref, _ = cell(x, backend="reference")
        y_new, _ = cell(x, backend="newton")
    dev = (y_new - y_ref).abs().max().item()
    return {
        "case": f"B={batch}, T={steps}, D={width}",
        "ref": t_ref,
        "newton": t_newton,
        "floor": t_floor,
        "iters": info.iterations if info else -1,
        "dev": dev,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller T for the long case")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    long_t = 8192 if args.quick else 65536
    cases = [(8, 4096, 256, 2, 1), (1, long_t, 64, 2, 1)]
    rows = [_case(*c) for c in cases]
    print(
        f"ParaGRU fp32 forward+backward, CPU, {args.threads} torch thread(s), process CPU time, "
        "best of runs"
    )
    print()
    print(
        "| case | reference loop | newton | speed-up vs loop | newton / memory floor | "
        "Newton iters | max abs dev |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref, new, floor = float(r["ref"]), float(r["newton"]), float(r["floor"])  # type: ignore[arg-type]
        print(
            f"| {r['case']} | {ref * 1e3:.0f} ms | {new * 1e3:.0f} ms | {ref / new:.1f}x | "
            f"{new / floor:.1f}x | {r['iters']} | {float(r['dev']):.1e} |"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
