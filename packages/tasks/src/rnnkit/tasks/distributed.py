"""The trainer's data-parallel part: this process's place in a ``torchrun`` job.

Each process takes a shard of every global batch; losses are summed and divided by the global
element count and gradients are summed across processes, so an update equals the
single-process one on the same global batch. Without ``torchrun`` (``WORLD_SIZE`` unset or 1)
every function here is the identity of the single-process case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


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
    """``"auto"`` -> CUDA (this process's ``LOCAL_RANK``) if available, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return dev


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, nccl on CUDA. Without ``WORLD_SIZE > 1`` nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_reduce_sum_(t: Tensor, d: Dist) -> Tensor:
    """Sum ``t`` over the processes of the job, in place; returns ``t``."""
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard(indices: Tensor, d: Dist) -> Tensor:
    """This process's part of a global batch's example ``indices`` (``(n,)`` int64)."""
    return indices.tensor_split(d.world)[d.rank]


def sum_gradients_(model: nn.Module, d: Dist) -> None:
    """Sum every parameter's gradient over the processes (a missing gradient counts as zero).

    Every process must take part in every all-reduce, in the same order, even for a parameter
    its shard left without a gradient: hence the zeros.
    """
    if d.world <= 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        all_reduce_sum_(p.grad, d)
