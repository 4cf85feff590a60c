"""How the persistent CUDA loops cut a call over the GPU (pure Python, testable without one).

An *item* is ``units`` hidden units of one head (the last item of a head may be shorter); the
call has ``heads * ceil(D / units)`` items, each owned by one block for the whole sequence (its
state never leaves that block). A step's batch is walked in tiles of ``batch_tile`` rows. All
blocks must be resident at once (one cooperative launch, a grid-wide barrier per step): at most
one block per SM here. Two modes, chosen per call:

- **resident** (preferred): one item per block, and the block keeps the recurrent weights its
  units need in shared memory for all steps: ``D x G*units`` floats in the forward (the columns
  feeding their gates) and ``G*D x units`` in the backward (the rows they feed), next to one
  staged ``D`` (forward) or ``G*D`` (backward) vector per batch row. The smallest ``units``
  with ``heads * ceil(D / units) <= SMs`` spreads the work over the most SMs.
- **streamed** (the fallback where that does not fit: more heads than SMs, or too many bytes
  per block): ``min(items, SMs)`` blocks, block ``b`` owning items ``b, b + blocks, ...``; each
  step every item's slice of the weights is read again from global memory (L2) through a
  shared-memory tile of ``k_chunk`` rows of ``R`` (forward; ``k_chunk`` columns of ``R`` and
  entries of ``dq`` in the backward), so every head count and head size runs.

The byte counts here mirror ``forward_smem_bytes`` / ``backward_smem_bytes`` of
``csrc/gated_cuda.cu`` (the emulation test compares them through the ``smem_bytes`` op).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GATES", "MAX_BATCH_TILE", "MAX_K_CHUNK", "Tiling", "plan", "smem_bytes"]

#: Gates per unit of each cell kind (elman, lstm, gru, slstm). sLSTM's states ``c, n, m`` stay
#: in their owning block like LSTM's ``c``; they take no shared memory.
GATES = {"elman": 1, "lstm": 4, "gru": 3, "slstm": 4}
#: Batch rows staged per tile at most (more only lengthens each block's serial pass).
MAX_BATCH_TILE = 32
#: Rows (forward) or columns (backward) of ``R`` per streamed chunk at most: enough to amortise
#: the two block barriers of each chunk, small enough to leave room for batch rows.
MAX_K_CHUNK = 64
_FLOAT = 4


@dataclass(frozen=True)
class Tiling:
    """One call's cut.

    ``units``: hidden units per item; ``blocks``: blocks of each launch (resident:
    ``heads * ceil(D / units)``, one item each; streamed: at most that and at most the SMs);
    ``forward_batch_tile``, ``backward_batch_tile``: batch rows per tile; ``forward_smem``,
    ``backward_smem``: dynamic shared memory per block, bytes; ``forward_k_chunk``,
    ``backward_k_chunk``: rows / columns of ``R`` per streamed chunk (0: resident);
    ``reason``: which mode was chosen and why, in words.
    """

    units: int
    blocks: int
    forward_batch_tile: int
    backward_batch_tile: int
    forward_smem: int
    backward_smem: int
    forward_k_chunk: int = 0
    backward_k_chunk: int = 0
    reason: str = ""

    @property
    def streamed(self) -> bool:
        """Whether ``R`` is streamed from L2 each step (else it stays in shared memory)."""
        return self.forward_k_chunk > 0

    @property
    def forward_args(self) -> tuple[int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks)`` of the forward op (``gated_cuda_ops.cpp``)."""
        return self.units, self.forward_batch_tile, self.forward_k_chunk, self.blocks

    @property
    def backward_args(self) -> tuple[int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks)`` of the backward op."""
        return self.units, self.backward_batch_tile, self.backward_k_chunk, self.blocks

    @property
    def mode(self) -> str:
        """``"resident"`` or ``"streamed"``."""
        return "streamed" if self.streamed else "resident"


def smem_bytes(
    kind: str, head_dim: int, units: int, batch_tile: int, k_chunk: int
) -> tuple[int, int]:
    """``(forward, backward)`` dynamic shared memory of one block, bytes, as the kernels ask for
    it (``k_chunk`` 0: resident)."""
    G, D = GATES[kind], head_dim
    rows = k_chunk if k_chunk > 0 else D
    cols = k_chunk if k_chunk > 0 else G * D
    forward = _FLOAT * (rows * G * units + batch_tile * (D + G * units))
    backward = _FLOAT * (cols * units + batch_tile * (cols + units))
    return forward, backward


def _size(n: int) -> str:
    """``n`` bytes in words: KiB from 10 KiB on."""
    return f"{n / 1024:.0f} KiB" if n >= 10 * 1024 else f"{n} bytes"


def _resident(kind: str, N: int, D: int, rows: int, sms: int, smem: int) -> Tiling | str:
    G = GATES[kind]
    if sms < N:
        return f"{N} heads exceed the {sms} SMs of this device (one head per block at least)"
    units = -(-D // (sms // N))
    blocks = N * -(-D // units)
    weights = _FLOAT * D * G * units
    row_f = _FLOAT * (D + G * units)
    row_b = _FLOAT * (G * D + units)
    bt_f = min(rows, (smem - weights) // row_f)
    bt_b = min(rows, (smem - weights) // row_b)
    if bt_f < 1 or bt_b < 1:
        need = weights + max(row_f, row_b)
        return (
            f"head size {D} with {N} head(s) needs {_size(need)} of shared memory per block "
            f"({units} units of weights on each of {blocks} blocks), over the "
            f"{_size(smem)} available"
        )
    return Tiling(
        units=units,
        blocks=blocks,
        forward_batch_tile=bt_f,
        backward_batch_tile=bt_b,
        forward_smem=weights + bt_f * row_f,
        backward_smem=weights + bt_b * row_b,
        reason=f"resident: R in shared memory, {units} units of a head on each of {blocks} blocks",
    )


def _chunk(
    kdim: int, rows: int, per_k: int, per_row: int, per_kr: int, smem: int
) -> tuple[int, int]:
    """``(k_chunk, batch_tile)`` within ``smem`` bytes for a block whose shared memory is
    ``k * per_k + r * per_row + k * r * per_kr``: the longest chunk up to :data:`MAX_K_CHUNK`
    (and ``kdim``) with as many batch rows as fit, else one row and the chunk that fits
    (``(0, 0)``: nothing fits)."""
    want = min(MAX_K_CHUNK, kdim)
    bt = min(rows, (smem - want * per_k) // (per_row + want * per_kr))
    if bt >= 1:
        return want, bt
    kc = min(want, (smem - per_row) // (per_k + per_kr))
    return (kc, 1) if kc >= 1 else (0, 0)


def _streamed(kind: str, N: int, D: int, rows: int, sms: int, smem: int, why: str) -> Tiling | str:
    G = GATES[kind]
    # As many items as SMs where the heads allow; halve the units while a block does not fit.
    units = -(-D // max(1, sms // N)) if sms >= N else D
    while True:
        # forward: chunk of R (k x G*units), per row h (D) and the product (G*units)
        kf, bt_f = _chunk(D, rows, _FLOAT * G * units, _FLOAT * (D + G * units), 0, smem)
        # backward: chunk of R (k x units), per row the product (units) and dq's chunk (k)
        kb, bt_b = _chunk(G * D, rows, _FLOAT * units, _FLOAT * units, _FLOAT, smem)
        if kf and kb:
            break
        if units == 1:
            return (
                f"{why}; even the streamed fallback needs more than the {_size(smem)} of shared "
                f"memory per block (head size {D})"
            )
        units = -(-units // 2)
    items = N * -(-D // units)
    blocks = min(items, sms)
    forward, _ = smem_bytes(kind, D, units, bt_f, kf)
    _, backward = smem_bytes(kind, D, units, bt_b, kb)
    return Tiling(
        units=units,
        blocks=blocks,
        forward_batch_tile=bt_f,
        backward_batch_tile=bt_b,
        forward_smem=forward,
        backward_smem=backward,
        forward_k_chunk=kf,
        backward_k_chunk=kb,
        reason=(
            f"streamed: {why}, so R is read from L2 each step in chunks of {kf} rows (forward) "
            f"and {kb} columns (backward); {items} items of {units} units on {blocks} blocks"
        ),
    )


def plan(kind: str, heads: int, head_dim: int, batch: int, sms: int, smem: int) -> Tiling | str:
    """The tiling of a call (resident where the weights fit in shared memory, else streamed),
    or why it cannot run (only a device with almost no shared memory).

    Args:
        kind: ``elman``, ``lstm``, ``gru`` or ``slstm``.
        heads, head_dim: ``N`` and ``D``.
        batch: ``B`` (0 is allowed: nothing is launched).
        sms: streaming multiprocessors of the device.
        smem: shared memory one block may use, bytes (the opt-in maximum).

    Raises:
        ValueError: an unknown ``kind``, or a size below its least value (heads, head size,
            SMs and shared memory at least 1, batch at least 0).
    """
    if kind not in GATES:
        raise ValueError(f"unknown cell kind {kind!r}: one of {', '.join(GATES)}")
    for name, value, least in (
        ("heads", heads, 1),
        ("head_dim", head_dim, 1),
        ("batch", batch, 0),
        ("sms", sms, 1),
        ("smem", smem, 1),
    ):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    N, D = heads, head_dim
    rows = max(1, min(batch, MAX_BATCH_TILE))
    resident = _resident(kind, N, D, rows, sms, smem)
    if isinstance(resident, Tiling):
        return resident
    return _streamed(kind, N, D, rows, sms, smem, resident)
