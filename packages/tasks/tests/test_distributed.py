"""Multi-process training: two gloo processes give the single-process result for the same global
batch, only rank 0 prints and writes, and the processes stop together.

The processes are started as torchrun would start them, without torchrun: one subprocess per
rank with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
Each runs the whole ``rnnkit train`` command (``ddp_worker.py``) in a folder of its own, so that
anything a rank writes into its current folder (the default run directory is relative) shows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from rnnkit.tasks.distributed import Dist, data_parallel, leave_distributed

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
ARGS = (
    "train",
    "--task",
    "copy",
    "--steps",
    "6",
    "--batch-size",
    "64",
    "--eval-every",
    "3",
    "--hidden-size",
    "16",
)
#: Parameters of the two-process run against the single-process one after 6 AdamW steps: the
#: two runs sum the same float32 gradients in another order, so they differ by rounding only.
PARAM_TOL = {"rtol": 1e-5, "atol": 1e-6}
#: Metrics (losses, accuracies over the valid and test splits) computed by those parameters.
METRIC_TOL = {"rel": 1e-5, "abs": 1e-6}


@dataclass
class Proc:
    """A finished worker: what it printed and what its trainer ended with."""

    stdout: str
    stderr: str
    result: dict[str, Any]
    #: whether the process group was destroyed before the interpreter's teardown began
    left_group: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_job(
    root: Path, world: int, args: Sequence[str] = ARGS, opts: Sequence[str] = ()
) -> list[Proc]:
    """``rnnkit *args`` in ``world`` processes (one alone for 1), rank ``r`` in ``root/r<r>``."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        cwd = root / f"r{rank}"
        cwd.mkdir(parents=True)
        env = _env()
        if world > 1:
            env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
        result = root / f"result{rank}.pt"
        cmd = [sys.executable, WORKER, str(result), *opts, "--", *args]
        procs.append(
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    done = []
    try:
        for rank, p in enumerate(procs):
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, f"rank {rank} failed:\n{err[-3000:]}"
            left = (root / f"result{rank}.pt.left").read_text()
            done.append(Proc(out, err, torch.load(root / f"result{rank}.pt"), left == "True"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Proc, list[Proc]]:
    """The same ``rnnkit train`` alone and in two processes (default run directories)."""
    root = tmp_path_factory.mktemp("ddp")
    (one,) = run_job(root / "one", 1)
    two = run_job(root / "two", 2)
    return root, one, two


@pytest.mark.slow
def test_two_processes_match_one(runs: tuple[Path, Proc, list[Proc]]) -> None:
    _, one, (r0, r1) = runs
    a, b = one.result, r0.result
    assert (a["world"], b["world"], r1.result["world"]) == (1, 2, 2)
    assert (a["step"], b["step"]) == (6, 6)
    # each process left the group at exit, before Python's teardown could abort it
    assert r0.left_group and r1.left_group
    assert r0.result["wrapper_released"] and r1.result["wrapper_released"]
    for k, v in a["state"].items():
        torch.testing.assert_close(b["state"][k], v, **PARAM_TOL, msg=k)
        # every process applies the same summed gradients: identical parameters
        assert torch.equal(r1.result["state"][k], b["state"][k]), k
    for split in ("valid", "test"):
        assert a[split], split
        for k, v in a[split].items():
            assert b[split][k] == pytest.approx(v, **METRIC_TOL), (split, k)
            assert r1.result[split][k] == b[split][k], (split, k)
    assert len(a["history"]) == len(b["history"]) == 2
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["step"] == y["step"]
        # the train loss is the global sum over the global count, as in one process
        assert y["train_loss"] == pytest.approx(x["train_loss"], **METRIC_TOL)
        for k, v in x["valid"].items():
            assert y["valid"][k] == pytest.approx(v, **METRIC_TOL), k


@pytest.mark.slow
def test_only_rank_0_prints_and_writes(runs: tuple[Path, Proc, list[Proc]]) -> None:
    root, one, (r0, r1) = runs
    # rank 1 created nothing in its folder: no run directory, no file of any kind
    assert files_under(root / "two" / "r1") == []
    assert r1.stdout == ""
    assert "rnnkit train" not in r1.stderr and "step" not in r1.stderr
    # rank 0 wrote the run a single process writes, and printed its table
    run_one = Path(one.result["out"])
    run_two = Path(r0.result["out"])
    assert run_two.parent == Path("runs")  # the default, relative to the current folder
    assert r1.result["out"] == r0.result["out"]  # rank 1 learnt the name rank 0 chose
    on_disk = root / "two" / "r0" / run_two
    wanted = {"final.json", "model.safetensors", "config.json", "curves.png", "report.md"}
    assert wanted <= set(files_under(on_disk))
    assert files_under(on_disk) == files_under(root / "one" / "r0" / run_one)
    assert "metric" in r0.stdout and "valid" in r0.stdout
    assert f"files: {run_two}/final.json" in r0.stdout
    final = json.loads((on_disk / "final.json").read_text())
    assert final["config"]["world_size"] == 2


@pytest.mark.slow
def test_processes_stop_together(tmp_path: Path) -> None:
    """A Ctrl-C that reaches rank 0 alone stops both processes after the same step (before,
    rank 1 went on into an all-reduce rank 0 never joined)."""
    r0, r1 = run_job(tmp_path, 2, opts=("--interrupt-at", "2"))
    assert r0.result["code"] == r1.result["code"] == 130
    assert r0.left_group and r1.left_group
    assert r0.result["step"] == r1.result["step"] == 2
    assert "stopping after this step" in r0.stderr
    assert "stopping after this step" not in r1.stderr
    assert r1.stdout == "" and "rnnkit train --resume" in r0.stdout
    assert files_under(tmp_path / "r1") == []


# --- gradient summation, on two processes ------------------------------------------------------


class _Net(nn.Module):
    """Parameters used by both ranks, by rank 1 only, by none, and a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.both = nn.Parameter(torch.arange(6.0).reshape(2, 3))
        self.wide64 = nn.Parameter(torch.ones(4, dtype=torch.float64))  # another bucket dtype
        self.only1 = nn.Parameter(torch.ones(5))
        self.unused = nn.Parameter(torch.ones(2))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, rank: int) -> torch.Tensor:
        w = float(rank + 1)
        out = (self.both * w).square().sum() + (self.wide64 * w).sum().float()
        if rank == 1:
            out = out + (self.only1 * torch.arange(5.0)).sum() + self.frozen.sum()
        return out


def _sum_worker(rank: int, port: int, q: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = _Net()
    wrapped = data_parallel(net, Dist(rank, 2), torch.device("cpu"))
    assert wrapped is not net
    for _ in range(2):  # twice: the second step must not trip over the first's unused ones
        net.zero_grad(set_to_none=True)
        wrapped(rank).backward()
    # numpy arrays: pickled by value (a tensor would be shared through this process's memory)
    grads = {n: None if p.grad is None else p.grad.numpy() for n, p in net.named_parameters()}
    q.put((rank, grads))
    del wrapped  # as the trainer does when its run ends
    dist.barrier()
    leave_distributed()
    assert not dist.is_initialized()


@pytest.mark.slow
def test_gradients_are_summed_and_missing_ones_stay_missing() -> None:
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_sum_worker, args=(_free_port(), q), nprocs=2, start_method="spawn")
    got = dict(q.get() for _ in range(2))
    ref = _Net()
    for rank in range(2):  # the single-process gradient of the summed loss
        ref(rank).backward()
    for rank in range(2):
        g = got[rank]
        for name, p in ref.named_parameters():
            if p.grad is None:  # unused by every process, or frozen: no gradient, as alone
                assert g[name] is None, (rank, name)
            else:
                assert g[name] is not None, (rank, name)
                summed = torch.from_numpy(g[name])
                assert summed.dtype == p.grad.dtype
                # summed, not averaged: exactly the single-process gradient
                torch.testing.assert_close(summed, p.grad, rtol=0, atol=0, msg=name)


def test_one_process_trains_the_model_itself() -> None:
    net = _Net()
    assert data_parallel(net, Dist(), torch.device("cpu")) is net
