"""Two gloo processes under torchrun give the single-process result for the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = str(Path(__file__).with_name("ddp_worker.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("WORLD_SIZE", None)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, WORKER, str(one)], check=True, env=env, timeout=120)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            WORKER,
            str(two),
        ],
        check=True,
        env=env,
        timeout=120,
    )
    a = torch.load(one / "params.pt")
    b = torch.load(two / "params.pt")
    assert (a["world"], b["world"]) == (1, 2)
    for k, v in a["state"].items():
        torch.testing.assert_close(b["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    for k, v in a["test"].items():
        assert b["test"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
