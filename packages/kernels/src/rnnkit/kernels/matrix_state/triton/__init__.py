"""The ``chunked_triton`` backend of the matrix-state form: the ``chunked`` backend's algorithm
(the gated delta rule or gated linear attention over chunks in the WY/UT form; the algebra is
in ``matrix_state/chunked.py``) as Triton kernels (``_kernels.py``). The forward is three: the
intra-chunk pieces, the sequential carry of the memory across chunks, the read-outs. The
backward (:class:`TritonChunks`) is the ``chunked`` backend's written backward as three more:
from the saved inputs and the memory entering each chunk (the forward keeps nothing else), the
intra-chunk pieces recomputed, the parts of the reverse step that need no memory gradient, the
reverse pass over the chunks carrying the memory's gradient, and every input's gradient per
chunk (the solve's adjoint included; the decays' gradients formed in float64, as in
``chunked``).

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, how
the tests run it without a GPU; there it is far slower than ``chunked`` and ranks
``BELOW_REFERENCE``). float32 and float64; 16-bit inputs run the memory in float32. Head
sizes ``d_k, d_v`` up to :data:`MAX_HEAD_DIM` (padded to a power of two of at least 16);
resets, decays (``log_alpha``) and both rules are supported. :func:`unavailable_reason`
says why it cannot run instead of failing at import. Not yet compiled or timed on a GPU
(``tools/gpu/matrix_state_check.sh`` does both, forward and forward + backward).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from rnnkit.core.cell import fill_restart_refusal
from rnnkit.core.dispatch import Kernel, KernelCall, Priority, ProtocolGap
from rnnkit.core.forms import Form
from rnnkit.core.kernel import is_exporting
from rnnkit.core.matrix_state import MEMORY_RULES, MatrixStateCell
from rnnkit.kernels._triton_runtime import device_reason, interpreted
from rnnkit.kernels.matrix_state.chunked import on_finite_inputs

_kernels: ModuleType | None
try:
    from rnnkit.kernels.matrix_state.triton import _kernels

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken triton install
    _kernels = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

__all__ = [
    "BACKEND",
    "CHUNK",
    "MAX_HEAD_DIM",
    "TritonChunks",
    "delta_rule_triton",
    "kernels",
    "triton_forward",
    "unavailable_reason",
]

#: Backend name (``backend="chunked_triton"``).
BACKEND = "chunked_triton"
#: Tokens per chunk of the registered kernel (a power of two, 16 to 64).
CHUNK = 64
#: Largest head size (``d_k`` and ``d_v``): a chunk's ``(C, d)`` blocks and a program's rows
#: of the memory are held in registers.
MAX_HEAD_DIM = 128
#: The dtypes the kernels compute in (16-bit inputs of the registered kernel run in float32).
COMPUTE_DTYPES = (torch.float32, torch.float64)
#: Value rows of the memory per program of the sequential kernel (more programs to fill a GPU).
BLOCK_V_STATE = 32
#: Value columns of the output per program of the read-out kernel (and of the backward's
#: first kernel).
BLOCK_V_OUT = 64
#: Value columns per step of the backward's gradient kernel's loop over ``d_v``.
BLOCK_V_GRAD = 64


def interpreting() -> bool:
    """Whether the kernels run in Triton's CPU interpreter (decided when they were imported)."""
    return interpreted(None if _kernels is None else _kernels._intra_kernel)


def unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the Triton kernels cannot run (on ``device``), or ``None`` when they can."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    return device_reason(device, interpreting=interpreting(), what="the kernels")


def _k() -> Any:
    if _kernels is None:
        raise RuntimeError(f"{BACKEND}: {_IMPORT_ERROR}")
    return _kernels


def _block(n: int) -> int:
    """``n`` rounded up to a power of two, at least 16 (``tl.dot``'s smallest tile)."""
    return max(16, 1 << (n - 1).bit_length())


