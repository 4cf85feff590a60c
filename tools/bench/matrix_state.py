"""Benchmark of the matrix-state form's ``chunked`` kernel against its reference recurrence.

    python tools/bench/matrix_state.py                  # CPU: B=4, 8 heads of 64, T 4096/16384
    python tools/bench/matrix_state.py --quick          # T 1024/4096, reference at T=1024
    python tools/bench/matrix_state.py --threads 1 --clock cpu   # process CPU time, 1 thread
    python tools/bench/matrix_state.py --device cuda
    python tools/bench/matrix_state.py --batch 8 --cases mamba2_ssd   # Mamba-2's shape

Runs the form's op directly (``delta_rule_chunked`` against ``memory_recurrence``, forward +
backward, gradients of every input, with fixed upstream gradients of the outputs and the final
memory as a layer above would hand them back; ``--loss square`` differentiates
``sum(o^2) + sum(S^2)`` instead, which adds the loss's own full-length temporaries to the
timing) for the special cases the issues name: DeltaNet
(delta rule, no decay), Gated DeltaNet (delta rule, a decay per head and step), linear
attention (no delta correction, no decay) and Mamba-2's SSD (linear attention with a decay per
head and step; the default ``--cases`` leave it out, run it with ``--batch 8``). For each it prints

- the chunked kernel's fastest time at every ``--times`` length, and the growth from the
  first to the last (linear in ``T`` when it equals the ratio of the lengths);
- the reference loop at every ``--ref-times`` length and its ratio to the chunked kernel at
  the same length, measured in the same process;
- the bytes autograd keeps for the backward (distinct storages seen by
  ``saved_tensors_hooks``): the loop keeps every step's memory several times over, the chunked
  kernel its (padded) inputs plus ``T / C * d^2`` for the memory entering each chunk.

For ``--times`` lengths beyond the longest ``--ref-times`` the script also prints the ratio the
loop would reach if its time grew linearly from there, labelled "extrapolated": a lower bound
in the runs so far, where the loop's time per step grew with ``T`` (the memory it keeps).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.kernels.matrix_state import REFERENCE, delta_rule_chunked
from rnnkit.kernels.matrix_state import chunked as ms_chunked

#: (name, rule, with a decay)
CASES = [
    ("deltanet", "delta", False),
    ("gated_deltanet", "delta", True),
    ("linear_attention", "linear", False),
    # Mamba-2's SSD: linear attention with one decay per head and step (run with --batch 8
    # for the shape: B=8, 8 heads of 64, N=64)
    ("mamba2_ssd", "linear", True),
]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--times", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--ref-times", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--repeats", type=int, default=3, help="calls per timing (fastest kept)")
    p.add_argument("--chunk", type=int, default=ms_chunked.CHUNK, help="tokens per chunk")
    p.add_argument(
        "--cases",
        nargs="+",
        default=[c[0] for c in CASES if c[0] != "mamba2_ssd"],
        choices=[c[0] for c in CASES],
    )
    p.add_argument(
        "--loss",
        choices=["grad", "square"],
        default="grad",
        help="grad: backward from fixed random upstream gradients (the kernel's own work); "
        "square: from sum(o^2) + sum(S^2) (adds the loss's full-length temporaries)",
    )
    p.add_argument("--quick", action="store_true", help="T 1024/4096, reference at T=1024")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time of all threads (less sensitive to a loaded machine)",
    )
    args = p.parse_args()
    if args.quick:
        args.times, args.ref_times, args.repeats = [1024, 4096], [1024], 2
    for flag, values in (
        ("--threads", [args.threads]),
        ("--batch", [args.batch]),
        ("--heads", [args.heads]),
        ("--head-dim", [args.head_dim]),
        ("--times", args.times),
        ("--ref-times", args.ref_times),
        ("--repeats", [args.repeats]),
        ("--chunk", [args.chunk]),
    ):
        if min(values) < 1:
            p.error(f"{flag} must be positive, got {min(values)}")
    return args


def _inputs(
    B: int, n: int, T: int, d: int, decay: bool, device: torch.device
) -> tuple[list[Tensor], Tensor | None]:
    """Leaf tensors ``q, k, v, beta, S0`` (and ``log_alpha``), as a cell would produce them:
    unit keys, ``beta`` in (0, 1), ``alpha`` around 0.95."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(device)

    q, v = rand(B, n, T, d), rand(B, n, T, d)
    k = F.normalize(rand(B, n, T, d), dim=-1)
    beta = torch.sigmoid(rand(B, n, T))
    S0 = 0.1 * rand(B, n, d, d)
    la = F.logsigmoid(rand(B, n, T) + 3.0) if decay else None
    leaves = [t.requires_grad_() for t in (q, k, v, beta, S0)]
    return leaves, None if la is None else la.requires_grad_()


