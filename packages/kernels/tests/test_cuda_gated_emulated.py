"""The ``cuda`` backend's kernels run on the CPU by an emulation (no GPU needed; ``experiment``:
building it compiles the torch glue, a minute or more).

``tests/csrc/gated_cuda_emulated.cpp`` includes ``gated_cuda.cu`` and runs each launch with one
std::thread per block, one thread per block, a NaN-filled shared memory and a std::barrier for
``grid.sync()``; with ``gated_cuda_ops.cpp`` built for CPU tensors (``RNNKIT_HOST_EMULATION``),
the backend's Python loops run through the real glue and kernel code. What the emulation checks
and what it cannot (races inside a block, memory coherence, the cooperative launch, speed): see
that file. Three small devices (:data:`DEVICES`) give the resident cut (each head over several
blocks, a short last tile) and two streamed ones (R read in chunks for lack of shared memory;
one block looping over both heads for lack of SMs); the batch is cut into tiles of at most 2
rows, so the exchange between blocks, the tiling and the chunked products are exercised. Four
more devices run the tensor-core products (WMMA emulated with TF32, bfloat16 and float16
operands, :data:`MMA_DEVICES`) on two heads of 16 units, resident and streamed.
"""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _form_helpers import poisoned
from _gated_helpers import make_cell, make_inputs, rel_rms

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.varlen import run_with_lengths
from rnnkit.kernels.gated.cuda import _loops as cuda_loops
from rnnkit.kernels.gated.cuda import _native, _plan
from rnnkit.kernels.gated.cuda._plan import GATES

pytestmark = pytest.mark.experiment

