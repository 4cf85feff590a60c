"""Dense (768, 1) LSTM on CUDA: rnnkit's backend="auto" against cuDNN's nn.LSTM, same process.

FlashRNN protocol: B=16, T=1024, H=768, bf16, triton.testing.do_bench medians. Target: auto
within 1.05x of cuDNN, forward and forward+backward. Run on the GPU machine from the repo root.
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from rnnkit.core import LSTM
from rnnkit.core.dispatch import KernelCall, select

B, T, H = 16, 1024, 768
dev, dt = "cuda", torch.bfloat16


def main() -> None:
    net = torch.nn.LSTM(H, H, batch_first=True, device=dev, dtype=dt)
    net.flatten_parameters()
    cell = LSTM.from_torch(net)
    x = torch.randn(B, T, H, device=dev, dtype=dt, requires_grad=True)
    gy = torch.randn(B, T, H, device=dev, dtype=dt)
    chosen = select(KernelCall(cell, x, None, None, needs_grad=True), "auto").backend
    rows = []
    for name, fn in (
        ("cuDNN nn.LSTM", lambda: net(x)[0]),
        (f"rnnkit auto ({chosen})", lambda: cell(x)[0]),
    ):

        def fwd(fn=fn) -> None:
            with torch.no_grad():
                fn()

        def fb(fn=fn) -> None:
            fn().backward(gy)

        rows.append(
            (
                name,
                do_bench(fwd, return_mode="median"),
                do_bench(fb, grad_to_none=[x], return_mode="median"),
            )
        )
    base = rows[0]
    print(f"{torch.cuda.get_device_name()}, LSTM B={B} T={T} H={H} bf16, median ms")
    print(f"{'':24s} {'fwd':>8s} {'fwd+bwd':>8s} {'fwd/cuDNN':>9s} {'fb/cuDNN':>9s}")
    for name, f, b in rows:
        print(f"{name:24s} {f:8.2f} {b:8.2f} {f / base[1]:9.2f} {b / base[2]:9.2f}")


if __name__ == "__main__":
    main()
