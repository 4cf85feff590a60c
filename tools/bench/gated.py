"""Benchmark the gated-cell backends (reference, fused, fused_cpp, torch, auto, triton).

Prints ONE table per run. Every ratio compares timings taken in this process, interleaved
round-robin so that a change in machine load hits every candidate alike:

- ``x nn``: speed-up over the torch.nn module (``nn.LSTM/GRU/RNN``, ``nn.LSTMCell`` for ``step``),
  i.e. ``t_nn / t``; above 1 is faster.
- ``x ref``: speed-up over the ``reference`` backend (the autograd loop over ``Cell.recur``).
- ``GFLOP/s``: GEMM flops only (input projection and recurrent products; backward counted as
  twice the forward), and ``%mm``: that rate against a large ``torch.mm`` timed in the same run.

CPU (default): fp32, ``--threads`` (2) threads, LSTM/GRU/Elman at B=16, T=512, input 128,
hidden 256, plus LSTM and sLSTM with 4 heads of 64, plus ``step`` latency at batch 1 (and a
one-step ``forward`` on ``fused`` and ``fused_cpp``). Timings are the best of ``--reps``
round-robin passes (the least disturbed by other processes). ``--seq-len`` and ``--cases``
(e.g. ``lstm:1,slstm:4``) shorten a run on a loaded machine. The native ``fused_cpp`` library is
built (or loaded from its cache) before any timing.

GPU (``--device cuda``): FlashRNN's head-dimension protocol, LSTM, B=16, T=1024, total hidden
768 as (head dim, heads) in (16,48), (32,24), (64,12), (128,6), (256,3), (768,1), bf16,
medians of ``triton.testing.do_bench``; cuDNN ``nn.LSTM`` for heads=1; ``fused``, ``torch``,
``auto`` and any ``triton`` backend that is registered.

Usage::

    python tools/bench/gated.py [--device cpu|cuda] [--quick] [--threads 2] [--reps 5]
                                [--seq-len 512] [--cases lstm:1,gru:1,elman:1,lstm:4,slstm:4]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, backend_names, select
from rnnkit.core.errors import BackendUnavailableError

CELLS: dict[str, type[Any]] = {"lstm": LSTM, "gru": GRU, "elman": Elman, "slstm": SLSTM}
GATES = {"lstm": 4, "gru": 3, "elman": 1, "slstm": 4}
NN = {"lstm": nn.LSTM, "gru": nn.GRU, "elman": nn.RNN}


@dataclass
class Case:
    """One benchmark shape."""

    kind: str
    heads: int
    B: int
    T: int
    inp: int
    H: int
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    targets: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.kind} N={self.heads} D={self.H // self.heads}"

    def gemm_flops(self, mode: str) -> float:
        """GEMM flops of one call: projection plus block-diagonal recurrence, per step."""
        G, D = GATES[self.kind], self.H // self.heads
        fwd = 2.0 * self.T * self.B * G * self.H * (self.inp + D)
        return fwd * (3 if mode == "fwd+bwd" else 1)


@dataclass
class Row:
    case: str
    mode: str
    backend: str
    ms: float | None
    gflops: float | None = None
    x_nn: float | None = None
    x_ref: float | None = None
    target: str = ""
    note: str = ""
    # auto ran the very op torch.nn runs (torch's own RNN op): "never slower" holds by
    # construction, and the ratio shows only the run-to-run spread of one op.
    same_op: bool = False


# --- timing ---------------------------------------------------------------------------------


def time_round_robin(
    fns: dict[str, Callable[[], object]], reps: int, inner: int = 1
) -> dict[str, float]:
    """Best-of-``reps`` seconds per call of each function, measured interleaved (CPU)."""
    for f in fns.values():
        f()  # warm-up: allocator, lazy init, plugin loading
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            best[name] = min(best[name], (time.perf_counter() - t0) / inner)
    return best


def time_cuda(fns: dict[str, Callable[[], object]], quick: bool) -> dict[str, float]:
    """Median seconds per call with ``triton.testing.do_bench`` (CUDA)."""
    from triton.testing import do_bench

    warmup, rep = (25, 100) if quick else (100, 500)
    out = {}
    for name, f in fns.items():
        out[name] = float(do_bench(f, warmup=warmup, rep=rep, return_mode="median")) / 1e3
    return out


def mm_rate(device: str, dtype: torch.dtype, n: int, quick: bool, reps: int) -> float:
    """GFLOP/s of a large square ``torch.mm`` in this process (the achievable GEMM rate)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if device == "cuda":
        t = time_cuda({"mm": lambda: torch.mm(a, b)}, quick)["mm"]
    else:
        t = time_round_robin({"mm": lambda: torch.mm(a, b)}, reps)["mm"]
    return 2.0 * n**3 / t / 1e9