def _fwd_bwd(fn: Callable[..., tuple[Tensor, Tensor]], rule: str, ins: list[Tensor],
             la: Tensor | None, loss: str) -> Callable[[], None]:  # fmt: skip
    """One forward + backward of ``fn`` into the leaves' ``.grad``. With ``loss="grad"`` the
    backward starts from upstream gradients made once here, outside the timed call, as a
    layer above the kernel would hand them back: the square loss's own temporaries (``o^2``
    and two more in its backward, each as large as ``o``, so four fresh full-length buffers
    per call) are not the kernel's work."""
    v, S0 = ins[2], ins[4]
    g = torch.Generator(device="cpu").manual_seed(1)
    do = torch.randn(*v.shape, generator=g).to(v.device)
    dS = torch.randn(*S0.shape, generator=g).to(S0.device)

    def run() -> None:
        for t in [*ins, *([] if la is None else [la])]:
            t.grad = None
        o, S = fn(*ins, log_alpha=la, rule=rule)
        if loss == "square":
            (o.square().sum() + S.square().sum()).backward()  # type: ignore[no-untyped-call]
        else:
            torch.autograd.backward((o, S), (do, dS))

    return run


def _faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing: Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time(run: Callable[[], None], device: torch.device, repeats: int, clock: str,
          warm: bool = True) -> tuple[float, int]:  # fmt: skip
    """Fastest of ``repeats`` calls (after one warm-up call when ``warm``): on a shared machine
    the slow outliers are the neighbours' load, not the kernel. Also returns the minor page
    faults of that call: memory the allocator mapped afresh rather than reused, whose first
    touch the kernel's system time pays (and which differs between lengths; see
    docs/kernels.md)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    if warm:
        run()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        f0, t0 = _faults(), now()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((now() - t0, _faults() - f0))
    return min(out)


def _saved_bytes(fn: Callable[..., tuple[Tensor, Tensor]], rule: str, ins: list[Tensor],
                 la: Tensor | None) -> int:  # fmt: skip
    """Bytes of the distinct storages autograd saves for the backward of one forward call."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*ins, log_alpha=la, rule=rule)
    return sum(seen.values())


def main() -> None:
    args = _args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    B, n, d = args.batch, args.heads, args.head_dim

    def chunked(*a: Tensor, **kw: object) -> tuple[Tensor, Tensor]:
        return delta_rule_chunked(*a, chunk=args.chunk, **kw)  # type: ignore[arg-type]

    print(
        f"matrix-state op, B={B}, {n} heads of {d}, float32, {device.type}"
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
        + f", chunk {args.chunk}; forward + backward ({args.loss}), fastest {args.clock} seconds"
    )
    for name, rule, decay in CASES:
        if name not in args.cases:
            continue
        print(f"\n{name} (rule={rule}, decay={'yes' if decay else 'no'})")
        chk: dict[int, float] = {}
        for T in sorted(set(args.times) | set(args.ref_times)):
            ins, la = _inputs(B, n, T, d, decay, device)
            chk[T], faults = _time(
                _fwd_bwd(chunked, rule, ins, la, args.loss), device, args.repeats, args.clock
            )
            mib = _saved_bytes(chunked, rule, ins, la) / 2**20
            print(
                f"  T={T:>6}  chunked   {chk[T]:8.3f} s  saved for backward {mib:8.1f} MiB"
                f"  page faults {faults * 1024 // T:>6} per 1024 tokens"
            )
        for T in sorted(args.ref_times):
            ins, la = _inputs(B, n, T, d, decay, device)
            run = _fwd_bwd(REFERENCE, rule, ins, la, args.loss)
            ref, _ = _time(run, device, max(1, args.repeats - 1), args.clock, warm=False)
            mib = _saved_bytes(REFERENCE, rule, ins, la) / 2**20
            line = (
                f"  T={T:>6}  reference {ref:8.3f} s  saved for backward {mib:8.1f} MiB"
                f" | ratio {ref / chk[T]:6.1f}x (measured)"
            )
            for T_long in sorted(args.times):
                if T_long > max(args.ref_times) and max(args.ref_times) == T:
                    est = ref * T_long / T / chk[T_long]
                    line += f", {est:.1f}x at T={T_long} (extrapolated)"
            print(line, flush=True)
        ts = sorted(args.times)
        if len(ts) > 1:
            grow = chk[ts[-1]] / chk[ts[0]]
            print(f"  chunked T={ts[-1]} / T={ts[0]}: {grow:.2f}x (lengths {ts[-1] / ts[0]:.0f}x)")


if __name__ == "__main__":
    main()
