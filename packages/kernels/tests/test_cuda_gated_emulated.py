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
rows, so the exchange between blocks, the tiling and the chunked products are exercised. Two
more devices run the tensor-core products (WMMA emulated in TF32, :data:`MMA_DEVICES`) on two
heads of 16 units, resident and streamed.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _gated_helpers import make_cell, make_inputs, rel_rms

from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.varlen import run_with_lengths
from rnnkit.kernels.gated.cuda import _loops as cuda_loops
from rnnkit.kernels.gated.cuda import _native, _plan

pytestmark = pytest.mark.experiment

KINDS = ("elman", "relu", "lstm", "gru", "slstm")
#: Small devices (SMs, shared memory per block in bytes) for two heads of 8 units, and the mode
#: the planner must choose there:
#: - resident: 6 SMs cut each head over 3 blocks (3, 3, 2 units), R in shared memory;
#: - streamed: the same SMs with too few bytes for R: streamed chunks of one or a few rows;
#: - streamed-heads: one SM for two heads: one block loops over both heads' items, R streamed
#:   in chunks of 3 (a short last chunk in the forward; in the backward where 3 does not
#:   divide G*D).
DEVICES = {
    "resident": (6, 48 * 1024, "resident"),
    "streamed": (6, 128, "streamed"),
    "streamed-heads": (1, 48 * 1024, "streamed"),
}
#: Devices whose cuts put the products on the tensor cores, for two heads of 16 units:
#: - resident-mma: 6 SMs; Elman and GRU items of 16 units (tensor cores both ways), LSTM and
#:   sLSTM items of 8 (the forward's 32 gate columns on the tensor cores, the backward's 8 not);
#: - streamed-mma: one SM for both heads, items of 16 units (tensor cores both ways), R streamed
#:   in chunks of 8 (two per forward step).
MMA_DEVICES = {
    "resident-mma": (6, 1024 * 1024, "resident"),
    "streamed-mma": (1, 1024 * 1024, "streamed"),
}
TOL = 1e-5  # float32 against the float64 reference (rel. RMS), as the GPU tests
#: TF32 products (operands rounded to 11 significant bits, float32 sums): the rounding of each
#: operand is at most 2**-11 = 4.9e-4 relative; 4e-3 leaves room for six steps of recurrence.
TOL_MMA = 4e-3


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


