"""Gradient synchronisation of the multi-process trainer: four ways, measured side by side.

    python tools/bench/ddp.py                       # 2 gloo processes on CPU, LSTM 256 x 2
    python tools/bench/ddp.py --hidden 512 --layers 3 --rounds 7
    python tools/bench/ddp.py --quick               # a smoke run (seconds)

Every process trains the same model on its shard of each global batch of the ``copy`` task,
exactly as :class:`rnnkit.tasks.Trainer` does (loss summed and divided by the global element
count, gradients summed over the processes, AdamW), with the gradients summed by:

* ``per-parameter``: one all-reduce per parameter (the trainer before bucketing);
* ``bucketed``: after the backward pass, the gradients packed into flat buffers of at most
  25 MB, one all-reduce per buffer (``bucketed_sum_`` below);
* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` (25 MB buckets, all-reduced while the
  backward pass runs) with a communication hook that sums instead of averaging
  (:func:`rnnkit.tasks.distributed.sum_hook`), so that the update is the same as the others';
* ``ddp-unused``: the same with ``find_unused_parameters=True``
  (:func:`rnnkit.tasks.distributed.data_parallel`, what the trainer runs: it covers models
  whose forward pass leaves a parameter unused, DDP then walks the autograd graph after each
  forward pass and all-reduces a map of the parameters used);
* ``none``: no synchronisation at all (not a valid training: the floor the others approach).

Each round runs every strategy from the same initial model (in an order that rotates from
round to round, so that a load change on a shared machine does not favour one of them) for
``--steps`` timed steps after ``--warmup`` untimed ones. The processes meet at a barrier before
each backward pass, so that the time from there on is the backward pass and the
synchronisation, not the wait for a process whose forward pass ran slower. Printed, by rank 0:

* ``steps/s``: training steps per second (median over rounds, and the range);
* ``sync ms``: per step, the explicit synchronisation call alone (median over rounds; ``ddp``
  all-reduces during the backward pass, so it has none to show);
* ``bwd+sync ms``: per step, the backward pass and the synchronisation, wall time (median
  over every timed step): the figure that separates the strategies, as the forward pass,
  the optimiser and the data are the same for all;
* ``cpu ms``: the same span in this process's CPU time (less sensitive to other jobs);
* ``max |dp|``: the largest parameter difference against ``per-parameter`` after the first
  round (they all compute the same update, up to the order of float additions).
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

STRATEGIES = ("per-parameter", "bucketed", "ddp", "ddp-unused", "none")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world", type=int, default=2, help="processes (gloo, CPU)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--quick", action="store_true", help="hidden 64, 3 steps, 2 rounds")
    a = p.parse_args()
    if a.quick:
        a.hidden, a.steps, a.warmup, a.rounds = 64, 3, 1, 2
    return a


def per_parameter_sum_(model: nn.Module) -> None:
    """The trainer's former synchronisation: one all-reduce per parameter."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def bucketed_sum_(model: nn.Module, limit: int = 25 * 2**20) -> None:
    """After the backward pass: the gradients packed into flat buckets of at most ``limit``
    bytes (one dtype each), one all-reduce per bucket. Each bucket also carries a flag per
    parameter, so that one no process has a gradient for keeps none, as in one process."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        nbytes = p.numel() * p.element_size()
        if buckets and size + nbytes <= limit and buckets[-1][0].dtype == p.dtype:
            buckets[-1].append(p)
            size += nbytes
        else:
            buckets.append([p])
            size = nbytes
    for bucket in buckets:
        had = [p.grad is not None for p in bucket]
        grads = []
        for p in bucket:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flags = torch.tensor(had, dtype=grads[0].dtype)
        flat = torch.cat([*(g.reshape(-1) for g in grads), flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        for p, n in zip(bucket, flat[offset:].tolist(), strict=True):
            if n == 0:
                p.grad = None


def _worker(rank: int, world: int, port: int, a: argparse.Namespace, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from rnnkit.tasks import get_task
    from rnnkit.tasks.distributed import Dist, data_parallel, shard, sum_hook
    from rnnkit.tasks.trainer import batch_indices, forward

    d = Dist(rank, world)
    task = get_task("copy")
    data = task.data(0)
    torch.manual_seed(0)
    base = task.build_model(
        "sequence_tagger", cell="lstm", hidden_size=a.hidden, num_layers=a.layers
    )
    start = copy.deepcopy(base.state_dict())
    n_params = sum(p.numel() for p in base.parameters())
    perm: dict[int, Tensor] = {}

    def run(
        strategy: str, backs: list[float], cpus: list[float]
    ) -> tuple[float, float, dict[str, Tensor]]:
        model = copy.deepcopy(base)
        model.load_state_dict(start)
        net: nn.Module = model
        if strategy == "ddp":
            net = DistributedDataParallel(model, bucket_cap_mb=25)
            net.register_comm_hook(None, sum_hook)
        elif strategy == "ddp-unused":  # what the trainer runs
            net = data_parallel(model, d, torch.device("cpu"))
        sync: Callable[[], None] = {
            "per-parameter": lambda: per_parameter_sum_(model),
            "bucketed": lambda: bucketed_sum_(model),
        }.get(strategy, lambda: None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        synced = 0.0
        t0 = 0.0
        for step in range(1, a.warmup + a.steps + 1):
            if step == a.warmup + 1:
                dist.barrier()
                t0 = time.perf_counter()
            idx = shard(batch_indices(len(data.train), a.batch, step, 0, perm), d)
            x, y = data.train.inputs[idx], data.train.targets[idx]
            loss_sum, count = task.loss(forward(net, x, "auto"), y)
            total = count.detach().clone()
            dist.all_reduce(total)
            opt.zero_grad(set_to_none=True)
            # both processes start the backward pass together: what follows is its time and
            # the synchronisation's, not the wait for a process that ran its forward slower
            dist.barrier()
            b0, c0 = time.perf_counter(), time.process_time()
            (loss_sum / total.clamp_min(1.0)).backward()
            s0 = time.perf_counter()
            sync()
            s1, c1 = time.perf_counter(), time.process_time()
            if step > a.warmup:
                synced += s1 - s0
                backs.append(1000 * (s1 - b0))
                cpus.append(1000 * (c1 - c0))
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        dist.barrier()
        seconds = time.perf_counter() - t0
        return a.steps / seconds, 1000 * synced / a.steps, copy.deepcopy(model.state_dict())

    rates: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    syncs: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    backs: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    cpus: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    first: dict[str, dict[str, Tensor]] = {}
    for r in range(a.rounds):
        order = STRATEGIES[r % len(STRATEGIES) :] + STRATEGIES[: r % len(STRATEGIES)]
        for s in order:
            rate, ms, state = run(s, backs[s], cpus[s])
            rates[s].append(rate)
            syncs[s].append(ms)
            first.setdefault(s, state)
    if rank == 0:
        ref = first["per-parameter"]
        diff = {
            s: max(float((first[s][k] - v).abs().max()) for k, v in ref.items()) for s in STRATEGIES
        }
        out.put((n_params, rates, syncs, backs, cpus, diff))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    a = _args()
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.spawn(_worker, args=(a.world, _free_port(), a, q), nprocs=a.world, join=True)
    n_params, rates, syncs, backs, cpus, diff = q.get()
    print(
        f"{a.world} gloo processes x {a.threads} thread(s), copy task, LSTM {a.hidden} x "
        f"{a.layers} layers ({n_params:,} parameters, {4 * n_params / 2**20:.1f} MiB of "
        f"gradients), global batch {a.batch}, {a.steps} timed steps x {a.rounds} rounds"
    )
    print(
        f"{'strategy':<14} {'steps/s':>8} {'range':>12} {'sync ms':>8} {'bwd+sync ms':>12} "
        f"{'cpu ms':>7} {'max |dp|':>9}"
    )
    for s in STRATEGIES:
        med = statistics.median(rates[s])
        sync = "-" if s.startswith("ddp") or s == "none" else f"{statistics.median(syncs[s]):.2f}"
        dp = "-" if s == "none" else f"{diff[s]:.1e}"
        span = f"{min(rates[s]):.2f}-{max(rates[s]):.2f}"
        print(
            f"{s:<14} {med:>8.2f} {span:>12} {sync:>8} {statistics.median(backs[s]):>12.1f} "
            f"{statistics.median(cpus[s]):>7.1f} {dp:>9}"
        )


if __name__ == "__main__":
    main()
