"""Benchmark of ``rnnkit.kernels.linear.scan.linear_scan`` (``h_t = a_t * h_{t-1} + b_t``).

    python tools/bench/scan.py                 # CPU, full sizes
    python tools/bench/scan.py --quick         # CPU, under a minute
    python tools/bench/scan.py --threads 2     # the CPU target's setting (wall clock)
    python tools/bench/scan.py --device cuda   # adds the Triton scans and the GPU target

On CPU the rows are ``cpp`` (the native C++ scan, what ``auto`` runs on CPU: one streaming
pass forward, one backward, lanes in parallel with at::parallel_for; built on first use, the
build is not timed) and ``torch`` (the pure-torch chunked scan, the fallback).

On CUDA the Triton rows are ``triton`` (the default: it picks a kernel), ``triton_stream`` (the
single-pass kernel, autotuned: its warm-up call tunes), ``triton_chunked`` (the 3-phase chunked
kernels) and ``triton_sequential`` (the step loop); the ``gpu target`` rows give each of the
stream and chunked kernels as a fraction of device-to-device copy bandwidth.

Prints one table. Every ratio is against baselines measured in the same process:

* ``loop``: the plain python loop with autograd (``linear_scan_reference``); at T = 2^20 in
  ``--quick`` mode it is timed at a shorter T and scaled linearly (marked ``~``);
* ``floor``: the memory floor, streaming torch ops on tensors of the op's sizes that read and
  write exactly the arrays the op must (forward: ``torch.add(a, b, out=h)`` reads ``a, b`` and
  writes ``h``; forward+backward adds ``torch.mul(dh, a, out=db)`` and ``da.copy_(h)``, i.e.
  reads ``dh, a, h`` and writes ``da, db``): 3 and 8 ``B*T*D`` arrays moved, the same mix of
  reads and writes, into outputs allocated beforehand. (The op returns fresh outputs, and
  torch's CPU allocator hands large blocks back to the OS, so each call also page-faults its
  outputs in: about 4 ms per 32 MiB array here, which the op pays and the floor does not.)

On CPU the default is one torch thread timed by process CPU time (``--threads``, ``--clock``):
on a machine shared with other jobs wall time mostly measures the neighbours. Also on CPU,
``THP_MEM_ALLOC_ENABLE=1`` is set (unless ``--no-thp``) before torch loads, so large
allocations use transparent huge pages: otherwise first-touch page faults on every freshly
allocated output cost more than the scan itself on some machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="smaller repeats (< 1 min on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch default)")
    p.add_argument(
        "--clock",
        choices=["auto", "wall", "cpu"],
        default="auto",
        help="cpu: process CPU time (robust on a shared machine; single-threaded runs only); "
        "auto: cpu for --device cpu with 1 thread, else wall",
    )
    p.add_argument("--no-thp", action="store_true", help="leave THP_MEM_ALLOC_ENABLE unset")
    p.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="how the timed repeats are summarised (min: best of, for a noisy shared machine)",
    )
    return p.parse_args()


ARGS = _args()
if not ARGS.no_thp:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402  (after the environment is set)

from rnnkit.kernels.linear.scan import _native as scan_native  # noqa: E402
from rnnkit.kernels.linear.scan import _triton as scan_triton  # noqa: E402
from rnnkit.kernels.linear.scan import linear_scan, linear_scan_reference  # noqa: E402

DEVICE = torch.device(ARGS.device)
CUDA = DEVICE.type == "cuda"


CLOCK = ARGS.clock
if CLOCK == "auto":
    CLOCK = "cpu" if not CUDA and ARGS.threads == 1 else "wall"
_now = time.process_time if CLOCK == "cpu" else time.perf_counter


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def bench(
    fn: Callable[[], object], *, reps: int, budget_s: float = 3.0, warmup: bool = True
) -> float:
    """Median (``--stat min``: least) milliseconds of ``fn`` after one warm-up call (fewer reps
    past ``budget_s``)."""
    if warmup:
        fn()
        _sync()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = _now()
        fn()
        _sync()
        times.append(_now() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= (3 if warmup else 1):
            break
    return (min(times) if ARGS.stat == "min" else statistics.median(times)) * 1e3


def floor_ms(batch: int, time_: int, width: int, *, backward: bool, reps: int) -> float:
    """The memory floor of the scan (see the module docstring): streaming ops on fp32 tensors
    of the op's sizes, moving its 3 (forward) or 8 (forward+backward) arrays."""
    a, b, dh = (torch.randn(batch, time_, width, device=DEVICE) for _ in range(3))
    h, da, db = (torch.empty(batch, time_, width, device=DEVICE) for _ in range(3))

    def run() -> None:
        torch.add(a, b, out=h)  # forward: read a, b; write h
        if backward:
            torch.mul(dh, a, out=db)  # backward: read dh, a; write db
            da.copy_(h)  # read h; write da

    return bench(run, reps=reps)


