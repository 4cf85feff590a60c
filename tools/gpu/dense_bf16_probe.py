"""Why is backend="auto" 1.12x/1.20x slower than nn.LSTM for the dense bf16 LSTM on CUDA?

A diagnostic for issue 3 (the fp16 rows match nn.LSTM): times, in one process and in
interleaved order (A B A B), nn.LSTM, rnnkit auto, and ``torch._VF.lstm`` called directly with
(a) rnnkit's parameter list and (b) nn.LSTM's own flat weights, and lists the CUDA kernels each
launches, to tell whether cuDNN runs at all in bf16 and where the extra time goes. Run on the
GPU machine from the repo root: ``python tools/gpu/dense_bf16_probe.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import _VF
from triton.testing import do_bench

from rnnkit.core import LSTM
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.kernels.gated.torch_native import _flat_weights

B, T, H = 16, 1024, 768


def _kernels(fn: Callable[[], None], label: str) -> None:
    """Print the five most expensive CUDA kernels of one call and how many launches in all."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    events.sort(key=lambda e: -e.self_device_time_total)
    launches = sum(e.count for e in events)
    total = sum(e.self_device_time_total for e in events) / 1e3
    print(f"  {label}: {launches} kernel launches, {total:.2f} ms GPU time")
    for e in events[:5]:
        print(f"    {e.count:6d} x {e.self_device_time_total / 1e3:8.2f} ms  {e.key[:90]}")


def main() -> None:
    print(
        torch.cuda.get_device_name(),
        "torch",
        torch.__version__,
        "cudnn",
        torch.backends.cudnn.version(),
    )
    dt = torch.bfloat16
    net = torch.nn.LSTM(H, H, batch_first=True, device="cuda", dtype=dt)
    net.flatten_parameters()
    cell = LSTM.from_torch(net)
    print(
        "cell params:",
        {n: (p.dtype, p.device.type, tuple(p.stride())) for n, p in cell.named_parameters()},
    )
    x = torch.randn(B, T, H, device="cuda", dtype=dt, requires_grad=True)
    gy = torch.randn(B, T, H, device="cuda", dtype=dt)
    print("auto picks:", select(KernelCall(cell, x, None, None, needs_grad=True), "auto").backend)
    st = cell.init_state(B, device=x.device, dtype=x.dtype)
    print("init_state dtypes:", [s.dtype for s in st])
    ours = _flat_weights(cell)
    h0 = torch.zeros(1, B, H, device="cuda", dtype=dt)
    c0 = torch.zeros(1, B, H, device="cuda", dtype=dt)

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "nn.LSTM": lambda: net(x)[0],
        "rnnkit auto": lambda: cell(x)[0],
        "_VF.lstm rnnkit weights": lambda: _VF.lstm(
            x, (h0, c0), ours, True, 1, 0.0, True, False, True
        )[0],
        "_VF.lstm nn flat weights": lambda: _VF.lstm(
            x, (h0, c0), net._flat_weights, True, 1, 0.0, True, False, True
        )[0],
        "nn.LSTM given (h0, c0)": lambda: net(x, (h0, c0))[0],
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(2):  # interleaved: A B C ... A B C
        for name, fn in variants.items():

            def fwd(fn: Callable[[], torch.Tensor] = fn) -> None:
                with torch.no_grad():
                    fn()

            def fb(fn: Callable[[], torch.Tensor] = fn) -> None:
                fn().backward(gy)

            f = do_bench(fwd, return_mode="median")
            b = do_bench(fb, grad_to_none=[x], return_mode="median")
            results[name].append((f, b))
    base_f = min(r[0] for r in results["nn.LSTM"])
    base_b = min(r[1] for r in results["nn.LSTM"])
    print(f"\nbf16 B={B} T={T} H={H}, do_bench medians (ms), two interleaved rounds")
    print(
        f"{'variant':28s} {'fwd r1':>8s} {'fwd r2':>8s} {'fb r1':>8s} {'fb r2':>8s}"
        f" {'fwd/nn':>7s} {'fb/nn':>7s}"
    )
    for name, rs in results.items():
        f = min(r[0] for r in rs)
        b = min(r[1] for r in rs)
        print(
            f"{name:28s} {rs[0][0]:8.2f} {rs[1][0]:8.2f} {rs[0][1]:8.2f} {rs[1][1]:8.2f}"
            f" {f / base_f:7.2f} {b / base_b:7.2f}"
        )
    print("\nCUDA kernels of one forward+backward:")
    for name in ("nn.LSTM", "rnnkit auto"):
        fn = variants[name]
        _kernels(lambda fn=fn: fn().backward(gy), name)


if __name__ == "__main__":
    main()
