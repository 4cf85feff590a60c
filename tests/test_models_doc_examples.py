"""Every ``python`` block of ``docs/models.md`` runs as written, in a fresh namespace, and
leaves what its comments say (a new user pastes them; a block that needs a name it does not
define fails here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def _run(marker: str) -> dict[str, Any]:
    (code,) = [b for b in BLOCKS if marker in b]
    namespace: dict[str, Any] = {}
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    # one thread, as the trainer's default on CPU: the blocks are many small steps, which a
    # second thread only slows down on a shared machine
    torch.set_num_threads(1)
    try:
        exec(compile(code, str(PAGE), "exec"), namespace)  # the page's code as is
    finally:
        torch.set_num_threads(threads)
    return namespace


def test_every_block_is_covered_here() -> None:
    assert len(BLOCKS) == 3, "a new python block in docs/models.md: add its check here"


def test_the_cells_block() -> None:
    ns = _run("ParaGRU(input_size=64")
    assert ns["y"].shape == (*ns["x"].shape[:2], 256)  # (B, T, 64) -> (B, T, 256)


def test_the_generation_block() -> None:
    ns = _run('create_model("jamba"')
    assert ns["logits"].shape == (ns["prompt"].shape[0], 62)  # (B, V) after a step
    assert ns["cache"].batch == 4


def test_the_symbolic_codes_block() -> None:
    ns = _run("symbolic_codes(x0")
    codes, graph = ns["codes"], ns["graph"]
    assert codes.shape == (ns["x0"].shape[0], 10_000)
    assert int(codes.min()) >= 0 and int(codes.max()) < 4 and graph.shape == (4, 4)
