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
  with ``heads * ceil(D / units) <= SMs`` spreads the work over the most SMs. Where the
  backward's ``G*D`` staged entries per row would crowd out batch rows, it stages ``dq`` in
  ``backward_stage`` columns at a time (a multiple of :data:`STAGE_STEP`, at most
  :data:`MAX_STAGES` chunks), each multiplied with the matching rows of the resident weights.
- **streamed** (the fallback where that does not fit: more heads than SMs, or too many bytes
  per block): ``min(items, SMs)`` blocks, block ``b`` owning items ``b, b + blocks, ...``; each
  step every item's slice of the weights is read again from global memory (L2) through a
  shared-memory tile of ``k_chunk`` rows of ``R`` (forward, with the matching ``k_chunk``
  entries of ``h`` of each batch row; ``k_chunk`` columns of ``R`` and entries of ``dq`` in the
  backward), so every head count and head size runs. The slice is read once per batch tile,
  and since a row stages only a chunk's entries, a streamed tile takes up to
  :data:`MAX_STREAMED_BATCH_TILE` rows (as many as fit): the whole batch, for most batches,
  so ``R`` is read once per step.

**Tensor cores** (``tensor_cores``: the operand format, which the backend names for 16-bit calls
on sm_80 and later: ``"bf16"`` or ``"fp16"``, the call's own dtype; ``"tf32"`` rounds float32
operands) put each step's product on the tensor cores, per direction where its shapes allow:
the WMMA tiles are 16 batch rows by 16 columns by :data:`MMA_K` of the summed dimension (8 in
TF32, 16 with 16-bit operands), so the forward needs ``G * units`` divisible by 16 (its product
has ``G * units`` columns), the backward ``units`` divisible by 16, ``D`` and the chunks of
``R`` divisible by the summed step, and a tile of ``r`` batch rows takes ``ceil(r / 16) * 16``
rows of shared memory. 16-bit operands take 2 bytes where float32 ones take 4 (weights and the
staged ``h`` or ``dq``; the product stays float32), and each block adds a float32 scratch of
one 16 x 16 tile per warp (:data:`SPLIT_BYTES`) where the warps sharing a tile add their parts
(float32 FMAs have one of a float per thread, :data:`FMA_SPLIT_BYTES`, for the same).
Head sizes that are multiples of 8 but not of 16 fall back from 16-bit operands to TF32.
Units are rounded up to 16 first (both directions on the tensor cores); where the backward's
tiles do not fit that cut, to the forward's least step instead (4 for LSTM and sLSTM; Elman and
GRU need 16 either way), with the backward in float32. A resident cut is preferred to tensor
cores: where the rounded cut does not fit but the float32 one does, the float32 cut is kept,
and the reason says so. Which is faster where both fit has not been measured on a GPU yet.

**The step exchange** (``exchange``, :data:`EXCHANGES`): how the blocks learn that the step
they read from is complete. ``"grid"`` (the default): a grid-wide barrier after every step.
``"flags"``: each block counts its finished steps in a flag of its own and waits only for the
blocks whose results it reads: those of its own head when resident (heads exchange nothing),
all blocks when streamed; a multi-head call's blocks then never wait for other heads. Which is
faster has not been measured on a GPU yet (``tools/gpu/cuda_targets.py`` times both).

The byte counts here mirror ``forward_smem_bytes`` / ``backward_smem_bytes`` of
``csrc/gated_cuda.cu`` (the emulation test compares them through the ``smem_bytes`` op).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from functools import lru_cache, partial

__all__ = [
    "EXCHANGES",
    "FMA_SPLIT_BYTES",
    "GATES",
    "MAX_BATCH_TILE",
    "MAX_K_CHUNK",
    "MAX_STAGES",
    "MAX_STREAMED_BATCH_TILE",
    "MMA_K",
    "MMA_ROWS",
    "OPERANDS",
    "SPLIT_BYTES",
    "STAGE_STEP",
    "Tiling",
    "plan",
    "smem_bytes",
]