class _Plan(NamedTuple):
    """Sizes and flags of one call, shared by the forward's and the backward's launches."""

    BH: int  # batch x heads
    NC: int  # chunks
    C: int  # tokens per chunk
    BK: int  # d_k padded
    BV: int  # d_v padded
    delta: bool
    has_decay: bool
    has_resets: bool


def _plan(k: Tensor, v: Tensor, log_alpha: Tensor | None, rule: str, resets: Tensor | None,
          chunk: int) -> _Plan:  # fmt: skip
    B, n, T, dk = k.shape
    return _Plan(
        B * n, -(-T // chunk), chunk, _block(dk), _block(v.shape[-1]), rule == "delta",
        log_alpha is not None, resets is not None,
    )  # fmt: skip


def _intra(
    pl: _Plan, k: Tensor, v: Tensor, beta: Tensor, la: Tensor, r: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The intra-chunk kernel on contiguous inputs (``la``, ``r``: any tensor where absent):
    the workspaces ``W`` (``k`` itself for the linear rule), ``U``, ``K~`` and the end factors
    (``k`` itself without a decay or resets)."""
    T, dk, dv = k.shape[2], k.shape[-1], v.shape[-1]
    BH, NC, C = pl.BH, pl.NC, pl.C
    has_sd = pl.has_decay or pl.has_resets
    W = k.new_empty((BH, NC * C, dk)) if pl.delta else k
    U = v.new_empty((BH, NC * C, dv))
    Kt = k.new_empty((BH, NC * C, dk))
    sd = k.new_empty((BH, NC)) if has_sd else k
    _k()._intra_kernel[(NC, BH)](
        k, v, beta, la, r, W, U, Kt, sd, T, k.shape[1], dk, dv, NC,
        DELTA=pl.delta, HAS_DECAY=pl.has_decay, HAS_RESETS=pl.has_resets, C=C,
        LOG_C=C.bit_length() - 1, BK=pl.BK, BV=pl.BV, PREC="ieee",
    )  # fmt: skip
    return W, U, Kt, sd


def _launch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    log_alpha: Tensor | None,
    rule: str,
    resets: Tensor | None,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The three kernels on checked, finite inputs (shapes of :func:`delta_rule_triton`,
    ``T > 0``): ``(o, S, S_in)`` with the memories entering each chunk ``S_in: (B n, chunks,
    d_v, d_k)``. The results start as NaN, so a value a kernel does not write shows."""
    n, T, dk = k.shape[1:]
    dv = v.shape[-1]
    pl = _plan(k, v, log_alpha, rule, resets, chunk)
    BH, NC, C = pl.BH, pl.NC, pl.C
    o = torch.full(v.shape, float("nan"), dtype=v.dtype, device=v.device)
    S = torch.full(S0.shape, float("nan"), dtype=S0.dtype, device=S0.device)
    S_in = S0.new_empty((BH, NC, dv, dk))
    if BH == 0:
        return o, S, S_in
    q, k, v, beta, S0 = (t.contiguous() for t in (q, k, v, beta, S0))
    la = log_alpha.contiguous() if log_alpha is not None else beta
    r = resets.to(torch.int8).contiguous() if resets is not None else beta
    W, U, Kt, sd = _intra(pl, k, v, beta, la, r)
    bvs, bvo = min(pl.BV, BLOCK_V_STATE), min(pl.BV, BLOCK_V_OUT)
    kern = _k()
    kern._state_kernel[(BH, -(-dv // bvs))](
        W, U, Kt, sd, S0, S_in, S, dk, dv, NC,
        DELTA=pl.delta, HAS_SD=pl.has_decay or pl.has_resets, C=C, BK=pl.BK, BVS=bvs,
        PREC="ieee",
    )  # fmt: skip
    kern._out_kernel[(NC, BH, -(-dv // bvo))](
        q, k, la, r, U, S_in, o, T, n, dk, dv, NC,
        HAS_DECAY=pl.has_decay, HAS_RESETS=pl.has_resets, C=C, BK=pl.BK, BVO=bvo,
        PREC="ieee",
    )  # fmt: skip
    return o, S, S_in


def _launch_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None,
    resets: Tensor | None,
    S_in: Tensor,
    do: Tensor,
    dS: Tensor,
    rule: str,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The backward's kernels (``_kernels.py``) from the saved inputs and entering memories
    ``S_in`` and the gradients of ``o`` and of the final memory: the gradients of ``q, k, v,
    beta, S0, log_alpha`` (``None`` without a decay). Results start as NaN."""
    B, n, T, dk = k.shape
    dv = v.shape[-1]
    pl = _plan(k, v, log_alpha, rule, resets, chunk)
    BH, NC, C = pl.BH, pl.NC, pl.C

    def nans(t: Tensor) -> Tensor:
        return torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device)

    dq, dk_, dv_, dbeta = nans(q), nans(k), nans(v), nans(beta)
    dS0 = dS.new_full((B, n, dv, dk), float("nan"))
    dla = None if log_alpha is None else nans(log_alpha)
    if BH == 0:
        return dq, dk_, dv_, dbeta, dS0, dla
    q, k, v, beta, do, dS = (t.contiguous() for t in (q, k, v, beta, do, dS))
    la = log_alpha.contiguous() if log_alpha is not None else beta
    r = resets.to(torch.int8).contiguous() if resets is not None else beta
    W, U, Kt, sd = _intra(pl, k, v, beta, la, r)
    dU = v.new_empty((BH, NC * C, dv))  # P^T dO, then dU~
    dSo = S_in.new_empty(S_in.shape)  # dO^T Q_in, then each chunk's outgoing dS
    bvs, bvo = min(pl.BV, BLOCK_V_STATE), min(pl.BV, BLOCK_V_OUT)
    flags = {"HAS_RESETS": pl.has_resets, "C": C, "BK": pl.BK, "PREC": "ieee"}
    kern = _k()
    kern._bwd_prep_kernel[(NC, BH, -(-dv // bvo))](
        q, k, la, r, do, W, U, S_in, dU, dSo, T, n, dk, dv, NC,
        DELTA=pl.delta, HAS_DECAY=pl.has_decay, BVO=bvo, **flags,
    )  # fmt: skip
    kern._bwd_state_kernel[(BH, -(-dv // bvs))](
        W, Kt, sd, dU, dSo, dS, dS0, dk, dv, NC,
        DELTA=pl.delta, HAS_SD=pl.has_decay or pl.has_resets, C=C, BK=pl.BK, BVS=bvs,
        PREC="ieee",
    )  # fmt: skip
    kern._bwd_grad_kernel[(NC, BH)](
        q, k, v, beta, la, r, do, U, dU, S_in, dSo,
        dq, dk_, dv_, dbeta, la if dla is None else dla, T, n, dk, dv, NC,
        DELTA=pl.delta, HAS_DECAY=pl.has_decay, LOG_C=C.bit_length() - 1,
        BVB=min(pl.BV, BLOCK_V_GRAD), **flags,
    )  # fmt: skip
    return dq, dk_, dv_, dbeta, dS0, dla


class TritonChunks(torch.autograd.Function):
    """``(o, S)`` of the chunked recurrence by the Triton kernels, with a Triton backward: the
    forward saves the inputs and the memory entering each chunk (``O(T / C d_k d_v)`` per
    head), the backward recomputes the intra-chunk pieces from them (the ``chunked``
    backend's written backward, as kernels). Arguments as :func:`delta_rule_triton`,
    positional, all finite."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        S0: Tensor,
        log_alpha: Tensor | None,
        rule: str,
        resets: Tensor | None,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        o, S, S_in = _launch(q, k, v, beta, S0, log_alpha, rule, resets, chunk)
        # save_for_backward takes None for an absent tensor (torch's annotation says Tensor)
        ctx.save_for_backward(q, k, v, beta, log_alpha, resets, S_in)  # type: ignore[arg-type]
        ctx.rule, ctx.chunk = rule, chunk  # type: ignore[attr-defined]
        return o, S

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, do: Tensor, dS: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, beta, log_alpha, resets, S_in = ctx.saved_tensors
        dq, dk, dv, dbeta, dS0, dla = _launch_backward(
            q, k, v, beta, log_alpha, resets, S_in, do, dS, ctx.rule, ctx.chunk
        )
        return dq, dk, dv, dbeta, dS0, dla, None, None, None


def _check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    log_alpha: Tensor | None,
    rule: str,
    chunk: int,
) -> None:
    if rule not in MEMORY_RULES:
        raise ValueError(f"rule must be 'delta' or 'linear', got {rule!r}")
    if chunk not in (16, 32, 64):
        raise ValueError(f"{BACKEND}: chunk must be 16, 32 or 64, got {chunk}")
    reason = unavailable_reason(q.device)
    if reason is not None:
        raise RuntimeError(f"{BACKEND}: {reason}")
    tensors = [q, k, v, beta, S0, *([] if log_alpha is None else [log_alpha])]
    if q.dtype not in COMPUTE_DTYPES or any(t.dtype != q.dtype for t in tensors):
        dtypes = sorted({str(t.dtype) for t in tensors})
        raise TypeError(
            f"{BACKEND}: float32 or float64 inputs of one dtype expected, got {dtypes} "
            "(the `chunked` backend runs any dtype)"
        )
    dk, dv = k.shape[-1], v.shape[-1]
    if not (1 <= dk <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
        raise ValueError(
            f"{BACKEND}: head sizes d_k={dk}, d_v={dv} outside 1..{MAX_HEAD_DIM} "
            "(the `chunked` backend runs any size)"
        )


def delta_rule_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    *,
    log_alpha: Tensor | None = None,
    rule: str = "delta",
    resets: Tensor | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`~rnnkit.kernels.matrix_state.chunked.delta_rule_chunked` with the forward in
    Triton: ``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``
    (``rule="delta"``) or ``alpha_t S_{t-1} + beta_t v_t k_t^T`` (``"linear"``),
    ``o_t = S_t q_t``, ``S`` reset to zero entering every step where ``resets`` is true.

    Args:
        q: ``(B, n, T, d_k)`` queries.
        k: ``(B, n, T, d_k)`` keys.
        v: ``(B, n, T, d_v)`` values.
        beta: ``(B, n, T)`` write strengths.
        S0: ``(B, n, d_v, d_k)`` memory entering step 0.
        log_alpha: optional ``(B, n, T)`` log decays, ``<= 0`` (``-inf``: alpha = 0).
        rule: ``"delta"`` or ``"linear"``.
        resets: optional bool ``(B, T)``.
        chunk: tokens per chunk, 16, 32 or 64 (``None``: :data:`CHUNK`).

    Returns:
        ``(o, S)``: outputs ``(B, n, T, d_v)`` and the memory after the last step, of the
        inputs' dtype. Non-finite inputs spoil what they spoil in the step recurrence (the
        ``chunked`` backend's masks), never earlier tokens of their chunk.

    Raises:
        RuntimeError: the kernels cannot run here (the message says why).
        TypeError: the inputs are not all float32 or all float64.
        ValueError: a bad ``rule`` or ``chunk``, or a head size above :data:`MAX_HEAD_DIM`.
    """
    chunk = CHUNK if chunk is None else chunk
    _check(q, k, v, beta, S0, log_alpha, rule, chunk)
    if q.shape[2] == 0:
        return v.new_empty(v.shape), S0
    return on_finite_inputs(_triton_chunks, q, k, v, beta, S0, log_alpha, rule, resets, chunk)


def _triton_chunks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    S0: Tensor,
    log_alpha: Tensor | None,
    rule: str,
    resets: Tensor | None,
    chunk: int,
) -> tuple[Tensor, Tensor]:
    out: tuple[Tensor, Tensor] = TritonChunks.apply(  # type: ignore[no-untyped-call]
        q, k, v, beta, S0, log_alpha, rule, resets, chunk
    )
    return out


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def triton_forward(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run a :class:`~rnnkit.core.matrix_state.MatrixStateCell` call: the cell's
    :meth:`memory_inputs`, :func:`delta_rule_triton` with :data:`CHUNK`, then the cell's
    :meth:`memory_outputs` (``y: (B, T, output_size)``). Half-precision inputs run the
    memory in float32."""
    cell = call.cell
    if not isinstance(cell, MatrixStateCell):
        raise TypeError(f"{BACKEND} runs matrix-state cells, got {type(cell).__name__}")
    x = call.x
    inputs = cell.memory_inputs(x, call.state, call.resets)
    q, k, v, beta, S0 = inputs.q, inputs.k, inputs.v, inputs.beta, inputs.S0
    if x.shape[1] == 0:
        return cell.memory_outputs(v, S0, inputs)
    work = _work_dtype(x.dtype)
    la = inputs.log_alpha
    o, S = delta_rule_triton(
        q.to(work), k.to(work), v.to(work), beta.to(work), S0.to(work),
        log_alpha=None if la is None else la.to(work),
        rule=cell.rule, resets=call.resets, chunk=CHUNK,
    )  # fmt: skip
    return cell.memory_outputs(o.to(x.dtype), S.to(S0.dtype), inputs)


def _supports(call: KernelCall) -> str | None:
    cell = call.cell
    if not isinstance(cell, MatrixStateCell):
        return ProtocolGap(
            f"{type(cell).__name__} declares the matrix-state form but is not a "
            "MatrixStateCell (the kernel needs its memory_inputs() and memory_outputs())"
        )
    x = call.x
    reason = unavailable_reason(x.device) or fill_restart_refusal(call, "reference")
    if reason is not None:
        return reason
    if _work_dtype(x.dtype) not in COMPUTE_DTYPES:
        return f"dtype {x.dtype} is not supported (floating point only; `chunked` runs it)"
    if x.shape[0] == 0 or x.shape[1] == 0:
        return None
    # the head sizes are known from the cell's inputs only: one step of one sequence
    with torch.no_grad():
        probe = cell.memory_inputs(x[:1, :1], None, None)
    dk, dv = probe.k.shape[-1], probe.v.shape[-1]
    if max(dk, dv) > MAX_HEAD_DIM:
        return (
            f"head sizes d_k={dk}, d_v={dv}: at most {MAX_HEAD_DIM} (the chunk's blocks are "
            "held in registers); the `chunked` backend runs any size"
        )
    return None


def _available() -> str | None:
    return _IMPORT_ERROR


def _priority(call: KernelCall) -> Priority:
    if is_exporting() or call.x.device.type != "cuda":
        # the interpreter on CPU is far slower than the `chunked` backend
        return Priority.BELOW_REFERENCE
    # forward and backward both run as kernels, so this is expected to beat `chunked` on a
    # GPU, for inference and training alike; expected only: never timed on a GPU yet
    # (tools/gpu/matrix_state_check.sh times both against `chunked`)
    return Priority.DEVICE_BEST


def kernels() -> list[Kernel]:
    """The ``chunked_triton`` kernel for every cell of the matrix-state form."""
    return [
        Kernel(
            backend=BACKEND,
            target=Form.MATRIX_STATE.value,
            run=triton_forward,
            description="matrix-state memory in WY chunks, forward and backward in Triton (CUDA)",
            priority=_priority,
            available=_available,
            supports=_supports,
        )
    ]
