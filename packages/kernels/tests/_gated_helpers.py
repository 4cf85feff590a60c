"""Shared helpers of the fused and torch-native backend tests: build cells, run a backend and
collect outputs, final state and every gradient, compare against a float64 reference run."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman

try:
    from rnnkit.core.testing.numerics import rel_rms
except ImportError:  # the core test kit is optional for these tests

    def rel_rms(actual: Tensor, expected: Tensor) -> float:
        """``rms(actual - expected) / rms(expected)`` in float64."""
        a, e = actual.detach().double(), expected.detach().double()
        if not torch.isfinite(a).all():
            return float("inf")
        scale = e.square().mean().sqrt().item()
        diff = (a - e).square().mean().sqrt().item()
        return diff / scale if scale > 0 else diff


B, T, IN, H = 3, 7, 5, 6
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
KINDS = ("elman", "relu", "lstm", "gru", "slstm")


def make_cell(
    kind: str,
    heads: int,
    *,
    bias: bool = True,
    seed: int = 0,
    inputs: int = IN,
    hidden: int = H,
) -> Any:
    """A float64 cell of ``kind`` (``"relu"`` is the ReLU Elman) with ``(I, H) = (inputs,
    hidden)``, by default ``(5, 6)``."""
    torch.manual_seed(seed)
    kw: dict[str, Any] = {"heads": heads, "bias": bias, "dtype": torch.float64}
    if kind in ("elman", "relu"):
        return Elman(inputs, hidden, nonlinearity="relu" if kind == "relu" else "tanh", **kw)
    cls = {"lstm": LSTM, "gru": GRU, "slstm": SLSTM}[kind]
    return cls(inputs, hidden, **kw)


def make_inputs(
    cell: Any, *, batch: int = B, time: int = T, state: bool, resets: bool, seed: int = 1
) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None, list[Tensor]]:
    """``x (B, T, I)``, an initial state or ``None``, resets or ``None``, and cotangents for
    ``y`` and every final-state field (all float64)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=dt)

    x = rnd(batch, time, cell.input_size)
    st: tuple[Tensor, ...] | None = None
    if state:
        fields = [rnd(batch, cell.hidden_size) for _ in cell.state_spec()]
        if cell.kind == "slstm":
            # n must be positive where something accumulated; a few exact zeros exercise the
            # "fresh" branch (m restarts from ĩ) element by element.
            n = torch.rand(batch, cell.hidden_size, generator=g, dtype=dt) + 0.5
            n[0, :2] = 0.0
            fields[1][0, :2] = 0.0
            fields[2] = n
        st = tuple(fields)
    rs = None
    if resets:
        rs = torch.rand(batch, time, generator=g) < 0.3
        rs[0, time // 2] = True
    cot = [rnd(batch, time, cell.hidden_size)]
    cot += [rnd(batch, cell.hidden_size) for _ in cell.state_spec()]
    return x, st, rs, cot


def run_all(
    cell: Any,
    backend: str,
    x: Tensor,
    state: Sequence[Tensor] | None,
    resets: Tensor | None,
    cot: Sequence[Tensor],
    lengths: Sequence[int] | None = None,
) -> dict[str, Tensor | None]:
    """Outputs, final state and the gradients of x, every parameter and every state field
    (of a right-padded batch when ``lengths`` are given)."""
    x = x.detach().clone().requires_grad_()
    st = None if state is None else tuple(s.detach().clone().requires_grad_() for s in state)
    y, final = cell(x, st, backend=backend, resets=resets, lengths=lengths)
    assert y.shape == (x.shape[0], x.shape[1], cell.hidden_size)
    assert isinstance(final, cell.state_type)
    loss = (y * cot[0].to(y.dtype)).sum()
    for f, c in zip(final, cot[1:], strict=True):
        loss = loss + (f * c.to(f.dtype)).sum()
    names = ["x", *(n for n, _ in cell.named_parameters())]
    inputs = [x, *cell.parameters()]
    if st is not None:
        names += [f"state.{f.name}" for f in cell.state_spec()]
        inputs += list(st)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    out: dict[str, Tensor | None] = {"y": y.detach()}
    out.update({f"final.{k}": v.detach() for k, v in final._asdict().items()})
    out.update({f"grad.{n}": g for n, g in zip(names, grads, strict=True)})
    return out


def compare(
    cell64: Any,
    backend: str,
    dtype: torch.dtype,
    x: Tensor,
    state: Sequence[Tensor] | None,
    resets: Tensor | None,
    cot: Sequence[Tensor],
) -> None:
    """Assert ``backend`` in ``dtype`` equals ``reference`` in float64 within ``TOL[dtype]``."""
    expected = run_all(cell64, "reference", x, state, resets, cot)
    cell = copy.deepcopy(cell64).to(dtype)
    st = None if state is None else [s.to(dtype) for s in state]
    actual = run_all(cell, backend, x.to(dtype), st, resets, cot)
    assert actual.keys() == expected.keys()
    errors = []
    for name, exp in expected.items():
        act = actual[name]
        if exp is None or act is None:
            # Unused inputs must be unused by both (or zero where one returns a tensor).
            other = act if exp is None else exp
            if other is not None and other.abs().max().item() > 0:
                errors.append(f"{name}: None vs nonzero")
            continue
        assert act.dtype == dtype, f"{name} has dtype {act.dtype}"
        err = rel_rms(act, exp)
        if not err <= TOL[dtype]:
            errors.append(f"{name}: {err:.2e}")
    assert not errors, f"{backend} vs reference ({dtype}): " + ", ".join(errors)
