"""The ``cuda`` backend of the gated form.

Without a GPU (CI): every CUDA kernel source compiles with ``nvcc -arch=sm_90`` (skipped without
nvcc), each cell's per-element step math (``csrc/gated_cell.h``) compiled for the host and run
against a float64 torch reference of the same step (skipped without a C++ compiler), the tiling
planner's cuts (resident or the streamed fallback, for every head count and size) and refusals,
and the backend's registration and reasons. With a GPU
(``tools/gpu/cuda_check.sh``): values and gradients against the float64 reference for every
supported cell (Elman, LSTM, GRU, sLSTM), head sizes 16 to 1024, float32/bfloat16/float16, odd
batches, ``T`` = 0 and 1, resets, ``lengths`` (in one launch), and outputs poisoned with NaN
before the kernels write them.
"""

from __future__ import annotations

import copy
import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _gated_helpers import make_cell, make_inputs, rel_rms, run_all
from torch import Tensor

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated import cuda, fused
from rnnkit.kernels.gated.cuda import _loops as cuda_loops

H100 = (132, 227 * 1024)  # SMs, opt-in shared memory per block
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- no GPU needed -----------------------------------------------------------------------------


@pytest.mark.skipif(cuda.nvcc() is None, reason="nvcc not found (set CUDA_HOME)")
def test_kernel_sources_compile_for_sm90(tmp_path: Any) -> None:
    """``nvcc -arch=sm_90 -c`` accepts every kernel source, warnings as errors."""
    objects = cuda.compile_check("sm_90", cache_dir=tmp_path)
    assert [o.suffix for o in objects] == [".o"] * len(cuda._native.KERNEL_SOURCES)
    assert all(o.stat().st_size > 0 for o in objects)


@pytest.mark.skipif(cuda.nvcc() is None, reason="nvcc not found (set CUDA_HOME)")
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("__global__ void k() { undefined(); }", "undefined"),
        # torch builds with no implicit bfloat16 conversions; so must the check
        ("__global__ void k(float* p) { __nv_bfloat16 b = p[0]; p[1] = b; }", "bfloat16"),
    ],
    ids=["typo", "implicit-bf16"],
)
def test_compile_check_reports_the_error(tmp_path: Any, body: str, words: str) -> None:
    """A source nvcc rejects raises with nvcc's diagnostic (the check would catch a typo, and
    an implicit bfloat16 conversion that torch's extension flags forbid)."""
    bad = tmp_path / "csrc"
    bad.mkdir()
    for name in cuda._native.HEADERS:
        (bad / name).write_text((cuda._native.CSRC / name).read_text())
    (bad / "broken.cu").write_text(f'#include <cuda_bf16.h>\n#include "gated_cuda.h"\n{body}\n')
    original = cuda._native.CSRC
    cuda._native.CSRC = bad
    try:
        with pytest.raises(cuda.CompileCheckError, match=words):
            cuda.compile_check("sm_90", cache_dir=tmp_path / "out", sources=("broken.cu",))
    finally:
        cuda._native.CSRC = original


PLANNED = [
    ("lstm", 1, 768),
    ("slstm", 1, 768),
    ("slstm", 1, 1024),
    ("gru", 1, 1024),
    ("elman", 1, 1024),
    ("lstm", 48, 16),
    ("lstm", 3, 256),
    ("lstm", 1, 1),
]


@pytest.mark.parametrize(("kind", "heads", "head_dim"), PLANNED)
def test_plan_fits_an_h100(kind: str, heads: int, head_dim: int) -> None:
    """Every block's weights and staging fit the shared memory, at most one block per SM,
    every unit owned by exactly one block; these shapes keep R resident."""
    cut = cuda.plan(kind, heads, head_dim, 16, *H100)
    assert isinstance(cut, cuda.Tiling), cut
    assert cut.mode == "resident" and cut.reason.startswith("resident:")
    assert cut.forward_k_chunk == cut.backward_k_chunk == 0
    assert cut.blocks <= H100[0]
    assert max(cut.forward_smem, cut.backward_smem) <= H100[1]
    tiles = -(-head_dim // cut.units)
    assert cut.blocks == heads * tiles and (tiles - 1) * cut.units < head_dim
    assert 1 <= cut.forward_batch_tile <= 16 and 1 <= cut.backward_batch_tile <= 16


def _owners(cut: cuda.Tiling, heads: int, head_dim: int) -> list[int]:
    """How many blocks own each unit of each head under ``cut`` (as the kernels walk items:
    block ``b`` owns items ``b, b + blocks, ...``; resident: exactly item ``b``)."""
    tiles = -(-head_dim // cut.units)
    items = heads * tiles
    owned = [0] * (heads * head_dim)
    for block in range(cut.blocks):
        for item in range(block, items, cut.blocks if cut.streamed else items):
            n, e0 = divmod(item, tiles)
            for e in range(e0 * cut.units, min((e0 + 1) * cut.units, head_dim)):
                owned[n * head_dim + e] += 1
    return owned


def test_plan_streams_what_does_not_fit() -> None:
    """Where R does not fit in shared memory (too many bytes, or more heads than SMs) the cut
    streams it from L2 and says so; every unit is owned by one block, every block fits."""
    too_wide = cuda.plan("lstm", 2, 1024, 16, *H100)
    assert isinstance(too_wide, cuda.Tiling), too_wide
    assert too_wide.mode == "streamed" and too_wide.streamed
    assert too_wide.reason.startswith("streamed:") and "shared memory" in too_wide.reason
    too_many = cuda.plan("gru", 200, 8, 16, *H100)
    assert isinstance(too_many, cuda.Tiling), too_many
    assert too_many.streamed and "200 heads exceed the 132 SMs" in too_many.reason
    assert too_many.blocks == H100[0]  # blocks loop over several heads
    for cut, (heads, D) in ((too_wide, (2, 1024)), (too_many, (200, 8))):
        assert 1 <= cut.forward_k_chunk <= min(cuda._plan.MAX_K_CHUNK, D)
        assert cut.backward_k_chunk >= 1
        assert max(cut.forward_smem, cut.backward_smem) <= H100[1]
        assert set(_owners(cut, heads, D)) == {1}
    assert isinstance(cuda.plan("lstm", 1, 64, 0, *H100), cuda.Tiling)  # empty batch
    starved = cuda.plan("lstm", 1, 1024, 16, 132, 1024)
    assert isinstance(starved, str) and "streamed fallback" in starved


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("lstm", 0, 64, 4, *H100), "heads must be at least 1, got 0"),
        (("lstm", 2, 0, 4, *H100), "head_dim must be at least 1, got 0"),
        (("gru", 2, 64, -1, *H100), "batch must be at least 0, got -1"),
        (("lstm", 2, 64, 4, 0, H100[1]), "sms must be at least 1, got 0"),
        (("elman", 2, 64, 4, H100[0], 0), "smem must be at least 1, got 0"),
        (("mlstm", 2, 64, 4, *H100), "unknown cell kind 'mlstm'"),
    ],
)
def test_plan_refuses_sizes_it_cannot_cut(args: tuple[Any, ...], words: str) -> None:
    """Before: a division by zero (no heads, no head size) or a plan of 0 blocks (no SMs)."""
    with pytest.raises(ValueError, match=re.escape(words)):
        cuda.plan(*args)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("lstm", 1.5, 768, 16, *H100), "heads must be an integer, got 1.5"),
        (("lstm", 1, 768.0, 16, *H100), "head_dim must be an integer, got 768.0"),
        (("gru", 1, 64, 4, 132.0, H100[1]), "sms must be an integer, got 132.0"),
    ],
)
def test_plan_refuses_sizes_that_are_not_integers(args: tuple[Any, ...], words: str) -> None:
    """Before: 1.5 heads gave a plan of '9.0 units of a head on each of 129.0 blocks'."""
    with pytest.raises(TypeError, match=re.escape(words)):
        cuda.plan(*args)


