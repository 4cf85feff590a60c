"""GPU check of the selective scan's Triton backend (Mamba-1's recurrence; issue 15).

    python tools/gpu/selective_triton.py            # on the device machine (selective_check.sh)
    python tools/gpu/selective_triton.py --quick    # small shapes, seconds
    TRITON_INTERPRET=1 python tools/gpu/selective_triton.py --device cpu --quick   # dry run

1. Correctness on the device: ``selective_scan_triton`` in float32 and float64 against the
   float64 step loop (``REFERENCE``, run on the CPU) at a small odd shape with resets: the
   outputs, the final state and the gradients of every input, by relative RMS.
2. The issue's target: fwd+bwd at B=8, T=4096, d_inner=1536, N=16 with bfloat16 inputs and
   parameters, "within 2x the time of reading and writing its inputs and outputs once". The
   op computes in float32, so the bf16 call is timed as the cell ABI runs it (inputs converted
   to float32, the outputs back to bf16). The floor is the bytes a fwd+bwd must move at least
   (forward: the inputs read and ``y, h`` written; backward: ``dy, dh`` read and every input's
   gradient written, all in bf16) divided by the device's copy bandwidth, measured in the same
   run with a 1 GiB ``copy_`` (which moves 2 GiB). The float32 op is timed beside it.

Prints one markdown table (times are ``triton.testing.do_bench`` medians on CUDA).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.kernels.selective import REFERENCE, selective_scan_triton
from rnnkit.kernels.selective import triton as selective_triton


def _inputs(
    b: int, t: int, d: int, n: int, dtype: torch.dtype, device: str, seed: int = 0
) -> list[Tensor]:
    """``x, dt: (B, T, D)``, ``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``
    drawn as a Mamba layer makes them (``dt`` through softplus, ``A < 0``)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    raw = [
        r(b, t, d),
        F.softplus(r(b, t, d) - 2.0),
        -torch.exp(0.5 * r(d, n)),
        r(b, t, n),
        r(b, t, n),
        r(d),
        0.1 * r(b, d, n),
    ]
    return [x.to(device=device, dtype=dtype) for x in raw]


def _rel_rms(got: Tensor, want: Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-300))


def check_correctness(device: str) -> list[tuple[str, float, float]]:
    """``(dtype, worst relative RMS over outputs and gradients, tolerance)`` per dtype; raises
    nothing (the table shows the figures and the verdict)."""
    shape = (3, 133, 37, 5)  # odd sizes: partial channel blocks and a partial last chunk
    base = _inputs(*shape, torch.float64, "cpu", seed=1)
    resets = torch.zeros(shape[0], shape[1], dtype=torch.bool)
    resets[0, 70] = resets[2, 1] = True
    ref_in = [x.clone().requires_grad_() for x in base]
    y, h = REFERENCE(*ref_in, resets=resets)
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    want = [y, h, *torch.autograd.grad((y * gy).sum() + (h * gh).sum(), ref_in)]
    out = []
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        ins = [x.to(device=device, dtype=dtype).requires_grad_() for x in base]
        yd, hd = selective_scan_triton(*ins, resets=resets.to(device))
        loss = (yd * gy.to(device, dtype)).sum() + (hd * gh.to(device, dtype)).sum()
        got = [yd, hd, *torch.autograd.grad(loss, ins)]
        worst = max(_rel_rms(g, w) for g, w in zip(got, want, strict=True))
        out.append((str(dtype).replace("torch.", ""), worst, tol))
    return out


def _bench(fn: Callable[[], object], device: str) -> float:
    """Median milliseconds of ``fn``."""
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[1]


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes per millisecond of a device ``copy_`` (it reads and writes ``nbytes`` each)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), device)
    return 2 * nbytes / ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="B=2, T=512, d_inner=256")
    args = p.parse_args()
    dev = args.device
    reason = selective_triton.unavailable_reason(torch.device(dev))
    if reason is not None:
        raise SystemExit(f"selective_triton cannot run on {dev}: {reason}")
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)"

    rows = []
    for dtype, err, tol in check_correctness(dev):
        verdict = "ok" if err <= tol else "FAIL"
        rows.append(
            f"| correctness on {dev}, {dtype} | rel. RMS {err:.2e} (tol {tol:.0e}) | {verdict} |"
        )

    b, t, d, n = (2, 512, 256, 16) if args.quick else (8, 4096, 1536, 16)
    if dev == "cpu":  # a dry run of the script in the interpreter
        b, t, d, n = 1, 70, 20, 4
    half = _inputs(b, t, d, n, torch.bfloat16, dev)
    single = [x.float() for x in half]
    gy = torch.randn(b, t, d, device=dev, dtype=torch.bfloat16)
    gh = torch.randn(b, d, n, device=dev, dtype=torch.bfloat16)

    def bf16_fwd_bwd() -> None:
        leaves = [x.detach().requires_grad_() for x in half]
        y, h = selective_scan_triton(*(x.float() for x in leaves))
        torch.autograd.backward([y.to(torch.bfloat16), h.to(torch.bfloat16)], [gy, gh])

    def f32_fwd_bwd() -> None:
        leaves = [x.detach().requires_grad_() for x in single]
        y, h = selective_scan_triton(*leaves)
        torch.autograd.backward([y, h], [gy.float(), gh.float()])

    def bf16_fwd() -> None:
        with torch.no_grad():
            y, h = selective_scan_triton(*(x.float() for x in half))
            _ = (y.to(torch.bfloat16), h.to(torch.bfloat16))

    in_bytes = sum(x.numel() * 2 for x in half)
    out_bytes = (b * t * d + b * d * n) * 2
    fwd_floor_bytes = in_bytes + out_bytes
    train_floor_bytes = 2 * (in_bytes + out_bytes)  # + dy, dh read and every gradient written
    bw = copy_bandwidth(dev, 2**30 if dev == "cuda" else 2**24)
    ms_train, ms_f32, ms_fwd = (
        _bench(bf16_fwd_bwd, dev),
        _bench(f32_fwd_bwd, dev),
        _bench(bf16_fwd, dev),
    )
    floor_train, floor_fwd = train_floor_bytes / bw, fwd_floor_bytes / bw

    print(f"\nselective_triton on {name}, B={b}, T={t}, d_inner={d}, N={n}; copy bandwidth "
          f"{bw * 1e3 / 2**30:.0f} GiB/s\n")  # fmt: skip
    print("| what | figure | verdict |")
    print("|---|---|---|")
    for row in rows:
        print(row)
    print(f"| fwd+bwd, bf16 in/out (fp32 scan) | {ms_train:.3f} ms; floor {floor_train:.3f} ms "
          f"({train_floor_bytes / 2**20:.0f} MiB); {ms_train / floor_train:.2f}x | "
          f"{'target met' if ms_train <= 2 * floor_train else 'target (2x) missed'} |")  # fmt: skip
    print(
        f"| fwd+bwd, float32 op | {ms_f32:.3f} ms; {ms_f32 / floor_train:.2f}x the bf16 floor | - |"
    )
    print(f"| fwd only, bf16 in/out | {ms_fwd:.3f} ms; floor {floor_fwd:.3f} ms; "
          f"{ms_fwd / floor_fwd:.2f}x | - |")  # fmt: skip


if __name__ == "__main__":
    main()