# --- workloads ------------------------------------------------------------------------------


def _grad_inputs(module: nn.Module, x: Tensor) -> list[Tensor]:
    return [x, *(p for p in module.parameters() if p.requires_grad)]


def cell_fn(cell: Any, x: Tensor, backend: str, mode: str) -> Callable[[], object]:
    """A call of ``cell.forward`` on ``backend`` (with the backward for ``fwd+bwd``)."""
    if mode == "fwd":

        def fwd() -> object:
            with torch.no_grad():
                return cell(x, backend=backend)

        return fwd
    xr = x.detach().clone().requires_grad_()
    inputs = _grad_inputs(cell, xr)

    def fwd_bwd() -> object:
        y, _ = cell(xr, backend=backend)
        return torch.autograd.grad(y.sum(), inputs)

    return fwd_bwd


def nn_fn(module: nn.Module, x: Tensor, mode: str) -> Callable[[], object]:
    """A call of a torch.nn RNN module (batch-first)."""
    if mode == "fwd":

        def fwd() -> object:
            with torch.no_grad():
                return module(x)

        return fwd
    xr = x.detach().clone().requires_grad_()
    inputs = _grad_inputs(module, xr)

    def fwd_bwd() -> object:
        y, _ = module(xr)
        return torch.autograd.grad(y.sum(), inputs)

    return fwd_bwd


def auto_choice(cell: Any, x: Tensor, mode: str) -> str:
    """The backend ``auto`` picks for this call (shown in the table)."""
    needs_grad = mode != "fwd"
    return select(KernelCall(cell, x, None, None, needs_grad), "auto").backend


def why_not(cell: Any, x: Tensor, backend: str, mode: str) -> str | None:
    """Why ``backend`` cannot run this call, or ``None``."""
    try:
        select(KernelCall(cell, x, None, None, mode != "fwd"), backend)
    except BackendUnavailableError as e:
        return str(e).split(": ", 1)[-1]
    return None


# --- CPU ------------------------------------------------------------------------------------


def build_native() -> str:
    """Build (or load from the cache) the ``fused_cpp`` library so no timing includes a compile;
    a line on the outcome ("" when rnnkit-kernels has no such backend)."""
    try:
        from rnnkit.kernels.gated.fused_cpp import LIBRARY
        from rnnkit.kernels.native import BuildError
    except ImportError:
        return ""
    try:
        info = LIBRARY.build()
    except BuildError as e:
        return f"fused_cpp unavailable: {e}"
    how = "compiled" if info.compiled else "loaded from the cache"
    return f"fused_cpp {how} in {info.seconds:.1f} s ({LIBRARY.ops().info()})"


def cpu_cases(quick: bool, seq_len: int | None = None, only: str | None = None) -> list[Case]:
    T = seq_len or (16 if quick else 512)
    B, inp, H = 16, 128, 256
    vs_nn = {("fwd+bwd", "auto"): "x nn >= 1.5", ("fwd", "auto"): "x nn >= 1.0"}
    vs_ref = {("fwd", "auto"): "x ref >= 5", ("fwd+bwd", "auto"): "x ref >= 5"}
    cases = [
        Case("lstm", 1, B, T, inp, H, targets=vs_nn),
        Case("gru", 1, B, T, inp, H, targets=vs_nn),
        Case("elman", 1, B, T, inp, H, targets={("fwd", "auto"): "x nn >= 1.0"}),
        Case("lstm", 4, B, T, inp, H, targets=vs_ref),
        Case("slstm", 4, B, T, inp, H, targets=vs_ref),
    ]
    if only:
        wanted = {(k, int(n)) for k, n in (c.split(":") for c in only.split(","))}
        cases = [c for c in cases if (c.kind, c.heads) in wanted]
    return cases