@pytest.mark.parametrize("tensor_cores", [None, "tf32", "bf16"], ids=["fma", "tf32", "bf16"])
@pytest.mark.parametrize("kind", list(cuda.KINDS))
def test_plan_runs_every_head_count_and_size(kind: str, tensor_cores: str | None) -> None:
    """Every head count and head size (16 to 1024 and beyond) gets a cut on an H100 and on a
    small device; its byte counts are the kernels' (``_plan.smem_bytes``) and fit. Asked for
    tensor cores, a direction gets them only with the WMMA tiles' shapes (its product's
    columns in 16s, the head size and the chunks in the operand format's summed step: 8 for
    TF32, 16 for bfloat16, whose calls fall back to TF32 on heads in 8s but not 16s), and the
    reason says which got them."""
    G = cuda.GATES[kind]
    for sms, smem in (H100, (8, 48 * 1024)):
        for heads in (1, 2, 3, 9, 133, 512):
            for D in (1, 16, 100, 768, 1024, 2048):
                cut = cuda.plan(kind, heads, D, 17, sms, smem, tensor_cores)
                assert isinstance(cut, cuda.Tiling), (heads, D, cut)
                assert cut.blocks <= sms and max(cut.forward_smem, cut.backward_smem) <= smem
                if not tensor_cores or D % 8:
                    assert not cut.tensor_cores and cut.operands == ""
                if cut.tensor_cores:
                    assert cut.operands == (tensor_cores if D % 16 == 0 else "tf32")
                step = cuda._plan.MMA_K.get(cut.operands, 0)
                if cut.forward_mma:
                    assert (G * cut.units) % 16 == 0 and D % step == 0
                    assert cut.forward_k_chunk % step == 0
                if cut.backward_mma:
                    assert cut.units % 16 == 0 and D % step == 0
                    assert cut.backward_k_chunk % step == 0
                if tensor_cores:
                    assert ("tensor cores (" in cut.reason) == cut.tensor_cores, cut.reason
                ops = cut.operands or "tf32"
                fwd = cuda._plan.smem_bytes(
                    kind, D, cut.units, cut.forward_batch_tile, cut.forward_k_chunk,
                    cut.forward_mma, cut.backward_mma, ops,
                )  # fmt: skip
                bwd = cuda._plan.smem_bytes(
                    kind, D, cut.units, cut.backward_batch_tile, cut.backward_k_chunk,
                    cut.forward_mma, cut.backward_mma, ops, cut.backward_stage,
                )  # fmt: skip
                if cut.backward_stage:  # the resident backward's dq in a few chunks
                    assert not cut.streamed and cut.backward_stage % 16 == 0
                    assert -(-G * D // cut.backward_stage) <= cuda._plan.MAX_STAGES
                assert (fwd[0], bwd[1]) == (cut.forward_smem, cut.backward_smem)
                if heads > sms:
                    assert cut.streamed, (heads, D)
                if not cut.streamed:
                    assert cut.blocks == heads * -(-D // cut.units)
                    assert cut.forward_k_chunk == cut.backward_k_chunk == 0
                if heads * D <= 4096:
                    assert set(_owners(cut, heads, D)) == {1}


def test_plan_tensor_cores_round_the_cut_to_the_mma_tiles() -> None:
    """Tensor-core cuts on an H100. A dense 768-wide LSTM in bfloat16: units in 16s (48 blocks,
    not 128 of 6), both directions on the tensor cores, the weights and the staged h / dq in 2
    bytes each, the batch tile counted as 16 rows, the split scratch added. In TF32 the 16-unit
    backward would need 384 KiB, so units go in 4s (96 blocks of 8): the forward's 32 gate
    columns fill the 16-column tiles, the backward's 8 do not and keep float32 FMAs. A dense
    1024-wide Elman gets TF32 both ways. Heads of 24 fall back from 16-bit operands to TF32. A
    head size that is not a multiple of 8, or a device too small for 16-row tiles, keeps the
    float32 cut, and the reason says why."""
    split = cuda._plan.SPLIT_BYTES
    fma = cuda.plan("lstm", 1, 768, 5, *H100)
    assert isinstance(fma, cuda.Tiling)
    assert (fma.units, fma.blocks, fma.tensor_cores, fma.operands) == (6, 128, False, "")
    bf16 = cuda.plan("lstm", 1, 768, 5, *H100, tensor_cores="bf16")
    assert isinstance(bf16, cuda.Tiling) and bf16.mode == "resident"
    assert (bf16.units, bf16.blocks, bf16.forward_mma, bf16.backward_mma) == (16, 48, True, True)
    assert bf16.reason.endswith("tensor cores (bfloat16 operands) in both directions")
    assert bf16.forward_smem == 2 * (768 * 64 + 16 * 768) + 4 * 16 * 64 + split
    assert bf16.backward_smem == 2 * (3072 * 16 + 16 * 3072) + 4 * 16 * 16 + split
    assert bf16.forward_args == (16, 5, 0, 48, 2, 0)
    assert bf16.backward_args == (16, 5, 0, 48, 2, 0, 0)
    fp16 = cuda.plan("lstm", 1, 768, 5, *H100, tensor_cores="fp16")
    assert isinstance(fp16, cuda.Tiling) and fp16.forward_args == (16, 5, 0, 48, 3, 0)
    mma = cuda.plan("lstm", 1, 768, 5, *H100, tensor_cores="tf32")
    assert isinstance(mma, cuda.Tiling)
    assert (mma.units, mma.blocks, mma.forward_mma, mma.backward_mma) == (8, 96, True, False)
    assert mma.mode == "resident" and "tensor cores (TF32) in the forward only" in mma.reason
    weights = 4 * 768 * 4 * 8  # D x G*units floats
    assert mma.forward_smem == weights + 4 * 16 * (768 + 32) + split  # 16 rows, the product
    fma_split = cuda._plan.FMA_SPLIT_BYTES
    assert mma.backward_smem == weights + 4 * 5 * (4 * 768 + 8) + fma_split  # 5 rows: FMAs
    assert mma.forward_args == (8, 5, 0, 96, 1, 0) and mma.backward_args == (8, 5, 0, 96, 0, 0, 0)
    # a dense 1024 LSTM at B = 16: the 16-unit backward's 128 KiB of bfloat16 weights leave no
    # room for 16 rows of all 4096 columns of dq: it stages them 2880 at a time (two chunks)
    wide = cuda.plan("lstm", 1, 1024, 16, *H100, tensor_cores="bf16")
    assert isinstance(wide, cuda.Tiling) and wide.forward_mma and wide.backward_mma
    assert (wide.units, wide.blocks, wide.backward_batch_tile) == (16, 64, 16)
    assert wide.backward_args == (16, 16, 0, 64, 2, 2880, 0)
    assert wide.backward_smem == 2 * (4096 * 16 + 16 * 2880) + 4 * 16 * 16 + split <= H100[1]
    assert "the backward stages dq 2880 columns at a time" in wide.reason
    elman = cuda.plan("elman", 1, 1024, 3, *H100, tensor_cores="tf32")
    assert isinstance(elman, cuda.Tiling) and elman.forward_mma and elman.backward_mma
    assert (elman.units, elman.blocks) == (16, 64)
    assert elman.reason.endswith("tensor cores (TF32) in both directions")
    # a multiple of 8, not of 16: bfloat16 operands sum in 16s, so TF32 (items of 16 units,
    # the second of each head 8 wide)
    eights = cuda.plan("lstm", 2, 24, 5, *H100, tensor_cores="bf16")
    assert isinstance(eights, cuda.Tiling) and eights.forward_mma and eights.backward_mma
    assert (eights.units, eights.blocks, eights.operands) == (16, 4, "tf32")
    assert eights.reason.endswith("(bfloat16 operands need a head size in 16s)")
    odd = cuda.plan("gru", 2, 20, 5, *H100, tensor_cores="bf16")
    assert isinstance(odd, cuda.Tiling) and not odd.tensor_cores
    assert odd.reason.endswith("no tensor cores: head size 20 is not a multiple of 8")
    with pytest.raises(ValueError, match="operand format True"):
        cuda.plan("gru", 2, 20, 5, *H100, tensor_cores=True)  # type: ignore[arg-type]
    # 16 rows of a 64-wide head's staging do not fit in 4 KiB; one float32 row does
    small = cuda.plan("elman", 1, 64, 1, 1, 4096, tensor_cores="tf32")
    assert small == replace(
        cuda.plan("elman", 1, 64, 1, 1, 4096),
        reason=small.reason,
    )
    assert "no tensor cores: their 16-row tiles do not fit" in small.reason
    # 100 bytes besides the FMA split scratch: only the float32 cut's 8-unit items fit (a
    # streamed row stages one entry of h beside its 8 gate sums), the tensor cores' 16 do not;
    # asking for tensor cores must not make the call unrunnable (it did: a refusal string)
    few = 100 + fma_split
    tiny = cuda.plan("elman", 1, 64, 1, 1, few, tensor_cores="tf32")
    assert tiny == replace(cuda.plan("elman", 1, 64, 1, 1, few), reason=tiny.reason)
    assert tiny.units == 8 and "no tensor cores: their units do not fit" in tiny.reason
    # 16-unit GRU items would hold 196 KiB of weights, leaving room for no 16-row tile: the
    # float32 cut of 8 units, not a 16-unit one without tensor cores
    gru = cuda.plan("gru", 1, 1024, 16, *H100, tensor_cores="tf32")
    assert isinstance(gru, cuda.Tiling) and not gru.tensor_cores
    assert gru.units == 8 and gru.mode == "resident"


def test_plan_tensor_cores_one_direction_at_a_time() -> None:
    """Where only one direction's 16-row tiles fit, that direction alone gets tensor cores and
    the other keeps the float32 cut's batch rows; where the other would lose rows, the float32
    cut is kept; each reason says which, and counts one unit or block in the singular."""
    # a dense 2048 Elman in TF32: 16 rows of the forward's staging do not fit beside its
    # 128 KiB of weights, the backward's do with dq staged 1440 columns at a time; the forward
    # keeps the float32 cut's 12 rows
    plain = cuda.plan("elman", 1, 2048, 16, *H100)
    wide = cuda.plan("elman", 1, 2048, 16, *H100, tensor_cores="tf32")
    assert isinstance(plain, cuda.Tiling) and isinstance(wide, cuda.Tiling)
    assert (wide.units, wide.forward_mma, wide.backward_mma) == (16, False, True)
    assert wide.forward_batch_tile == plain.forward_batch_tile == 12
    assert (wide.backward_batch_tile, wide.backward_stage) == (16, 1440)
    assert wide.forward_args == (16, 12, 0, 128, 0, 0)
    assert wide.backward_args == (16, 16, 0, 128, 1, 1440, 0)
    assert wide.reason.endswith(
        "tensor cores (TF32) in the backward only (the forward's product "
        "needs gates x units in 16s and 16 batch rows of shared memory)"
    )
    # 64 SMs with 64 KiB: bfloat16 items of 8 units would put the forward on the tensor cores
    # but leave the backward in float32 with 19 rows where the float32 cut has 32: kept
    lstm = cuda.plan("lstm", 1, 384, 32, 64, 64 * 1024, tensor_cores="bf16")
    fma = cuda.plan("lstm", 1, 384, 32, 64, 64 * 1024)
    assert isinstance(lstm, cuda.Tiling) and isinstance(fma, cuda.Tiling)
    assert lstm == replace(fma, reason=lstm.reason) and fma.backward_batch_tile == 32
    assert lstm.reason.endswith(
        "their cut would leave a direction without them and with fewer batch rows per tile"
    )
    # 16 KiB: neither direction's 16-row tiles fit beside 16-unit GRU items (the float32 ones
    # do): the float32 cut, and the reason names the tiles, not residency
    gru = cuda.plan("gru", 1, 64, 16, 8, 16 * 1024, tensor_cores="tf32")
    assert isinstance(gru, cuda.Tiling)
    assert gru == replace(cuda.plan("gru", 1, 64, 16, 8, 16 * 1024), reason=gru.reason)
    assert gru.reason.endswith(
        "no tensor cores: their 16-row tiles do not fit this cut's shared memory"
    )
    one = cuda.plan("lstm", 1, 1, 16, *H100)
    assert isinstance(one, cuda.Tiling)
    assert one.reason == "resident: R in shared memory, 1 unit of a head on each of 1 block"


def test_registration_and_reasons() -> None:
    """Registered for elman, lstm, gru and slstm, all taking lengths; never chosen by ``auto``
    on CPU; a CPU call and another cell kind are refused with reasons naming another backend."""
    ks = {k.target: k for k in cuda.kernels()}
    assert set(ks) == {"elman", "lstm", "gru", "slstm"}
    assert all(k.supports_lengths for k in ks.values())
    if not torch.cuda.is_available():
        reason = cuda.available()
        assert reason is not None and ("CUDA" in reason or "disabled" in reason)
    cell = make_cell("lstm", 1).float()
    x = torch.zeros(2, 3, cell.input_size)
    why = ks["lstm"].why_not(KernelCall(cell, x, None, None, needs_grad=False))
    assert why is not None
    assert "CUDA only" in str(cuda.supports(KernelCall(cell, x, None, None, False)))
    slstm = make_cell("slstm", 1).float()
    assert "CUDA only" in str(cuda.supports(KernelCall(slstm, x, None, None, False)))
    other = copy.deepcopy(slstm)
    other.kind = "mlstm"
    assert "triton" in str(cuda.supports(KernelCall(other, x, None, None, False)))
    y, _ = cell(x, backend="auto")  # auto on CPU never tries cuda
    assert y.shape == (2, 3, cell.hidden_size)


def test_lengths_bind_to_the_cuda_loops() -> None:
    """A call with lengths gets the CUDA loops with the lengths bound (int32, on the input's
    device); loops that cannot hold a state (the pure-torch fallback) refuse them. A 16-bit
    call asks for tensor cores, a float32 one does not."""
    cell = make_cell("slstm", 1).float()
    x = torch.zeros(3, 5, cell.input_size)
    call = KernelCall(cell, x, None, None, True, torch.tensor([5, 2, 4]))
    lp = cuda_loops._loops("slstm", call, None)
    for fn in lp:
        bound = fn.keywords["lengths"]
        assert bound.dtype == torch.int32 and bound.tolist() == [5, 2, 4]
        assert fn.keywords["tensor_cores"] is None
    for dtype, mma in ((torch.float32, None), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        plain = KernelCall(cell.to(dtype), x.to(dtype), None, None, True)
        got = cuda_loops._loops("slstm", plain, None)
        for fn, own in zip(got, cuda_loops.CUDA_LOOPS["slstm"], strict=True):
            assert fn.func is own and fn.keywords == {"tensor_cores": mma}
    with pytest.raises(ValueError, match="hold the state"):
        cuda_loops._loops("slstm", call, fused.SLSTM_LOOPS)


def test_explain_names_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """``explain`` says whether a call keeps R resident or streams it (on a pretend H100), and
    passes on a refusal; a 16-bit call gets tensor cores only where the device has them."""
    cell = make_cell("lstm", 2, hidden=2048).float()
    x = torch.zeros(16, 3, cell.input_size)
    call = KernelCall(cell, x, None, None, False)
    assert cuda.explain(call).startswith("cannot run: CUDA only")
    monkeypatch.setattr(cuda, "supports", lambda c: None)
    monkeypatch.setattr(cuda_loops, "device_index", lambda d: 0)
    monkeypatch.setattr(cuda_loops, "device_limits", lambda i: H100)
    assert cuda.explain(call).startswith("streamed: head size 1024 with 2 head(s)")
    one = make_cell("lstm", 1, hidden=768).float()
    x1 = torch.zeros(16, 3, one.input_size)
    assert cuda.explain(KernelCall(one, x1, None, None, False)).startswith("resident:")
    # a bfloat16 call on a device without tensor cores (before sm_80): float32 FMAs
    half = KernelCall(one.bfloat16(), x1.bfloat16(), None, None, False)
    monkeypatch.setattr(cuda_loops, "has_wmma", lambda i: False)
    assert cuda.explain(half) == cuda.explain(KernelCall(one, x1, None, None, False))
    # on a device with them: the product in its own dtype
    monkeypatch.setattr(cuda_loops, "has_wmma", lambda i: True)
    assert cuda.explain(half).endswith("tensor cores (bfloat16 operands) in both directions")


def test_kernels_status_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    from rnnkit.core import cli

    assert cli.main(["kernels", "status", cuda.LIBRARY.name]) == 0
    out = capsys.readouterr().out
    assert cuda.LIBRARY.name in out
    if not torch.cuda.is_available():
        assert str(cuda.available()) in out


# --- the kernels' per-element step math, compiled for the host ---------------------------------
#
# csrc/gated_cell.h holds each cell's pointwise forward and backward step as __host__ __device__
# functions; tests/csrc/gated_cell_harness.cpp runs them on the CPU (a plain C++ compiler, loaded
# with ctypes). Each test feeds random float32 rows through one cell's forward step and then its
# backward step on what the forward produced (as the kernels' stored-gates backward does), and
# compares every value and gradient with the core cell's own ``recur`` run in float64 with
# autograd (``recurrent_term`` replaced by a leaf tensor, so the pre-activations are inputs).

HARNESS = Path(__file__).parent / "csrc" / "gated_cell_harness.cpp"
ROWS = 4000
#: float32 step against float64: a few ulp per operation on O(1) values.
STEP_TOL = {"rtol": 1e-5, "atol": 1e-5}


def _host_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def step_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = _host_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (c++, g++ or clang++) to build the step harness")
    out = tmp_path_factory.mktemp("step") / "gated_cell_harness.so"
    flags = ["-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    cmd = [cxx, *flags, "-I", str(cuda._native.CSRC), str(HARNESS), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}{done.stderr}"
    return ctypes.CDLL(str(out))


def _host_step(lib: ctypes.CDLL, name: str, rows: Tensor, width: int, *flags: int) -> Tensor:
    """Run ``rnnkit_<name>_step`` over the float64 ``rows (R, K)`` in float32; ``(R, width)``
    float64."""
    x = rows.float().contiguous()
    out = torch.full((x.shape[0], width), float("nan"), dtype=torch.float32)
    fn = getattr(lib, f"rnnkit_{name}_step")
    args = [ctypes.c_int(x.shape[0]), *(ctypes.c_int(f) for f in flags)]
    fn(*args, ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()))
    return out.double()


def _step_cell(cell: Any, q: Tensor) -> Any:
    """``cell`` in float64 whose recurrent term is the leaf ``q`` whatever ``h`` is."""
    cell.recurrent_term = lambda h: q
    return cell


def _grads(outputs: list[Tensor], cotangents: list[Tensor], inputs: list[Tensor]) -> list[Tensor]:
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents, strict=True))
    return list(torch.autograd.grad(loss, inputs, allow_unused=True))


def _rand(rows: int, *, scale: float = 1.0, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, generator=g, dtype=torch.float64) * scale


def _rows_f32(*cols: Tensor) -> Tensor:
    """The inputs as the harness sees them: rounded to float32 (then the float64 reference runs
    on exactly the same numbers)."""
    return torch.stack(cols, 1).float().double()


def _with_nan(rows: Tensor, count: int = 8) -> Tensor:
    """The last ``count`` rows with a NaN in one column each (cycling): NaN in, NaN out."""
    rows = rows.clone()
    for k in range(count):
        rows[-1 - k, k % rows.shape[1]] = float("nan")
    return rows


def _assert_rows(got: Tensor, want: Tensor, names: list[str]) -> None:
    """Column ``j`` of ``got`` is ``names[j]``: within :data:`STEP_TOL` of ``want``'s, NaN exactly
    where ``want``'s is (torch.testing.assert_close's rule, without its seconds of import)."""
    want = want.detach()
    for j, name in enumerate(names):
        a, e = got[:, j], want[:, j]
        nan = e.isnan()
        assert torch.equal(a.isnan(), nan), f"{name}: NaN at rows {(a.isnan() != nan).nonzero()}"
        bound = STEP_TOL["atol"] + STEP_TOL["rtol"] * e.abs()
        bad = ((a - e).abs() > bound) & ~nan
        assert not bad.any(), (
            f"{name}: {int(bad.sum())} rows off, e.g. row {int(bad.nonzero()[0])}: "
            f"{a[bad][0].item()} vs {e[bad][0].item()}"
        )


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_host_elman_step(step_lib: ctypes.CDLL, relu: bool) -> None:
    v = _rand(ROWS, scale=2.0, seed=1)
    v[:5] = 0.0  # ReLU's derivative at 0 is torch's (0)
    rows = _with_nan(_rows_f32(v, _rand(ROWS, seed=2)))
    got = _host_step(step_lib, "elman", rows, 2, int(relu))
    cell = Elman(1, 1, nonlinearity="relu" if relu else "tanh", dtype=torch.float64)
    pre = rows[:, :1].clone().requires_grad_()
    h, _ = _step_cell(cell, torch.zeros_like(pre)).recur(pre, cell.init_state(ROWS))
    (dv,) = _grads([h], [rows[:, 1:2]], [pre])
    _assert_rows(got, torch.cat([h, dv], 1), ["h", "dv"])


def test_host_lstm_step(step_lib: ctypes.CDLL) -> None:
    cols = [_rand(ROWS, scale=2.0, seed=k) for k in range(4)]
    cols += [_rand(ROWS, seed=k) for k in (4, 5, 6)]  # c_prev, gh, dc
    rows = _with_nan(_rows_f32(*cols))
    got = _host_step(step_lib, "lstm", rows, 12)
    cell = LSTM(1, 1, dtype=torch.float64)
    pre = rows[:, :4].clone().requires_grad_()
    c_prev = rows[:, 4:5].clone().requires_grad_()
    state = cell.state_type(torch.zeros_like(c_prev), c_prev)
    h, st = _step_cell(cell, torch.zeros_like(pre)).recur(pre, state)
    d_pre, dc_prev = _grads([h, st.c], [rows[:, 5:6], rows[:, 6:7]], [pre, c_prev])
    ai, af, ag, ao = pre.detach().unbind(1)
    acts = torch.stack([ai.sigmoid(), af.sigmoid(), ag.tanh(), ao.sigmoid()], 1)
    want = torch.cat([acts, st.c, st.c.tanh(), h, d_pre, dc_prev], 1)
    names = ["i", "f", "g", "o", "c", "tanh c", "h", "di", "df", "dg", "do", "dc_prev"]
    _assert_rows(got, want, names)


def test_host_gru_step(step_lib: ctypes.CDLL) -> None:
    cols = [_rand(ROWS, scale=2.0, seed=k) for k in range(6)]  # xr, xz, xn, qr, qz, qn
    cols += [_rand(ROWS, seed=k) for k in (6, 7)]  # h_prev, gh
    rows = _with_nan(_rows_f32(*cols))
    got = _host_step(step_lib, "gru", rows, 9)
    cell = GRU(1, 1, bias=False, dtype=torch.float64)  # b_hn is inside qn here
    px = rows[:, :3].clone().requires_grad_()
    q = rows[:, 3:6].clone().requires_grad_()
    h_prev = rows[:, 6:7].clone().requires_grad_()
    h, _ = _step_cell(cell, q).recur(px, cell.state_type(h_prev))
    d_px, d_q, dh_prev = _grads([h], [rows[:, 7:8]], [px, q, h_prev])
    # r and z see px + q: one gradient serves both (the kernels write it to dq and dpx)
    _assert_rows(d_px[:, :2], d_q[:, :2], ["dr (px, q)", "dz (px, q)"])
    xr, xz, xn = px.detach().unbind(1)
    qr, qz, qn = q.detach().unbind(1)
    r, z = (xr + qr).sigmoid(), (xz + qz).sigmoid()
    acts = torch.stack([r, z, (xn + r * qn).tanh()], 1)
    want = torch.cat([acts, h, d_px[:, :2], d_px[:, 2:], d_q[:, 2:], dh_prev], 1)
    _assert_rows(got, want, ["r", "z", "n", "h", "dr", "dz", "dxn", "dqn", "dh_prev"])


def test_host_slstm_step(step_lib: ctypes.CDLL) -> None:
    """The fused loop's sLSTM conventions: m takes ĩ where n_{t-1} == 0, the exponential gates
    never overflow, and the gradient of m (the final m has a cotangent) is carried exactly."""
    cols = [_rand(ROWS, scale=3.0, seed=k) for k in range(4)]  # ĩ, f̃, z̃, õ
    g = torch.Generator().manual_seed(4)
    c_prev = _rand(ROWS, seed=5)
    n_prev = torch.rand(ROWS, generator=g, dtype=torch.float64) * 2 + 0.25
    fresh = torch.rand(ROWS, generator=g) < 0.1  # nothing accumulated yet
    n_prev[fresh], c_prev[fresh] = 0.0, 0.0
    m_prev = _rand(ROWS, scale=3.0, seed=6)
    cols += [c_prev, n_prev, m_prev]
    cols += [_rand(ROWS, seed=k) for k in (7, 8, 9, 10)]  # gh, dc, dn, dm
    rows = _with_nan(_rows_f32(*cols))
    got = _host_step(step_lib, "slstm", rows, 15)
    cell = SLSTM(1, 1, dtype=torch.float64)
    pre = rows[:, :4].clone().requires_grad_()
    prev = [rows[:, k : k + 1].clone().requires_grad_() for k in (4, 5, 6)]
    state = cell.state_type(torch.zeros_like(prev[0]), *prev)
    h, st = _step_cell(cell, torch.zeros_like(pre)).recur(pre, state)
    outs, cots = [h, st.c, st.n, st.m], [rows[:, k : k + 1] for k in (7, 8, 9, 10)]
    d_pre, dc_prev, dn_prev, dm_prev = _grads(outs, cots, [pre, *prev])
    ai, af, az, ao = pre.detach().unbind(1)
    m, (_, n0, m0) = st.m.detach()[:, 0], (p.detach()[:, 0] for p in prev)
    a = torch.where(n0 == 0, -torch.inf, torch.nn.functional.logsigmoid(af) + m0)
    gates = torch.stack([az.tanh(), ao.sigmoid(), (ai - m).exp(), (a - m).exp()], 1)
    want = torch.cat([gates, st.c, st.n, st.m, h, d_pre, dc_prev, dn_prev, dm_prev], 1)
    names = ["tanh z", "o", "i'", "f'", "c", "n", "m", "h", "di", "df", "dz", "do"]
    _assert_rows(got, want, [*names, "dc_prev", "dn_prev", "dm_prev"])
    assert fresh[: ROWS - 8].any() and (got[: ROWS - 8, 3][fresh[: ROWS - 8]] == 0).all()


# --- GPU ----------------------------------------------------------------------------------------

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
KINDS = ("elman", "relu", "lstm", "gru", "slstm")


def _check(
    kind: str, heads: int, hidden: int, dtype: torch.dtype, batch: int, time: int,
    *, state: bool = True, resets: bool = True, lengths: list[int] | None = None,
) -> None:  # fmt: skip
    """``cuda`` in ``dtype`` against ``reference`` in float64, values and every gradient (of a
    right-padded batch with ``lengths``), with every uninitialised CUDA allocation filled with
    NaN (a missed write shows up)."""
    dev = torch.device("cuda")
    cell64 = make_cell(kind, heads, hidden=hidden, inputs=5).to(dev)
    with torch.no_grad():  # each head's block keeps a spectral radius below one
        cell64.recurrent.uniform_(-((hidden // heads) ** -0.5), (hidden // heads) ** -0.5)
    x, st, rs, cot = make_inputs(cell64, batch=batch, time=time, state=state, resets=resets)
    x, cot = x.to(dev), [c.to(dev) for c in cot]
    st = None if st is None else tuple(s.to(dev) for s in st)
    rs = None if rs is None else rs.to(dev)
    want = run_all(cell64, "reference", x, st, rs, cot, lengths)
    cell = copy.deepcopy(cell64).to(dtype)
    det = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    try:
        s_lp = None if st is None else [s.to(dtype) for s in st]
        got = run_all(cell, "cuda", x.to(dtype), s_lp, rs, cot, lengths)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
    bad = {}
    for name, exp in want.items():
        act = got[name]
        if exp is None or act is None:
            assert (exp is None and act is None) or (act if exp is None else exp).abs().max() == 0
            continue
        assert act.dtype == dtype, f"{name} has dtype {act.dtype}"
        err = rel_rms(act, exp)
        if not err <= TOL[dtype]:
            bad[name] = err
    where = f"{kind} heads={heads} H={hidden} {dtype} B={batch} T={time} lengths={lengths}"
    assert not bad, f"{where}: {bad}"


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOL), ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_small(kind: str, dtype: torch.dtype) -> None:
    for batch in (1, 3, 17):
        _check(kind, 2, 32, dtype, batch, 7)
    _check(kind, 1, 16, dtype, 3, 5, state=False, resets=False)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [16, 64, 128, 256, 512, 768, 1024])
@pytest.mark.parametrize("kind", KINDS)
def test_head_sizes(kind: str, head_dim: int) -> None:
    heads = 2 if head_dim <= 256 else 1
    _check(kind, heads, heads * head_dim, torch.float32, 5, 9)
    _check(kind, heads, heads * head_dim, torch.bfloat16, 16, 9)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_fallback(kind: str) -> None:
    """Calls whose weights do not fit in shared memory run with R streamed from L2: two heads
    of 1024 (LSTM, sLSTM; 2048 for GRU and Elman, whose 1024 fit on an H100: too many bytes)
    and, for LSTM and GRU, more heads of 16 than the device has SMs (blocks loop over several
    heads); a batch of 70 in one streamed tile (three words of restarting rows)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    plan_kind = "elman" if kind == "relu" else kind
    D = 1024 if plan_kind in ("lstm", "slstm") else 2048
    cut = cuda_loops.tiling(plan_kind, 2, D, 3, torch.device("cuda"))
    assert cut.streamed, cut.reason
    _check(kind, 2, 2 * D, torch.float32, 3, 4)
    tall = cuda_loops.tiling(plan_kind, 2, D, 70, torch.device("cuda"))
    assert tall.streamed and tall.forward_batch_tile == tall.backward_batch_tile == 70, tall
    _check(kind, 2, 2 * D, torch.float32, 70, 3)
    if kind in ("lstm", "gru"):
        assert cuda_loops.tiling(kind, sms + 3, 16, 3, torch.device("cuda")).streamed
        _check(kind, sms + 3, 16 * (sms + 3), torch.float32, 3, 4)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_short_sequences(kind: str) -> None:
    """``T = 1`` through the kernels; ``T = 0`` returns the initial state unchanged."""
    _check(kind, 2, 32, torch.float32, 3, 1)
    cell = make_cell(kind, 2, hidden=32).float().cuda()
    x = torch.zeros(3, 0, cell.input_size, device="cuda")
    st = tuple(torch.randn(3, 32, device="cuda") for _ in cell.state_spec())
    y, final = cell(x, st, backend="cuda")
    assert y.shape == (3, 0, 32)
    assert all(torch.equal(a, b) for a, b in zip(final, st, strict=True))


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_lengths(kind: str) -> None:
    """``lengths`` unsorted, tied, 0 and ``T``, with and without state and resets: the state is
    held past each length inside the kernels."""
    for dtype in (torch.float32, torch.bfloat16):
        _check(kind, 2, 32, dtype, 6, 7, lengths=[7, 3, 0, 1, 5, 3])
    _check(kind, 1, 16, torch.float32, 4, 6, state=False, resets=False, lengths=[2, 6, 6, 4])
    _check(kind, 1, 256, torch.float32, 3, 9, lengths=[9, 4, 1])


@needs_gpu
@pytest.mark.gpu
def test_lengths_run_in_one_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call with lengths is one forward and one backward launch, handed the lengths (not
    one call per distinct length, as dispatch does for kernels without lengths)."""
    real = cuda_loops.ops()
    launches: list[tuple[str, bool]] = []

    class Counting:
        def forward(self, *args: Any) -> Any:
            launches.append(("forward", args[5] is not None))
            return real.forward(*args)

        def backward(self, *args: Any) -> Any:
            launches.append(("backward", args[12] is not None))
            return real.backward(*args)

    monkeypatch.setattr(cuda_loops, "ops", Counting)
    cell = make_cell("slstm", 1, hidden=16).float().cuda()
    x = torch.randn(3, 5, cell.input_size, device="cuda", requires_grad=True)
    y, _ = cell(x, backend="cuda", lengths=[5, 2, 4])
    y.sum().backward()
    assert launches == [("forward", True), ("backward", True)]
    assert torch.equal(y[1, 2:], torch.zeros_like(y[1, 2:]))


@needs_gpu
@pytest.mark.gpu
def test_16bit_calls_use_the_tensor_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """On sm_80 and later a bfloat16 or float16 call runs its products on the tensor cores with
    operands in its own dtype (the launches get ``mma=2`` or ``3`` where the cut allows, and
    ``explain`` says so); a float32 call never does. Values and gradients against float64 for
    16-bit resident and streamed cuts, and TF32 on heads in 8s but not 16s."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the kernels' tensor cores (TF32, bfloat16 WMMA) need sm_80 or later")
    real = cuda_loops.ops()
    launches: list[tuple[str, int]] = []

    class Recording:
        def forward(self, *args: Any) -> Any:
            launches.append(("forward", args[-2]))  # then the exchange
            return real.forward(*args)

        def backward(self, *args: Any) -> Any:
            launches.append(("backward", args[-3]))  # then the stage and the exchange
            return real.backward(*args)

    monkeypatch.setattr(cuda_loops, "ops", Recording)
    words = {2: "bfloat16 operands", 3: "float16 operands"}
    for dtype, mma in ((torch.bfloat16, 2), (torch.float16, 3), (torch.float32, 0)):
        launches.clear()
        cell = make_cell("elman", 2, hidden=128).to(dtype).cuda()  # 2 heads of 64
        x = torch.randn(3, 5, cell.input_size, device="cuda", dtype=dtype, requires_grad=True)
        call = KernelCall(cell, x, None, None, True)
        both = f"tensor cores ({words.get(mma)}) in both directions"
        assert (both in cuda.explain(call)) == bool(mma)
        y, _ = cell(x, backend="cuda")
        y.float().sum().backward()
        assert launches == [("forward", mma), ("backward", mma)], dtype
    monkeypatch.undo()
    for kind in KINDS:
        _check(kind, 2, 128, torch.bfloat16, 17, 6)  # resident
        _check(kind, 2, 128, torch.float16, 5, 6, lengths=[6, 2, 0, 5, 6])
    _check("lstm", 2, 2048, torch.bfloat16, 3, 4)  # 2 heads of 1024: resident, dq staged
    _check("lstm", 1, 2048, torch.bfloat16, 3, 4)  # streamed: one head of 2048
    _check("gru", 2, 48, torch.bfloat16, 5, 6)  # heads of 24: TF32


def test_build_without_names_skips_a_library_this_machine_cannot_use(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """``rnnkit kernels build`` skips (exit 0) a library whose ``requires`` gives a reason, and
    reports it as a failure when named."""
    from rnnkit.core import cli
    from rnnkit.kernels import native

    monkeypatch.setattr(native, "_REGISTRY", {})
    native.NativeLibrary(
        name="needs_gpu_lib", csrc=tmp_path, sources=(), requires=lambda: "no CUDA device"
    )
    assert cli.main(["kernels", "build"]) == 0
    assert "needs_gpu_lib: skipped (no CUDA device)" in capsys.readouterr().out
    assert cli.main(["kernels", "build", "needs_gpu_lib"]) == 1
    assert "FAILED: no CUDA device" in capsys.readouterr().err


def test_plan_streamed_tile_holds_the_batch() -> None:
    """A streamed block reads each item's slice of R once per batch tile, staging with each
    chunk only that chunk's entries of h (forward) or dq (backward) per row, so its tile may
    hold more than 32 rows: on an H100 the streamed calls of issue 19 at B = 128 (one head of
    2048 LSTM, two heads of 1024 LSTM and sLSTM in float32, more heads than SMs) take the whole
    batch in one tile and read R once per step (they had tiles of 25 to 32 rows: R read 4 to 6
    times). A bigger batch is cut into tiles of MAX_STREAMED_BATCH_TILE rows, a device with
    less shared memory into the most rows that fit (still over 32 here); resident cuts keep
    at most 32."""
    for kind, heads, D in (("lstm", 1, 2048), ("lstm", 2, 1024), ("slstm", 2, 1024)):
        for tensor_cores in (None, "bf16", "fp16"):
            cut = cuda.plan(kind, heads, D, 128, *H100, tensor_cores=tensor_cores)
            assert isinstance(cut, cuda.Tiling), cut
            if tensor_cores and not cut.streamed:
                continue  # two heads of 1024 in 16-bit operands stay resident
            assert cut.streamed, cut.reason
            assert (cut.forward_batch_tile, cut.backward_batch_tile) == (128, 128), cut.reason
            assert "once per batch tile of 128 (forward) and 128 (backward) rows" in cut.reason
            big = cuda.plan(kind, heads, D, 1000, *H100, tensor_cores=tensor_cores)
            assert isinstance(big, cuda.Tiling)
            tall = cuda._plan.MAX_STREAMED_BATCH_TILE
            assert big.forward_batch_tile == big.backward_batch_tile == tall
    many = cuda.plan("gru", 200, 8, 128, *H100)
    assert isinstance(many, cuda.Tiling) and many.streamed
    assert many.forward_batch_tile == many.backward_batch_tile == 128
    # the forward's bytes: a 64-row chunk of R (16 units, 4 gates), 64 entries of h and 64
    # gate sums per row, a restart word per 32 rows, the FMA split scratch
    one = cuda.plan("lstm", 1, 2048, 128, *H100)
    assert isinstance(one, cuda.Tiling) and (one.units, one.forward_k_chunk) == (16, 64)
    split = cuda._plan.FMA_SPLIT_BYTES
    assert one.forward_smem == 4 * (64 * 64 + 128 * 64) + 4 * (128 * 64 + 4) + split
    assert one.backward_smem == 4 * (64 * 16 + 128 * 64) + 4 * 128 * 16 + split
    # 64 KiB per block: the most rows that fit, more than a resident tile's 32
    smem = 64 * 1024
    for tensor_cores in (None, "bf16"):
        cut = cuda.plan("lstm", 1, 2048, 128, 132, smem, tensor_cores=tensor_cores)
        assert isinstance(cut, cuda.Tiling) and cut.streamed, cut
        mma = (cut.forward_mma, cut.backward_mma)
        ops = cut.operands or "tf32"
        for backward, tile, chunk in (
            (False, cut.forward_batch_tile, cut.forward_k_chunk),
            (True, cut.backward_batch_tile, cut.backward_k_chunk),
        ):
            assert 32 < tile <= 128, cut.reason
            more = cuda._plan.smem_bytes("lstm", 2048, cut.units, tile + 1, chunk, *mma, ops)
            assert tile == 128 or more[backward] > smem, (backward, tile, more)
    resident = cuda.plan("lstm", 1, 768, 128, *H100)
    assert isinstance(resident, cuda.Tiling) and not resident.streamed
    assert resident.forward_batch_tile == resident.backward_batch_tile == 32


def test_plan_streamed_tile_of_a_batch_that_is_not_a_multiple_of_32() -> None:
    """A streamed tile keeps a restart word for each 32 rows or part of them: 100 rows take 4
    words (3 would leave the last 4 rows' word outside the block's shared memory). A batch of
    one row is one tile of one row (and says so in the singular)."""
    cut = cuda.plan("lstm", 1, 2048, 100, *H100)
    assert isinstance(cut, cuda.Tiling) and cut.streamed, cut
    assert cut.forward_batch_tile == cut.backward_batch_tile == 100
    assert (cut.units, cut.forward_k_chunk) == (16, 64)
    split = cuda._plan.FMA_SPLIT_BYTES
    assert cut.forward_smem == 4 * (64 * 64 + 100 * 64) + 4 * (100 * 64 + 4) + split
    assert cuda._plan.smem_bytes("lstm", 2048, 16, 33, 64)[0] == (
        4 * (64 * 64 + 33 * 64) + 4 * (33 * 64 + 2) + split
    )
    one = cuda.plan("lstm", 1, 2048, 1, *H100)
    assert isinstance(one, cuda.Tiling) and one.streamed, one
    assert "once per batch tile of 1 (forward) and 1 (backward) row;" in one.reason


def test_plan_is_cached_but_follows_its_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call plans, so cuts are cached; a cached cut is the one planning afresh gives, and
    changing the chunk or a batch-tile limit (as the emulated tests do) plans afresh."""
    args = ("lstm", 2, 2048, 128, *H100)
    first = cuda.plan(*args, tensor_cores="bf16")
    assert cuda.plan(*args, tensor_cores="bf16") is first  # from the cache
    wrapped = cuda._plan._cached_plan.__wrapped__
    fresh = wrapped("lstm", 2, 2048, 32, 128, *H100, "bf16", 64, "grid")
    assert fresh == first and first.streamed and first.forward_k_chunk == 64
    assert first.forward_batch_tile == first.backward_batch_tile == 128  # the whole batch
    monkeypatch.setattr(cuda._plan, "MAX_K_CHUNK", 32)
    assert cuda.plan(*args, tensor_cores="bf16").forward_k_chunk == 32
    monkeypatch.setattr(cuda._plan, "MAX_STREAMED_BATCH_TILE", 40)
    assert cuda.plan(*args, tensor_cores="bf16").forward_batch_tile == 40
    resident = ("lstm", 1, 768, 128, *H100)
    assert cuda.plan(*resident).forward_batch_tile == 32
    monkeypatch.setattr(cuda._plan, "MAX_BATCH_TILE", 2)
    assert cuda.plan(*resident).forward_batch_tile == 2


def test_plan_step_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step exchange rides on the cut: the same cut either way, its code the last argument
    of both ops (0 grid barrier, 1 flags), the reason naming flags; an unknown exchange is
    refused, and so is an unknown name in ``RNNKIT_CUDA_EXCHANGE`` (naming the variable)."""
    grid = cuda.plan("lstm", 6, 128, 16, *H100, tensor_cores="bf16")
    flags = cuda.plan("lstm", 6, 128, 16, *H100, tensor_cores="bf16", exchange="flags")
    assert isinstance(grid, cuda.Tiling) and isinstance(flags, cuda.Tiling)
    assert grid.exchange == "grid" and flags.exchange == "flags"
    assert replace(flags, exchange="grid", reason=grid.reason) == grid
    assert "flags" in flags.reason and "flags" not in grid.reason
    assert grid.forward_args[:-1] == flags.forward_args[:-1]
    assert (grid.forward_args[-1], grid.backward_args[-1]) == (0, 0)
    assert (flags.forward_args[-1], flags.backward_args[-1]) == (1, 1)
    with pytest.raises(ValueError, match="unknown step exchange 'barrier'"):
        cuda.plan("lstm", 6, 128, 16, *H100, exchange="barrier")
    for value, want in (("", "grid"), ("flags", "flags"), (" Flags ", "flags"), ("grid", "grid")):
        monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, value)
        assert cuda_loops.step_exchange() == want
    monkeypatch.delenv(cuda_loops.EXCHANGE_ENV)
    assert cuda_loops.step_exchange() == "grid"
    monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, "spin")
    with pytest.raises(ValueError, match="RNNKIT_CUDA_EXCHANGE='spin' names no step exchange"):
        cuda_loops.step_exchange()


def test_tiling_takes_the_exchange_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loops' cut (``tiling``, on a pretend H100) carries the exchange that
    ``RNNKIT_CUDA_EXCHANGE`` names, read at every call: flags where it says so (code 1 in both
    ops' arguments), the grid barrier where it is unset, a refusal where it names none."""
    monkeypatch.setattr(cuda_loops, "device_index", lambda d: 0)
    monkeypatch.setattr(cuda_loops, "device_limits", lambda i: H100)
    monkeypatch.setattr(cuda_loops, "has_wmma", lambda i: True)
    device = torch.device("cpu")  # never asked about: device_index is replaced
    monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, "flags")
    cut = cuda_loops.tiling("lstm", 6, 128, 16, device, "bf16")
    assert cut.exchange == "flags" and "flags" in cut.reason
    assert (cut.forward_args[-1], cut.backward_args[-1]) == (1, 1)
    monkeypatch.delenv(cuda_loops.EXCHANGE_ENV)
    cut = cuda_loops.tiling("lstm", 6, 128, 16, device, "bf16")
    assert cut.exchange == "grid" and (cut.forward_args[-1], cut.backward_args[-1]) == (0, 0)
    monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, "spin")
    with pytest.raises(ValueError, match="RNNKIT_CUDA_EXCHANGE='spin' names no step exchange"):
        cuda_loops.tiling("lstm", 6, 128, 16, device, "bf16")


