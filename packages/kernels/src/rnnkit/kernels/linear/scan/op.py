"""``linear_scan``: all states of ``h_t = a_t * h_{t-1} + b_t``, with a hand-written backward.

See :func:`linear_scan` for the API and ``docs/kernels-scan.md`` for the design.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
from torch import Tensor

from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.kernel import is_exporting
from rnnkit.kernels.linear.scan import _native, _torch, _triton
from rnnkit.kernels.linear.scan._alloc import alloc
from rnnkit.kernels.native import BuildError

Backend = Literal[
    "auto",
    "cpp",
    "torch",
    "sequential",
    "triton",
    "triton_stream",
    "triton_chunked",
    "triton_sequential",
]
BACKENDS: tuple[str, ...] = (
    "auto",
    "cpp",
    "torch",
    "sequential",
    "triton",
    "triton_stream",
    "triton_chunked",
    "triton_sequential",
)
#: The Triton scan backends and the kernel each runs (``auto``: :func:`_triton.prefers_stream`).
_TRITON_KERNEL: dict[str, Literal["auto", "stream", "chunked"]] = {
    "triton": "auto",
    "triton_stream": "stream",
    "triton_chunked": "chunked",
}
DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of ``dtype``: fp32 for 16-bit floats, else itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --- the scan with its backward ----------------------------------------------------------------


def _shared_chunk(time: int, row_bytes: int, chunk: int | None) -> int | None:
    """The chunk length ``L`` when the torch scan's backward can reuse the forward's chunk
    gate products: ``L`` divides ``T`` and the backward's scan over ``T - 1`` steps picks the
    same ``L``, so its chunks (reversed, the partial one first) cover the gates ``a_1 ..
    a_{T-1}`` on the forward's chunk boundaries; else ``None``."""
    length = _torch.chunk_length(time, row_bytes, chunk)
    if length is None or length < 2 or time % length:
        return None
    return length if _torch.chunk_length(time - 1, row_bytes, chunk) == length else None


