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

**Tensor cores** (``tensor_cores=True``, which the backend asks for on 16-bit calls on sm_80
and later) put each step's product on the tensor cores in TF32, per direction where its shapes
allow: the WMMA tiles are 16 batch rows by 16 columns by 8 of the summed dimension, so the
forward needs ``G * units`` divisible by 16 (its product has ``G * units`` columns), the
backward ``units`` divisible by 16, both ``D`` divisible by 8 and chunks of ``R`` in 8s, and a
tile of ``r`` batch rows takes ``ceil(r / 16) * 16`` rows of shared memory. Units are then
rounded up (to 4 for LSTM and sLSTM, whose forward then has tensor cores; to 16 for Elman and
GRU). A resident cut is preferred to tensor cores: where the rounded cut does not fit but the
float32 one does, the float32 cut is kept, and the reason says so. Which is faster where both
fit has not been measured on a GPU yet.

The byte counts here mirror ``forward_smem_bytes`` / ``backward_smem_bytes`` of
``csrc/gated_cuda.cu`` (the emulation test compares them through the ``smem_bytes`` op).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace

__all__ = [
    "GATES",
    "MAX_BATCH_TILE",
    "MAX_K_CHUNK",
    "MMA_K",
    "MMA_ROWS",
    "Tiling",
    "plan",
    "smem_bytes",
]

#: Gates per unit of each cell kind (elman, lstm, gru, slstm). sLSTM's states ``c, n, m`` stay
#: in their owning block like LSTM's ``c``; they take no shared memory.
GATES = {"elman": 1, "lstm": 4, "gru": 3, "slstm": 4}
#: Batch rows staged per tile at most (more only lengthens each block's serial pass).
MAX_BATCH_TILE = 32
#: Rows (forward) or columns (backward) of ``R`` per streamed chunk at most: enough to amortise
#: the two block barriers of each chunk, small enough to leave room for batch rows.
MAX_K_CHUNK = 64
_FLOAT = 4
#: The tensor-core product's tiles (WMMA's TF32 shape m16n16k8): 16 batch rows by 16 columns,
#: summing 8 at a time.
MMA_ROWS, MMA_K = 16, 8


def _up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Tiling:
    """One call's cut.

    ``units``: hidden units per item; ``blocks``: blocks of each launch (resident:
    ``heads * ceil(D / units)``, one item each; streamed: at most that and at most the SMs);
    ``forward_batch_tile``, ``backward_batch_tile``: batch rows per tile; ``forward_smem``,
    ``backward_smem``: dynamic shared memory per block, bytes; ``forward_k_chunk``,
    ``backward_k_chunk``: rows / columns of ``R`` per streamed chunk (0: resident);
    ``forward_mma``, ``backward_mma``: that direction's products on the tensor cores (TF32);
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
    forward_mma: bool = False
    backward_mma: bool = False
    reason: str = ""

    @property
    def streamed(self) -> bool:
        """Whether ``R`` is streamed from L2 each step (else it stays in shared memory)."""
        return self.forward_k_chunk > 0

    @property
    def tensor_cores(self) -> bool:
        """Whether either direction runs its products on the tensor cores."""
        return self.forward_mma or self.backward_mma

    @property
    def forward_args(self) -> tuple[int, int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks, mma)`` of the forward op
        (``gated_cuda_ops.cpp``)."""
        f = self
        return f.units, f.forward_batch_tile, f.forward_k_chunk, f.blocks, int(f.forward_mma)

    @property
    def backward_args(self) -> tuple[int, int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks, mma)`` of the backward op."""
        b = self
        return b.units, b.backward_batch_tile, b.backward_k_chunk, b.blocks, int(b.backward_mma)

    @property
    def mode(self) -> str:
        """``"resident"`` or ``"streamed"``."""
        return "streamed" if self.streamed else "resident"


def _rows(batch_tile: int, mma: bool) -> int:
    """Rows of shared memory a tile of ``batch_tile`` rows takes."""
    return _up(batch_tile, MMA_ROWS) if mma else batch_tile


def smem_bytes(
    kind: str,
    head_dim: int,
    units: int,
    batch_tile: int,
    k_chunk: int,
    forward_mma: bool = False,
    backward_mma: bool = False,
) -> tuple[int, int]:
    """``(forward, backward)`` dynamic shared memory of one block, bytes, as the kernels ask for
    it (``k_chunk`` 0: resident; with a direction's ``mma`` its tiles take their rows rounded
    up to 16)."""
    G, D = GATES[kind], head_dim
    rows = k_chunk if k_chunk > 0 else D
    cols = k_chunk if k_chunk > 0 else G * D
    forward = _FLOAT * (rows * G * units + _rows(batch_tile, forward_mma) * (D + G * units))
    backward = _FLOAT * (cols * units + _rows(batch_tile, backward_mma) * (cols + units))
    return forward, backward


def _mma_shapes(kind: str, D: int, units: int) -> tuple[bool, bool]:
    """Whether the forward and the backward products of items of ``units`` units fit the WMMA
    tiles (chunks of ``R`` are then cut in 8s)."""
    G = GATES[kind]
    return (G * units) % MMA_ROWS == 0 and D % MMA_K == 0, units % MMA_ROWS == 0 and D % MMA_K == 0


def _unit_step(kind: str) -> int:
    """The least multiple of units whose forward product fits the 16-column WMMA tiles."""
    G = GATES[kind]
    return next(u for u in (1, 2, 4, 8, 16) if (G * u) % MMA_ROWS == 0)


def _tile(rows: int, fit: int, mma: bool) -> int:
    """Batch rows per tile: at most ``rows``, and within ``fit`` rows of shared memory once
    rounded up to the MMA's 16 (``mma``); 0 when not one row fits."""
    if mma:
        fit = fit // MMA_ROWS * MMA_ROWS
    return max(0, min(rows, fit))


