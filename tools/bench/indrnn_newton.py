"""Where ``backend="auto"`` runs IndRNN by Newton, and whether Newton beats the loop there.

    python tools/bench/indrnn_newton.py             # the grid below, fp32, CPU, 1 thread
    python tools/bench/indrnn_newton.py --quick     # fewer shapes; about a minute

IndRNN (``h = act(W x + u * h + b)``) has a diagonal Jacobian, so the ``newton`` backend runs
it. For each recurrent-weight regime (``u`` drawn from ``U(low, high)``: the paper's ReLU
default ``U(0, 1)``, a short-memory ``U(0, 0.5)``, and near-unit ``U(0.9, 1)`` and
``U(0.99, 1)`` where Newton needs many iterations) and each shape ``(B, H, T)`` it prints, all
in the same process (forward+backward, ``y.sum().backward()``, ``x`` and every parameter
requiring gradients; process CPU time with one thread, medians of ``--repeats`` after a
warm-up):

* ``auto``: the backend ``select`` gives a fresh cell for this call;
* ``reference`` and ``newton``: both backends' times, the ratio ``reference / newton`` (above
  1: Newton wins), Newton's iterations (the most any tile needed) and whether it converged;
* what a training loop sees: the time of ``auto``'s first call at the shape, the backend
  ``auto`` picks after it, and the time of the second call. After a Newton solve ``auto``
  weighs ``lanes * iterations`` against the cell's ``newton_auto_work`` (a solve that needed
  many iterations sends later calls to the loop), and after a solve that did not converge
  (warned, run by the loop) it keeps the loop.

With ``newton``, a solve that does not converge falls back to the loop: its time includes the
failed iterations and the loop.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.kernels.newton import forget_failures, last_solve_info
from rnnkit.models.cells import IndRNN


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--activation", default="relu", choices=("relu", "tanh"))
    return p.parse_args()


ARGS = _args()
INPUT = 32
REGIMES = [(0.0, 1.0), (0.0, 0.5), (0.9, 1.0), (0.99, 1.0)]
SHAPES = [(1, 64, 8192), (4, 64, 2048), (8, 64, 1024), (8, 128, 1024), (8, 256, 512), (8, 64, 64)]
QUICK_SHAPES = [(1, 64, 4096), (8, 64, 1024), (8, 256, 512)]


def _timeit(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _fwd_bwd(cell: IndRNN, x: torch.Tensor, backend: str) -> Callable[[], object]:
    def run() -> object:
        cell.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = cell(x, backend=backend)
        y.sum().backward()
        return None

    return run


def _once(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    torch.set_num_threads(1)
    shapes = QUICK_SHAPES if ARGS.quick else SHAPES
    print(
        f"IndRNN ({ARGS.activation}) fp32 forward+backward, CPU, 1 thread, process CPU time, "
        f"median of {ARGS.repeats} (torch {torch.__version__}); input width {INPUT}"
    )
    print()
    print(
        "| u ~ | B, H, T | lanes B*H | auto picks | reference | newton | ref / newton | "
        "iterations | converged | auto 1st call | auto then picks | auto 2nd call |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for low, high in REGIMES:
        for batch, hidden, steps in shapes:
            forget_failures()
            torch.manual_seed(0)
            cell = IndRNN(INPUT, hidden, activation=ARGS.activation, u_init=(low, high))
            x = torch.randn(batch, steps, INPUT, requires_grad=True)
            call = KernelCall(cell, x, None, None, needs_grad=True)
            pick = select(call).backend
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                # what a training loop sees: auto's first call at this shape, then the next
                first = _once(_fwd_bwd(cell, x, "auto"))
                after = select(call).backend
                second = _once(_fwd_bwd(cell, x, "auto"))
                forget_failures()
                ref_s = _timeit(_fwd_bwd(cell, x, "reference"), ARGS.repeats)
                newton_s = _timeit(_fwd_bwd(cell, x, "newton"), ARGS.repeats)
            info = last_solve_info()
            assert info is not None
            print(
                f"| U({low:g}, {high:g}) | {batch}, {hidden}, {steps} | {batch * hidden} | "
                f"{pick} | {ref_s * 1e3:.0f} ms | {newton_s * 1e3:.0f} ms | "
                f"{ref_s / newton_s:.2f}x | {info.iterations} | {info.converged} | "
                f"{first * 1e3:.0f} ms | {after} | {second * 1e3:.0f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
