"""Issue 19's targets for the ``cuda`` backend, timed in one run (needs a CUDA GPU).

FlashRNN's protocol: B=16, T=1024, total hidden 768, bfloat16 unless a row says otherwise, median
milliseconds of ``triton.testing.do_bench`` (CUDA events without triton; ``_timing.py``). Every
ratio compares rows of this run only. Rows, in order (each prints as soon as it is timed; rows
left when ``--budget`` seconds have passed are listed as skipped, so a short device call still
gives the first table):

1. dense (768, 1) LSTM, GRU and sLSTM, forward and forward+backward: ``cuda`` against cuDNN
   (``nn.LSTM`` / ``nn.GRU``) in bfloat16 and float16; sLSTM against our own LSTM;
2. (256, 3) and (128, 6) LSTM forward+backward on ``cuda`` against (64, 12) on ``triton``;
3. the batch sweep B in {2, 8, 32, 128} at (768, 1), LSTM forward+backward: ``cuda`` against
   cuDNN float16;
4. inference at batch 1, hidden 1024, T = 4096 (LSTM forward without gradients): microseconds
   per step;
5. a streamed cut: one head of 2048 LSTM (its slices of R do not fit in shared memory).

The dense LSTM, the (256, 3) and (128, 6) rows and the batch-1 latency are also timed with the
``"flags"`` step exchange (``RNNKIT_CUDA_EXCHANGE=flags``: per-block step counters instead of a
grid barrier; backend ``cuda bf16 flags``), each with its ratio to the grid barrier's row.

Each row also names the cut (``explain``: resident or streamed, tensor cores). Usage::

    python tools/gpu/cuda_targets.py [--budget 120]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from _timing import median_ms  # tools/gpu, on sys.path when run as a script
from torch import nn

from rnnkit.core.cells import GRU, LSTM, SLSTM
from rnnkit.core.kernel import KernelCall

DEV = "cuda"
BF16 = torch.bfloat16


def _pass(call: Callable[[], Any], backward: bool) -> Callable[[], Any]:
    """One timed pass of ``call`` (which returns ``(y, state)``): without gradients, or with
    the backward of ``y``'s sum."""

    def fn() -> Any:
        if not backward:
            with torch.no_grad():
                return call()
        y, _ = call()
        y.float().sum().backward()
        return None

    return fn


def _run(cell: Any, x: torch.Tensor, backend: str, backward: bool) -> Callable[[], Any]:
    return _pass(lambda: cell(x, backend=backend), backward)


