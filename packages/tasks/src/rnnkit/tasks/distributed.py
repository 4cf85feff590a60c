"""The trainer's data-parallel part: this process's place in a ``torchrun`` job.

Each process takes a shard of every global batch; losses are summed and divided by the global
element count and gradients are summed across processes, so an update equals the
single-process one on the same global batch. Without ``torchrun`` (``WORLD_SIZE`` unset or 1)
every function here is the identity of the single-process case.

Gradients are summed by ``torch``'s ``DistributedDataParallel`` (:func:`data_parallel`): it
all-reduces them in buckets of 25 MB while the backward pass runs, with a communication hook
that sums instead of averaging (``docs/tasks.md`` has the measurement that chose it over one
all-reduce per parameter and over bucketing after the backward pass). Only rank 0 writes
files and prints; the helpers below let the others follow its decisions (the run directory
it made, a stop it was asked for) without touching the disk.
"""

# no `from __future__ import annotations`: DistributedDataParallel checks a communication
# hook's annotations at run time, against the objects themselves
import atexit
import gc
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._C._distributed_c10d import GradBucket  # torch.distributed.GradBucket, typed
from torch.futures import Future
from torch.nn.parallel import DistributedDataParallel

from rnnkit.core.validation import check_device

#: gradient megabytes per all-reduce (``DistributedDataParallel``'s default)
BUCKET_MB = 25


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (world 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA (this process's ``LOCAL_RANK``) if available, else CPU; any other
    name must be a device this machine has (``ValueError`` otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return check_device(name, name="--device")


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, nccl on CUDA. Without ``WORLD_SIZE > 1`` nothing happens. The environment
    is ``torchrun``'s: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (and
    ``LOCAL_RANK`` for the GPU), so processes started another way with those set join too.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(leave_distributed)
    return Dist(dist.get_rank(), dist.get_world_size())


def leave_distributed() -> None:
    """Destroy the process group, if one is joined; :func:`init_distributed` runs this at exit
    for the group it joined.

    At exit the interpreter must still be whole when the group goes: left to the interpreter's
    own teardown, a communication thread that drops the last reference to a tensor Python has
    seen needs the interpreter lock, and a thread that asks for it then is ended from under
    C++ frames that cannot unwind (the process aborts: "terminate called without an active
    exception"). Collecting garbage first frees ``DistributedDataParallel`` wrappers that
    reference cycles still hold, and with them their hold on the group.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process is rank 0 of the job it joined (``True`` outside of one): the
    one that prints results (the CLI asks this after :func:`~rnnkit.tasks.train`)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum_(t: Tensor, d: Dist) -> Tensor:
    """Sum ``t`` over the processes of the job, in place; returns ``t``."""
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_process(flag: bool, d: Dist, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process of the job (every process must call this at the
    same point); ``flag`` itself in a single process.

    A Ctrl-C reaches each process at its own moment: the trainer stops after a step only when
    all of them agree to, else the ones that went on would wait for the others forever.
    """
    if d.world <= 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    return bool(all_reduce_sum_(t, d).item() > 0)


def share_from_main(value: str | None, error: str | None, d: Dist) -> str:
    """Rank 0's ``value`` on every process of the job (``value`` itself, or ``""``, in a
    single process). Every process must call this at the same point.

    Rank 0 passes either ``value`` or, when what it had to do failed, ``error`` (and then
    raises its own exception): the other processes raise ``RuntimeError`` with that message
    instead of waiting at the next all-reduce for a process that has given up. (The trainer
    shares the run directory this way: a default one gets its name, with a unique suffix, when
    rank 0 creates it.)
    """
    if d.world <= 1:
        return value or ""
    box: list[object] = [(value, error) if d.main else None]
    dist.broadcast_object_list(box, src=0)
    shared, failure = box[0] if isinstance(box[0], tuple) else (None, "nothing was sent")
    if failure is not None and not d.main:
        raise RuntimeError(f"rank 0 failed: {failure}")
    return str(shared or "")


def shard(indices: Tensor, d: Dist) -> Tensor:
    """This process's part of a global batch's example ``indices`` (``(n,)`` int64)."""
    return indices.tensor_split(d.world)[d.rank]


def sum_hook(state: object, bucket: GradBucket) -> Future[Tensor]:
    """``DistributedDataParallel`` communication hook: the bucket's gradients summed over the
    processes (DDP's own hook averages them; the trainer's loss is already divided by the
    global element count, so the sum is the single-process gradient)."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    assert work is not None  # async_op=True always gives one

    def done(fut: Future[list[Tensor]]) -> Tensor:
        return fut.value()[0]

    summed: Future[Tensor] = work.get_future().then(done)
    return summed


def data_parallel(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module to run the training forward pass through: ``model`` itself in a single
    process, else ``model`` wrapped in ``DistributedDataParallel`` with :func:`sum_hook`.

    After ``wrapper(x).backward()`` every process holds in each parameter's ``.grad`` the sum
    of the processes' gradients. ``find_unused_parameters=True``: a parameter that a
    process's forward pass left unused counts as zeros there, and one that no process used
    keeps no gradient, as in a single process (the optimiser skips it, weight decay included);
    parameters with ``requires_grad=False`` take no part. The wrapper shares ``model``'s
    parameters: save, load and evaluate ``model`` itself. Every process must call this at the
    same point (DDP checks that the processes' parameters agree).
    """
    if d.world <= 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    # every process holds the same buffers: no need to send rank 0's at each forward pass
    # (newer torch names the option forward_sync_buffers and deprecates broadcast_buffers)
    takes = inspect.signature(DistributedDataParallel.__init__).parameters
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in takes else "broadcast_buffers"
    options: dict[str, Any] = {buffers: False}
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=BUCKET_MB,
        find_unused_parameters=True,
        **options,
    )
    ddp.register_comm_hook(None, sum_hook)
    return ddp