def run_case_cpu(case: Case, reps: int, peak: float) -> list[Row]:
    torch.manual_seed(0)
    cell = CELLS[case.kind](case.inp, case.H, heads=case.heads)
    x = torch.randn(case.B, case.T, case.inp)
    rows: list[Row] = []
    for mode in case.modes:
        backends = ["reference", "fused", "fused_cpp", "torch", "auto"]
        fns: dict[str, Callable[[], object]] = {}
        notes: dict[str, str] = {}
        if case.heads == 1 and case.kind in NN:
            fns["torch.nn"] = nn_fn(cell.to_torch(), x, mode)
        for be in backends:
            if be not in backend_names() and be != "auto":
                continue
            reason = why_not(cell, x, be, mode)
            if reason is not None:
                if be == "torch" and case.heads > 1:
                    continue  # dense only: not worth a row per multi-head case
                notes[be] = reason
                continue
            fns[be] = cell_fn(cell, x, be, mode)
        times = time_round_robin(fns, reps)
        rows += _rows(case, mode, times, notes, peak, auto=auto_choice(cell, x, mode))
    return rows


def run_step_cpu(reps: int, quick: bool) -> list[Row]:
    """``Cell.step`` latency at batch 1, hidden 256 against ``nn.LSTMCell`` (inference)."""
    torch.manual_seed(0)
    H = 256
    cell = LSTM(H, H)
    ref = nn.LSTMCell(H, H)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.weight_ih)
        ref.weight_hh.copy_(cell.dense_recurrent())
        assert cell.bias is not None
        ref.bias_ih.copy_(cell.bias)
        ref.bias_hh.zero_()
    x = torch.randn(1, H)
    state = cell.init_state(1)
    hc = (state.h.clone(), state.c.clone())
    inner = 20 if quick else 400

    def step() -> object:
        with torch.no_grad():
            return cell.step(x, state)

    def nn_step() -> object:
        with torch.no_grad():
            return ref(x, hc)

    def recur() -> object:
        with torch.no_grad():
            return cell.recur(torch.nn.functional.linear(x, cell.weight_ih, cell.bias), state)

    fns: dict[str, Callable[[], object]] = {
        "torch.nn": nn_step,
        "Cell.step": step,
        "Cell.recur": recur,
    }
    # A one-step sequence through a sequence backend: what streaming through ``forward`` costs.
    x1 = x.unsqueeze(1)
    for be in ("fused", "fused_cpp"):
        if be in backend_names() and why_not(cell, x1, be, "fwd") is None:

            def seq1(be: str = be) -> object:
                with torch.no_grad():
                    return cell(x1, state, backend=be)

            fns[f"forward T=1 {be}"] = seq1
    times = time_round_robin(fns, reps, inner)
    rows = []
    for name, t in times.items():
        rows.append(
            Row(
                "lstm step B=1 H=256",
                "step",
                name,
                t * 1e3,
                x_nn=times["torch.nn"] / t,
                target="x nn >= 1/1.3" if name == "Cell.step" else "",
            )
        )
    return rows


# --- CUDA -----------------------------------------------------------------------------------


def run_cuda(quick: bool) -> tuple[list[Row], float]:
    dtype = torch.bfloat16
    peak = mm_rate("cuda", dtype, 8192, quick, 1)
    B, T, HID = 16, (256 if quick else 1024), 768
    configs = [(16, 48), (32, 24), (64, 12), (128, 6), (256, 3), (768, 1)]
    rows: list[Row] = []
    for _, N in configs:
        case = Case("lstm", N, B, T, HID, HID)
        torch.manual_seed(0)
        cell = LSTM(HID, HID, heads=N, device="cuda", dtype=dtype)
        x = torch.randn(B, T, HID, device="cuda", dtype=dtype)
        for mode in case.modes:
            fns: dict[str, Callable[[], object]] = {}
            notes: dict[str, str] = {}
            if N == 1:
                fns["torch.nn"] = nn_fn(cell.to_torch(), x, mode)
            candidates = ["fused", "torch", "auto"]
            # Hook: any triton backend registered by rnnkit-kernels is benchmarked as well.
            candidates += [b for b in backend_names() if b.startswith("triton") or b == "cuda"]
            for be in candidates:
                reason = why_not(cell, x, be, mode)
                if reason is not None:
                    if not (be == "torch" and N > 1):
                        notes[be] = reason
                    continue
                fns[be] = cell_fn(cell, x, be, mode)
            times = time_cuda(fns, quick)
            rows += _rows(case, mode, times, notes, peak, auto=auto_choice(cell, x, mode))
    return rows, peak