#: Gates per unit of each cell kind (elman, lstm, gru, slstm). sLSTM's states ``c, n, m`` stay
#: in their owning block like LSTM's ``c``; they take no shared memory.
GATES = {"elman": 1, "lstm": 4, "gru": 3, "slstm": 4}
#: Batch rows staged per tile at most (more only lengthens each block's serial pass; the
#: kernels take at most ``kMaxBatchTile`` = 32, ``gated_cuda.h``).
MAX_BATCH_TILE = 32
#: Batch rows of a streamed tile at most (the kernels keep its restarting rows in words of
#: shared memory, so it may exceed ``kMaxBatchTile``). Each tile reads the item's slice of ``R``
#: again, so a tile as tall as the batch reads it once per step; past this many rows the rows'
#: own chunks of ``h`` (``dq``) are most of a step's reads and a taller tile saves little.
MAX_STREAMED_BATCH_TILE = 256
#: Rows (forward) or columns (backward) of ``R`` per streamed chunk at most: enough to amortise
#: the two block barriers of each chunk, small enough to leave room for batch rows.
MAX_K_CHUNK = 64
_FLOAT = 4
#: The tensor-core product's tiles: 16 batch rows by 16 columns.
MMA_ROWS = 16
#: Tensor-core operand formats: the kernels' ``Product`` code (``gated_cuda.h``) and the bytes
#: of one operand in shared memory.
OPERANDS = {"tf32": (1, 4), "bf16": (2, 2), "fp16": (3, 2)}
#: The summed dimension's step of one WMMA product per operand format (m16n16k8 in TF32,
#: m16n16k16 with 16-bit operands).
MMA_K = {"tf32": 8, "bf16": 16, "fp16": 16}
#: The resident backward stages ``dq`` in multiples of this many columns when all ``G*D`` would
#: crowd out batch rows (a multiple of every operand format's summed step), in at most
#: :data:`MAX_STAGES` chunks per step (each costs two block barriers); ``kStageStep`` in
#: ``gated_cuda.h``, whose glue refuses other stages.
STAGE_STEP = 16
MAX_STAGES = 8
#: Bytes of a block's float32 scratch for the split sums (one 16 x 16 tile for each of the
#: 256 threads' 8 warps), with tensor cores.
SPLIT_BYTES = 8 * 16 * 16 * _FLOAT
#: Bytes of the float32 scratch of split FMA sums (one float for each of the 256 threads, which
#: share an output's sum where a product has fewer outputs than threads).
FMA_SPLIT_BYTES = 256 * _FLOAT
#: Step exchanges and the kernels' ``Exchange`` codes (``gated_cuda.h``): a grid barrier per
#: step, or per-block step counters (see the module's docstring).
EXCHANGES = {"grid": 0, "flags": 1}


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
    ``backward_stage``: columns of ``dq`` the resident backward stages at a time (0: all
    ``G*D``; see :func:`plan`);
    ``forward_mma``, ``backward_mma``: that direction's products on the tensor cores;
    ``operands``: their operand format (a key of :data:`OPERANDS`; ``""`` without tensor
    cores); ``exchange``: how the blocks learn a step is complete (a key of
    :data:`EXCHANGES`); ``reason``: which mode was chosen and why, in words.
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
    operands: str = ""
    backward_stage: int = 0
    exchange: str = "grid"
    reason: str = ""

    @property
    def streamed(self) -> bool:
        """Whether ``R`` is streamed from L2 each step (else it stays in shared memory)."""
        return self.forward_k_chunk > 0

    @property
    def tensor_cores(self) -> bool:
        """Whether either direction runs its products on the tensor cores."""
        return self.forward_mma or self.backward_mma

    def _product(self, mma: bool) -> int:
        """The kernels' ``Product`` code of a direction (0: float32 FMAs)."""
        return OPERANDS[self.operands][0] if mma else 0

    @property
    def forward_args(self) -> tuple[int, int, int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks, mma, exchange)`` of the forward op
        (``gated_cuda_ops.cpp``; ``mma`` the ``Product`` code, ``exchange`` the ``Exchange``
        code)."""
        f = self
        mma = f._product(f.forward_mma)
        return (
            f.units, f.forward_batch_tile, f.forward_k_chunk, f.blocks, mma,
            EXCHANGES[f.exchange],
        )  # fmt: skip

    @property
    def backward_args(self) -> tuple[int, int, int, int, int, int, int]:
        """``(units, batch_tile, k_chunk, blocks, mma, stage, exchange)`` of the backward op."""
        b = self
        mma = b._product(b.backward_mma)
        return (
            b.units, b.backward_batch_tile, b.backward_k_chunk, b.blocks, mma, b.backward_stage,
            EXCHANGES[b.exchange],
        )  # fmt: skip

    @property
    def mode(self) -> str:
        """``"resident"`` or ``"streamed"``."""
        return "streamed" if self.streamed else "resident"


def _direction_bytes(
    kind: str,
    D: int,
    units: int,
    batch_tile: int,
    k_chunk: int,
    ops: str | None,
    backward: bool,
    stage: int = 0,
) -> int:
    """Dynamic shared memory of one block of a direction; ``ops``: its tensor-core operand
    format (``None``: float32 FMAs); ``stage``: the resident backward's staged columns of
    ``dq`` (0: all). Mirrors ``csrc/gated_cuda.cu``."""
    G = GATES[kind]
    size = OPERANDS[ops][1] if ops else _FLOAT
    tile = _up(batch_tile, MMA_ROWS) if ops else batch_tile
    split = SPLIT_BYTES if ops else FMA_SPLIT_BYTES
    if backward:  # a chunk (or all) of R's G*D columns and of dq, the product over the units
        cols = k_chunk if k_chunk > 0 else G * D
        staged = k_chunk if k_chunk > 0 else (stage or G * D)
        return size * (cols * units + tile * staged) + _FLOAT * tile * units + split
    # a chunk (or all) of R's D rows, the same entries of h, the gate columns; streamed, a
    # restart word per 32 rows of the tile
    rows = k_chunk if k_chunk > 0 else D
    words = -(-batch_tile // 32) if k_chunk > 0 else 0
    return size * (rows * G * units + tile * rows) + _FLOAT * (tile * G * units + words) + split


def smem_bytes(
    kind: str,
    head_dim: int,
    units: int,
    batch_tile: int,
    k_chunk: int,
    forward_mma: bool = False,
    backward_mma: bool = False,
    operands: str = "tf32",
    stage: int = 0,
) -> tuple[int, int]:
    """``(forward, backward)`` dynamic shared memory of one block, bytes, as the kernels ask for
    it (``k_chunk`` 0: resident; a direction with ``mma`` has ``operands`` in shared memory,
    its tiles' rows rounded up to 16 and the split scratch; ``stage``: the resident backward's
    staged columns of ``dq``, 0 for all)."""
    args = (kind, head_dim, units, batch_tile, k_chunk)
    return (
        _direction_bytes(*args, operands if forward_mma else None, False),
        _direction_bytes(*args, operands if backward_mma else None, True, stage),
    )


def _mma_shapes(kind: str, D: int, units: int, ops: str) -> tuple[bool, bool]:
    """Whether the forward and the backward products of items of ``units`` units fit the WMMA
    tiles with ``ops`` operands (chunks of ``R`` are then cut in the summed step)."""
    G, k = GATES[kind], MMA_K[ops]
    return (G * units) % MMA_ROWS == 0 and D % k == 0, units % MMA_ROWS == 0 and D % k == 0


def _unit_step(kind: str) -> int:
    """The least multiple of units whose forward product fits the 16-column WMMA tiles."""
    G = GATES[kind]
    return next(u for u in (1, 2, 4, 8, 16) if (G * u) % MMA_ROWS == 0)


def _tile(
    kind: str, D: int, units: int, rows: int, k_chunk: int, smem: int, ops: str | None, bwd: bool
) -> int:
    """Batch rows per tile of a direction: the most, up to ``rows``, whose block fits ``smem``
    bytes; 0 when not one row fits."""
    lo, hi = 0, rows  # the bytes grow with the rows: the most that fit, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _direction_bytes(kind, D, units, mid, k_chunk, ops, bwd) <= smem:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _least_stage(GD: int) -> int:
    """The narrowest chunk of ``dq`` the resident backward stages: ``G*D`` in at most
    :data:`MAX_STAGES` chunks, a multiple of :data:`STAGE_STEP`; 0 where that is not below
    ``G*D`` (``dq`` is then staged whole)."""
    least = _up(-(-GD // MAX_STAGES), STAGE_STEP)
    return least if least < GD else 0


def _staged_tile(
    kind: str, D: int, units: int, rows: int, smem: int, ops: str | None
) -> tuple[int, int]:
    """``(batch_tile, stage)`` of the resident backward: all ``G*D`` columns of ``dq`` staged
    at once where that leaves room for ``rows`` batch rows (stage 0), else the most rows with
    the widest stage (a multiple of :data:`STAGE_STEP` below ``G*D``, in at most
    :data:`MAX_STAGES` chunks) that fits beside the weights; ``(0, 0)`` when not one row fits
    either way."""
    full = _tile(kind, D, units, rows, 0, smem, ops, True)
    GD = GATES[kind] * D
    least = _least_stage(GD) // STAGE_STEP  # stages in units of STAGE_STEP from here on
    if full >= rows or not least:
        return full, 0

    def fits(tile: int, stage: int) -> bool:
        need = _direction_bytes(kind, D, units, tile, 0, ops, True, stage * STAGE_STEP)
        return need <= smem

    for bt in range(rows, full, -1):
        if not fits(bt, least):
            continue
        lo, hi = least, (GD - 1) // STAGE_STEP  # bytes grow with the stage: the widest fitting
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(bt, mid) else (lo, mid - 1)
        return bt, lo * STAGE_STEP
    return full, 0


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _size(n: int) -> str:
    """``n`` bytes in words: KiB from 10 KiB on."""
    return f"{n / 1024:.0f} KiB" if n >= 10 * 1024 else f"{n} bytes"


def _resident(
    kind: str, N: int, D: int, rows: int, sms: int, smem: int, ops: str | None, step: int = 1
) -> Tiling | str:
    """The resident cut, its units rounded up to ``step``; with ``ops`` each direction whose
    shapes and 16-row tiles fit runs on the tensor cores, the other in float32."""
    if sms < N:
        return f"{N} heads exceed the {sms} SMs of this device (one head per block at least)"
    units = min(D, _up(-(-D // (sms // N)), step))
    blocks = N * -(-D // units)
    fwd_mma, bwd_mma = _mma_shapes(kind, D, units, ops) if ops else (False, False)
    fit = partial(_tile, kind, D, units, rows, 0, smem)
    bt_f = fit(ops if fwd_mma else None, False)
    if bt_f < 1 and fwd_mma:  # 16 rows do not fit where fewer float32 rows may
        fwd_mma, bt_f = False, fit(None, False)
    staged = partial(_staged_tile, kind, D, units, rows, smem)
    bt_b, stage = staged(ops if bwd_mma else None)
    if bt_b < 1 and bwd_mma:
        bwd_mma, (bt_b, stage) = False, staged(None)
    if bt_f < 1 or bt_b < 1:  # the least either direction takes: one row, dq staged narrowest
        need = max(
            _direction_bytes(kind, D, units, 1, 0, None, False),
            _direction_bytes(kind, D, units, 1, 0, None, True, _least_stage(GATES[kind] * D)),
        )
        return (
            f"head size {D} with {N} head(s) needs {_size(need)} of shared memory per block "
            f"({_count(units, 'unit')} of weights on each of {_count(blocks, 'block')}), over the "
            f"{_size(smem)} available"
        )
    return Tiling(
        units=units,
        blocks=blocks,
        forward_batch_tile=bt_f,
        backward_batch_tile=bt_b,
        forward_smem=_direction_bytes(kind, D, units, bt_f, 0, ops if fwd_mma else None, False),
        backward_smem=_direction_bytes(
            kind, D, units, bt_b, 0, ops if bwd_mma else None, True, stage
        ),
        forward_mma=fwd_mma,
        backward_mma=bwd_mma,
        operands=(ops or "") if fwd_mma or bwd_mma else "",
        backward_stage=stage,
        reason=f"resident: R in shared memory, {_count(units, 'unit')} of a head on each of "
        f"{_count(blocks, 'block')}"
        + (f" (the backward stages dq {stage} columns at a time)" if stage else ""),
    )


def _chunk(
    kind: str, D: int, units: int, rows: int, smem: int, ops: str | None, bwd: bool
) -> tuple[int, int]:
    """``(k_chunk, batch_tile)`` of a streamed direction within ``smem`` bytes: the longest
    chunk up to :data:`MAX_K_CHUNK` (and the summed dimension) with as many batch rows as fit,
    else one row and the longest chunk that fits (``(0, 0)``: nothing fits). With ``ops``
    chunks are multiples of the WMMA's summed step."""
    step = MMA_K[ops] if ops else 1
    kdim = GATES[kind] * D if bwd else D
    want = min(MAX_K_CHUNK, kdim) // step * step
    if want < 1:
        return 0, 0
    bt = _tile(kind, D, units, rows, want, smem, ops, bwd)
    if bt >= 1:
        return want, bt
    for kc in range(want - step, 0, -step):
        if _direction_bytes(kind, D, units, 1, kc, ops, bwd) <= smem:
            return kc, 1
    return 0, 0