@pytest.fixture(params=[*DEVICES, *MMA_DEVICES])
def on_cpu(emulated: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """The backend's loops use the emulated ops and a small device's cut (each of
    :data:`DEVICES` and :data:`MMA_DEVICES`); returns the device's name."""
    name = str(request.param)
    mma = name in MMA_DEVICES
    sms, smem, mode = (MMA_DEVICES if mma else DEVICES)[name]

    def tiling(
        kind: str, heads: int, head_dim: int, batch: int, device: Any, tensor_cores: bool = False
    ) -> _plan.Tiling:
        cut = _plan.plan(kind, heads, head_dim, batch, sms, smem, tensor_cores=mma)
        assert isinstance(cut, _plan.Tiling), cut
        assert cut.mode == mode, cut.reason
        assert max(cut.forward_smem, cut.backward_smem) <= smem
        items = heads * -(-head_dim // cut.units)
        if mma:
            assert cut.forward_mma, cut.reason
            # resident LSTM / sLSTM items of 8 units: 8 backward columns, no tensor cores
            assert cut.backward_mma == (mode == "streamed" or kind in ("elman", "gru")), cut.reason
            if mode == "streamed":
                assert cut.blocks == 1 and cut.forward_k_chunk == 8 < head_dim
        elif name == "streamed-heads":
            assert cut.blocks < heads  # one block runs several heads' items
            assert head_dim % cut.forward_k_chunk  # a short last chunk
        else:
            assert cut.blocks == items > heads  # several blocks per head
        return cut

    monkeypatch.setattr(cuda_loops, "ops", lambda: emulated)
    monkeypatch.setattr(cuda_loops, "tiling", tiling)
    monkeypatch.setattr(_plan, "MAX_BATCH_TILE", 2)
    monkeypatch.setattr(_plan, "MAX_K_CHUNK", 8 if mma else 3)
    return name


def _run(
    cell: Any, x: Any, state: Any, resets: Any, cot: list[Any], lengths: Any
) -> dict[str, Any]:
    """``y``, the final state and every gradient, by the ``cuda`` runs (emulated) as dispatch
    would call them (with ``lengths``: through ``run_with_lengths``)."""
    x = x.detach().clone().requires_grad_()
    st = None if state is None else [s.detach().clone().requires_grad_() for s in state]
    kernel = Kernel(
        backend="cuda_emulated",
        target=cell.kind,
        run=cuda_loops.RUNS[cell.kind],
        description="the cuda backend's kernels, emulated on the CPU",
        priority=Priority.BELOW_REFERENCE,
        supports_lengths=True,
    )
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


@pytest.mark.parametrize("case", range(len(CASES)), ids=["resets", "plain", "len+resets", "len"])
@pytest.mark.parametrize("kind", ["lstm", "slstm"])
def test_emulated_tensor_cores_on_heads_of_24(on_cpu: str, kind: str, case: int) -> None:
    """Heads of 24 units (a multiple of 8, not of 16) on the resident tensor-core device:
    items of 8 units, the forward's product summed over three 8-wide steps of ``h`` with a
    leading dimension of 24, the backward in float32."""
    if on_cpu != "resident-mma":
        pytest.skip("the resident tensor-core device only")
    _compare(on_cpu, kind, CASES[case], 48)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_emulated_tensor_cores_on_two_row_tiles(
    on_cpu: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch tile of 20 rows: the tensor-core product covers it with two 16-row tiles (the
    second starting at row 16 of ``h`` and of the product), the last 12 rows padding."""
    if on_cpu not in MMA_DEVICES:
        pytest.skip("the tensor-core devices only")
    monkeypatch.setattr(_plan, "MAX_BATCH_TILE", 32)
    _compare(on_cpu, kind, CASES[2], 32, batch=20)


def _compare(on_cpu: str, kind: str, opts: dict[str, Any], hidden: int, batch: int = 5) -> None:
    """Values and every gradient of two heads of ``hidden / 2`` units on ``on_cpu`` against
    the float64 reference (``opts``: one of :data:`CASES`, lengths for 5 sequences are
    repeated to ``batch``)."""
    mma = on_cpu in MMA_DEVICES
    cell64 = make_cell(kind, 2, hidden=hidden, inputs=5)
    with torch.no_grad():
        cell64.recurrent.uniform_(-((hidden // 2) ** -0.5), (hidden // 2) ** -0.5)
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
    tol = TOL_MMA if mma else TOL
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
    if mma:  # the products did go through TF32: off by more than float32 products ever are
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


def test_planner_bytes_match_the_kernels(emulated: Any) -> None:
    """The planner's shared-memory arithmetic is what the launches ask for (the kernels'
    ``forward_smem_bytes`` / ``backward_smem_bytes`` through the ``smem_bytes`` op), resident
    and streamed."""
    numbers = {"elman": 0, "lstm": 2, "gru": 3, "slstm": 4}
    for kind, number in numbers.items():
        for D, units, tile, chunk in ((8, 3, 2, 0), (8, 3, 1, 2), (1024, 16, 16, 64), (7, 7, 5, 3)):
            for fwd, bwd in ((False, False), (True, False), (True, True)):
                want = _plan.smem_bytes(kind, D, units, tile, chunk, fwd, bwd)
                got = emulated.smem_bytes(number, D, units, tile, chunk, int(fwd), int(bwd))
                assert tuple(got) == want, (kind, D, units, tile, chunk, fwd, bwd)
