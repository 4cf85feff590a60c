"""How the persistent CUDA loops cut a call over the GPU (pure Python, testable without one).

Block ``b`` owns ``units`` hidden units of one head for the whole sequence and keeps the
recurrent weights those units need in shared memory: ``D x G*units`` floats in the forward (the
columns feeding their gates) and ``G*D x units`` in the backward (the rows they feed). A step's
batch is walked in tiles of ``batch_tile`` rows, each staging one ``D`` (forward) or ``G*D``
(backward) vector per row next to the weights. All blocks must be resident at once (one
cooperative launch, a grid-wide barrier per step): at most one block per SM here.

The smallest ``units`` with ``heads * ceil(D / units) <= SMs`` spreads the work over the most
SMs; calls whose weights do not fit (more heads than SMs, or a block's weights over the shared
memory) are refused with the reason, never cut into several launches.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GATES", "MAX_BATCH_TILE", "Tiling", "plan"]

#: Gates per unit of each cell kind (elman, lstm, gru, slstm). sLSTM's states ``c, n, m`` stay
#: in their owning block like LSTM's ``c``; they take no shared memory.
GATES = {"elman": 1, "lstm": 4, "gru": 3, "slstm": 4}
#: Batch rows staged per tile at most (more only lengthens each block's serial pass).
MAX_BATCH_TILE = 32
_FLOAT = 4


@dataclass(frozen=True)
class Tiling:
    """One call's cut. ``units``: hidden units per block; ``blocks``: blocks of the launch
    (``heads * ceil(D / units)``); ``forward_batch_tile``, ``backward_batch_tile``: batch rows per
    tile; ``forward_smem``, ``backward_smem``: dynamic shared memory per block, bytes."""

    units: int
    blocks: int
    forward_batch_tile: int
    backward_batch_tile: int
    forward_smem: int
    backward_smem: int


def plan(kind: str, heads: int, head_dim: int, batch: int, sms: int, smem: int) -> Tiling | str:
    """The tiling of a call, or why it cannot run.

    Args:
        kind: ``elman``, ``lstm``, ``gru`` or ``slstm``.
        heads, head_dim: ``N`` and ``D``.
        batch: ``B`` (0 is allowed: nothing is launched).
        sms: streaming multiprocessors of the device.
        smem: shared memory one block may use, bytes (the opt-in maximum).
    """
    G = GATES[kind]
    N, D = heads, head_dim
    if sms < N:
        return f"{N} heads exceed the {sms} SMs of this device (one head per block at least)"
    units = -(-D // (sms // N))
    blocks = N * -(-D // units)
    weights = _FLOAT * D * G * units
    rows = max(1, min(batch, MAX_BATCH_TILE))
    row_f = _FLOAT * (D + G * units)
    row_b = _FLOAT * (G * D + units)
    bt_f = min(rows, (smem - weights) // row_f)
    bt_b = min(rows, (smem - weights) // row_b)
    if bt_f < 1 or bt_b < 1:
        need = (weights + max(row_f, row_b)) / 1024
        return (
            f"head size {D} with {N} head(s) needs {need:.0f} KiB of shared memory per block "
            f"({units} units of weights on each of {blocks} blocks), over the "
            f"{smem / 1024:.0f} KiB available"
        )
    return Tiling(
        units=units,
        blocks=blocks,
        forward_batch_tile=bt_f,
        backward_batch_tile=bt_b,
        forward_smem=weights + bt_f * row_f,
        backward_smem=weights + bt_b * row_b,
    )