def copy_ms(n_bytes: int, *, reps: int) -> float:
    """Time of ``dst.copy_(src)`` for ``n_bytes`` bytes (it reads and writes ``n_bytes`` each)."""
    n = max(1, n_bytes // 4)
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), reps=reps)


@dataclass
class Row:
    case: str
    what: str
    ms: float
    loop_ms: float | None = None
    floor_ms: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        vs_loop = f"{self.loop_ms / self.ms:8.1f}x" if self.loop_ms else ""
        vs_floor = f"{self.ms / self.floor_ms:6.2f}" if self.floor_ms else ""
        return [self.case, self.what, f"{self.ms:10.2f}", vs_loop, vs_floor, self.note]


def inputs(batch: int, time_: int, width: int, grad: bool) -> tuple[torch.Tensor, ...]:
    """Gates in [0.9, 1), inputs and h0, generated on the device (fp32)."""
    torch.manual_seed(0)
    a = torch.rand(batch, time_, width, device=DEVICE).mul_(0.1).add_(0.9)
    b = torch.randn(batch, time_, width, device=DEVICE)
    h0 = torch.randn(batch, width, device=DEVICE)
    return tuple(t.requires_grad_(grad) for t in (a, b, h0))


def fwd(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], *ins: torch.Tensor
) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(*ins)

    return run


def fwd_bwd(
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]], *ins: torch.Tensor
) -> Callable[[], object]:
    a = ins[0]
    dh = torch.randn_like(a)
    dl = torch.randn_like(a[:, 0])

    def run() -> object:
        h, h_last = fn(*ins)
        torch.autograd.backward([h, h_last], [dh, dl])
        for t in ins:
            t.grad = None
        return None

    return run