def _size(n: int) -> str:
    """``n`` bytes in words: KiB from 10 KiB on."""
    return f"{n / 1024:.0f} KiB" if n >= 10 * 1024 else f"{n} bytes"


def _resident(kind: str, N: int, D: int, rows: int, sms: int, smem: int, mma: bool) -> Tiling | str:
    G = GATES[kind]
    if sms < N:
        return f"{N} heads exceed the {sms} SMs of this device (one head per block at least)"
    units = -(-D // (sms // N))
    if mma:
        units = min(D, _up(units, _unit_step(kind)))
    blocks = N * -(-D // units)
    weights = _FLOAT * D * G * units
    row_f = _FLOAT * (D + G * units)
    row_b = _FLOAT * (G * D + units)
    fwd_mma, bwd_mma = _mma_shapes(kind, D, units) if mma else (False, False)
    bt_f = _tile(rows, (smem - weights) // row_f, fwd_mma)
    if bt_f < 1 and fwd_mma:  # 16 rows do not fit where fewer float32 rows may
        fwd_mma, bt_f = False, _tile(rows, (smem - weights) // row_f, False)
    bt_b = _tile(rows, (smem - weights) // row_b, bwd_mma)
    if bt_b < 1 and bwd_mma:
        bwd_mma, bt_b = False, _tile(rows, (smem - weights) // row_b, False)
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
        forward_smem=smem_bytes(kind, D, units, bt_f, 0, fwd_mma, bwd_mma)[0],
        backward_smem=smem_bytes(kind, D, units, bt_b, 0, fwd_mma, bwd_mma)[1],
        forward_mma=fwd_mma,
        backward_mma=bwd_mma,
        reason=f"resident: R in shared memory, {units} units of a head on each of {blocks} blocks",
    )


def _chunk(
    kdim: int, rows: int, per_k: int, per_row: int, per_kr: int, smem: int, mma: bool
) -> tuple[int, int]:
    """``(k_chunk, batch_tile)`` within ``smem`` bytes for a block whose shared memory is
    ``k * per_k + r * per_row + k * r * per_kr``: the longest chunk up to :data:`MAX_K_CHUNK`
    (and ``kdim``) with as many batch rows as fit, else one row and the chunk that fits
    (``(0, 0)``: nothing fits). With ``mma`` chunks are multiples of 8 and ``r`` counts the
    tile's rows rounded up to 16."""
    step = MMA_K if mma else 1
    want = min(MAX_K_CHUNK, kdim) // step * step
    if want < 1:
        return 0, 0
    bt = _tile(rows, (smem - want * per_k) // (per_row + want * per_kr), mma)
    if bt >= 1:
        return want, bt
    least = MMA_ROWS if mma else 1  # rows of shared memory one batch row takes
    kc = min(want, (smem - least * per_row) // (per_k + least * per_kr)) // step * step
    return (kc, 1) if kc >= 1 else (0, 0)


def _streamed(
    kind: str, N: int, D: int, rows: int, sms: int, smem: int, why: str, mma: bool
) -> Tiling | str:
    G = GATES[kind]
    step = _unit_step(kind) if mma else 1
    # As many items as SMs where the heads allow; halve the units while a block does not fit.
    units = -(-D // max(1, sms // N)) if sms >= N else D
    if mma:
        units = min(D, _up(units, step))
    while True:
        fwd_mma, bwd_mma = _mma_shapes(kind, D, units) if mma else (False, False)
        # forward: chunk of R (k x G*units), per row h (D) and the product (G*units)
        f_args = (D, rows, _FLOAT * G * units, _FLOAT * (D + G * units), 0, smem)
        kf, bt_f = _chunk(*f_args, fwd_mma)
        if not kf and fwd_mma:
            fwd_mma, (kf, bt_f) = False, _chunk(*f_args, False)
        # backward: chunk of R (k x units), per row the product (units) and dq's chunk (k)
        b_args = (G * D, rows, _FLOAT * units, _FLOAT * units, _FLOAT, smem)
        kb, bt_b = _chunk(*b_args, bwd_mma)
        if not kb and bwd_mma:
            bwd_mma, (kb, bt_b) = False, _chunk(*b_args, False)
        if kf and kb:
            break
        if units <= step:
            return (
                f"{why}; even the streamed fallback needs more than the {_size(smem)} of shared "
                f"memory per block (head size {D})"
            )
        units = min(D, _up(-(-units // 2), step))
    items = N * -(-D // units)
    blocks = min(items, sms)
    return Tiling(
        units=units,
        blocks=blocks,
        forward_batch_tile=bt_f,
        backward_batch_tile=bt_b,
        forward_smem=smem_bytes(kind, D, units, bt_f, kf, fwd_mma, bwd_mma)[0],
        backward_smem=smem_bytes(kind, D, units, bt_b, kb, fwd_mma, bwd_mma)[1],
        forward_k_chunk=kf,
        backward_k_chunk=kb,
        forward_mma=fwd_mma,
        backward_mma=bwd_mma,
        reason=(
            f"streamed: {why}, so R is read from L2 each step in chunks of {kf} rows (forward) "
            f"and {kb} columns (backward); {items} items of {units} units on {blocks} blocks"
        ),
    )


def _mma_words(cut: Tiling) -> str:
    if cut.forward_mma and cut.backward_mma:
        return "tensor cores (TF32) in both directions"
    if cut.tensor_cores:
        on, off = ("forward", "backward") if cut.forward_mma else ("backward", "forward")
        return (
            f"tensor cores (TF32) in the {on} only (the {off}'s product needs "
            f"{'units' if off == 'backward' else 'gates x units'} in 16s and 16 batch rows of "
            "shared memory)"
        )
    return "no tensor cores: their 16-row tiles do not fit this cut's shared memory"


def plan(
    kind: str,
    heads: int,
    head_dim: int,
    batch: int,
    sms: int,
    smem: int,
    tensor_cores: bool = False,
) -> Tiling | str:
    """The tiling of a call (resident where the weights fit in shared memory, else streamed),
    or why it cannot run (only a device with almost no shared memory).

    Args:
        kind: ``elman``, ``lstm``, ``gru`` or ``slstm``.
        heads, head_dim: ``N`` and ``D``.
        batch: ``B`` (0 is allowed: nothing is launched).
        sms: streaming multiprocessors of the device.
        smem: shared memory one block may use, bytes (the opt-in maximum).
        tensor_cores: put the products on the tensor cores where the shapes allow (see the
            module's docstring; the reason says where they were not used and why).

    Raises:
        ValueError: an unknown ``kind``, or a size below its least value (heads, head size,
            SMs and shared memory at least 1, batch at least 0).
        TypeError: a size that is not an integer.
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
        # the cut is integer arithmetic: a float would give a plan of fractional units
        try:
            operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {value!r}") from None
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    N, D = heads, head_dim
    rows = max(1, min(batch, MAX_BATCH_TILE))
    # the float32 cut: the answer without tensor cores, and where theirs is no better
    resident = _resident(kind, N, D, rows, sms, smem, False)
    plain = (
        resident
        if isinstance(resident, Tiling)
        else _streamed(kind, N, D, rows, sms, smem, resident, False)
    )
    if not tensor_cores or not isinstance(plain, Tiling):
        return plain
    if D % MMA_K:
        why = f"no tensor cores: head size {D} is not a multiple of {MMA_K}"
        return replace(plain, reason=f"{plain.reason}; {why}")
    cut = _resident(kind, N, D, rows, sms, smem, True)
    if not isinstance(cut, Tiling):
        if isinstance(resident, Tiling):  # residency first: R kept on chip beats tensor cores
            why = f"no tensor cores: their cut would not keep R resident ({cut})"
            return replace(plain, reason=f"{plain.reason}; {why}")
        cut = _streamed(kind, N, D, rows, sms, smem, resident, True)
    if not isinstance(cut, Tiling):  # their units (rounded up) leave no streamed cut at all
        why = "no tensor cores: their units do not fit this device's shared memory"
        return replace(plain, reason=f"{plain.reason}; {why}")
    if not cut.tensor_cores:  # their units (rounded up) cost shared memory and bought nothing
        return replace(plain, reason=f"{plain.reason}; {_mma_words(cut)}")
    return replace(cut, reason=f"{cut.reason}; {_mma_words(cut)}")