# --- table ----------------------------------------------------------------------------------


def _rows(
    case: Case,
    mode: str,
    times: dict[str, float],
    notes: dict[str, str],
    peak: float,
    auto: str,
) -> list[Row]:
    t_nn, t_ref = times.get("torch.nn"), times.get("reference")
    out = []
    for name, t in times.items():
        gf = case.gemm_flops(mode) / t / 1e9
        row = Row(
            f"{case.label} B={case.B} T={case.T}",
            mode,
            f"auto->{auto}" if name == "auto" else name,
            t * 1e3,
            gflops=gf,
            x_nn=t_nn / t if t_nn else None,
            x_ref=t_ref / t if t_ref else None,
            target=case.targets.get((mode, name), ""),
            same_op=name == "auto" and auto == "torch" and case.heads == 1,
        )
        row.note = f"{100 * gf / peak:.0f}%mm" if peak > 0 else ""
        out.append(row)
    for name, reason in notes.items():
        out.append(Row(f"{case.label} B={case.B} T={case.T}", mode, name, None, note=reason))
    return out


def _check(row: Row) -> str:
    """``"<target>: MET"`` or ``"...: MISSED"`` for a row with a target (e.g. ``x nn >= 1.5``)."""
    if not row.target:
        return ""
    _, metric, _, value = row.target.split()
    num, _, den = value.partition("/")
    limit = float(num) / float(den or 1)
    have = row.x_nn if metric == "nn" else row.x_ref
    if have is None:
        return f"{row.target}: n/a"
    if have < limit and row.same_op and metric == "nn":
        return f"{row.target}: same op as torch.nn (spread)"
    return f"{row.target}: {'MET' if have >= limit else 'MISSED'}"


def print_table(rows: list[Row], header: str) -> None:
    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        (
            "case",
            "mode",
            "backend",
            "ms",
            "GFLOP/s",
            "x nn",
            "x ref",
            "note",
            "target",
        )
    ]
    for r in rows:
        lines.append(
            (
                r.case,
                r.mode,
                r.backend,
                f(r.ms, ".3f" if (r.ms or 0) < 1 else ".1f"),
                f(r.gflops, ".1f"),
                f(r.x_nn, ".2f"),
                f(r.x_ref, ".1f"),
                r.note if len(r.note) < 60 else r.note[:57] + "...",
                _check(r),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print(header)
    for k, line in enumerate(lines):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="short sequences, fewer repetitions")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--reps", type=int, default=None, help="round-robin passes (CPU)")
    ap.add_argument("--seq-len", type=int, default=None, help="T of the CPU cases (512)")
    ap.add_argument("--cases", default=None, help="CPU cases as kind:heads,... (all)")
    ap.add_argument("--no-step", action="store_true", help="skip the step-latency rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device available", file=sys.stderr)
            return 2
        rows, peak = run_cuda(args.quick)
        where = f"{torch.cuda.get_device_name()}, bf16, do_bench medians"
    else:
        reps = args.reps or (1 if args.quick else 5)
        native = build_native()
        if native:
            print(native, file=sys.stderr, flush=True)
        peak = mm_rate("cpu", torch.float32, 1024 if args.quick else 2048, args.quick, reps)
        rows = []
        for case in cpu_cases(args.quick, args.seq_len, args.cases):
            print(f"... {case.label}", file=sys.stderr, flush=True)
            rows += run_case_cpu(case, reps, peak)
        if not args.no_step:
            rows += run_step_cpu(reps, args.quick)
        where = f"CPU fp32, {torch.get_num_threads()} threads, best of {reps} round-robin passes"
    header = (
        f"rnnkit gated backends: {where}; torch {torch.__version__}; "
        f"large torch.mm = {peak:.1f} GFLOP/s; "
        f"x nn / x ref = speed-up over torch.nn / reference (>1 is faster)"
    )
    print_table(rows, header)
    print(f"({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