KINDS = ("elman", "relu", "lstm", "gru", "slstm")
#: Small devices (SMs, shared memory per block in bytes) for two heads of 8 units, and the mode
#: the planner must choose there:
#: - resident: 6 SMs cut each head over 3 blocks (3, 3, 2 units), R in shared memory;
#: - streamed: the same SMs with too few bytes for R (128 besides the FMA split scratch):
#:   streamed chunks of one or a few rows;
#: - streamed-heads: one SM for two heads: one block loops over both heads' items, R streamed
#:   in chunks of 3 (a short last chunk in the forward; in the backward where 3 does not
#:   divide G*D).
#: - resident-staged: the same SMs with 600 bytes (and the FMA split scratch): R resident, but
#:   the LSTM and sLSTM backward stages dq_{t+1} 16 of its 32 columns at a time (two chunks)
#:   to keep two batch rows.
#: (The backward's products of LSTM, GRU and sLSTM have fewer outputs than a block's threads
#: and sums of 24 or 32: their FMA sums are split between threads, in parts of 8 or more.)
DEVICES = {
    "resident": (6, 48 * 1024, "resident"),
    "resident-staged": (6, 600 + _plan.FMA_SPLIT_BYTES, "resident"),
    "streamed": (6, 128 + _plan.FMA_SPLIT_BYTES, "streamed"),
    "streamed-heads": (1, 48 * 1024, "streamed"),
}
#: Devices of :data:`DEVICES` run again with the ``"flags"`` step exchange (each block waits for
#: its head's blocks when resident, for all six when streamed), by the names here. The emulation
#: runs the flags' acquire and release for real between the blocks' threads and delays some
#: blocks' steps at random, so a block that reads a step before its wait says it may sees it
#: unwritten (NaN: the runs fill new memory with NaN).
FLAG_DEVICES = {"resident-flags": "resident", "streamed-flags": "streamed"}
#: Devices whose cuts put the products on the tensor cores, for two heads of 16 units:
#: (SMs, shared memory, mode, operand format):
#: - resident-mma (TF32): 6 SMs, too few bytes for 16-unit LSTM and sLSTM items: Elman and
#:   GRU items of 16 units (tensor cores both ways), LSTM and sLSTM items of 8 (the forward's
#:   32 gate columns on the tensor cores, its sum split between two warps per tile; the
#:   backward's 8 columns in float32);
#: - streamed-mma (TF32): one SM for both heads, items of 16 units (tensor cores both ways), R
#:   streamed in chunks of 8 (two per forward step);
#: - resident-bf16, resident-fp16: 6 SMs, items of 16 units, bfloat16 / float16 operands both
#:   ways (the backward's one output tile per 16 rows summed by up to four warps: split sums);
#:   ReLU Elman and sLSTM skip bfloat16 (:data:`KINKS`);
#: - streamed-fp16: one SM, float16 operands, R streamed in chunks of 16;
#: - staged-bf16: 6 SMs with 20 KiB, bfloat16 operands: on heads of 48
#:   (test_emulated_staged_backward_on_heads_of_48) the LSTM backward keeps its
#:   16-unit slices of R resident and stages dq 160 columns at a time (chunks of 160 and 32).
MMA_DEVICES = {
    "resident-mma": (6, 16 * 1024, "resident", "tf32"),
    "streamed-mma": (1, 1024 * 1024, "streamed", "tf32"),
    "resident-bf16": (6, 1024 * 1024, "resident", "bf16"),
    "resident-fp16": (6, 1024 * 1024, "resident", "fp16"),
    "streamed-fp16": (1, 1024 * 1024, "streamed", "fp16"),
    "staged-bf16": (6, 20 * 1024, "resident", "bf16"),
}
TOL = 1e-5  # float32 against the float64 reference (rel. RMS), as the GPU tests
#: Tensor-core products (float32 sums) by operand format. TF32 rounds each operand by at most
#: 2**-11 = 4.9e-4 relative; 4e-3 leaves room for six steps of recurrence. 16-bit operands
#: (bfloat16 2**-9, float16 2**-11 per rounding; here the float32 weights are rounded too,
#: where a call in that dtype has them exact already): the GPU tests' tolerances of those
#: dtypes.
TOL_MMA = {"tf32": 4e-3, "bf16": 2e-2, "fp16": 5e-3}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Cells with a kink (ReLU; sLSTM's stabiliser m = max(f~ + m, i~)): where a pre-activation lies
#: within bfloat16's rounding of the switch, the kernel and the float64 reference take different
#: sides and that element's gradient differs wholly (measured here: one ReLU unit of 960 on the
#: other side moved the gradients by 10% rel. RMS, cases with none stayed within 2e-3). Their
#: kernel code is the same as float16's (resident-fp16 runs them); bfloat16 runs the others.
KINKS = ("relu", "slstm")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    from torch.utils.cpp_extension import load

    here = Path(__file__).parent / "csrc"
    load(
        name="rnnkit_gated_cuda_emulated",
        sources=[str(_native.CSRC / "gated_cuda_ops.cpp"), str(here / "gated_cuda_emulated.cpp")],
        extra_cflags=["-O1", "-std=c++20", "-DRNNKIT_HOST_EMULATION", f"-I{_native.CSRC}"],
        build_directory=str(tmp_path_factory.mktemp("emulated")),
        is_python_module=False,
    )
    return torch.ops.rnnkit_gated_cuda


@pytest.fixture(params=[*DEVICES, *FLAG_DEVICES, *MMA_DEVICES])
def on_cpu(emulated: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The backend's loops use the emulated ops and a small device's cut (each of
    :data:`DEVICES`, :data:`FLAG_DEVICES` and :data:`MMA_DEVICES`); returns the device's
    name."""
    name = str(request.param)
    mma = name in MMA_DEVICES
    exchange = "flags" if name in FLAG_DEVICES else "grid"
    base = FLAG_DEVICES.get(name, name)
    sms, smem, mode, ops = MMA_DEVICES[name] if mma else (*DEVICES[base], None)

    def tiling(
        kind: str,
        heads: int,
        head_dim: int,
        batch: int,
        device: Any,
        tensor_cores: str | None = None,
    ) -> _plan.Tiling:
        cut = _plan.plan(
            kind, heads, head_dim, batch, sms, smem, tensor_cores=ops, exchange=exchange
        )
        assert isinstance(cut, _plan.Tiling), cut
        assert cut.mode == mode, cut.reason
        assert cut.exchange == exchange, cut
        assert max(cut.forward_smem, cut.backward_smem) <= smem
        items = heads * -(-head_dim // cut.units)
        if mma:
            assert cut.forward_mma, cut.reason
            # items of 8 units on the small resident device: 8 backward columns, in float32
            assert cut.backward_mma == (cut.units % 16 == 0), cut.reason
            assert cut.backward_mma or (name == "resident-mma" and kind in ("lstm", "slstm"))
            assert cut.operands == ("tf32" if head_dim % 16 else ops), cut.reason
            if mode == "streamed":
                chunk = _plan.MMA_K[cut.operands]
                assert cut.blocks == 1 and cut.forward_k_chunk == chunk <= head_dim
        elif base == "streamed-heads":
            assert cut.blocks < heads  # one block runs several heads' items
            assert head_dim % cut.forward_k_chunk  # a short last chunk
        else:
            assert cut.blocks == items > heads  # several blocks per head
        if base == "resident-staged":
            assert bool(cut.backward_stage) == (kind in ("lstm", "slstm")), cut.reason
        if cut.backward_stage:
            assert cut.backward_stage < GATES[kind] * head_dim
        return cut

    monkeypatch.setattr(cuda_loops, "ops", lambda: emulated)
    monkeypatch.setattr(cuda_loops, "tiling", tiling)
    monkeypatch.setattr(_plan, "MAX_BATCH_TILE", 2)
    # streamed tiles of 2 rows as well (several tiles per step; test_emulated_streamed_tiles_
    # over_32_rows lifts this)
    monkeypatch.setattr(_plan, "MAX_STREAMED_BATCH_TILE", 2)
    monkeypatch.setattr(_plan, "MAX_K_CHUNK", _plan.MMA_K[ops] if ops else 3)
    return name


def _emulated_kernel(cell: Any) -> Kernel:
    """The ``cuda`` runs of ``cell``'s kind as a dispatch kernel (its ops emulated)."""
    return Kernel(
        backend="cuda_emulated",
        target=cell.kind,
        run=cuda_loops.RUNS[cell.kind],
        description="the cuda backend's kernels, emulated on the CPU",
        priority=Priority.BELOW_REFERENCE,
        supports_lengths=True,
    )


def _run(
    cell: Any, x: Any, state: Any, resets: Any, cot: list[Any], lengths: Any
) -> dict[str, Any]:
    """``y``, the final state and every gradient, by the ``cuda`` runs (emulated) as dispatch
    would call them (with ``lengths``: through ``run_with_lengths``), every new tensor filled
    with NaN (the kernels' outputs and saved buffers: a value read before it is written
    shows)."""
    with poisoned():
        return _run_poisoned(cell, x, state, resets, cot, lengths)


def _run_poisoned(
    cell: Any, x: Any, state: Any, resets: Any, cot: list[Any], lengths: Any
) -> dict[str, Any]:
    x = x.detach().clone().requires_grad_()
    st = None if state is None else [s.detach().clone().requires_grad_() for s in state]
    kernel = _emulated_kernel(cell)
    typed = None if st is None else cell.state_type(*st)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    call = KernelCall(cell, x, typed, resets, True, lens)
    y, final = run_with_lengths(call, lambda c: kernel) if lens is not None else kernel.run(call)
    loss = (y * cot[0].to(y.dtype)).sum()
    for f, c in zip(final, cot[1:], strict=True):
        loss = loss + (f * c.to(f.dtype)).sum()
    inputs = [x, *cell.parameters(), *(st or [])]
    names = ["x", *(n for n, _ in cell.named_parameters())]
    names += [f"state.{f.name}" for f in cell.state_spec()] if st is not None else []
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    out = {"y": y.detach(), **{f"final.{k}": v.detach() for k, v in final._asdict().items()}}
    out.update({f"grad.{n}": g for n, g in zip(names, grads, strict=True)})
    return out


def _reference(cell: Any, x: Any, state: Any, resets: Any, cot: list[Any], lengths: Any) -> Any:
    x = x.detach().clone().requires_grad_()
    st = None if state is None else tuple(s.detach().clone().requires_grad_() for s in state)
    y, final = cell(x, st, backend="reference", resets=resets, lengths=lengths)
    loss = (y * cot[0]).sum() + sum((f * c).sum() for f, c in zip(final, cot[1:], strict=True))
    inputs = [x, *cell.parameters(), *(st or ())]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    names = ["x", *(n for n, _ in cell.named_parameters())]
    names += [f"state.{f.name}" for f in cell.state_spec()] if st is not None else []
    out = {"y": y.detach(), **{f"final.{k}": v.detach() for k, v in final._asdict().items()}}
    out.update({f"grad.{n}": g for n, g in zip(names, grads, strict=True)})
    return out


CASES = [
    {"state": True, "resets": True, "lengths": None},
    {"state": False, "resets": False, "lengths": None},
    {"state": True, "resets": True, "lengths": [6, 3, 1, 6, 4]},
    {"state": False, "resets": False, "lengths": [2, 6, 5, 5, 1]},
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=["resets", "plain", "len+resets", "len"])
@pytest.mark.parametrize("kind", KINDS)
def test_emulated_kernels_match_reference(on_cpu: str, kind: str, case: int) -> None:
    hidden = 32 if on_cpu in MMA_DEVICES else 16  # two heads of 16 units fill the MMA tiles
    _compare(on_cpu, kind, CASES[case], hidden)


@pytest.mark.parametrize("case", [0, 2], ids=["resets", "len+resets"])
@pytest.mark.parametrize("kind", KINDS)
def test_emulated_heads_not_in_fours(on_cpu: str, kind: str, case: int) -> None:
    """Heads of 5 units: rows of ``h`` that are not a whole number of 16-byte loads, so the
    staging takes its one-float path (resets included) instead of the 16-byte one."""
    if on_cpu not in ("resident", "resident-flags", "streamed-heads"):
        pytest.skip("devices whose mode stays at heads of 5 (tensor cores need heads in 8s)")
    _compare(on_cpu, kind, CASES[case], 10)


@pytest.mark.parametrize("case", range(len(CASES)), ids=["resets", "plain", "len+resets", "len"])
@pytest.mark.parametrize("kind", ["lstm", "slstm"])
def test_emulated_tensor_cores_on_heads_of_24(on_cpu: str, kind: str, case: int) -> None:
    """Heads of 24 units (a multiple of 8, not of 16) on the resident tensor-core device:
    items of 8 units, the forward's product summed over three 8-wide steps of ``h`` with a
    leading dimension of 24, the backward in float32."""
    if on_cpu != "resident-mma":
        pytest.skip("the resident tensor-core device only")
    _compare(on_cpu, kind, CASES[case], 48)


@pytest.mark.parametrize("case", range(len(CASES)), ids=["resets", "plain", "len+resets", "len"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_emulated_staged_backward_on_heads_of_48(on_cpu: str, kind: str, case: int) -> None:
    """Heads of 48 on the 20 KiB bfloat16 device: 16-unit items (three per head) keep their
    slices of R resident; the LSTM backward stages dq_{t+1} 160 of its 192 columns, then 32,
    each multiplied with the matching rows of the resident weights (GRU's 144 columns fit)."""
    if on_cpu != "staged-bf16":
        pytest.skip("the staged bfloat16 device only")
    cut = _plan.plan(kind, 2, 48, 5, 6, 20 * 1024, tensor_cores="bf16")
    assert isinstance(cut, _plan.Tiling) and cut.forward_mma and cut.backward_mma
    assert cut.backward_stage == (160 if kind == "lstm" else 0), cut.reason
    _compare(on_cpu, kind, CASES[case], 96)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_emulated_tensor_cores_on_two_row_tiles(
    on_cpu: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 20 rows: where the device has room for a tile of 20 rows, the tensor-core
    product covers it with two 16-row tiles (the second starting at row 16 of ``h`` and of the
    product), the last 12 rows padding; on the small resident device, tiles of 16 and 4."""
    if on_cpu not in MMA_DEVICES:
        pytest.skip("the tensor-core devices only")
    monkeypatch.setattr(_plan, "MAX_BATCH_TILE", 32)
    monkeypatch.setattr(_plan, "MAX_STREAMED_BATCH_TILE", 32)  # the fixture's 2 otherwise
    if MMA_DEVICES[on_cpu][2] == "streamed":  # one tile of all 20 rows
        cut = cuda_loops.tiling(kind, 2, 16, 20, None)
        assert cut.forward_batch_tile == cut.backward_batch_tile == 20, cut.reason
    _compare(on_cpu, kind, CASES[2], 32, batch=20)


#: Streamed devices whose shared memory holds tiles of more than 32 rows.
TALL = ("streamed-heads", "streamed-mma", "streamed-fp16")


@pytest.mark.parametrize("limit", [256, 40], ids=["one-tile", "two-tiles"])
@pytest.mark.parametrize("case", [0, 2], ids=["resets", "len+resets"])
@pytest.mark.parametrize("kind", KINDS)
def test_emulated_streamed_tiles_over_32_rows(
    on_cpu: str, kind: str, case: int, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 70 rows on the streamed devices with room for them: one tile of all 70 rows
    (each chunk of R multiplied with its entries of h, or of dq, for every row; three words
    of restarting rows; five 16-row tiles of the tensor-core product), or, with at most 40
    rows per tile, tiles of 40 and 30 (the second's rows start at row 40 of h and the
    restarts). Values and every gradient against float64, resets and lengths included."""
    if on_cpu not in TALL:
        pytest.skip("streamed devices with room for tall tiles only")
    monkeypatch.setattr(_plan, "MAX_STREAMED_BATCH_TILE", limit)
    hidden = 32 if on_cpu in MMA_DEVICES else 16
    plan_kind = "elman" if kind == "relu" else kind
    ops = MMA_DEVICES[on_cpu][3] if on_cpu in MMA_DEVICES else None
    cut = cuda_loops.tiling(plan_kind, 2, hidden // 2, 70, None, ops)
    assert cut.forward_batch_tile == cut.backward_batch_tile == min(limit, 70), cut.reason
    _compare(on_cpu, kind, CASES[case], hidden, batch=70)


def _compare(on_cpu: str, kind: str, opts: dict[str, Any], hidden: int, batch: int = 5) -> None:
    """Values and every gradient of two heads of ``hidden / 2`` units on ``on_cpu`` against
    the float64 reference (``opts``: one of :data:`CASES`, lengths for 5 sequences are
    repeated to ``batch``)."""
    mma = on_cpu in MMA_DEVICES
    ops = MMA_DEVICES[on_cpu][3] if mma else None
    if ops == "bf16" and kind in KINKS:
        pytest.skip(f"{kind} has a kink that bfloat16's rounding crosses (see KINKS)")
    if ops and (hidden // 2) % 16:
        ops = "tf32"  # 16-bit operands need heads in 16s
    cell64 = make_cell(kind, 2, hidden=hidden, inputs=5)
    with torch.no_grad():
        cell64.recurrent.uniform_(-((hidden // 2) ** -0.5), (hidden // 2) ** -0.5)
        if ops in _DTYPES:  # weights as a call in that dtype has them (exact operands)
            cell64.recurrent.copy_(cell64.recurrent.to(_DTYPES[ops]))
    x, st, rs, cot = make_inputs(
        cell64, batch=batch, time=6, state=bool(opts["state"]), resets=bool(opts["resets"])
    )
    if opts["lengths"] is not None:
        lengths = list(opts["lengths"])
        opts = {**opts, "lengths": (lengths * -(-batch // len(lengths)))[:batch]}
    want = _reference(cell64, x, st, rs, cot, opts["lengths"])
    cell = copy.deepcopy(cell64).float()
    got = _run(cell, x.float(), None if st is None else [s.float() for s in st], rs, cot,
               opts["lengths"])  # fmt: skip
    bad, errors = {}, []
    tol = TOL_MMA[ops] if ops else TOL
    for name, exp in want.items():
        act = got[name]
        if exp is None or act is None:
            assert (exp is None and act is None) or (act if exp is None else exp).abs().max() == 0
            continue
        err = rel_rms(act, exp)
        errors.append(err)
        if not err <= tol:
            bad[name] = err
    assert not bad, f"{kind} {opts} on {on_cpu}: {bad}"
    if mma:  # the products did round their operands: off by more than float32 ever is
        assert max(errors) > TOL, errors


@pytest.mark.parametrize("kind", ["lstm", "slstm"])
def test_emulated_no_grad_path(on_cpu: str, kind: str) -> None:
    """Without gradients the loops keep two state slots (ping-pong); the final state and ``y``
    are the same as with them."""
    hidden = 32 if on_cpu in MMA_DEVICES else 16
    cell = make_cell(kind, 2, hidden=hidden, inputs=5).float()
    x, st, rs, _ = make_inputs(cell, batch=5, time=7, state=True, resets=True)
    x, st = x.float(), cell.state_type(*(s.float() for s in st))
    with_grad = cuda_loops.RUNS[kind](KernelCall(cell, x, st, rs, True))
    without = cuda_loops.RUNS[kind](KernelCall(cell, x, st, rs, False))
    assert torch.equal(with_grad[0].detach(), without[0])
    for a, b in zip(with_grad[1], without[1], strict=True):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize("kind", KINDS)
def test_emulated_flags_give_the_grid_barriers_results(
    on_cpu: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same call under the ``"flags"`` exchange and under the grid barrier: the same
    products in the same order, so outputs and every gradient equal bit for bit (lengths and
    resets included)."""
    if on_cpu not in FLAG_DEVICES:
        pytest.skip("the flags devices only")
    _flags_equal_grid(kind, 6, [6, 3, 1, 6, 4], monkeypatch)


def _flags_equal_grid(
    kind: str, time: int, lengths: list[int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two heads of 8 units, 5 sequences of ``time`` steps with state and resets, run on a
    flags device (the fixture's cut) and again with the same cut under the grid barrier:
    outputs and every gradient equal bit for bit."""
    cell = make_cell(kind, 2, hidden=16, inputs=5).float()
    x, st, rs, cot = make_inputs(cell, batch=5, time=time, state=True, resets=True)
    args = (x.float(), [s.float() for s in st], rs, cot, lengths)
    flags = _run(cell, *args)
    with_flags = cuda_loops.tiling  # the fixture's: this device's cut, with flags
    monkeypatch.setattr(
        cuda_loops, "tiling", lambda *a, **k: replace(with_flags(*a, **k), exchange="grid")
    )
    grid = _run(cell, *args)
    assert grid.keys() == flags.keys()
    for name, want in grid.items():
        assert (want is None) == (flags[name] is None), name
        assert want is None or torch.equal(flags[name], want), name


@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_emulated_flags_long_runs_wait_for_every_peer(
    on_cpu: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many steps under the ``"flags"`` exchange give the grid barrier's results bit for bit.
    A block that skips one of the peers it reads from (say, a streamed block that waits only
    for the first head's blocks) reads a step before that peer wrote it only where the peer
    lags a whole step behind the ones it does wait for; the emulation's random delays make
    that likely over many steps, rarely over the six of the test above."""
    if on_cpu not in FLAG_DEVICES:
        pytest.skip("the flags devices only")
    _flags_equal_grid(kind, 64, None, monkeypatch)


def test_planner_bytes_match_the_kernels(emulated: Any) -> None:
    """The planner's shared-memory arithmetic is what the launches ask for (the kernels'
    ``forward_smem_bytes`` / ``backward_smem_bytes`` through the ``smem_bytes`` op), resident
    and streamed."""
    numbers = {"elman": 0, "lstm": 2, "gru": 3, "slstm": 4}
    for kind, number in numbers.items():
        shapes = ((8, 3, 2, 0), (8, 3, 1, 2), (1024, 16, 16, 64), (7, 7, 5, 3), (2048, 16, 70, 64))
        for D, units, tile, chunk in (*shapes, (16, 16, 33, 16), (16, 8, 97, 8)):
            for fwd, bwd in ((False, False), (True, False), (True, True)):
                for ops, (code, _) in _plan.OPERANDS.items():
                    stage = 16 if chunk == 0 and GATES[kind] * D > 16 else 0
                    want = _plan.smem_bytes(kind, D, units, tile, chunk, fwd, bwd, ops, stage)
                    got = emulated.smem_bytes(
                        number, D, units, tile, chunk, code * fwd, code * bwd, stage
                    )
                    assert tuple(got) == want, (kind, D, units, tile, chunk, fwd, bwd, ops)


@pytest.mark.parametrize("kind", ["elman", "gru", "lstm"])
def test_emulated_16bit_operands_hold_the_state_exactly(on_cpu: str, kind: str) -> None:
    """With 16-bit operands the staged copy of ``h`` is rounded, but the pointwise update reads
    the float32 ``h``: a sequence's final state is its output at its last valid step, bit for
    bit (held unchanged past its length), and an Elman or GRU step sees the exact ``h``. The
    same holds in TF32, where the staged ``h`` stays float32 and only the product rounds its
    operand."""
    if on_cpu not in MMA_DEVICES:
        pytest.skip("the tensor-core devices only")
    cell = make_cell(kind, 2, hidden=32, inputs=5).float()
    x, _, _, _ = make_inputs(cell, batch=5, time=6, state=False, resets=False)
    lengths = [6, 3, 1, 6, 4]
    y, final = run_with_lengths(
        KernelCall(cell, x.float(), None, None, False, torch.tensor(lengths)),
        lambda c: _emulated_kernel(cell),
    )
    for b, n in enumerate(lengths):
        assert torch.equal(final.h[b], y[b, n - 1]), (b, n)


def test_glue_refuses_cuts_the_kernels_cannot_run(emulated: Any) -> None:
    """The ops check a cut before launching: an unknown product code, 16-bit operands on a head
    size or streamed chunks that are not multiples of 16, tensor cores on a backward whose
    units are not in 16s, a staged forward or streamed backward, or a stage that is not a
    multiple of 16 below ``G*D``, a resident batch tile over 32 rows (or any tile of no rows),
    or an unknown step exchange each raise, naming the rule (a kernel would read past its
    tiles, or wait on flags no block sets)."""
    N, T, B, D = 1, 2, 3, 16
    px = torch.zeros(N, T, B, 4 * D)
    W = torch.zeros(N, D, 4 * D)
    h0, c0 = torch.zeros(N, B, D), torch.zeros(N, B, D)

    def forward(units: int, mma: int, width: int = D, chunk: int = 0, exchange: int = 0) -> Any:
        return emulated.forward(
            2, px[..., : 4 * width].contiguous(), W[:, :width, : 4 * width].contiguous(), None,
            None, None, h0[..., :width].contiguous(), c0[..., :width].contiguous(), None, None,
            [0.0, 0.0], True, units, 2, chunk, -(-width // units), mma, exchange,
        )  # fmt: skip

    with pytest.raises(RuntimeError, match="mma must be 0"):
        forward(4, 4)
    with pytest.raises(RuntimeError, match="k_chunk by 16"):
        forward(4, 2, width=8)  # 16-bit operands sum in 16s
    with pytest.raises(RuntimeError, match="k_chunk by 16"):
        forward(4, 2, chunk=8)  # so do their streamed chunks of R
    with pytest.raises(RuntimeError, match=re.escape("[1, 32] for a resident cut, got 33")):
        emulated.forward(
            2, px, W, None, None, None, h0, c0, None, None, [0.0, 0.0], True, 4, 33, 0, 4, 0
        )  # a resident tile's restarting rows are the bits of one 32-bit word
    # a streamed tile keeps words of them in shared memory: any height
    emulated.forward(
        2, px, W, None, None, None, h0, c0, None, None, [0.0, 0.0], True, 4, 33, 4, 4, 0
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="batch_tile must be at least 1, got 0"):
        emulated.forward(
            2, px, W, None, None, None, h0, c0, None, None, [0.0, 0.0], True, 4, 0, 4, 4, 0
        )  # fmt: skip
    for bad in (-1, 2):
        with pytest.raises(RuntimeError, match=re.escape("exchange must be 0 (grid barrier) or 1")):
            forward(4, 0, exchange=bad)
    forward(4, 1, width=8)  # TF32 sums in 8s
    forward(4, 1, chunk=8)
    hs, _, acts, cs, tcs = forward(4, 2)
    d_hs, d_c = torch.zeros_like(hs), torch.zeros(N, 1, B, D)

    def backward(stage: int, units: int = 16, chunk: int = 0, exchange: int = 0) -> Any:
        return emulated.backward(
            2, W, hs, acts, cs, tcs, None, None, None, None, None, None, None, d_hs, d_c,
            units, 2, chunk, -(-D // units), 2, stage, exchange,
        )  # fmt: skip

    backward(16)
    backward(16, exchange=1)
    with pytest.raises(RuntimeError, match=re.escape("exchange must be 0 (grid barrier) or 1")):
        backward(16, exchange=3)
    for bad in (8, 64, -16):
        with pytest.raises(RuntimeError, match="stage is for the resident backward only"):
            backward(bad)
    backward(0, chunk=16)
    with pytest.raises(RuntimeError, match="stage is for the resident backward only"):
        backward(16, chunk=16)  # a streamed backward stages its chunks of R's columns
    # 8 units: 32 gate columns would suit the forward's tiles, but the backward's product has 8
    with pytest.raises(RuntimeError, match="backward's units divisible by 16"):
        backward(0, units=8)


def _round_operands(x: torch.Tensor, mma: int) -> torch.Tensor:
    """float32 ``x`` as the tensor cores take it under product code ``mma`` (1: TF32, to
    nearest with ties away from zero; 2: bfloat16, 3: float16, both to nearest even), in
    float64."""
    if mma == 2:
        return x.to(torch.bfloat16).double()
    if mma == 3:
        return x.to(torch.float16).double()
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32).double()


@pytest.mark.parametrize("streamed", [False, True], ids=["resident", "streamed"])
@pytest.mark.parametrize("mma", [1, 2, 3], ids=["tf32", "bf16", "fp16"])
def test_emulated_products_round_both_operands(emulated: Any, mma: int, streamed: bool) -> None:
    """One Elman step on the tensor cores multiplies exactly the rounded operands: the forward's
    ``h0 W`` is the float64 product of ``h0`` and ``W`` rounded to the product's format (TF32,
    bfloat16, float16) within float32's sums, the backward's ``dq W^T`` likewise with ``dq``
    (as the kernel wrote it) and ``W`` rounded. Leaving either operand unrounded moves the
    result by more than 10x that tolerance at these values, so each rounding is checked."""
    N, B, D = 1, 3, 16
    g = torch.Generator().manual_seed(mma)
    W = torch.randn(N, D, D, generator=g) * 0.25
    h0 = torch.randn(N, B, D, generator=g) * 0.5
    d_hs = torch.randn(N, 2, B, D, generator=g)
    chunk = (8 if mma == 1 else 16) if streamed else 0  # two or one chunks of R
    (hs,) = emulated.forward(
        0, torch.zeros(N, 1, B, D), W, None, None, None, h0, None, None, None, [0.0], True,
        D, B, chunk, 1, mma,
    )  # fmt: skip
    dq, dh0 = emulated.backward(
        0, W, hs, None, None, None, None, None, None, None, None, None, None, d_hs, None,
        D, B, chunk, 1, mma, 0,
    )  # fmt: skip

    def product(vec: torch.Tensor, w: torch.Tensor, rounded: tuple[bool, bool]) -> torch.Tensor:
        """float64 ``vec @ w``, each operand rounded where ``rounded`` says."""
        v = _round_operands(vec, mma) if rounded[0] else vec.double()
        return v @ (_round_operands(w, mma) if rounded[1] else w.double())

    checks = (  # (kernel's result, vector, weights, what follows the product)
        ("forward", hs[:, 1], h0, W, torch.tanh),
        ("backward", dh0, dq[:, 0], W.transpose(1, 2), lambda p: d_hs[:, 0].double() + p),
    )
    for name, got, vec, w, finish in checks:
        want = finish(product(vec, w, (True, True)))
        assert rel_rms(got, want) <= TOL, (name, rel_rms(got, want))
        for partly in ((False, True), (True, False)):
            assert rel_rms(finish(product(vec, w, partly)), want) > 10 * TOL, (name, partly)
