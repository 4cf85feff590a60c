"""Measure which GPU backend runs each gated call shape fastest, for ``auto``'s table.

    python tools/gpu/auto_table.py --out "$OUT/auto_table.json"      # on the GPU machine
    cp <fetched>/auto_table.json packages/kernels/src/rnnkit/kernels/gated/   # here, commit

Times ``cuda``, ``triton`` and ``torch`` (cuDNN) on a grid of cell kinds, heads x head sizes,
batch sizes and passes (forward alone, forward + backward) in one dtype, and writes one row per
shape and pass in the format :mod:`rnnkit.kernels.gated.measured` reads: the device's name, the
shape, the fastest backend and every backend's median milliseconds (``triton.testing.do_bench``,
or CUDA events without triton). A backend that refuses a shape (``supports`` says why) is left
out of its row; a shape no backend ran gets no row. Prints the table as it goes and stops
starting new shapes after ``--budget`` seconds, writing what it has (the rows of a partial grid
are as good as a full grid's: shapes without a row keep the documented tiers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _timing import median_ms  # tools/gpu, on sys.path when run as a script

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, kernels_for

CELLS = {"elman": Elman, "lstm": LSTM, "gru": GRU, "slstm": SLSTM}
BACKENDS = ("cuda", "triton", "torch")
#: (heads, head size): dense layers, and the multi-head cuts where Triton stops or slows
SHAPES = ((1, 768), (1, 1024), (3, 256), (6, 128), (12, 64))
BATCHES = (2, 16, 128)


def _why_not(cell: Any, x: torch.Tensor, backend: str) -> str | None:
    """Why ``backend`` cannot run the call (``None``: it can)."""
    kernels = [k for k in kernels_for(cell) if k.backend == backend]
    if not kernels:
        return "not registered"
    call = KernelCall(cell, x, None, None, x.requires_grad)
    reasons = [k.why_not(call) for k in kernels]
    return None if any(r is None for r in reasons) else str(reasons[0])


def measure(
    kind: str, heads: int, head_dim: int, batch: int, dtype: torch.dtype, T: int
) -> list[dict[str, Any]]:
    """The rows (forward, forward + backward) of one shape."""
    cell = CELLS[kind](64, heads * head_dim, heads=heads).to("cuda", dtype)
    x = torch.randn(batch, T, 64, device="cuda", dtype=dtype, requires_grad=True)
    name = torch.cuda.get_device_name()
    rows = []
    for pass_ in ("forward", "forward+backward"):
        ms: dict[str, float] = {}
        for backend in BACKENDS:
            xx = x if pass_ == "forward+backward" else x.detach()
            if _why_not(cell, xx, backend) is not None:
                continue

            def run(b: str = backend, xx: torch.Tensor = xx) -> Any:
                y, _ = cell(xx, backend=b)
                if xx.requires_grad:
                    y.float().sum().backward()
                return y

            try:
                ms[backend] = median_ms(run, warmup=5, rep=25)
            except Exception as e:  # a backend failing here must not stop the grid
                print(f"  {backend} failed on {kind} {heads}x{head_dim} B={batch}: {e}")
        if ms:
            best = min(ms, key=ms.__getitem__)
            rows.append(
                {
                    "device": name,
                    "kind": kind,
                    "dtype": str(dtype).removeprefix("torch."),
                    "heads": heads,
                    "head_dim": head_dim,
                    "batch": batch,
                    "pass": pass_,
                    "fastest": best,
                    "ms": {k: round(v, 4) for k, v in ms.items()},
                }
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the JSON table to write")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--time", type=int, default=256, help="sequence length T")
    p.add_argument("--budget", type=float, default=240.0, help="seconds before stopping")
    p.add_argument("--kinds", nargs="+", default=list(CELLS), choices=list(CELLS))
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    dtype = getattr(torch, args.dtype)
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, T={args.time}, median ms")
    print(
        f"{'kind':6s} {'shape':>9s} {'B':>4s} {'pass':>16s}  "
        + "  ".join(f"{b:>8s}" for b in BACKENDS)
        + "  fastest"
    )
    for kind in args.kinds:
        for heads, head_dim in SHAPES:
            for batch in BATCHES:
                if time.monotonic() - start > args.budget:
                    print(f"budget of {args.budget:.0f} s spent: stopping")
                    args.out.write_text(json.dumps(rows, indent=1) + "\n")
                    return
                for row in measure(kind, heads, head_dim, batch, dtype, args.time):
                    rows.append(row)
                    cols = "  ".join(
                        f"{row['ms'][b]:8.3f}" if b in row["ms"] else f"{'-':>8s}" for b in BACKENDS
                    )
                    print(
                        f"{kind:6s} {heads:>3d}x{head_dim:<5d} {batch:>4d} {row['pass']:>16s}  "
                        f"{cols}  {row['fastest']}"
                    )
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} rows in {time.monotonic() - start:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