def _streamed(
    kind: str, N: int, D: int, rows: int, sms: int, smem: int, why: str, ops: str | None
) -> Tiling | str:
    step = _unit_step(kind) if ops else 1
    # As many items as SMs where the heads allow; halve the units while a block does not fit.
    units = -(-D // max(1, sms // N)) if sms >= N else D
    if ops:
        units = min(D, _up(units, step))
    while True:
        fwd_mma, bwd_mma = _mma_shapes(kind, D, units, ops) if ops else (False, False)
        # forward: chunk of R (k x G*units), per row h's chunk (k) and the product (G*units)
        kf, bt_f = _chunk(kind, D, units, rows, smem, ops if fwd_mma else None, False)
        if not kf and fwd_mma:
            fwd_mma, (kf, bt_f) = False, _chunk(kind, D, units, rows, smem, None, False)
        # backward: chunk of R (k x units), per row the product (units) and dq's chunk (k)
        kb, bt_b = _chunk(kind, D, units, rows, smem, ops if bwd_mma else None, True)
        if not kb and bwd_mma:
            bwd_mma, (kb, bt_b) = False, _chunk(kind, D, units, rows, smem, None, True)
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
        forward_smem=_direction_bytes(kind, D, units, bt_f, kf, ops if fwd_mma else None, False),
        backward_smem=_direction_bytes(kind, D, units, bt_b, kb, ops if bwd_mma else None, True),
        forward_k_chunk=kf,
        backward_k_chunk=kb,
        forward_mma=fwd_mma,
        backward_mma=bwd_mma,
        operands=(ops or "") if fwd_mma or bwd_mma else "",
        reason=(
            f"streamed: {why}, so R is read from L2 each step in chunks of {kf} rows (forward) "
            f"and {kb} columns (backward), once per batch tile of {bt_f} (forward) and {bt_b} "
            f"(backward) {'row' if bt_f == bt_b == 1 else 'rows'}; {_count(items, 'item')} of "
            f"{_count(units, 'unit')} on {_count(blocks, 'block')}"
        ),
    )


