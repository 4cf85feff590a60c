"""The ``cuda`` backend of the gated form.

Without a GPU (CI): every CUDA kernel source compiles with ``nvcc -arch=sm_90`` (skipped without
nvcc), the tiling planner's cuts and refusals, and the backend's registration and reasons. With a
GPU (``tools/gpu/cuda_check.sh``): values and gradients against the float64 reference for every
supported cell, head sizes 16 to 1024, float32/bfloat16/float16, odd batches, ``T`` = 0 and 1,
resets, and outputs poisoned with NaN before the kernels write them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _gated_helpers import make_cell, make_inputs, rel_rms, run_all

from rnnkit.core.dispatch import KernelCall
from rnnkit.kernels.gated import cuda

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
def test_compile_check_reports_the_error(tmp_path: Any) -> None:
    """A source nvcc rejects raises with nvcc's diagnostic (the check would catch a typo)."""
    bad = tmp_path / "csrc"
    bad.mkdir()
    for name in ("gated_cuda.h",):
        (bad / name).write_text((cuda._native.CSRC / name).read_text())
    (bad / "broken.cu").write_text(
        '#include "gated_cuda.h"\n__global__ void k() { undefined(); }\n'
    )
    original = cuda._native.CSRC
    cuda._native.CSRC = bad
    try:
        with pytest.raises(cuda.CompileCheckError, match="undefined"):
            cuda.compile_check("sm_90", cache_dir=tmp_path / "out", sources=("broken.cu",))
    finally:
        cuda._native.CSRC = original


PLANNED = [
    ("lstm", 1, 768),
    ("gru", 1, 1024),
    ("elman", 1, 1024),
    ("lstm", 48, 16),
    ("lstm", 3, 256),
    ("lstm", 1, 1),
]


@pytest.mark.parametrize(("kind", "heads", "head_dim"), PLANNED)
def test_plan_fits_an_h100(kind: str, heads: int, head_dim: int) -> None:
    """Every block's weights and staging fit the shared memory, at most one block per SM,
    every unit owned by exactly one block."""
    cut = cuda.plan(kind, heads, head_dim, 16, *H100)
    assert isinstance(cut, cuda.Tiling), cut
    assert cut.blocks <= H100[0]
    assert max(cut.forward_smem, cut.backward_smem) <= H100[1]
    tiles = -(-head_dim // cut.units)
    assert cut.blocks == heads * tiles and (tiles - 1) * cut.units < head_dim
    assert 1 <= cut.forward_batch_tile <= 16 and 1 <= cut.backward_batch_tile <= 16


def test_plan_refuses_what_does_not_fit() -> None:
    too_wide = cuda.plan("lstm", 2, 1024, 16, *H100)
    assert isinstance(too_wide, str) and "shared memory" in too_wide
    too_many = cuda.plan("gru", 200, 8, 16, *H100)
    assert isinstance(too_many, str) and "200 heads" in too_many
    assert isinstance(cuda.plan("lstm", 1, 64, 0, *H100), cuda.Tiling)  # empty batch


def test_registration_and_reasons() -> None:
    """Registered for elman, lstm and gru; never chosen by ``auto`` on CPU; a CPU call, sLSTM
    and float64 are refused with reasons naming another backend."""
    ks = {k.target: k for k in cuda.kernels()}
    assert set(ks) == {"elman", "lstm", "gru"}
    if not torch.cuda.is_available():
        reason = cuda.available()
        assert reason is not None and ("CUDA" in reason or "disabled" in reason)
    cell = make_cell("lstm", 1).float()
    x = torch.zeros(2, 3, cell.input_size)
    why = ks["lstm"].why_not(KernelCall(cell, x, None, None, needs_grad=False))
    assert why is not None
    assert "CUDA only" in str(cuda.supports(KernelCall(cell, x, None, None, False)))
    slstm = make_cell("slstm", 1)
    assert "triton" in str(cuda.supports(KernelCall(slstm, x.double(), None, None, False)))
    y, _ = cell(x, backend="auto")  # auto on CPU never tries cuda
    assert y.shape == (2, 3, cell.hidden_size)


def test_kernels_status_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    from rnnkit.core import cli

    assert cli.main(["kernels", "status", cuda.LIBRARY.name]) == 0
    out = capsys.readouterr().out
    assert cuda.LIBRARY.name in out
    if not torch.cuda.is_available():
        assert str(cuda.available()) in out


# --- GPU ----------------------------------------------------------------------------------------

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
KINDS = ("elman", "relu", "lstm", "gru")


def _check(
    kind: str, heads: int, hidden: int, dtype: torch.dtype, batch: int, time: int,
    *, state: bool = True, resets: bool = True,
) -> None:  # fmt: skip
    """``cuda`` in ``dtype`` against ``reference`` in float64, values and every gradient, with
    every uninitialised CUDA allocation filled with NaN (a missed write shows up)."""
    dev = torch.device("cuda")
    cell64 = make_cell(kind, heads, hidden=hidden, inputs=5).to(dev)
    with torch.no_grad():  # each head's block keeps a spectral radius below one
        cell64.recurrent.uniform_(-((hidden // heads) ** -0.5), (hidden // heads) ** -0.5)
    x, st, rs, cot = make_inputs(cell64, batch=batch, time=time, state=state, resets=resets)
    x, cot = x.to(dev), [c.to(dev) for c in cot]
    st = None if st is None else tuple(s.to(dev) for s in st)
    rs = None if rs is None else rs.to(dev)
    want = run_all(cell64, "reference", x, st, rs, cot)
    cell = copy.deepcopy(cell64).to(dtype)
    det = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # type: ignore[attr-defined]
    try:
        s_lp = None if st is None else [s.to(dtype) for s in st]
        got = run_all(cell, "cuda", x.to(dtype), s_lp, rs, cot)
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
    assert not bad, f"{kind} heads={heads} H={hidden} {dtype} B={batch} T={time}: {bad}"


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
def test_short_sequences(kind: str) -> None:
    """``T = 1`` through the kernels; ``T = 0`` returns the initial state unchanged."""
    _check(kind, 2, 32, torch.float32, 3, 1)
    cell = make_cell(kind, 2, hidden=32).float().cuda()
    x = torch.zeros(3, 0, cell.input_size, device="cuda")
    st = tuple(torch.randn(3, 32, device="cuda") for _ in cell.state_spec())
    y, final = cell(x, st, backend="cuda")
    assert y.shape == (3, 0, 32)
    assert all(torch.equal(a, b) for a, b in zip(final, st, strict=True))


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