def _scan_forward(
    a: Tensor, b: Tensor, h0: Tensor, backend: str, chunk: int | None
) -> tuple[Tensor, Tensor | None]:
    """``h: (B, T, D)`` in ``b``'s dtype, and the chunk gate products the backward can reuse
    (torch backend, see :func:`_shared_chunk`); ``a, b: (B, T, D)``, ``h0: (B, D)``, ``T >= 1``."""
    if backend == "triton_sequential":
        return _triton.sequential_forward(a, b, h0), None
    if backend in _TRITON_KERNEL:
        h = alloc(tuple(b.shape), dtype=b.dtype, device=b.device)
        kernel = _TRITON_KERNEL[backend]
        _triton.scan_into(a, b, h0, h, reverse=False, kernel=kernel, chunk=chunk)
        return h, None
    cd = compute_dtype(b.dtype)
    batch, time, width = b.shape
    h = alloc((batch, time, width), dtype=cd, device=b.device)
    prods = None
    if backend == "cpp":
        _native.scan_into(a.to(cd), b.to(cd), h0.to(cd), h, reverse=False)
    elif backend == "sequential":
        _torch.sequential_scan_into(a.to(cd), b.to(cd), h0.to(cd), h, reverse=False)
    else:
        length = _shared_chunk(time, width * h.element_size(), chunk)
        if length is not None:
            prods = torch.empty(
                (batch, time // length, width), dtype=_torch.product_dtype(cd), device=b.device
            )
        _torch.chunked_scan_into(
            a.to(cd), b.to(cd), h0.to(cd), h, reverse=False, chunk=chunk, products_out=prods
        )
    return h.to(b.dtype), prods


def _scan_backward(
    a: Tensor,
    h: Tensor,
    h0: Tensor,
    dh: Tensor,
    dh_last: Tensor,
    backend: str,
    chunk: int | None,
    need_a: bool,
    prods: Tensor | None = None,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(da, db, dh0)`` in the dtypes of ``a``, ``h`` and ``h0``.

    With ``g_t = dL/db_t``: ``g_t = dh_t + conj(a_{t+1}) g_{t+1}`` and ``g_{T-1} = dh_{T-1} +
    dh_last`` (a reverse scan over the gates shifted by one step), ``da_t = g_t conj(h_{t-1})``
    with ``h_{-1} = h0``, and ``dh0 = conj(a_0) g_0`` (torch's conjugate Wirtinger convention;
    the conjugates vanish for real dtypes). ``prods``: the forward's chunk gate products
    (torch backend), reused for every chunk of the reverse scan but its partial first one.
    """
    if backend == "triton_sequential":
        da, db, dh0 = _triton.sequential_backward(a, h, h0, dh, dh_last)
        return da.to(a.dtype), db, dh0
    batch, time, width = h.shape
    cd = compute_dtype(h.dtype)
    if backend == "cpp":
        # one native reverse pass: g (= db), da and dh0 (it conjugates the gates itself)
        g = alloc((batch, time, width), dtype=cd, device=h.device)
        native_da = alloc((batch, time, width), dtype=cd, device=h.device) if need_a else None
        dh0 = alloc((batch, width), dtype=cd, device=h.device)
        _native.backward_into(
            a.to(cd), h.to(cd), h0.to(cd), dh.to(cd), dh_last.to(cd), g, native_da, dh0
        )
        return (
            native_da.to(a.dtype) if native_da is not None else None,
            g.to(h.dtype),
            dh0.to(h0.dtype),
        )
    upcast = backend in ("torch", "sequential")  # the Triton kernels convert as they load
    a_c = a.conj()
    if upcast:
        a_c, dh = a_c.to(cd), dh.to(cd)
    g = alloc((batch, time, width), dtype=cd, device=h.device)
    torch.add(dh[:, -1], dh_last, out=g[:, -1])
    # the scan over t = T-2 .. 0 reads the gates a_1 .. a_{T-1}: a view, no shifted copy.
    gates, inputs, start, rest = a_c[:, 1:], dh[:, :-1], g[:, -1], g[:, :-1]
    if backend in _TRITON_KERNEL:
        kernel = _TRITON_KERNEL[backend]
        _triton.scan_into(gates, inputs, start, rest, reverse=True, kernel=kernel, chunk=chunk)
    elif backend == "sequential":
        _torch.sequential_scan_into(gates, inputs, start, rest, reverse=True)
    else:
        products = None
        if prods is not None:
            # chunk c >= 1 of the reverse scan multiplies exactly the forward's chunk c gates;
            # the partial chunk 0 lacks a_0
            products = prods.conj_physical() if prods.is_complex() else prods.clone()
            length = time // prods.shape[1]
            torch.prod(gates[:, : length - 1], 1, dtype=products.dtype, out=products[:, 0])
        _torch.chunked_scan_into(
            gates, inputs, start, rest, reverse=True, chunk=chunk, products=products
        )
    grad_a: Tensor | None = None
    if need_a:
        grad_a = alloc((batch, time, width), dtype=cd, device=h.device)
        torch.mul(g[:, 1:], h[:, :-1].conj(), out=grad_a[:, 1:])
        torch.mul(g[:, 0], h0.conj(), out=grad_a[:, 0])
        grad_a = grad_a.to(a.dtype)
    dh0 = (a_c[:, 0] * g[:, 0]).to(h0.dtype)
    return grad_a, g.to(h.dtype), dh0


class _LinearScan(torch.autograd.Function):
    """Autograd node of the scan: inputs ``a, b: (B, T, D)``, ``h0: (B, D)``; ``T >= 1``."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, b: Tensor, h0: Tensor, backend: str, chunk: int | None
    ) -> tuple[Tensor, Tensor]:
        h, prods = _scan_forward(a, b, h0, backend, chunk)
        ctx.save_for_backward(a, h, h0)
        ctx.backend, ctx.chunk, ctx.prods = backend, chunk, prods
        return h, h[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, dh: Tensor, dh_last: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        a, h, h0 = ctx.saved_tensors
        need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
        da, db, dh0 = _scan_backward(
            a, h, h0, dh, dh_last, ctx.backend, ctx.chunk, need_a, ctx.prods
        )
        return da, db if need_b else None, dh0 if need_h0 else None, None, None


def _apply(
    a: Tensor, b: Tensor, h0: Tensor, backend: str, chunk: int | None
) -> tuple[Tensor, Tensor]:
    if is_exporting() and not backend.startswith("triton"):
        # an exported program must run under autograd: the scans above write with ``out=``
        # ops (which autograd refuses) inside a hand-written backward that export does not keep
        cd = compute_dtype(b.dtype)
        h = _torch.doubling_scan(a.to(cd), b.to(cd), h0.to(cd)).to(b.dtype)
        return h, h[:, -1]
    if backend == "cpp" and torch.compiler.is_compiling():
        # one custom op with its own backward (see _native.scan_with_grad: torch 2.11 traced
        # this autograd node's backward with a zero gradient of h)
        cd = compute_dtype(b.dtype)
        h = _native.scan_with_grad(a.to(cd), b.to(cd), h0.to(cd)).to(b.dtype)
        return h, h[:, -1].clone()
    out: tuple[Tensor, Tensor] = _LinearScan.apply(a, b, h0, backend, chunk)  # type: ignore[no-untyped-call]
    return out


def _broadcast(*shapes: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    out: torch.Size = torch.broadcast_shapes(*shapes)  # type: ignore[no-untyped-call]
    return tuple(out)


# --- validation ----------------------------------------------------------------------------------


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_cu_seqlens(
    cu_seqlens: object, *, batch: int, time: int, device: torch.device
) -> list[int]:
    cu = _check_tensor("cu_seqlens", cu_seqlens)
    if cu.dtype.is_floating_point or cu.dtype.is_complex or cu.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must be an integer tensor, got dtype {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(
            "cu_seqlens must be 1-D with at least 2 entries (S+1 offsets), got shape "
            f"{tuple(cu.shape)}"
        )
    if batch != 1:
        raise ValueError(
            f"with cu_seqlens the sequences are packed along time in a batch of 1: a and b "
            f"must broadcast to (1, T, D), got batch {batch}"
        )
    offsets = [int(v) for v in cu.tolist()]
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    bad = next((i for i in range(1, len(offsets)) if offsets[i] < offsets[i - 1]), None)
    if bad is not None:
        raise ValueError(
            f"cu_seqlens must be increasing (non-decreasing: empty sequences are allowed), "
            f"but cu_seqlens[{bad}]={offsets[bad]} < cu_seqlens[{bad - 1}]={offsets[bad - 1]}"
        )
    if offsets[-1] != time:
        raise ValueError(f"cu_seqlens must end at the packed length T={time}, got {offsets[-1]}")
    return offsets


def _check_backend(
    backend: str, device: torch.device, dtype: torch.dtype, chunk: int | None = None
) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _triton.unavailable_reason(device, dtype) is None:
            return "triton"
        # on CPU the native scan when it builds (a failed build warns once), else pure torch;
        # a chunk length asks for the chunked scan, which only the torch path has
        cpu = device.type == "cpu" and chunk is None
        if cpu and _native.usable(device, compute_dtype(dtype)):
            return "cpp"
        return "torch"
    if backend == "cpp":
        try:
            _native.require(device, compute_dtype(dtype))
        except BuildError as e:
            raise BackendUnavailableError(
                f"linear_scan backend 'cpp' cannot run: {e}; {_instead(device, dtype, chunk)}"
            ) from e
    if backend.startswith("triton"):
        reason = _triton.unavailable_reason(device, dtype)
        if reason is not None:
            raise BackendUnavailableError(
                f"linear_scan backend {backend!r} cannot run: {reason}; "
                f"{_instead(device, dtype, chunk)}"
            )
    return backend


def _instead(device: torch.device, dtype: torch.dtype, chunk: int | None) -> str:
    """The backend that runs a call a named backend refused, for its error message."""
    return f"backend='auto' would use {_check_backend('auto', device, dtype, chunk)!r} here"


# --- the public op -------------------------------------------------------------------------------


def linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    *,
    log_a: bool = False,
    resets: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    backend: Backend | str = "auto",
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """All states of the elementwise linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

    Shapes and broadcasting: ``a`` and ``b`` broadcast together with torch's rules to
    ``(B, T, D)``, batch-first; each has at most 3 dimensions. So ``a`` may be ``(B, T, D)``,
    a time-invariant ``(B, 1, D)`` or ``(D,)``, etc., and is never materialised at full size
    by the torch and Triton scans (except under ``resets``, ``cu_seqlens`` or a 16-bit upcast).
    ``h0`` broadcasts to ``(B, D)`` (to ``(S, D)`` with ``cu_seqlens``).

    Dtypes: ``a``, ``b`` and ``h0`` share one dtype: float16/bfloat16 (accumulated in
    float32, results rounded once), float32, float64, complex64 or complex128.

    Args:
        a: the gates, or their logarithm when ``log_a`` (``a = exp(log_a)``; a complex log
            gives complex gates, e.g. ``log_a = -softplus(nu) + i theta``).
        b: the inputs.
        h0: the state before step 0, ``(B, D)``; ``None`` for zeros.
        log_a: interpret ``a`` as ``log(a)``.
        resets: optional bool ``(B, T)``; where true the state entering step ``t`` is zero
            (``h_t = b_t``), the S5 convention for episode boundaries.
        cu_seqlens: optional integer ``(S + 1,)`` offsets of ``S`` sequences packed along time
            in a batch of 1: starts at 0, non-decreasing, ends at ``T``. Sequence ``s`` runs
            from its own ``h0[s]``; ``h0`` is ``(S, D)`` and the final state ``(S, D)``.
        backend: ``"cpp"`` (the native C++ CPU scan: one streaming pass forward and one backward,
            lanes in parallel; compiled on first use, see
            :mod:`rnnkit.kernels.linear.scan._native`),
            ``"torch"`` (the pure-torch chunked scan, any device), ``"sequential"`` (a torch step
            loop), ``"triton"`` (Triton kernels, real dtypes, CUDA or ``TRITON_INTERPRET=1``: the
            single-pass stream kernel for long ``T`` with many ``(B, D)`` lanes, else the chunked
            kernels; see ``_triton.prefers_stream``), ``"triton_stream"`` and ``"triton_chunked"``
            (one of those two, forced), ``"triton_sequential"`` (a Triton step-loop kernel) or
            ``"auto"`` (``"triton"`` on CUDA when triton is importable and the dtype is real; on CPU
            ``"cpp"`` when the native library builds, with a warning and ``"torch"`` when it does
            not, and ``"torch"`` when ``chunk`` is given).
        chunk: the chunk length of the chunked scans (``None`` chooses; a power of 2 for
            Triton, where giving one selects the chunked kernels under ``"triton"``); the
            single-pass ``"cpp"`` scan has no chunks and ignores it.

    Returns:
        ``(h, h_last)``: every state ``h: (B, T, D)`` and the final state ``h_last: (B, D)``
        (``(S, D)`` with ``cu_seqlens``; ``h0`` when ``T = 0``). Both are differentiable with
        respect to ``a`` (or ``log_a``), ``b`` and ``h0`` (first-order gradients only).

    Raises:
        TypeError: a non-tensor argument, mixed or unsupported dtypes, non-bool ``resets``,
            non-integer ``cu_seqlens``.
        ValueError: shapes that do not broadcast, bad ``resets`` shape, bad ``cu_seqlens``,
            unknown ``backend``.
        BackendUnavailableError: a Triton or ``"cpp"`` backend requested where it cannot run.
    """
    a = _check_tensor("a", a)
    b = _check_tensor("b", b)
    if a.dtype != b.dtype:
        raise TypeError(
            f"a and b must have the same dtype, got a: {a.dtype} and b: {b.dtype} "
            f"(convert one, e.g. a.to(b.dtype))"
        )
    if b.dtype not in DTYPES:
        raise TypeError(f"linear_scan supports {', '.join(map(str, DTYPES))}; got {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} but b is on {b.device}")
    if a.dim() > 3 or b.dim() > 3:
        raise ValueError(
            f"a and b must broadcast to (B, T, D) with at most 3 dimensions each, got a: "
            f"{tuple(a.shape)} and b: {tuple(b.shape)}"
        )
    try:
        shape = _broadcast(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"a of shape {tuple(a.shape)} and b of shape {tuple(b.shape)} do not broadcast "
            f"(torch broadcasting rules) to a common (B, T, D)"
        ) from None
    if len(shape) != 3:
        raise ValueError(
            f"a and b must broadcast to 3 dimensions (B, T, D), got {tuple(shape)} from a: "
            f"{tuple(a.shape)} and b: {tuple(b.shape)}"
        )
    batch, time, width = shape
    offsets = None
    if cu_seqlens is not None:
        offsets = _check_cu_seqlens(cu_seqlens, batch=batch, time=time, device=b.device)
    n_seq = len(offsets) - 1 if offsets is not None else batch
    if h0 is not None:
        h0 = _check_tensor("h0", h0)
        if h0.dtype != b.dtype:
            raise TypeError(f"h0 must have the dtype of a and b ({b.dtype}), got {h0.dtype}")
        if h0.device != b.device:
            raise ValueError(f"h0 is on {h0.device} but a and b are on {b.device}")
        try:
            ok = h0.dim() <= 2 and _broadcast(h0.shape, (n_seq, width)) == (
                n_seq,
                width,
            )
        except RuntimeError:
            ok = False
        if not ok:
            what = "(S, D) (one row per sequence of cu_seqlens)" if offsets else "(B, D)"
            raise ValueError(
                f"h0 must broadcast to {what} = {(n_seq, width)}, got {tuple(h0.shape)}"
            )
        h0 = h0.expand(n_seq, width)
    else:
        h0 = torch.zeros((), dtype=b.dtype, device=b.device).expand(n_seq, width)
    if resets is not None:
        resets = _check_tensor("resets", resets)
        if resets.dtype != torch.bool:
            raise TypeError(f"resets must have dtype torch.bool, got {resets.dtype}")
        if tuple(resets.shape) != (batch, time):
            raise ValueError(
                f"resets must have shape (B, T) = {(batch, time)}, got {tuple(resets.shape)}"
            )
        if resets.device != b.device:
            raise ValueError(f"resets is on {resets.device} but a and b are on {b.device}")
    name = _check_backend(backend, b.device, b.dtype, chunk)

    if log_a:
        a = torch.exp(a)
    a = a.expand(shape)
    b = b.expand(shape)
    if offsets is not None:
        return _varlen(a, b, h0, offsets, resets, name, chunk)
    if time == 0:
        return b.new_zeros(shape), h0.clone()
    if resets is None:
        return _apply(a, b, h0, name, chunk)
    return _restarted(_restart_gates(a, resets), b, h0, resets, name, chunk, packed=False)


def _restart_gates(a: Tensor, restart: Tensor) -> Tensor:
    """``a`` with ``a_t * 0`` where ``restart: (B, T)`` is true, so the scan starts afresh there.

    A product rather than a zero fill: the reference loop computes ``a_t * 0`` at a reset, which
    is NaN for a NaN (or infinite) gate, and a diverged gate must not come out as a clean
    restart. The gradient of ``a_t`` at a reset is zero either way.
    """
    return torch.where(restart.unsqueeze(-1), a * 0, a)


def _restarted(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    restart: Tensor,
    backend: str,
    chunk: int | None,
    *,
    packed: bool,
) -> tuple[Tensor, Tensor]:
    """The scan of ``a`` (the restart gates, :func:`_restart_gates`) and ``b`` from ``h0`` with
    the state entering each step where ``restart: (B, T)`` is true replaced by zero, as the
    cells' reference loops do with a select: a NaN or infinite state before a restart does not
    reach past it (``0 * NaN`` is NaN), in the values or in the gradients.

    Eager: one scan, and the rows (or, ``packed``, the pieces of the one packed row) whose
    states are non-finite before a restart again (:func:`_fix_stale`). Under ``torch.compile``
    the same as one opaque custom op with a registered backward (:func:`_scan_restarted`), so
    the traced graph holds no data-dependent control flow; under ``torch.export`` a
    recursive-doubling scan whose combine selects (ATen ops only, see
    :func:`_torch.doubling_scan`), except that an exported Triton scan (a program exported on
    CUDA) keeps the product with the zero gate, as it did.
    """
    if is_exporting():
        if backend.startswith("triton"):
            return _apply(a, b, h0, backend, chunk)
        cd = compute_dtype(b.dtype)
        h = _torch.doubling_scan(a.to(cd), b.to(cd), h0.to(cd), restart=restart).to(b.dtype)
        return h, h[:, -1].clone()
    if torch.compiler.is_compiling():
        h = _scan_restarted(a, b, h0, restart, backend, chunk, packed)
        return h, h[:, -1].clone()
    h, h_last = _apply(a, b, h0, backend, chunk)
    return _fix_stale(h, h_last, a, b, h0, restart, backend, chunk, packed=packed)


def _fix_stale(
    h: Tensor,
    h_last: Tensor,
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    restart: Tensor,
    backend: str,
    chunk: int | None,
    *,
    packed: bool,
) -> tuple[Tensor, Tensor]:
    """``(h, h_last)`` of a scan with restarts, with what its products left stale recomputed:
    the packed row cut into pieces (:func:`_rescan_poisoned_pieces`, ``h0`` is zero there),
    else the stale rows by a loop that selects (:func:`_rescan_stale`)."""
    if packed:
        h = _rescan_poisoned_pieces(h, a, b, h0, restart[0], backend, chunk)
        return h, h[:, -1]
    if _entering_finite(h, h0, restart):
        return h, h_last
    rows, _ = _bad_restarts(h, h0, restart)
    return _rescan_stale(a, b, h0, restart, rows, backend, chunk)


def _bad_restarts(h: Tensor, h0: Tensor, restart: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, steps)``, in order, of the restarts (``restart: (B, T)``) that a non-finite
    state enters: ``h[:, t - 1]``, or ``h0`` for a restart at step 0.

    A non-finite state stays non-finite up to the next restart (``a * NaN + b`` is NaN, ``a *
    inf + b`` is infinite or NaN, and a non-finite input only adds to it), so a NaN or an
    infinity anywhere before a restart reaches the state entering it; reading those states
    alone costs a ``(restarts, D)`` slice of ``h`` rather than a pass over all of it.
    """
    rows, steps = restart.nonzero(as_tuple=True)
    entering = h[rows, (steps - 1).clamp(min=0)]
    entering = torch.where((steps == 0).unsqueeze(-1), h0[rows], entering)
    bad = ~torch.isfinite(_lane_sums(entering))
    return rows[bad], steps[bad]


def _entering_finite(h: Tensor, h0: Tensor, restart: Tensor, *more: Tensor) -> bool:
    """Whether every state entering a restart (see :func:`_bad_restarts`) is finite, and the
    entries of each of ``more: (B, T, D)`` at the restarts after step 0: one sum of them all
    (its overflow on finite values only costs the full check)."""
    inner = restart[:, 1:]
    total = _lane_sums(h[:, :-1][inner]).sum() + _lane_sums(h0[restart[:, 0]]).sum()
    for x in more:
        total = total + _lane_sums(x[:, 1:][inner]).sum()
    return bool(torch.isfinite(total))


def _lane_sums(x: Tensor) -> Tensor:
    """``x`` summed over its last dimension (16-bit dtypes in float32): non-finite wherever a
    lane is. A sum that overflows on finite lanes marks its row as well, which costs a rescan
    and changes no value."""
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    return x.sum(-1, dtype=wide)


def _rescan_stale(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    resets: Tensor,
    stale: Tensor,
    backend: str,
    chunk: int | None,
) -> tuple[Tensor, Tensor]:
    """The scan again with the ``stale`` rows (indices, repeats allowed: those of the resets a
    non-finite state enters, :func:`_bad_restarts`) run by a step loop that restarts with a
    select (``h = 0`` at a reset, as the cells' reference loops do) and the other rows by the
    scan, so no row's gradient meets a ``0 * NaN`` either. The scans multiply the state before
    a reset by ``a_t = 0``, which keeps a NaN or an infinity there (``0 * NaN``) where the
    recurrence restarts from zero; other rows are exact as they are."""
    mask = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    mask[stale] = True
    rows = mask.nonzero().squeeze(1)
    keep = (~mask).nonzero().squeeze(1)
    cd = compute_dtype(b.dtype)
    ha, hb, state = a[rows].to(cd), b[rows].to(cd), h0[rows].to(cd)
    restart = resets[rows].unsqueeze(-1)
    zero = torch.zeros((), dtype=cd, device=b.device)
    steps = []
    for t in range(ha.shape[1]):
        state = ha[:, t] * torch.where(restart[:, t], zero, state) + hb[:, t]
        steps.append(state)
    loop_h = torch.stack(steps, 1).to(b.dtype)
    h = b.new_empty(b.shape).index_copy(0, rows, loop_h)
    h_last = h0.new_empty(h0.shape).index_copy(0, rows, loop_h[:, -1])
    if keep.numel():
        scan_h, scan_last = _apply(a[keep], b[keep], h0[keep], backend, chunk)
        h = h.index_copy(0, keep, scan_h)
        h_last = h_last.index_copy(0, keep, scan_last)
    return h, h_last


def _varlen(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    offsets: list[int],
    resets: Tensor | None,
    backend: str,
    chunk: int | None,
) -> tuple[Tensor, Tensor]:
    """Packed sequences as one scan: zero the gate at each start and inject ``a * h0[s]``.

    At the first step of sequence ``s`` (start ``t0``), ``h_{t0} = a_{t0} h0[s] + b_{t0}``:
    the scan gets gate 0 there and input ``b_{t0} + a_{t0} h0[s]``, so one scan over the packed
    ``T`` runs every sequence from its own initial state (from zero where ``resets`` is true at
    ``t0``, as for that sequence alone).
    """
    time, width = a.shape[1], a.shape[2]
    n_seq = len(offsets) - 1
    if time == 0:
        return b.new_zeros(a.shape), h0.clone()
    live = [s for s in range(n_seq) if offsets[s + 1] > offsets[s]]
    starts = torch.tensor([offsets[s] for s in live], device=a.device, dtype=torch.long)
    rows = torch.tensor(live, device=a.device, dtype=torch.long)
    restart = torch.zeros(1, time, dtype=torch.bool, device=a.device)
    restart[0, starts] = True
    carried = a[0, starts] * h0[rows]  # (live S, D): what each start takes from its h0
    if resets is not None:
        restart = restart | resets
        # a reset at a sequence's first step starts it from zero, as the same sequence run
        # alone with its resets does (a select: a NaN h0 must not survive as 0 * NaN)
        carried = torch.where(resets[0, starts].unsqueeze(-1), 0.0, carried)
    b = b.index_add(1, starts, carried.unsqueeze(0))
    a = _restart_gates(a, restart)
    zero = torch.zeros((), dtype=b.dtype, device=b.device).expand(1, width)
    h, _ = _restarted(a, b, zero, restart, backend, chunk, packed=True)
    ends = torch.tensor([offsets[s + 1] - 1 for s in live], device=a.device, dtype=torch.long)
    h_last = h0.index_copy(0, rows, h[0, ends]) if live else h0.clone()
    return h, h_last


def _rescan_poisoned_pieces(
    h: Tensor,
    a: Tensor,
    b: Tensor,
    zero: Tensor,
    restart: Tensor,
    backend: str,
    chunk: int | None,
) -> Tensor:
    """The packed scan ``h: (1, T, D)`` again, cut at every restart (``restart: (T,)``, the
    sequence starts and resets) that follows a non-finite state, each piece scanned from zero.

    One scan over packed sequences multiplies the state before a restart by a zero gate, so a
    NaN in one sequence would reach every later one as ``0 * NaN``. Within a piece every other
    restart follows a finite state, where the single scan was already exact, so one pass
    suffices; rows without a non-finite state are returned as they are.
    """
    if _entering_finite(h, zero, restart.unsqueeze(0)):
        return h
    _, cuts = _bad_restarts(h, zero, restart.unsqueeze(0))  # zero: no cut at step 0
    bounds = [0, *cuts.tolist(), h.shape[1]]
    pieces = [
        _apply(a[:, lo:hi], b[:, lo:hi], zero, backend, chunk)[0]
        for lo, hi in itertools.pairwise(bounds)
    ]
    return torch.cat(pieces, 1)


# --- restarts under torch.compile ----------------------------------------------------------------
# Dynamo cannot trace the eager path's check-and-rescan (a branch on the data), and the product
# with a zero gate alone carries a non-finite state across a restart (0 * NaN). So under compile
# the scan with restarts is one opaque op whose body is the eager path, with its adjoint as a
# second opaque op; the traced graph holds two calls and no branch. Their bodies decide on the
# data as eager does (and so synchronise with a GPU): the ops are tagged cudagraph-unsafe.

_OP_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@torch.library.custom_op("rnnkit_scan_fn::scan_restarted", mutates_args=(), tags=_OP_TAGS)
def _scan_restarted(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    restart: Tensor,
    backend: str,
    chunk: int | None,
    packed: bool,
) -> Tensor:
    """``h: (B, T, D)`` of :func:`_restarted`, computed as in eager mode (the body runs
    eagerly: one scan, and a rescan of what a non-finite state made stale)."""
    h, _ = _scan_forward(a, b, h0, backend, chunk)
    h, _ = _fix_stale(h, h[:, -1], a, b, h0, restart, backend, chunk, packed=packed)
    return h


@_scan_restarted.register_fake
def _scan_restarted_fake(
    a: Tensor,
    b: Tensor,
    h0: Tensor,
    restart: Tensor,
    backend: str,
    chunk: int | None,
    packed: bool,
) -> Tensor:
    return torch.empty(b.shape, dtype=b.dtype, device=b.device)


@torch.library.custom_op("rnnkit_scan_fn::scan_restarted_backward", mutates_args=(), tags=_OP_TAGS)
def _scan_restarted_backward(
    a: Tensor,
    h: Tensor,
    h0: Tensor,
    restart: Tensor,
    dh: Tensor,
    backend: str,
    chunk: int | None,
    need_a: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(da, db, dh0)`` of :func:`_scan_restarted` (``da`` empty unless ``need_a``): the
    gradients of ``h_t = a_t * where(restart_t, 0, h_{t-1}) + b_t``.

    The scan's own adjoint (:func:`_scan_backward`) multiplies by the zero gate where the loop
    selects, which is the same wherever the adjoint ``g`` and the state before a restart are
    finite. Where either is not (``0 * NaN``), the row's adjoint is computed again in pieces
    cut at those restarts, each piece ending with a zero adjoint and starting from a zero
    state, as the select does.
    """
    zeros = torch.zeros_like(h0)
    da, db, dh0 = _scan_backward(a, h, h0, dh, zeros, backend, chunk, need_a)
    # the restarts t >= 1 where the adjoint or the state entering is non-finite (then so is
    # the sum of their lane sums)
    found: list[tuple[int, int]] = []
    if not _entering_finite(h, zeros, restart, db):
        rows, steps = restart[:, 1:].nonzero(as_tuple=True)
        steps = steps + 1
        sums = _lane_sums(db[rows, steps]) + _lane_sums(h[rows, steps - 1])
        bad = ~torch.isfinite(sums)
        found = list(zip(rows[bad].tolist(), steps[bad].tolist(), strict=True))
    for row in sorted({r for r, _ in found}):
        cuts = [t for r, t in found if r == row]
        bounds = [0, *cuts, h.shape[1]]
        for lo, hi in itertools.pairwise(bounds):
            start = h0[row : row + 1] if lo == 0 else zeros[row : row + 1]
            piece = _scan_backward(
                a[row : row + 1, lo:hi],
                h[row : row + 1, lo:hi],
                start,
                dh[row : row + 1, lo:hi],
                zeros[row : row + 1],
                backend,
                chunk,
                need_a,
            )
            if da is not None and piece[0] is not None:
                da[row, lo:hi] = piece[0][0]
            db[row, lo:hi] = piece[1][0]
            if lo == 0:
                dh0[row] = piece[2][0]
    first = restart[:, :1]
    if bool(first.any()):
        # a restart at step 0 drops h0: no gradient reaches it, and the gate's is g * 0
        dh0 = torch.where(first, torch.zeros((), dtype=dh0.dtype, device=dh0.device), dh0)
        if da is not None:
            da[:, 0] = torch.where(first, db[:, 0] * 0, da[:, 0])
    return (db.new_empty((0,)) if da is None else da), db, dh0


@_scan_restarted_backward.register_fake
def _scan_restarted_backward_fake(
    a: Tensor,
    h: Tensor,
    h0: Tensor,
    restart: Tensor,
    dh: Tensor,
    backend: str,
    chunk: int | None,
    need_a: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    da = torch.empty(a.shape if need_a else (0,), dtype=a.dtype, device=a.device)
    return da, torch.empty(h.shape, dtype=h.dtype, device=h.device), torch.empty_like(h0)


def _scan_restarted_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    a, _, h0, restart, backend, chunk, _ = inputs
    ctx.save_for_backward(a, output, h0, restart)
    ctx.backend, ctx.chunk = backend, chunk


def _scan_restarted_grad(ctx: Any, dh: Tensor) -> tuple[Tensor | None, ...]:
    a, h, h0, restart = ctx.saved_tensors
    need_a, need_b, need_h0 = ctx.needs_input_grad[:3]
    da, db, dh0 = _scan_restarted_backward(a, h, h0, restart, dh, ctx.backend, ctx.chunk, need_a)
    return (
        da if need_a else None,
        db if need_b else None,
        dh0 if need_h0 else None,
        None,
        None,
        None,
        None,
    )


_scan_restarted.register_autograd(_scan_restarted_grad, setup_context=_scan_restarted_context)


def linear_scan_reference(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    *,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The plain python loop with autograd: ``(h: (B, T, D), h_last: (B, D))``.

    The oracle for tests and the baseline of ``tools/bench/scan.py``; ``a`` and ``b`` broadcast
    to ``(B, T, D)``, computed in their own dtype (pass float64 for a reference).
    """
    shape = _broadcast(a.shape, b.shape)
    a, b = a.expand(shape), b.expand(shape)
    h = (
        h0.expand(shape[0], shape[2])
        if h0 is not None
        else torch.zeros(shape[0], shape[2], dtype=b.dtype, device=b.device)
    )
    keep = (~resets).unsqueeze(-1) if resets is not None else None
    hs = []
    for t, (a_t, b_t) in enumerate(zip(a.unbind(1), b.unbind(1), strict=True)):
        if keep is not None:
            # a select, not a product: a NaN before a reset must not survive it as 0 * NaN
            h = torch.where(keep[:, t], h, torch.zeros((), dtype=h.dtype, device=h.device))
        h = a_t * h + b_t
        hs.append(h)
    if not hs:
        return b.new_zeros(shape), h
    return torch.stack(hs, 1), h
