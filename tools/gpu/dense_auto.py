"""Dense (768, 1) LSTM on CUDA: rnnkit's backend="auto" against nn.LSTM, same process.

FlashRNN protocol: B=16, T=1024, H=768, triton.testing.do_bench medians, in bfloat16 and in
float16 (FlashRNN's cuDNN baseline ran in float16). Target: auto within 1.05x of nn.LSTM,
forward and forward+backward. ``nn.LSTM (no cuDNN)`` shows whether torch used cuDNN at all for
the dtype (it falls back to a per-step loop where cuDNN has no kernel). Each variant is timed in
ROUNDS interleaved rounds and the best round counts (see docs/kernels-triton.md). Run on the GPU
machine from the repo root.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from triton.testing import do_bench

from rnnkit.core import LSTM
from rnnkit.core.dispatch import KernelCall, select

B, T, H = 16, 1024, 768
ROUNDS = 3


def _no_cudnn(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        enabled = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        try:
            return fn()
        finally:
            torch.backends.cudnn.enabled = enabled

    return run


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, LSTM B={B} T={T} H={H}, best of {ROUNDS} medians, ms")
    print(f"{'':30s} {'fwd':>8s} {'fwd+bwd':>8s} {'fwd/nn':>7s} {'fb/nn':>7s}")
    for dt in (torch.bfloat16, torch.float16):
        net = torch.nn.LSTM(H, H, batch_first=True, device="cuda", dtype=dt)
        net.flatten_parameters()
        cell = LSTM.from_torch(net)
        x = torch.randn(B, T, H, device="cuda", dtype=dt, requires_grad=True)
        gy = torch.randn(B, T, H, device="cuda", dtype=dt)
        chosen = select(KernelCall(cell, x, None, None, needs_grad=True), "auto").backend
        variants = (
            ("nn.LSTM", lambda net=net, x=x: net(x)[0]),
            (f"rnnkit auto ({chosen})", lambda cell=cell, x=x: cell(x)[0]),
            ("nn.LSTM (no cuDNN)", _no_cudnn(lambda net=net, x=x: net(x)[0])),
        )
        best: dict[str, tuple[float, float]] = {}
        # bf16 cuDNN LSTMs run step by step and are bound by kernel launches from the host:
        # one do_bench round can differ from the next by 40%, so rounds are interleaved
        # (A B C A B C ...) and the best of each variant is compared.
        for _ in range(ROUNDS):
            for name, fn in variants:

                def fwd(fn: Callable[[], torch.Tensor] = fn) -> None:
                    with torch.no_grad():
                        fn()

                def fb(fn: Callable[[], torch.Tensor] = fn, gy: torch.Tensor = gy) -> None:
                    fn().backward(gy)

                f = do_bench(fwd, return_mode="median")
                b = do_bench(fb, grad_to_none=[x], return_mode="median")
                old = best.get(name, (f, b))
                best[name] = (min(f, old[0]), min(b, old[1]))
        rows = [(name, *best[name]) for name, _ in variants]
        base = rows[0]
        for name, f, b in rows:
            label = f"{str(dt).removeprefix('torch.')} {name}"
            print(f"{label:30s} {f:8.2f} {b:8.2f} {f / base[1]:7.2f} {b / base[2]:7.2f}")


if __name__ == "__main__":
    main()
