"""The ``triton`` backend against the float64 reference loop, in value and gradient.

Without a GPU the kernels run under the Triton interpreter, which this module switches on
before triton is imported (tiny shapes: the interpreter is slow). With a GPU the same tests
also run on CUDA, compiled, and a few larger multi-head shapes are added.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install rnnkit-kernels[triton])")

from torch import Tensor

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman, GatedCell
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.testing import rel_rms
from rnnkit.kernels.gated.triton import kernels, triton_gated_varlen
from rnnkit.kernels.gated.triton.ops import interpreting

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}

CELLS: dict[str, tuple[type[GatedCell], dict[str, str]]] = {
    "elman": (Elman, {}),
    "elman_relu": (Elman, {"nonlinearity": "relu"}),
    "lstm": (LSTM, {}),
    "gru": (GRU, {}),
    "slstm": (SLSTM, {}),
}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _device(name: str) -> torch.device:
    if name == "cpu" and not interpreting():
        pytest.skip("CPU runs need TRITON_INTERPRET=1 (set when no GPU is present)")
    return torch.device(name)


def _make(name: str, hidden: int, heads: int, dtype: torch.dtype, device: torch.device):
    cls, kw = CELLS[name]
    cell = cls(7, hidden, heads=heads, **kw).to(device=device, dtype=dtype)  # type: ignore[arg-type]
    with torch.no_grad():
        # Larger recurrent weights than the default init so R matters at every step.
        cell.recurrent.mul_(hidden**0.5 / heads**0.5 * 0.6)
    ref = cls(7, hidden, heads=heads, **kw).to(device=device, dtype=torch.float64)  # type: ignore[arg-type]
    ref.load_state_dict({k: v.to(torch.float64) for k, v in cell.state_dict().items()})
    return cell, ref


def _random_state(cell: GatedCell, B: int, device: torch.device) -> tuple[Tensor, ...]:
    fields = []
    for f in cell.state_spec():
        v = torch.randn(B, *f.shape, device=device, dtype=torch.float64)
        if f.name == "n":  # sLSTM normaliser: positive, and exactly 0 somewhere (fresh start)
            v = v.abs() + 0.5
            v[0, :3] = 0.0
        fields.append(v)
    return tuple(fields)


def _run_and_grad(cell, x, state, resets, backend, gy, gs):
    params = dict(cell.named_parameters())
    x = x.detach().requires_grad_(True)
    inputs = [x, *params.values()]
    if state is not None:
        state = tuple(s.detach().requires_grad_(True) for s in state)
        inputs += list(state)
    y, final = cell(x, state, backend=backend, resets=resets)
    loss = (y.double() * gy).sum() + sum(
        (s.double() * g).sum() for s, g in zip(final, gs, strict=True)
    )
    grads = torch.autograd.grad(loss, inputs)
    names = ["x", *params] + ([f"state.{f.name}" for f in cell.state_spec()] if state else [])
    return y, final, dict(zip(names, grads, strict=True))


def _compare(name, cell, ref, B, T, dtype, device, *, with_state, with_resets, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 7, generator=gen, dtype=torch.float64).to(device)
    x = x.to(dtype).to(torch.float64)  # the same rounded input for both
    state64 = _random_state(ref, B, device) if with_state else None
    if state64 is not None:
        state64 = tuple(s.to(dtype).to(torch.float64) for s in state64)
    resets = None
    if with_resets:
        resets = torch.rand(B, T, generator=gen) < 0.3
        resets[0, 1] = True
        resets = resets.to(device)
    H = ref.hidden_size
    gy = torch.randn(B, T, H, generator=gen, dtype=torch.float64).to(device)
    gs = [
        torch.randn(B, H, generator=gen, dtype=torch.float64).to(device) for _ in ref.state_spec()
    ]

    y_r, s_r, g_r = _run_and_grad(ref, x, state64, resets, "reference", gy, gs)
    state_lp = tuple(s.to(dtype) for s in state64) if state64 is not None else None
    y_t, s_t, g_t = _run_and_grad(cell, x.to(dtype), state_lp, resets, "triton", gy, gs)

    tol = TOL[dtype]
    errors = {"y": rel_rms(y_t, y_r)}
    for f, a, b in zip(ref.state_spec(), s_t, s_r, strict=True):
        errors[f"final.{f.name}"] = rel_rms(a, b)
    for k in g_r:
        errors[f"grad.{k}"] = rel_rms(g_t[k], g_r[k])
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{name} {dtype}: errors above {tol:.0e}: {bad}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("name", list(CELLS))
def test_matches_reference(name: str, heads: int, dtype: torch.dtype, device: str) -> None:
    """Odd batch and length, head dim 16; initial state and resets; values and gradients."""
    dev = _device(device)
    torch.manual_seed(1)
    cell, ref = _make(name, 16 * heads, heads, dtype, dev)
    _compare(name, cell, ref, 3, 5, dtype, dev, with_state=True, with_resets=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CELLS))
def test_zero_state_no_resets(name: str, device: str) -> None:
    """Default (zero) initial state and no resets: the other kernel specialisation."""
    dev = _device(device)
    torch.manual_seed(2)
    cell, ref = _make(name, 32, 2, torch.float32, dev)
    _compare(name, cell, ref, 3, 5, torch.float32, dev, with_state=False, with_resets=False)


@pytest.mark.parametrize("device", DEVICES)
def test_padded_head_dim_and_no_bias(device: str) -> None:
    """A head width that is not a power of two (padded to 32 with masks) and bias=False."""
    dev = _device(device)
    torch.manual_seed(3)
    cell = GRU(7, 40, heads=2, bias=False).to(dev)
    ref = GRU(7, 40, heads=2, bias=False).to(device=dev, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    _compare("gru", cell, ref, 3, 4, torch.float32, dev, with_state=True, with_resets=False)


CUDA_SHAPES = [(24, 32), (12, 64), (6, 128), (3, 256)]  # (heads, head_dim), H = 768


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("heads", "head_dim"), CUDA_SHAPES)
@pytest.mark.parametrize("name", ["lstm", "gru", "slstm", "elman"])
def test_cuda_large(name: str, heads: int, head_dim: int) -> None:
    """B=16, T=64, H=768 in several head splits, bf16 (and fp32 at head dim 64)."""
    from rnnkit.kernels.gated.triton import max_head_dim

    if head_dim > max_head_dim(name, torch.bfloat16):
        pytest.skip(f"{name}: head_dim {head_dim} does not fit on-chip (supports says why)")
    dev = torch.device("cuda")
    dtypes = [torch.bfloat16] + ([torch.float32] if head_dim == 64 else [])
    for dtype in dtypes:
        torch.manual_seed(4)
        cell, ref = _make(name, heads * head_dim, heads, dtype, dev)
        with torch.no_grad():  # each head's block: spectral radius about 0.6, R still matters
            cell.recurrent.uniform_(-(head_dim**-0.5), head_dim**-0.5)
        ref.load_state_dict({k: v.to(torch.float64) for k, v in cell.state_dict().items()})
        _compare(name, cell, ref, 16, 64, dtype, dev, with_state=True, with_resets=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["lstm", "gru", "slstm", "elman"])
def test_varlen_matches_per_sequence_reference(name: str, device: str) -> None:
    """Packed sequences (one empty) equal running each sequence alone, values and grads."""
    dev = _device(device)
    torch.manual_seed(5)
    cell, ref = _make(name, 32, 2, torch.float32, dev)
    lens = [3, 0, 5, 1]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=dev)
    total = sum(lens)
    x = torch.randn(total, 7, dtype=torch.float64, device=dev)
    state64 = _random_state(ref, len(lens), dev)
    gy = torch.randn(total, ref.hidden_size, dtype=torch.float64, device=dev)
    gs = [torch.randn(len(lens), ref.hidden_size, dtype=torch.float64, device=dev) for _ in state64]

    # reference: one sequence at a time
    xr = x.clone().requires_grad_(True)
    sr = tuple(s.clone().requires_grad_(True) for s in state64)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    for i, L in enumerate(lens):
        si = tuple(s[i : i + 1] for s in sr)
        if L == 0:
            fin = si
        else:
            yi, fin = ref(xr[cu[i] : cu[i + 1]][None], si, backend="reference")
            loss = loss + (yi[0] * gy[cu[i] : cu[i + 1]]).sum()
        loss = loss + sum((f[0] * g[i]).sum() for f, g in zip(fin, gs, strict=True))
    ref_grads = torch.autograd.grad(loss, [xr, *sr, *ref.parameters()])

    xt = x.float().requires_grad_(True)
    st = tuple(s.float().requires_grad_(True) for s in state64)
    px = cell.project(xt)
    y, fin = triton_gated_varlen(
        name.split("_")[0],
        px,
        cell.recurrent,
        st,
        cu,
        max_seqlen=max(lens),
        bias_hn=getattr(cell, "bias_hn", None),
    )
    loss_t = (y.double() * gy).sum() + sum(
        (f.double() * g).sum() for f, g in zip(fin, gs, strict=True)
    )
    tri_grads = torch.autograd.grad(loss_t, [xt, *st, *cell.parameters()])
    for i, (a, b) in enumerate(zip(tri_grads, ref_grads, strict=True)):
        assert rel_rms(a, b) <= 1e-5, f"{name} varlen gradient {i}: {rel_rms(a, b):.2e}"


def _call(cell: GatedCell, x: Tensor) -> KernelCall:
    return KernelCall(cell, x, None, None, needs_grad=False)


def test_registration_and_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """One kernel per cell kind; unsupported calls say why; auto never picks the interpreter."""
    ks = {k.target: k for k in kernels()}
    assert set(ks) == {"elman", "lstm", "gru", "slstm"}
    assert all(k.backend == "triton" for k in ks.values())
    cell = LSTM(4, 8)
    x = torch.randn(2, 3, 4)
    assert select(_call(cell, x), "auto").backend != "triton"  # CPU: never the interpreter
    # the shape and dtype reasons are checked where the kernels can run: CUDA, else the interpreter
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    too_wide = LSTM(4, 300).to(dev)
    reason = ks["lstm"].supports(_call(too_wide, torch.randn(2, 3, 4, device=dev)))
    assert reason is not None
    assert "1..64" in reason
    with pytest.raises(BackendUnavailableError, match=r"1\.\.64"):
        too_wide(torch.randn(2, 3, 4, device=dev), backend="triton")
    fp64 = LSTM(4, 8).double().to(dev)
    x64 = torch.randn(2, 3, 4, device=dev).double()
    assert "float64" in (ks["lstm"].supports(_call(fp64, x64)) or "")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = ks["lstm"].supports(_call(cell, x))
    assert reason is not None
    assert "CUDA" in reason
    if not torch.cuda.is_available():
        assert "no CUDA device" in (ks["lstm"].available() or "")


def test_cell_codes_mirrored_in_kernels() -> None:
    """Every cell code the launchers pass has a same-valued constexpr in the Triton program."""
    from rnnkit.kernels.gated.triton import _kernels
    from rnnkit.kernels.gated.triton.ops import CELLS, CellCode

    for code in CellCode:
        assert getattr(_kernels, code.name).value == int(code)
    assert sorted(spec.code for spec in CELLS.values()) == list(CellCode)
