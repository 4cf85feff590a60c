"""What resets cost ``linear_scan`` eagerly, compiled and exported (forward + backward, CPU).

    python tools/bench/scan_resets.py              # B=4, D=64, T = 256 and 2048, float32
    python tools/bench/scan_resets.py --quick      # fewer repeats
    python tools/bench/scan_resets.py --time 512 --batch 8 --width 32

For every mode (``eager``; ``compiled``: ``torch.compile`` with inductor, ``fullgraph=True``;
``exported``: the program of ``torch.export`` run under autograd) it times
``linear_scan(a, b, h0)`` and ``linear_scan(a, b, h0, resets=r)`` (2% of the steps reset,
inputs finite) with a backward of a random linear loss, and gives the ratio of the two: what
the resets, and with them the handling of a non-finite state before a reset, cost there. Run it
on two checkouts (``PYTHONPATH=.../packages/kernels/src:...``) to compare a change; each run
measures both columns in the same process. One torch thread, timed by process CPU time (on a
machine shared with other jobs wall time mostly measures the neighbours), median of repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--time", type=int, nargs="+", default=[256, 2048], help="sequence lengths")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--reps", type=int, default=25, help="timed repeats per row")
    p.add_argument("--quick", action="store_true", help="5 repeats")
    args = p.parse_args()
    for name in ("batch", "width", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    if min(args.time) < 1:
        p.error(f"--time must be positive, got {min(args.time)}")
    return args


ARGS = _args()
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402  (after the environment is set)

from rnnkit.kernels.linear.scan import linear_scan  # noqa: E402

Scan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _bench(fn: Callable[[], object], reps: int) -> float:
    """Median process-CPU milliseconds of ``fn`` after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def _scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, r: torch.Tensor | None
) -> torch.Tensor:
    return linear_scan(a, b, h0, resets=r)[0]


class _Module(torch.nn.Module):
    def __init__(self, resets: bool) -> None:
        super().__init__()
        self.resets = resets

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, r: torch.Tensor
    ) -> torch.Tensor:
        return _scan(a, b, h0, r if self.resets else None)


def _runner(mode: str, resets: bool, example: tuple[torch.Tensor, ...]) -> Scan:
    if mode == "eager":
        return _scan
    torch._dynamo.reset()
    if mode == "compiled":
        compiled: Scan = torch.compile(_scan, fullgraph=True, dynamic=False)  # type: ignore[assignment]
        return compiled
    detached = tuple(t.detach() for t in example)
    program: Scan = torch.export.export(_Module(resets), detached).module()  # type: ignore[assignment]
    return program


def _time(mode: str, resets: bool, inputs: tuple[torch.Tensor, ...], reps: int) -> float:
    """Milliseconds of one forward and backward of ``mode``'s scan of ``inputs = (a, b, h0,
    r, w)`` (``w``: the weights of the linear loss)."""
    a, b, h0, r, w = inputs
    run = _runner(mode, resets, (a, b, h0, r))
    given = r if resets or mode == "exported" else None  # the program takes r either way

    def step() -> None:
        h = run(a, b, h0, given)
        torch.autograd.grad((h * w).sum(), (a, b, h0))

    return _bench(step, reps)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    reps = 5 if ARGS.quick else ARGS.reps
    print(
        f"torch {torch.__version__}, 1 thread, float32, B={ARGS.batch} D={ARGS.width}, 2% resets,"
        f" forward + backward, median of {reps} (process CPU ms)"
    )
    print(f"{'T':>6} {'mode':>9} {'no resets':>10} {'resets':>10} {'ratio':>6}")
    for time_ in ARGS.time:
        g = torch.Generator().manual_seed(0)
        shape = (ARGS.batch, time_, ARGS.width)
        inputs = (
            (0.5 + 0.5 * torch.rand(shape, generator=g)).requires_grad_(),
            torch.randn(shape, generator=g).requires_grad_(),
            torch.randn(ARGS.batch, ARGS.width, generator=g).requires_grad_(),
            torch.rand(ARGS.batch, time_, generator=g) < 0.02,
            torch.randn(shape, generator=g),
        )
        for mode in ("eager", "compiled", "exported"):
            plain, reset = (_time(mode, resets, inputs, reps) for resets in (False, True))
            print(f"{time_:>6} {mode:>9} {plain:>10.2f} {reset:>10.2f} {reset / plain:>6.2f}")


if __name__ == "__main__":
    main()
