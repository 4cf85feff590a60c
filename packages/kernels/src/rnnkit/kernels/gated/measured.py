"""Which GPU backend ``auto`` runs a gated call with, from measured timings.

On CUDA three backends can run a gated cell: ``triton`` (fused, heads up to 128 / 64 units),
``cuda`` (persistent loops, any head size) and ``torch`` (cuDNN where it has the op). Their
order for a call shape is not something to guess: ``tools/gpu/auto_table.py`` times them on a
GPU and writes rows to ``auto_table.json`` beside this module, and each backend's ``auto`` tier
follows the row that matches a call:

- ``cuda`` is :attr:`~rnnkit.core.kernel.Priority.FUSED_ON_CHIP` where its row names it the
  fastest, else :attr:`~rnnkit.core.kernel.Priority.BELOW_REFERENCE` (never picked unmeasured);
- ``triton`` keeps :attr:`~rnnkit.core.kernel.Priority.FUSED_ON_CHIP` unless the row names
  another backend: below ``cuda`` where ``cuda`` won, below ``torch`` (cuDNN) where ``torch``
  won;
- ``torch`` keeps its tier.

A row matches a call when the device name, cell kind, dtype, heads and head size are equal and
the pass is the call's (``"forward"`` without gradients, ``"forward+backward"`` with them; a
shape measured in one pass only answers for both); among those, the row with the nearest batch
size (on a log scale) decides. No row, no change: the tiers are then those of the docs
(``docs/kernels.md``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from rnnkit.core.kernel import KernelCall, Priority
from rnnkit.kernels._cuda_device import cuda_index

__all__ = [
    "BACKENDS",
    "TABLE",
    "Row",
    "cuda_tier",
    "fastest",
    "load_rows",
    "match",
    "triton_tier",
]

#: The table of measurements ``tools/gpu/auto_table.py`` writes (a JSON list of rows).
TABLE = Path(__file__).with_name("auto_table.json")
#: The backends a row may name as the fastest.
BACKENDS = ("cuda", "triton", "torch")
_PASSES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Row:
    """One measured call shape: which backend ran it fastest on ``device``.

    ``kind``: ``elman``, ``lstm``, ``gru`` or ``slstm``; ``dtype``: ``"bfloat16"``,
    ``"float16"`` or ``"float32"``; ``pass_``: ``"forward"`` or ``"forward+backward"``;
    ``ms``: the median milliseconds of each backend that ran it (the evidence, not read here).
    """

    device: str
    kind: str
    dtype: str
    heads: int
    head_dim: int
    batch: int
    pass_: str
    fastest: str
    ms: dict[str, float]

    @staticmethod
    def from_json(entry: dict[str, Any]) -> Row:
        """A row from its JSON object (keys as the fields, ``pass`` for ``pass_``).

        Raises:
            ValueError: a missing or unknown field, or a value out of range.
        """
        try:
            row = Row(
                device=str(entry["device"]),
                kind=str(entry["kind"]),
                dtype=str(entry["dtype"]),
                heads=int(entry["heads"]),
                head_dim=int(entry["head_dim"]),
                batch=int(entry["batch"]),
                pass_=str(entry["pass"]),
                fastest=str(entry["fastest"]),
                ms={str(k): float(v) for k, v in dict(entry.get("ms", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad row {entry!r}: {e}") from e
        if row.fastest not in BACKENDS:
            raise ValueError(f"bad row {entry!r}: fastest must be one of {', '.join(BACKENDS)}")
        if row.pass_ not in _PASSES:
            raise ValueError(f"bad row {entry!r}: pass must be one of {', '.join(_PASSES)}")
        if min(row.heads, row.head_dim, row.batch) < 1:
            raise ValueError(f"bad row {entry!r}: heads, head_dim and batch must be positive")
        return row


def load_rows(path: Path = TABLE) -> tuple[Row, ...]:
    """The rows of the table at ``path`` (none when the file does not exist).

    Raises:
        ValueError: the file is not a JSON list of valid rows (a broken table is an error,
            not a silent fallback: it would change which backend runs without saying so).
    """
    if not path.is_file():
        return ()
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of rows")
    return tuple(Row.from_json(e) for e in entries)


@lru_cache(maxsize=1)
def _rows() -> tuple[Row, ...]:
    return load_rows()


@lru_cache(maxsize=16)
def _device_name(index: int) -> str:
    return str(torch.cuda.get_device_name(index))


def match(
    rows: tuple[Row, ...],
    device: str,
    kind: str,
    dtype: str,
    heads: int,
    head_dim: int,
    batch: int,
    needs_grad: bool,
) -> Row | None:
    """The row of ``rows`` that decides a call (see the module docstring), or ``None``."""
    same = [
        r
        for r in rows
        if (r.device, r.kind, r.dtype, r.heads, r.head_dim)
        == (device, kind, dtype, heads, head_dim)
    ]
    wanted = "forward+backward" if needs_grad else "forward"
    in_pass = [r for r in same if r.pass_ == wanted] or same
    if not in_pass:
        return None
    size = math.log2(max(1, batch))
    # nearest batch; ties to the larger batch (the later in the sort)
    return min(in_pass, key=lambda r: (abs(math.log2(r.batch) - size), -r.batch))


def fastest(call: KernelCall) -> str | None:
    """The backend the table names for ``call`` (a CUDA call), or ``None`` without a row."""
    x = call.x
    if x.device.type != "cuda":
        return None
    rows = _rows()
    if not rows:
        return None
    cell: Any = call.cell
    index = cuda_index(x.device)
    dtype = str(x.dtype).removeprefix("torch.")
    row = match(
        rows,
        _device_name(index),
        str(cell.kind),
        dtype,
        int(cell.heads),
        int(cell.head_dim),
        int(x.shape[0]),
        call.needs_grad,
    )
    return None if row is None else row.fastest


def cuda_tier(call: KernelCall, unmeasured: Priority) -> Priority:
    """The ``cuda`` backend's ``auto`` tier for ``call``: first where its row names ``cuda``,
    else the backend's ``unmeasured`` tier."""
    return Priority.FUSED_ON_CHIP if fastest(call) == "cuda" else unmeasured


def triton_tier(call: KernelCall, usual: Priority) -> Priority:
    """The ``triton`` backend's ``auto`` tier for a CUDA ``call``: its ``usual`` tier unless
    the call's row names another backend."""
    winner = fastest(call)
    if winner == "cuda":
        return Priority.BEATS_DEVICE_BEST  # below cuda's FUSED_ON_CHIP, above cuDNN
    if winner == "torch":
        return Priority.BEATS_PORTABLE  # below cuDNN's DEVICE_BEST
    return usual
