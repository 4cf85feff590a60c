"""Structural forms a cell can declare; kernels target forms rather than classes."""

from __future__ import annotations

from enum import StrEnum


class Form(StrEnum):
    """The structural forms of the cell ABI (docs/cell-abi.md, section 4).

    A cell lists the forms it has in ``Cell.forms``; a kernel registered for a form can run
    every cell that declares it.
    """

    #: ``g = px_t + R h_{t-1}`` then a pointwise gate function; ``R`` block-diagonal over heads.
    GATED = "gated"
    #: ``h_t = a_t * h_{t-1} + b_t`` (real or complex).
    DIAGONAL_LINEAR = "diagonal_linear"
    #: nonlinear, with ``dh_t / dh_{t-1}`` diagonal or 2x2 block-diagonal.
    DIAGONAL_JACOBIAN = "diagonal_jacobian"
    #: ``h_t = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t^T`` over a ``(channels, N)`` state with
    #: input-dependent ``dt, B, C``, read out as ``y_t = h_t C_t + D x_t`` (Mamba-1).
    SELECTIVE_DIAGONAL = "selective_diagonal"
    #: ``S_t = A_t(S_{t-1}) + k_t v_t^T``-type updates read out by queries.
    MATRIX_STATE = "matrix_state"