@pytest.mark.parametrize("kind", ["lstm", "gru", "slstm"])
def test_plan_stages_in_at_most_max_stages_chunks(kind: str) -> None:
    """Head sizes whose ``G*D`` / :data:`MAX_STAGES` columns lie just past a multiple of 16 (an
    LSTM's 129: 516 / 8 = 64.5): the narrowest stage rounds up (80), since 64 columns would take
    nine chunks. On small devices that stage ``dq``, the stage is a multiple of 16 below ``G*D``
    in at most :data:`MAX_STAGES` chunks, fits, and is the widest that fits."""
    G, step = cuda.GATES[kind], cuda._plan.STAGE_STEP
    staged = 0
    for D in (129, 161, 172, 193):
        for smem in range(8 * 1024, 40 * 1024 + 1, 2 * 1024):
            for ops in (None, "bf16"):
                cut = cuda.plan(kind, 1, D, 16, 132, smem, tensor_cores=ops)
                assert isinstance(cut, cuda.Tiling), cut
                stage = cut.backward_stage
                if not stage:
                    continue
                staged += 1
                assert stage % step == 0 and stage < G * D, (D, smem, stage)
                assert -(-G * D // stage) <= cuda._plan.MAX_STAGES, (D, smem, stage)
                assert cut.backward_smem <= smem
                if stage + step < G * D:  # the next wider stage would not fit
                    wider = cuda._plan.smem_bytes(
                        kind, D, cut.units, cut.backward_batch_tile, 0, cut.forward_mma,
                        cut.backward_mma, cut.operands or "tf32", stage + step,
                    )  # fmt: skip
                    assert wider[1] > smem, (D, smem, stage)
    assert staged  # the sizes above do stage dq somewhere


@pytest.mark.parametrize(("kind", "D"), [("elman", 12), ("lstm", 3), ("gru", 5), ("slstm", 3)])
def test_plan_refusal_on_heads_narrower_than_a_stage(kind: str, D: int) -> None:
    """``test_plan_refusal_names_the_least_shared_memory`` for heads whose ``G*D`` columns are
    fewer than one :data:`STAGE_STEP`: the backward cannot stage ``dq`` in chunks, so the least
    resident block stages all of it, and the count says so (a 16-column stage would count more
    than that block needs, and one byte less would still stay resident)."""
    _refusal_names_the_least_bytes(kind, D, 1100)


def _refusal_names_the_least_bytes(kind: str, D: int, smem: int) -> None:
    """One head of ``D`` on 8 SMs with ``smem`` bytes streams, its reason names ``N`` bytes a
    resident cut needs, and exactly ``N`` bytes keep the cut resident where ``N - 1`` do not."""
    cut = cuda.plan(kind, 1, D, 4, 8, smem)
    assert isinstance(cut, cuda.Tiling) and cut.streamed, cut
    found = re.search(r"needs (\d+) bytes of shared memory per block", cut.reason)
    assert found, cut.reason
    need = int(found.group(1))
    at_need = cuda.plan(kind, 1, D, 4, 8, need)
    assert isinstance(at_need, cuda.Tiling) and at_need.mode == "resident", at_need
    below = cuda.plan(kind, 1, D, 4, 8, need - 1)
    assert isinstance(below, cuda.Tiling) and below.streamed, below


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_flags_exchange(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RNNKIT_CUDA_EXCHANGE=flags``: each block waits on its peers' step counters instead of
    a grid barrier. Against float64: six heads of 128 (several blocks per head, each head's
    blocks waiting only on one another), an odd batch with lengths and resets in bfloat16, and
    the streamed fallback (every block waits on all); and the same call under both exchanges
    gives the same outputs bit for bit (the same products in the same order), its gradients
    within float32 rounding of one another (the weight gradient is a cuBLAS GEMM afterwards).
    Last in this file: a flag that never comes traps after 30 s and takes the CUDA context with
    it, so the other GPU tests (``-x`` in tools/gpu/cuda_check.sh) run first."""
    monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, "flags")
    plan_kind = "elman" if kind == "relu" else kind
    assert cuda_loops.tiling(plan_kind, 6, 128, 5, torch.device("cuda")).exchange == "flags"
    _check(kind, 6, 6 * 128, torch.float32, 5, 9)
    _check(kind, 2, 64, torch.bfloat16, 17, 7, lengths=[7, 3, 1, 7, 5, 2, 6] * 2 + [4, 4, 7])
    D = 1024 if plan_kind in ("lstm", "slstm") else 2048
    assert cuda_loops.tiling(plan_kind, 2, D, 3, torch.device("cuda")).streamed
    _check(kind, 2, 2 * D, torch.float32, 3, 4)

    dev = torch.device("cuda")
    cell = make_cell(kind, 4, hidden=4 * 64, inputs=5).float().to(dev)
    x, st, rs, cot = make_inputs(cell, batch=9, time=11, state=True, resets=True)
    args = (x.to(dev), [s.to(dev) for s in st], rs.to(dev), [c.to(dev) for c in cot])
    flags = run_all(cell, "cuda", *args)
    monkeypatch.setenv(cuda_loops.EXCHANGE_ENV, "grid")
    grid = run_all(cell, "cuda", *args)
    for name, want in grid.items():
        got = flags[name]
        assert (want is None) == (got is None), name
        if want is None or got is None:
            continue
        if name.startswith("grad."):
            assert rel_rms(got, want) <= 1e-6, (name, rel_rms(got, want))
        else:
            assert torch.equal(got, want), name


@pytest.mark.parametrize("kind", list(cuda.KINDS))
def test_plan_refusal_names_the_least_shared_memory(kind: str) -> None:
    """Where the weights do not fit, the streamed cut's reason says how many bytes per block a
    resident cut needs: the least (one batch row, the backward's dq staged in its narrowest
    chunks), so that exactly that much keeps the cut resident and one byte less does not.
    (It used to count all of dq staged at once, more than a staged cut needs.)"""
    for D in (40, 48, 64):
        _refusal_names_the_least_bytes(kind, D, 2000)
