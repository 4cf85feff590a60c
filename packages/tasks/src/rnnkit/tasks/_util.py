"""Small helpers shared by the data generators."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks.base import Metrics, Split

#: Seeds are integers of absolute value below this: generators are seeded with
#: ``seed * 1_000_003 + ...`` (:func:`generator`, the trainer's data order), which must stay
#: within a 64-bit integer.
SEED_BOUND = 2**40


def generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, stream)``."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(stream) * 7919 + 17)


def row_keys(x: Tensor) -> list[bytes]:
    """One hashable key per example (its bytes), ``x: (N, ...)``."""
    flat = x.reshape(x.shape[0], math.prod(x.shape[1:])).contiguous().numpy()  # N = 0 too
    return [row.tobytes() for row in flat]


def drop_seen(split: Split, *seen_splits: Split) -> Split:
    """``split`` without the examples whose inputs occur in any of ``seen_splits``.

    Makes the held-out splits disjoint from training (and from each other) for generators
    that sample at random.
    """
    seen: set[bytes] = set()
    for s in seen_splits:
        if s.inputs.shape[1:] == split.inputs.shape[1:]:
            seen.update(row_keys(s.inputs))
    keep = [i for i, k in enumerate(row_keys(split.inputs)) if k not in seen]
    if len(keep) == len(split):
        return split
    return split.take(torch.tensor(keep, dtype=torch.long))


def lstm_config(hidden: int, **extra: object) -> dict[str, object]:
    """A task's default ``model_config``: an LSTM stack of width ``hidden`` plus ``extra``."""
    return {"cell": "lstm", "hidden_size": hidden, **extra}


def classify_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``accuracy`` for ``classify`` tasks: ``outputs (B, C)``, ``targets (B,)``."""
    return {"accuracy": M.accuracy(outputs, targets)}


def tag_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``token_accuracy`` and ``sequence_accuracy`` for ``tag`` tasks."""
    return {
        "token_accuracy": M.token_accuracy(outputs, targets),
        "sequence_accuracy": M.sequence_accuracy(outputs, targets),
    }


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as keywords: ``VALUE`` parsed as JSON when it can be, else kept
    as a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """Add ``--threads`` to ``p`` as ``rnnkit train`` has it (torch CPU threads; unset: 1 on
    CPU); :func:`torch_threads` applies it."""
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on CPU)")


@contextlib.contextmanager
def torch_threads(threads: int | None, unset: int | None = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (``unset`` threads where
    ``threads`` is ``None``; ``unset=None`` leaves torch's count as it is then) and give the
    caller's count back after it (also when the block fails).

    Raises:
        ValueError: naming ``--threads`` when ``threads`` is given and not a positive int.
    """
    given: object = threads  # argparse gives an int, a Python caller anything
    if given is not None and (not isinstance(given, int) or isinstance(given, bool) or given < 1):
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    caller = torch.get_num_threads()
    count = threads if threads is not None else unset
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(caller)