_NAMES = {"tf32": "TF32", "bf16": "bfloat16 operands", "fp16": "float16 operands"}


def _mma_words(cut: Tiling) -> str:
    fmt = _NAMES.get(cut.operands, cut.operands)
    if cut.forward_mma and cut.backward_mma:
        return f"tensor cores ({fmt}) in both directions"
    if cut.tensor_cores:
        on, off = ("forward", "backward") if cut.forward_mma else ("backward", "forward")
        return (
            f"tensor cores ({fmt}) in the {on} only (the {off}'s product needs "
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
    tensor_cores: str | None = None,
    exchange: str = "grid",
) -> Tiling | str:
    """The tiling of a call (resident where the weights fit in shared memory, else streamed),
    or why it cannot run (only a device with almost no shared memory).

    Args:
        kind: ``elman``, ``lstm``, ``gru`` or ``slstm``.
        heads, head_dim: ``N`` and ``D``.
        batch: ``B`` (0 is allowed: nothing is launched).
        sms: streaming multiprocessors of the device.
        smem: shared memory one block may use, bytes (the opt-in maximum).
        tensor_cores: ``None`` (float32 FMAs) or the operand format of tensor-core products,
            a key of :data:`OPERANDS` (``"bf16"``, ``"fp16"``: the weights and staged vectors
            in that dtype; ``"tf32"``), used where the shapes allow (see the module's
            docstring; the reason says where they were not used and why).
        exchange: how the blocks learn a step is complete, a key of :data:`EXCHANGES`
            (see the module's docstring).

    Raises:
        ValueError: an unknown ``kind``, operand format or exchange, or a size below its least
            value
            (heads, head size, SMs and shared memory at least 1, batch at least 0).
        TypeError: a size that is not an integer.
    """
    if kind not in GATES:
        raise ValueError(f"unknown cell kind {kind!r}: one of {', '.join(GATES)}")
    if tensor_cores is not None and tensor_cores not in OPERANDS:
        raise ValueError(
            f"unknown tensor-core operand format {tensor_cores!r}: None or one of "
            f"{', '.join(OPERANDS)}"
        )
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown step exchange {exchange!r}: one of {', '.join(EXCHANGES)}")
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
    rows = max(1, min(batch, MAX_BATCH_TILE))
    stream_rows = max(1, min(batch, MAX_STREAMED_BATCH_TILE))
    args = (kind, heads, head_dim, rows, stream_rows, sms, smem, tensor_cores, MAX_K_CHUNK)
    return _cached_plan(*args, exchange)