def scan(backend: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return lambda a, b, h0: linear_scan(a, b, h0, backend=backend)


def reference(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return linear_scan_reference(a, b, h0)


def case_rows(
    label: str,
    batch: int,
    time_: int,
    width: int,
    backends: list[str],
    *,
    reps: int,
    loop_t: int | None,
) -> list[Row]:
    """Forward and forward+backward rows for one shape, with its loop and floor baselines."""
    n = batch * time_ * width * 4
    rows: list[Row] = []
    floor_f = floor_ms(batch, time_, width, backward=False, reps=reps)
    floor_fb = floor_ms(batch, time_, width, backward=True, reps=reps)
    loop_f = loop_fb = None
    note = ""
    if loop_t is not None:
        lt = min(loop_t, time_)
        scale = time_ / lt
        note = "" if lt == time_ else f"loop ~ timed at T={lt}, x{scale:g}"
        # a python loop has nothing to warm up; long loops run once
        ins = inputs(batch, lt, width, False)
        loop_f = bench(fwd(reference, *ins), reps=3, warmup=False) * scale
        ins = inputs(batch, lt, width, True)
        loop_fb = bench(fwd_bwd(reference, *ins), reps=3, warmup=False) * scale
        rows.append(Row(label, "fwd      python loop", loop_f, loop_f, floor_f, note))
        rows.append(Row(label, "fwd+bwd  python loop", loop_fb, loop_fb, floor_fb, note))
    rows.append(
        Row(label, "fwd      floor", floor_f, loop_f, floor_f, f"{3 * n / 1e6:.0f} MB moved")
    )
    rows.append(
        Row(label, "fwd+bwd  floor", floor_fb, loop_fb, floor_fb, f"{8 * n / 1e6:.0f} MB moved")
    )
    for be in backends:
        ins = inputs(batch, time_, width, False)
        rows.append(
            Row(label, f"fwd      {be}", bench(fwd(scan(be), *ins), reps=reps), loop_f, floor_f)
        )
        ins = inputs(batch, time_, width, True)
        rows.append(
            Row(
                label,
                f"fwd+bwd  {be}",
                bench(fwd_bwd(scan(be), *ins), reps=reps),
                loop_fb,
                floor_fb,
            )
        )
    return rows


def gpu_target(reps: int) -> list[Row]:
    """Scan at B=8, D=1536, T=65536 as a fraction of device-to-device copy bandwidth: forward
    for every Triton kernel, forward+backward for the stream and chunked ones."""
    batch, time_, width = 8, 65536, 1536
    n = batch * time_ * width * 4
    copy = copy_ms(3 * n // 2, reps=reps)
    copy_fb = copy_ms(8 * n // 2, reps=reps)
    rows = [
        Row(
            "gpu target",
            "fwd      floor (copy)",
            copy,
            None,
            copy,
            f"{2 * 3 * n / 2 / copy / 1e6:.0f} GB/s",
        ),
        Row(
            "gpu target",
            "fwd+bwd  floor (copy)",
            copy_fb,
            None,
            copy_fb,
            f"{2 * 8 * n / 2 / copy_fb / 1e6:.0f} GB/s",
        ),
    ]
    ins = inputs(batch, time_, width, False)
    for be in ["triton_stream", "triton_chunked", "triton_sequential"]:
        ms = bench(fwd(scan(be), *ins), reps=reps)
        rows.append(
            Row(
                "gpu target", f"fwd      {be}", ms, None, copy, f"{copy / ms:.0%} of copy bandwidth"
            )
        )
    del ins
    ins = inputs(batch, time_, width, True)
    for be in ["triton_stream", "triton_chunked"]:
        ms = bench(fwd_bwd(scan(be), *ins), reps=reps)
        rows.append(
            Row(
                "gpu target",
                f"fwd+bwd  {be}",
                ms,
                None,
                copy_fb,
                f"{copy_fb / ms:.0%} of copy bandwidth",
            )
        )
    ins = tuple(t.detach() for t in ins)
    try:  # accelerated-scan: (B, D, T) layout, T a power of 2
        from accelerated_scan.warp import scan as warp_scan  # type: ignore[import-not-found]

        at = ins[0].transpose(1, 2).contiguous()
        bt = ins[1].transpose(1, 2).contiguous()
        ms = bench(lambda: warp_scan(at, bt), reps=reps)
        rows.append(
            Row(
                "gpu target",
                "fwd      accelerated_scan.warp",
                ms,
                None,
                copy,
                f"{copy / ms:.0%} of copy bandwidth",
            )
        )
    except Exception as exc:  # not installed, or it failed: say so in the table
        rows.append(
            Row(
                "gpu target",
                "fwd      accelerated_scan.warp",
                float("nan"),
                note=f"skipped: {type(exc).__name__}",
            )
        )
    return rows


def main() -> None:
    if ARGS.threads and not CUDA:
        torch.set_num_threads(ARGS.threads)
    if CUDA and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    reps = 5 if ARGS.quick else 15
    backends = ["torch"]
    simd = ""
    if not CUDA:
        reason = scan_native.unavailable_reason(DEVICE, torch.float32)
        if reason is None and scan_native.usable(DEVICE, torch.float32):  # builds if needed
            backends.insert(0, "cpp")
            simd = f", cpp kernels: {scan_native.LIBRARY.ops().simd_variant()}"
        else:
            print(f"# cpp skipped: {reason or 'the build failed (see the warning)'}")
    if CUDA:
        reason = scan_triton.unavailable_reason(DEVICE, torch.float32)
        if reason is None:
            backends += ["triton", "triton_stream", "triton_chunked", "triton_sequential"]
        else:
            print(f"# triton skipped: {reason}")
    t0 = time.perf_counter()
    rows = case_rows("B=8 T=4096 D=256", 8, 4096, 256, backends, reps=reps, loop_t=4096)
    long_loop_t = 2**14 if ARGS.quick else 2**20
    rows += case_rows("B=1 T=2^20 D=16", 1, 2**20, 16, backends, reps=reps, loop_t=long_loop_t)
    if CUDA:
        rows += gpu_target(reps)
    device = torch.cuda.get_device_name() if CUDA else f"cpu, {torch.get_num_threads()} threads"
    device += f", {CLOCK} clock, {ARGS.stat} of repeats{simd}"
    print(
        f"# linear_scan benchmark: {device}, fp32, torch {torch.__version__}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(f"# ms: {ARGS.stat}; 'vs loop': python loop time / this; 'vs floor': this / memory floor")
    header = ["case", "what", "ms", "vs loop", "vs floor", "note"]
    table = [header] + [r.cells() for r in rows]
    widths = [max(len(line[i].strip()) for line in table) for i in range(len(header))]
    for line in table:
        print(" | ".join(c.strip().ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
