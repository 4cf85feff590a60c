"""Benchmark the ``newton`` backend against ParaGRU's sequential reference loop (fp32).

    python tools/bench/newton.py                 # B=8,T=4096,D=256 and B=1,T=65536,D=64
    python tools/bench/newton.py --threads 2     # two torch threads (wall clock)
    python tools/bench/newton.py --quick         # the long case at T=8192; under a minute

Prints one table of forward+backward times (``y.sum().backward()`` with ``x`` and every
parameter requiring gradients), all measured in the same process:

* ``reference``: rnnkit's ``reference`` backend, the sequential loop over ``ParaGRU.recur``
  with autograd, the baseline of the targets. When it would take too long (``--ref-steps``,
  and always in ``--quick`` mode for the long case) it is timed at a shorter ``T`` and scaled
  linearly in ``T`` (a loop's cost is linear in ``T``), marked ``~`` with the ``T`` used.
* ``fused``: the other backends registered for ParaGRU (``fused`` and the like), if any.
* ``newton``: the Newton solve and its adjoint backward (``backend="newton"``), its linear
  systems solved by the native C++ scan when it builds (the default on CPU);
* ``newton, torch scan``: the same with the native scan switched off (``RNNKIT_SCAN_CPP=0``),
  i.e. the pure-torch chunked scan, the fallback.
* ``projection``: the input projection ``x W^T + b`` forward and backward alone (matrix
  products every backend computes alike), for context: it bounds any speed-up.
* ``floor``: a copy moving the bytes of 8 ``B*T*D`` fp32 arrays, about what a
  forward+backward must read and write.

Also the Newton iterations (the most any tile needed), the number of tiles, and the max abs
deviation of Newton's ``y`` from the reference's. With one thread times are process CPU time
(robust on a shared machine); with more, wall time. Medians of ``--repeats`` runs after one
warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # large outputs on huge pages (see scan.py)

import torch
import torch.nn.functional as F

from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.kernels.linear.scan import _native as scan_native
from rnnkit.kernels.newton import last_solve_info
from rnnkit.models.cells import ParaGRU


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the long case at T=8192")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    p.add_argument(
        "--ref-steps",
        type=int,
        default=65536,
        help="time the reference loop at most at this T, scaling linearly beyond it",
    )
    return p.parse_args()


ARGS = _args()
_now = time.process_time if ARGS.threads == 1 else time.perf_counter


def _timeit(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = _now()
        fn()
        times.append(_now() - t0)
    return statistics.median(times)


@dataclass
class Result:
    case: str
    ref_s: float
    ref_note: str
    others: dict[str, float]
    newton_s: float
    newton_torch_s: float | None
    proj_s: float
    floor_s: float
    iters: int
    tiles: int
    dev: float


def _fwd_bwd(cell: ParaGRU, x: torch.Tensor, backend: str) -> Callable[[], object]:
    def run() -> object:
        cell.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = cell(x, backend=backend)
        y.sum().backward()
        return None

    return run


def _case(batch: int, steps: int, width: int) -> Result:
    torch.manual_seed(0)
    cell = ParaGRU(width, width)
    x = torch.randn(batch, steps, width, requires_grad=True)
    reps = ARGS.repeats

    ref_steps = min(steps, ARGS.ref_steps, 4096 if ARGS.quick else steps)
    if ref_steps < steps:
        xr = x.detach()[:, :ref_steps].clone().requires_grad_(True)
        ref_s = _timeit(_fwd_bwd(cell, xr, "reference"), 1, warmup=False) * steps / ref_steps
        ref_note = f"~ timed at T={ref_steps}, x{steps / ref_steps:g}"
    else:
        ref_s = _timeit(_fwd_bwd(cell, x, "reference"), max(1, min(reps, 2)), warmup=False)
        ref_note = ""

    call = KernelCall(cell, x, None, None, needs_grad=True)
    others = {}
    for kernel in kernels_for(cell):
        if kernel.backend in ("reference", "newton") or kernel.why_not(call) is not None:
            continue
        others[kernel.backend] = _timeit(_fwd_bwd(cell, x, kernel.backend), reps)

    newton_s = _timeit(_fwd_bwd(cell, x, "newton"), reps)
    info = last_solve_info()
    newton_torch_s = None
    if scan_native.usable(x.device, x.dtype):
        # the same solve on the pure-torch scan: the switch is read at every call
        previous = os.environ.get(scan_native.DISABLE_ENV)
        os.environ[scan_native.DISABLE_ENV] = "0"
        try:
            newton_torch_s = _timeit(_fwd_bwd(cell, x, "newton"), reps)
        finally:
            if previous is None:
                del os.environ[scan_native.DISABLE_ENV]
            else:
                os.environ[scan_native.DISABLE_ENV] = previous

    w, b = cell.weight_ih, cell.bias

    def projection() -> None:
        x.grad = None
        w.grad = None
        torch.autograd.backward(F.linear(x, w, b).sum())

    proj_s = _timeit(projection, reps)
    src = torch.randn(4 * batch * steps * width)
    dst = torch.empty_like(src)
    floor_s = _timeit(lambda: dst.copy_(src), max(reps, 3))

    with torch.no_grad():
        y_ref, _ = cell(x, backend="reference")
        y_new, _ = cell(x, backend="newton")
    return Result(
        case=f"B={batch}, T={steps}, D={width}",
        ref_s=ref_s,
        ref_note=ref_note,
        others=others,
        newton_s=newton_s,
        newton_torch_s=newton_torch_s,
        proj_s=proj_s,
        floor_s=floor_s,
        iters=info.iterations if info else -1,
        tiles=getattr(info, "tiles", 1) if info else -1,
        dev=(y_new - y_ref).abs().max().item(),
    )


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    long_t = 8192 if ARGS.quick else 65536
    rows = [_case(8, 4096, 256), _case(1, long_t, 64)]
    clock = "process CPU time" if ARGS.threads == 1 else "wall time"
    print(
        f"ParaGRU fp32 forward+backward, CPU, {torch.get_num_threads()} torch thread(s), "
        f"{clock}, median of {ARGS.repeats} (torch {torch.__version__})"
    )
    print()
    scan = "native C++" if scan_native.usable(torch.device("cpu"), torch.float32) else "torch"
    print(f"newton's scans: {scan}")
    print()
    print(
        "| case | reference loop | other backends | newton | newton vs reference | "
        "newton, torch scan (vs reference) | projection (in both) | newton / floor | iters | "
        "tiles | max abs dev |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = f"{r.ref_s * 1e3:.0f} ms" + (f" ({r.ref_note})" if r.ref_note else "")
        others = (
            ", ".join(
                f"{k} {v * 1e3:.0f} ms ({v / r.newton_s:.1f}x of newton)"
                for k, v in r.others.items()
            )
            or "none registered"
        )
        torch_scan = (
            f"{r.newton_torch_s * 1e3:.0f} ms ({r.ref_s / r.newton_torch_s:.1f}x)"
            if r.newton_torch_s is not None
            else "n/a"
        )
        print(
            f"| {r.case} | {ref} | {others} | {r.newton_s * 1e3:.0f} ms | "
            f"{r.ref_s / r.newton_s:.1f}x | {torch_scan} | {r.proj_s * 1e3:.0f} ms | "
            f"{r.newton_s / r.floor_s:.1f}x | {r.iters} | {r.tiles} | {r.dev:.1e} |"
        )


if __name__ == "__main__":
    main()