@lru_cache(maxsize=512)
def _cached_plan(
    kind: str,
    N: int,
    D: int,
    rows: int,
    stream_rows: int,
    sms: int,
    smem: int,
    tensor_cores: str | None,
    max_k_chunk: int,
    exchange: str,
) -> Tiling | str:
    """:func:`plan` of a valid call whose batch tile is at most ``rows`` (resident) or
    ``stream_rows`` (streamed), cached: every forward and backward call plans, and a streamed
    search costs a fraction of a millisecond. The key holds :data:`MAX_K_CHUNK`
    (``max_k_chunk``; ``rows`` and ``stream_rows`` carry :data:`MAX_BATCH_TILE` and
    :data:`MAX_STREAMED_BATCH_TILE`), so a changed limit plans afresh."""
    cut = _cut_of(kind, N, D, rows, stream_rows, sms, smem, tensor_cores)
    if isinstance(cut, str) or exchange == "grid":
        return cut
    return replace(cut, exchange=exchange, reason=f"{cut.reason}; steps exchanged by flags")


def _cut_of(
    kind: str,
    N: int,
    D: int,
    rows: int,
    stream_rows: int,
    sms: int,
    smem: int,
    tensor_cores: str | None,
) -> Tiling | str:
    """The cut of :func:`plan` (its exchange the grid barrier)."""
    # the float32 cut: the answer without tensor cores, and where theirs is no better
    resident = _resident(kind, N, D, rows, sms, smem, None)
    plain = (
        resident
        if isinstance(resident, Tiling)
        else _streamed(kind, N, D, stream_rows, sms, smem, resident, None)
    )
    if tensor_cores is None or not isinstance(plain, Tiling):
        return plain
    if D % MMA_K["tf32"]:  # the least summed step of any operand format
        why = f"no tensor cores: head size {D} is not a multiple of {MMA_K['tf32']}"
        return replace(plain, reason=f"{plain.reason}; {why}")
    ops, fell_back = tensor_cores, ""
    if D % MMA_K[ops]:  # 16-bit operands sum in 16s, TF32 in 8s
        ops = "tf32"
        fell_back = f" ({_NAMES[tensor_cores]} need a head size in 16s)"
    # units in 16s put both directions on the tensor cores; else the forward's least step. A
    # resident cut with tensor cores must keep R resident, and a direction left without them
    # must keep the float32 cut's batch tile (else that direction only loses).
    cut: Tiling | str | None = None
    last: Tiling | str = ""
    for step, both in ((MMA_ROWS, True), (_unit_step(kind), False)):
        last = _resident(kind, N, D, rows, sms, smem, ops, step)
        if not isinstance(last, Tiling) or not last.tensor_cores:
            continue
        if both and not (last.forward_mma and last.backward_mma):
            continue
        if isinstance(resident, Tiling) and (
            (not last.forward_mma and last.forward_batch_tile < resident.forward_batch_tile)
            or (not last.backward_mma and last.backward_batch_tile < resident.backward_batch_tile)
        ):
            continue
        cut = last
        break
    if cut is None and isinstance(resident, str):  # no resident cut at all: stream R
        cut = _streamed(kind, N, D, stream_rows, sms, smem, resident, ops)
    elif cut is None:  # residency first: R kept on chip beats tensor cores
        if isinstance(last, str):
            why = f"no tensor cores: their cut would not keep R resident ({last})"
        elif not last.tensor_cores:
            why = _mma_words(last)
        else:
            why = (
                "no tensor cores: their cut would leave a direction without them and with fewer "
                "batch rows per tile"
            )
        return replace(plain, reason=f"{plain.reason}; {why}")
    if not isinstance(cut, Tiling):  # their units (rounded up) leave no streamed cut at all
        why = "no tensor cores: their units do not fit this device's shared memory"
        return replace(plain, reason=f"{plain.reason}; {why}")
    if not cut.tensor_cores:  # their units (rounded up) cost shared memory and bought nothing
        return replace(plain, reason=f"{plain.reason}; {_mma_words(cut)}")
    return replace(cut, reason=f"{cut.reason}; {_mma_words(cut)}{fell_back}")
