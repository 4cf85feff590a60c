"""Newton solves for nonlinear recurrences with diagonal or 2x2 block-diagonal Jacobians.

:func:`newton_solve` is the solver, :func:`kernels` registers it for every cell of the
diagonal-Jacobian form as the ``newton`` backend, :func:`last_solve_info` reports the last
solve (iterations, residual), :func:`newton_options` sets the tolerance, iteration cap and
tile length.
See ``docs/kernels-newton.md``.

**Reference.** The ``newton`` backend is tested against :data:`REFERENCE`, the generic loop over
``Cell.recur`` (:func:`rnnkit.core.reference.reference_forward`), which is also what it falls
back to when a solve does not converge; :func:`block2_scan_sequential` is the step loop the 2x2
block scan is tested against. ``tests/test_form_newton.py`` pits every backend of the form
against :data:`REFERENCE` on odd shapes, gradients included.
"""

from __future__ import annotations

from rnnkit.core.reference import reference_forward as REFERENCE
from rnnkit.kernels.newton._block import block2_scan, block2_scan_sequential
from rnnkit.kernels.newton._kernel import (
    failed_before,
    forget_failures,
    iterations_before,
    newton_forward,
)
from rnnkit.kernels.newton._register import auto_work, kernels
from rnnkit.kernels.newton._solve import (
    DEFAULT_MAX_ITERS,
    DEFAULT_TOL,
    TILE_ELEMENTS,
    SolveInfo,
    last_solve_info,
    newton_options,
    newton_solve,
)

__all__ = [
    "DEFAULT_MAX_ITERS",
    "DEFAULT_TOL",
    "REFERENCE",
    "TILE_ELEMENTS",
    "SolveInfo",
    "auto_work",
    "block2_scan",
    "block2_scan_sequential",
    "failed_before",
    "forget_failures",
    "iterations_before",
    "kernels",
    "last_solve_info",
    "newton_forward",
    "newton_options",
    "newton_solve",
]
