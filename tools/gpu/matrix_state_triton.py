"""GPU timings of the matrix-state form's ``chunked_triton`` backend against ``chunked``.

    python tools/gpu/matrix_state_triton.py            # B=8, 8 heads of 64, T 1024/4096/16384
    python tools/gpu/matrix_state_triton.py --quick    # T 1024/4096 only

Runs the ops directly (``delta_rule_triton`` and ``delta_rule_chunked``, float32, chunk 64) for
the cases of ``tools/bench/matrix_state.py``: DeltaNet (delta rule), Gated DeltaNet (delta rule
and a decay), linear attention, Mamba-2's SSD (linear with a decay). For each case and length
it prints, as medians of ``triton.testing.do_bench`` in ms: the forward (no grad) of both ops
and forward + backward (gradients of every input; both backends' backwards are written ones,
``chunked_triton``'s in Triton, so this is the figure that decides its training tier), the
peak memory of forward + backward, and the largest relative RMS difference between the two
ops of the outputs and final memory and of the gradients of every input (float32 against
float32; the tests compare both with the float64 recurrence). A last table sweeps the chunk
(16, 32, 64) for the forward at T=4096.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from triton.testing import do_bench

from rnnkit.kernels.matrix_state import delta_rule_chunked, delta_rule_triton

CASES = [
    ("deltanet", "delta", False),
    ("gated_deltanet", "delta", True),
    ("linear_attention", "linear", False),
    ("mamba2_ssd", "linear", True),
]


def _inputs(B: int, n: int, T: int, d: int, decay: bool) -> list[Tensor]:
    g = torch.Generator(device="cuda").manual_seed(T)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, device="cuda")

    q, k, v = randn(B, n, T, d), F.normalize(randn(B, n, T, d), dim=-1), randn(B, n, T, d)
    beta = torch.sigmoid(randn(B, n, T))
    S0 = randn(B, n, d, d) * 0.1
    out = [q, k, v, beta, S0]
    if decay:
        out.append(F.logsigmoid(randn(B, n, T) + 3.0))
    return out


Op = Callable[..., tuple[Tensor, Tensor]]


def _op(fn: Op, rule: str, chunk: int) -> Op:
    """``fn`` on ``(q, k, v, beta, S0[, log_alpha])`` with ``rule`` and ``chunk``."""

    def run(*t: Tensor) -> tuple[Tensor, Tensor]:
        la = t[5] if len(t) > 5 else None
        return fn(*t[:5], log_alpha=la, rule=rule, chunk=chunk)

    return run


def _ms(fn: Callable[[], Any], grads: list[Tensor] | None = None) -> float:
    """Median time of ``fn`` in ms."""
    return float(do_bench(fn, grad_to_none=grads, return_mode="median"))


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).double().pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt())


Row = tuple[str, int, dict[str, float], dict[str, float], dict[str, float], float, float]


def _grads(op: Op, ins: list[Tensor]) -> list[Tensor]:
    """The gradients of every input of ``(o * w_o).sum() + (S * w_S).sum()`` (fixed weights)."""
    leaves = [t.detach().requires_grad_() for t in ins]
    o, S = op(*leaves)
    g = torch.Generator(device="cuda").manual_seed(1)
    w_o = torch.randn(o.shape, generator=g, device="cuda")
    w_S = torch.randn(S.shape, generator=g, device="cuda")
    return list(torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), leaves))


def _time_case(name: str, rule: str, decay: bool, B: int, n: int, T: int, d: int) -> Row:
    """``(name, T, forward ms, forward + backward ms, peak MiB, relative difference of the
    values, of the gradients)``, each dict keyed by ``chunked`` and ``triton``."""
    ins = _inputs(B, n, T, d, decay)
    ops = {"chunked": _op(delta_rule_chunked, rule, 64), "triton": _op(delta_rule_triton, rule, 64)}
    fwd, fb, peak = {}, {}, {}
    with torch.no_grad():
        outs = {k: op(*ins) for k, op in ops.items()}  # compiles the kernels
        diff = max(_rel(a, b) for a, b in zip(outs["triton"], outs["chunked"], strict=True))
        for k, op in ops.items():
            fwd[k] = _ms(partial(op, *ins))
    grads = {k: _grads(op, ins) for k, op in ops.items()}  # compiles the backward
    gdiff = max(_rel(a, b) for a, b in zip(grads["triton"], grads["chunked"], strict=True))
    leaves = [t.requires_grad_() for t in ins]
    for k, op in ops.items():

        def step(op: Op = op) -> None:
            o, S = op(*leaves)
            torch.autograd.backward(o.sum() + S.sum())

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak[k] = torch.cuda.max_memory_allocated() / 2**20
        fb[k] = _ms(step, leaves)
    return name, T, fwd, fb, peak, diff, gdiff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--times", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--quick", action="store_true", help="T 1024 and 4096 only")
    args = p.parse_args()
    times = [1024, 4096] if args.quick else args.times
    B, n, d = args.batch, args.heads, args.head_dim
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | B={B} heads={n} d={d}")
    t0 = time.time()
    rows = []
    for name, rule, decay in CASES:
        for T in times:
            row = _time_case(name, rule, decay, B, n, T, d)
            _, _, fwd, fb, peak, diff, gdiff = row
            rows.append(row)
            print(
                f"{name:17s} T={T:6d} fwd chunked {fwd['chunked']:8.2f} ms triton "
                f"{fwd['triton']:8.2f} ms ({fwd['chunked'] / fwd['triton']:.1f}x) | fwd+bwd "
                f"chunked {fb['chunked']:8.2f} ms triton {fb['triton']:8.2f} ms "
                f"({fb['chunked'] / fb['triton']:.1f}x) | peak MiB "
                f"{peak['chunked']:.0f} / {peak['triton']:.0f} | rel diff {diff:.1e}, "
                f"grads {gdiff:.1e}",
                flush=True,
            )
    print(f"# main table in {time.time() - t0:.0f} s")
    print("\n# chunk sweep, forward only, T=4096")
    for name, rule, decay in CASES:
        ins = _inputs(B, n, 4096, d, decay)
        line = [f"{name:17s}"]
        with torch.no_grad():
            for chunk in (16, 32, 64):
                op = _op(delta_rule_triton, rule, chunk)
                op(*ins)
                line.append(f"C={chunk}: {_ms(partial(op, *ins)):7.2f} ms")
        print(" | ".join(line), flush=True)
    print(
        "\n| case | T | fwd chunked ms | fwd triton ms | ratio | fwd+bwd chunked ms | "
        "fwd+bwd triton ms | ratio | peak MiB chunked / triton | rel diff | grads rel diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, T, fwd, fb, peak, diff, gdiff in rows:
        print(
            f"| {name} | {T} | {fwd['chunked']:.2f} | {fwd['triton']:.2f} | "
            f"{fwd['chunked'] / fwd['triton']:.1f}x | {fb['chunked']:.2f} | {fb['triton']:.2f} | "
            f"{fb['chunked'] / fb['triton']:.1f}x | {peak['chunked']:.0f} / "
            f"{peak['triton']:.0f} | {diff:.1e} | {gdiff:.1e} |"
        )


if __name__ == "__main__":
    main()