def _flags(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with the ``"flags"`` step exchange (the loops read the variable at every call)."""
    from rnnkit.kernels.gated.cuda._loops import EXCHANGE_ENV

    def run() -> Any:
        before = os.environ.get(EXCHANGE_ENV)
        os.environ[EXCHANGE_ENV] = "flags"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ[EXCHANGE_ENV]
            else:
                os.environ[EXCHANGE_ENV] = before

    return run


def _cudnn(ref: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], Any]:
    return _pass(lambda: ref(x), backward)


def _cut(cell: Any, x: torch.Tensor) -> str:
    from rnnkit.kernels.gated import cuda

    return cuda.explain(KernelCall(cell, x, None, None, x.requires_grad))


class Table:
    """Prints rows as they are timed; skips the rest once the budget is spent."""

    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        self.times: dict[str, float] = {}
        print(torch.cuda.get_device_name(), "| torch", torch.__version__, flush=True)
        print(f"{'case':<34}{'backend':<14}{'ms (median)':>12}  note", flush=True)

    def row(self, case: str, backend: str, fn: Callable[[], Any], note: str = "") -> None:
        key = f"{case}|{backend}"
        if time.monotonic() > self.deadline:
            print(f"{case:<34}{backend:<14}{'skipped':>12}  (budget)", flush=True)
            return
        try:
            ms = median_ms(fn)
        except Exception as e:  # report and go on: the table is the point
            print(f"{case:<34}{backend:<14}{'error':>12}  {type(e).__name__}: {str(e)[:90]}")
            return
        self.times[key] = ms
        print(f"{case:<34}{backend:<14}{ms:12.3f}  {note}", flush=True)

    def ratio(self, label: str, num: str, den: str) -> None:
        if num in self.times and den in self.times:
            print(f"  ratio {label}: {self.times[num] / self.times[den]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=120.0, help="seconds before rows are skipped")
    args = ap.parse_args()
    table = Table(args.budget)
    B, T, H = 16, 1024, 768

    # 1. dense (768, 1)
    for name, Cell, Ref in (("lstm", LSTM, nn.LSTM), ("gru", GRU, nn.GRU), ("slstm", SLSTM, None)):
        torch.manual_seed(0)
        cell = Cell(H, H, device=DEV, dtype=BF16)
        x = torch.randn(B, T, H, device=DEV, dtype=BF16, requires_grad=True)
        print(f"# {name} (768,1): {_cut(cell, x)}", flush=True)
        for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
            case = f"{name} (768,1) B=16 {mode}"
            table.row(case, "cuda bf16", _run(cell, x, "cuda", bwd))
            if name == "lstm":
                table.row(case, "cuda bf16 flags", _flags(_run(cell, x, "cuda", bwd)))
                table.ratio(f"{case} flags / grid", f"{case}|cuda bf16 flags", f"{case}|cuda bf16")
            if Ref is None:
                ours = f"lstm (768,1) B=16 {mode}|cuda bf16"
                table.ratio(f"{case} / lstm", f"{case}|cuda bf16", ours)
                continue
            for dt in (BF16, torch.float16):
                ref = Ref(H, H, batch_first=True, device=DEV, dtype=dt)
                xr = x.detach().to(dt).requires_grad_()
                table.row(case, f"cuDNN {str(dt)[6:]}", _cudnn(ref, xr, bwd))
            table.ratio(f"{case} cuda / cuDNN fp16", f"{case}|cuda bf16", f"{case}|cuDNN float16")

    # 2. heads where Triton stops or slows, against Triton's (64, 12)
    torch.manual_seed(0)
    base = "lstm (64,12) B=16 fwd+bwd|triton bf16"
    small = LSTM(H, H, heads=12, device=DEV, dtype=BF16)
    xs = torch.randn(B, T, H, device=DEV, dtype=BF16, requires_grad=True)
    table.row("lstm (64,12) B=16 fwd+bwd", "triton bf16", _run(small, xs, "triton", True))
    for heads in (3, 6):
        cell = LSTM(H, H, heads=heads, device=DEV, dtype=BF16)
        case = f"lstm ({H // heads},{heads}) B=16 fwd+bwd"
        table.row(case, "cuda bf16", _run(cell, xs, "cuda", True), _cut(cell, xs)[:60])
        table.ratio(f"{case} / triton (64,12)", f"{case}|cuda bf16", base)
        table.row(case, "cuda bf16 flags", _flags(_run(cell, xs, "cuda", True)))
        table.ratio(f"{case} flags / triton (64,12)", f"{case}|cuda bf16 flags", base)

    # 3. batch sweep at (768, 1)
    for b in (2, 8, 32, 128):
        torch.manual_seed(0)
        cell = LSTM(H, H, device=DEV, dtype=BF16)
        ref = nn.LSTM(H, H, batch_first=True, device=DEV, dtype=torch.float16)
        x = torch.randn(b, T, H, device=DEV, dtype=BF16, requires_grad=True)
        xr = x.detach().half().requires_grad_()
        case = f"lstm (768,1) B={b} fwd+bwd"
        table.row(case, "cuda bf16", _run(cell, x, "cuda", True), _cut(cell, x)[:60])
        table.row(case, "cuDNN float16", _cudnn(ref, xr, True))
        table.ratio(f"{case} cuda / cuDNN fp16", f"{case}|cuda bf16", f"{case}|cuDNN float16")

    # 4. inference latency per step
    torch.manual_seed(0)
    steps = 4096
    cell = LSTM(1024, 1024, device=DEV, dtype=BF16)
    x = torch.randn(1, steps, 1024, device=DEV, dtype=BF16)
    case = "lstm (1024,1) B=1 T=4096 fwd"
    table.row(case, "cuda bf16", _run(cell, x, "cuda", False), _cut(cell, x)[:60])
    table.row(case, "cuda bf16 flags", _flags(_run(cell, x, "cuda", False)))
    for backend in ("cuda bf16", "cuda bf16 flags"):
        if f"{case}|{backend}" in table.times:
            per_step = table.times[f"{case}|{backend}"] * 1000 / steps
            print(f"  per step ({backend}): {per_step:.2f} us (target: at most 3)", flush=True)

    # 5. a streamed cut
    torch.manual_seed(0)
    cell = LSTM(2048, 2048, device=DEV, dtype=BF16)
    x = torch.randn(B, T, 2048, device=DEV, dtype=BF16, requires_grad=True)
    print(f"# lstm (2048,1): {_cut(cell, x)}", flush=True)
    for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
        table.row(f"lstm (2048,1) B=16 {mode}", "cuda bf16", _run(cell, x, "cuda", bwd))


if __name__ == "__main__":
    main()
