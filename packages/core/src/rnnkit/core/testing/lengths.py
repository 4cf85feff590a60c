"""The body of the ``lengths`` conformance check (registered in :mod:`.checks`): a right-padded
batch with ``lengths`` equals running each sequence alone, on every backend that can run the
cell (docs/cell-abi.md, sections 3 and 6)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.testing.numerics import assert_close, tolerance
from rnnkit.core.testing.report import CheckReport

#: Unsorted, with a tie, an empty sequence and one of full length (``T = 7``).
LENGTHS = (4, 7, 0, 2, 4)


def _run(
    cell: Cell[Any],
    x: Tensor,
    state: tuple[Tensor, ...] | None,
    resets: Tensor | None,
    dy: Tensor,
    dstate: tuple[Tensor, ...],
    **kwargs: Any,
) -> tuple[Tensor, tuple[Tensor, ...], dict[str, Tensor]]:
    """Forward with random cotangents, backward; returns ``y``, the final state and the
    gradients of ``x``, every initial-state field and every parameter (float64, CPU)."""
    x = x.detach().clone().requires_grad_(True)
    leaves = None
    if state is not None:
        leaves = cell.state_type._make(s.detach().clone().requires_grad_(True) for s in state)
    y, final = cell(x, leaves, resets=resets, **kwargs)
    loss = (y * dy).real.sum() if y.is_complex() else (y * dy).sum()
    for s, ds in zip(final, dstate, strict=True):
        loss = loss + ((s * ds).real.sum() if s.is_complex() else (s * ds).sum())
    cell.zero_grad(set_to_none=True)
    if loss.requires_grad:  # not for an empty sequence from a constant init_state
        loss.backward()

    def grad(t: Tensor) -> Tensor:
        return _real(t.grad if t.grad is not None else torch.zeros_like(t))

    grads = {"x": grad(x)}
    if leaves is not None:
        grads.update({f"state.{n}": grad(s) for n, s in zip(leaves._fields, leaves, strict=True)})
    grads.update({f"param.{n}": grad(p) for n, p in cell.named_parameters()})
    return y.detach(), tuple(s.detach() for s in final), grads


def check_lengths_on(cell: Cell[Any], p: Any, report: CheckReport | None = None) -> None:
    """The ``lengths`` check (:func:`rnnkit.core.testing.checks.check_lengths`) on a float64
    ``cell`` and a problem ``p`` from ``make_problem`` with batch ``len(LENGTHS)``, ``T = 7``;
    what ran and what was skipped goes to ``report``."""
    lengths = torch.tensor(LENGTHS)
    fields = tuple(cell.state_type._fields)
    for use_state, use_resets in ((True, False), (False, True)):
        state = p.state if use_state else None
        resets = p.resets if use_resets else None
        # the oracle: each sequence alone, parameter gradients summed over the sequences;
        # without a state each starts from init_state (a learnable one has gradients)
        want_y = torch.zeros_like(p.dy)
        want_final: list[list[Tensor]] = [[] for _ in fields]
        want_grads: dict[str, Tensor] = {"x": torch.zeros_like(p.x)}
        if state is not None:
            want_grads.update(
                {
                    f"state.{n}": _real(torch.zeros_like(s))
                    for n, s in zip(fields, state, strict=True)
                }
            )
        for b, n in enumerate(LENGTHS):
            y_b, final_b, grads_b = _run(
                cell,
                p.x[b : b + 1, :n],
                None if state is None else tuple(s[b : b + 1] for s in state),
                None if resets is None else resets[b : b + 1, :n],
                p.dy[b : b + 1, :n],
                tuple(ds[b : b + 1] for ds in p.dstate),
                backend="reference",
            )
            want_y[b, :n] = y_b[0]
            for k, s in enumerate(final_b):
                want_final[k].append(s)
            want_grads["x"][b, :n] = grads_b["x"][0]
            for key, g in grads_b.items():
                if key.startswith("param."):
                    want_grads[key] = want_grads[key] + g if key in want_grads else g
                elif key.startswith("state.") and use_state:
                    want_grads[key][b] = g[0]
        finals = [torch.cat(parts, 0) for parts in want_final]
        for dtype in (torch.float64, torch.float32):
            probe = copy.deepcopy(cell).to(dtype)
            x = p.x.to(dtype)
            call_state = None
            if state is not None:
                dtypes = state_dtypes(cell, dtype)
                call_state = tuple(s.to(d) for s, d in zip(state, dtypes, strict=True))
            config = f"{str(dtype).removeprefix('torch.')} state={use_state} resets={use_resets}"
            tol = tolerance(dtype)
            want = (want_y, dict(zip(fields, finals, strict=True)))
            for needs_grad in (True, False):
                # without gradients kernels may take another path (see check_backends)
                call = KernelCall(probe, x, call_state, resets, needs_grad, lengths)
                suffix = "" if needs_grad else " no grad"
                for kernel in kernels_for(probe):
                    reason = kernel.why_not(call)
                    if reason is not None:
                        if report is not None:
                            report.add_skip(kernel.backend, reason, config + suffix)
                        continue
                    if report is not None:
                        report.add_run(kernel.backend, config + suffix)
                    label = (
                        f"lengths={list(LENGTHS)}, backend={kernel.backend} {dtype} "
                        f"state={use_state} resets={use_resets}{suffix}"
                    )
                    if not needs_grad:
                        with torch.no_grad():
                            y, final = probe(
                                x,
                                None if call_state is None else probe.state_type._make(call_state),
                                resets=resets,
                                backend=kernel.backend,
                                lengths=lengths,
                            )
                        _check_values(label, y, tuple(final), want, tol)
                        continue
                    got_y, got_final, got_grads = _run(
                        probe,
                        x,
                        call_state,
                        resets,
                        p.dy,
                        p.dstate,
                        backend=kernel.backend,
                        lengths=lengths,
                    )
                    _check_values(label, got_y, got_final, want, tol)
                    for key, g in want_grads.items():
                        _close(f"{label}: grad {key}", got_grads[key], g, tol)


def _check_values(
    label: str,
    y: Tensor,
    final: tuple[Tensor, ...],
    want: tuple[Tensor, dict[str, Tensor]],
    tol: float,
) -> None:
    """``y`` is zero past the lengths and close to ``want[0]`` on the valid steps; every final
    state field is close to ``want[1]``'s."""
    want_y, want_final = want
    lengths = torch.tensor(LENGTHS)
    pad = torch.arange(y.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
    assert not y[pad].any(), f"{label}: y is not zero past the lengths"
    _close(f"{label}: y", y, want_y, tol)
    for (name, w), a in zip(want_final.items(), final, strict=True):
        _close(f"{label}: final state.{name}", a, w, tol)


def _real(t: Tensor) -> Tensor:
    """A detached float64 (or complex128) CPU copy."""
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64).cpu()


def _close(name: str, got: Tensor, want: Tensor, tol: float) -> None:
    """:func:`assert_close` on the finite entries of ``want``; the others (an initial state of
    ``-inf`` kept by an empty sequence) must be equal."""
    got = _real(got)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite entries differ"
    assert torch.equal(got[~finite], want[~finite]), f"{name}: non-finite entries differ"
    assert_close(name, got[finite], want[finite], tol)


def state_dtypes(cell: Cell[Any], dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """The dtype of each state field when ``cell`` computes in ``dtype``: its ``state_spec``'s
    (a complex field stays complex, a field of fixed dtype keeps it)."""
    return tuple(field.resolve_dtype(dtype) for field in cell.state_spec())
