"""One comparison for the float64 oracles of ``test_oracles_*.py``: a cell against a loop written
from its equations, in value (outputs and final state) and in every gradient.

The oracle is a function of the cell's parameters (cloned, as leaves of their own graph), the
input, the initial state's fields (or ``None``) and the resets; it never calls the cell. Both
sides are differentiated on the same loss, a fixed random weighting of the outputs and of the
final state as :func:`check` is told to read it (``final``: the fields by default; a cell whose
state has a scaled representation reads the unscaled quantities the oracle tracks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.testing.numerics import rel_rms

#: ``(params, x, initial fields or None, resets or None) -> (y, final quantities)``.
Oracle = Callable[
    [dict[str, Tensor], Tensor, Sequence[Tensor] | None, Tensor | None],
    tuple[Tensor, Sequence[Tensor]],
]
F64 = torch.float64


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _weighted(ts: Sequence[Tensor], gen: torch.Generator) -> Tensor:
    total = torch.zeros((), dtype=F64)
    for t in ts:
        r = _real(t)
        total = total + (r * torch.randn(r.shape, generator=gen, dtype=F64)).sum()
    return total


def check(
    cell: Cell[Any],
    oracle: Oracle,
    x: Tensor,
    *,
    backend: str = "reference",
    initial: Sequence[Tensor] | None = None,
    resets: Tensor | None = None,
    final: Callable[[Any], Sequence[Tensor]] = tuple,
    tol: float = 1e-10,
) -> dict[str, float]:
    """Assert the float64 ``cell`` on ``backend`` equals ``oracle``: ``y``, the final state and
    the gradients of ``x``, of the initial state's fields and of every parameter, each by
    relative RMS ``<= tol``. Every gradient must be nonzero (a loss the parameter does not
    reach checks nothing; an empty parameter is skipped). Returns the errors by name."""
    # a parameter with no entries (a part a configuration leaves out) has nothing to check
    names = [n for n, p in cell.named_parameters() if p.numel() > 0]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    x_c, x_o = (x.detach().clone().requires_grad_(True) for _ in range(2))
    s_c = [s.detach().clone().requires_grad_(True) for s in initial or ()]
    s_o = [s.detach().clone().requires_grad_(True) for s in initial or ()]
    state = cell.state_type(*s_c) if initial is not None else None
    y, last = cell(x_c, state, backend=backend, resets=resets)
    want_y, want_final = oracle(params, x_o, s_o if initial is not None else None, resets)
    got_final = list(final(last))
    errs = {"y": rel_rms(y, want_y)}
    for i, (got, want) in enumerate(zip(got_final, want_final, strict=True)):
        errs[f"final[{i}]"] = rel_rms(got, want)
    loss_c = _weighted([y, *got_final], torch.Generator().manual_seed(7))
    loss_o = _weighted([want_y, *want_final], torch.Generator().manual_seed(7))
    leaves_c = [x_c, *s_c, *(dict(cell.named_parameters())[n] for n in names)]
    leaves_o = [x_o, *s_o, *(params[n] for n in names)]
    labels = ["x", *(f"initial[{i}]" for i in range(len(s_c))), *names]
    # allow_unused: a leaf a side does not reach is None (typed as a Tensor by torch)
    got_g: Sequence[Tensor | None] = torch.autograd.grad(loss_c, leaves_c, allow_unused=True)
    want_g: Sequence[Tensor | None] = torch.autograd.grad(loss_o, leaves_o, allow_unused=True)
    for label, g, w in zip(labels, got_g, want_g, strict=True):
        assert w is not None and bool(w.abs().sum() > 0), f"the oracle's loss misses {label}"
        assert g is not None, f"the cell's loss misses {label}"
        errs[f"d/d{label}"] = rel_rms(g, w)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= tol}
    assert not bad, f"{cell.kind} ({backend}) vs its oracle: {bad}"
    return errs
