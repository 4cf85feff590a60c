"""The native (C++) CPU scan: ``csrc/scan.cpp``, built through :mod:`rnnkit.kernels.native`.

Two ops, ``torch.ops.rnnkit_scan_cpp.scan`` (``h_t = a_t h_{t-1} + b_t``, forward or reversed
in time) and ``scan_backward`` (the adjoint scan and the gradients of ``a``, ``b`` and ``h0``
in one reverse pass). Each walks time once per (batch row, feature block) lane group, lane
groups in parallel with ``at::parallel_for``: one streaming pass over the arrays the op must
read and write, where the pure-torch chunked scan dispatches one strided op per chunk
position and reads its inputs twice.

This is an implementation detail of :func:`rnnkit.kernels.linear.scan.linear_scan`
(``backend="auto"`` on CPU, or ``"cpp"``) and of the Newton solver's CPU scans. The library is
compiled on first use (about 15 s) and cached; ``RNNKIT_SCAN_CPP=0`` (or ``RNNKIT_CPP=0``) turns it
off, and then, or when the toolchain is missing or the build fails (a warning, once), the callers
use the pure-torch scan."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.core.kernel import is_exporting
from rnnkit.kernels.native import BuildError, NativeLibrary

__all__ = [
    "DISABLE_ENV",
    "DTYPES",
    "LIBRARY",
    "backward_into",
    "require",
    "scan_into",
    "unavailable_reason",
    "usable",
]

#: Set to ``0`` to switch the native scan off (the pure-torch scan runs instead).
DISABLE_ENV = "RNNKIT_SCAN_CPP"
#: The dtypes the native kernels compute in (16-bit inputs are upcast to float32 first).
DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)

LIBRARY = NativeLibrary(
    name="rnnkit_scan_cpp",
    csrc=Path(__file__).parent / "csrc",
    sources=("scan.cpp",),
    disable_env=DISABLE_ENV,
)

_warned = False


def unavailable_reason(
    device: torch.device | None = None, dtype: torch.dtype | None = None
) -> str | None:
    """Why the native scan cannot run on ``device`` in ``dtype`` (``None`` when it can, as far
    as is known without compiling: a first build may still fail, see :func:`usable`)."""
    if device is not None and device.type != "cpu":
        return f"the native scan runs on the CPU only (got {device})"
    if dtype is not None and dtype not in DTYPES:
        return f"the native scan computes in {', '.join(map(str, DTYPES))}, not {dtype}"
    return LIBRARY.why_unavailable()


def _ops() -> Any | None:
    """``torch.ops.rnnkit_scan_cpp``, or ``None`` (with one warning per process) when the
    library cannot be built or loaded."""
    global _warned
    try:
        return LIBRARY.ops()
    except BuildError as e:
        if not _warned:
            _warned = True
            warnings.warn(
                f"the native CPU scan is unavailable ({e}); using the pure-torch scan",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the native scan runs here: CPU, a native dtype, and the library built or
    loaded (building it on first use; a failure warns once and returns ``False``).

    ``False`` while ``torch.export`` traces: the exported program then holds the pure-torch
    scan, which runs without this library and translates to ONNX (the native ops would not).
    """
    if is_exporting():
        return False
    if unavailable_reason(device, dtype) is not None:
        return False
    return _ops() is not None


def require(device: torch.device, dtype: torch.dtype) -> Any:
    """``torch.ops.rnnkit_scan_cpp`` for an explicit request of the native scan.

    Raises:
        BuildError: it cannot run here (the message says why).
    """
    reason = unavailable_reason(device, dtype)
    if reason is not None:
        raise BuildError(reason)
    return LIBRARY.ops()


def _plain(x: Tensor) -> Tensor:
    """``x`` with any lazy conjugation or negation bit resolved (the data the kernel reads)."""
    return x.resolve_conj().resolve_neg()


def scan_into(a: Tensor, b: Tensor, h0: Tensor, out: Tensor, *, reverse: bool) -> Tensor:
    """``out_t = a_t * out_{t-1} + b_t`` (``out_{t+1}`` when ``reverse``), natively.

    Args:
        a, b, out: ``(B, T, D)``, one native dtype, CPU, any strides (``a`` and ``b`` may be
            expanded views; ``out`` may not).
        h0: ``(B, D)``: the state before the first step in scan order (made contiguous here).
        reverse: run from ``t = T - 1`` down to ``0``.

    Returns:
        ``out``.
    """
    # the kernels read raw memory: a lazily conjugated or negated view must be materialised
    a, b, h0 = (_plain(x) for x in (a, b, h0))
    if torch.compiler.is_compiling():
        out.copy_(_scan_functional(a, b, h0.contiguous(), reverse))
    else:
        LIBRARY.ops().scan(a, b, h0.contiguous(), out, reverse)
    return out


def backward_into(
    a: Tensor,
    h: Tensor,
    h0: Tensor,
    dh: Tensor,
    dh_last: Tensor,
    db: Tensor,
    da: Tensor | None,
    dh0: Tensor,
) -> None:
    """The backward of the forward scan in one reverse pass, natively.

    With ``g_t = dL/db_t``: ``g_{T-1} = dh_{T-1} + dh_last``, ``g_t = dh_t + conj(a_{t+1})
    g_{t+1}``; ``da_t = g_t conj(h_{t-1})`` (``h_{-1} = h0``), ``dh0 = conj(a_0) g_0``.

    Args:
        a, h, dh: ``(B, T, D)``: the gates, the forward's states and the incoming gradient.
        h0, dh_last: ``(B, D)``: the initial state and the gradient of the final state.
        db: ``(B, T, D)`` output: ``g``.
        da: ``(B, T, D)`` output, or ``None`` when the gates need no gradient (then ``h`` is
            not read).
        dh0: ``(B, D)`` contiguous output.
    """
    a, h, h0, dh, dh_last = (_plain(x) for x in (a, h, h0, dh, dh_last))
    if torch.compiler.is_compiling():
        g, grad_a, grad_h0 = _scan_backward_functional(
            a, h, h0.contiguous(), dh, dh_last.contiguous(), da is not None
        )
        db.copy_(g)
        dh0.copy_(grad_h0)
        if da is not None:
            da.copy_(grad_a)
        return
    unused = db.new_empty((0,))  # stands in for da when the gates need no gradient
    LIBRARY.ops().scan_backward(
        a,
        h,
        h0.contiguous(),
        dh,
        dh_last.contiguous(),
        db,
        unused if da is None else da,
        dh0,
        da is not None,
    )


# --- functional forms for torch.compile ---------------------------------------------------------
# The native ops write into caller buffers (``Tensor(a!)`` in their schemas). Under
# torch.compile, AOTAutograd wraps such ops in ``auto_functionalized_v2``, and inductor's pass
# that removes it again fails for complex buffers ("auto_functionalized_v2 was not removed"):
# LRU and S4D on their scan backend did not compile. These opaque custom ops allocate their
# results themselves, so the traced graph holds no mutation of a graph tensor at all; eager
# calls keep the direct, copy-free path.


@torch.library.custom_op("rnnkit_scan_fn::scan", mutates_args=())
def _scan_functional(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    out = torch.empty(a.shape, dtype=b.dtype, device=b.device)
    LIBRARY.ops().scan(a, b, h0, out, reverse)
    return out


@_scan_functional.register_fake
def _scan_functional_fake(a: Tensor, b: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    return torch.empty(a.shape, dtype=b.dtype, device=b.device)


@torch.library.custom_op("rnnkit_scan_fn::scan_backward", mutates_args=())
def _scan_backward_functional(
    a: Tensor, h: Tensor, h0: Tensor, dh: Tensor, dh_last: Tensor, need_a: bool
) -> tuple[Tensor, Tensor, Tensor]:
    db = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    da = torch.empty(h.shape if need_a else (0,), dtype=h.dtype, device=h.device)
    dh0 = torch.empty(h0.shape, dtype=h.dtype, device=h.device)
    LIBRARY.ops().scan_backward(a, h, h0, dh, dh_last, db, da, dh0, need_a)
    return db, da, dh0


@_scan_backward_functional.register_fake
def _scan_backward_functional_fake(
    a: Tensor, h: Tensor, h0: Tensor, dh: Tensor, dh_last: Tensor, need_a: bool
) -> tuple[Tensor, Tensor, Tensor]:
    db = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    da = torch.empty(h.shape if need_a else (0,), dtype=h.dtype, device=h.device)
    return db, da, torch.empty(h0.shape, dtype=h.dtype, device=h.device)


# --- the whole differentiable scan as one custom op, for torch.compile ---------------------------
# Under torch.compile, dynamo traces the scan's autograd.Function backward into the compiled
# graph; torch 2.11 fed that traced backward a zero gradient of ``h`` (the compiled gradients
# were wrong, silently). An opaque op with its own registered backward keeps the native scan
# out of dynamo's autograd tracing on every torch release.


@torch.library.custom_op("rnnkit_scan_fn::scan_with_grad", mutates_args=())
def scan_with_grad(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` forward in time, natively, differentiable in ``a``, ``b``
    and ``h0`` (for ``torch.compile``; eager calls use the scan's autograd node).

    Args:
        a, b: ``(B, T, D)`` in one native dtype (``T >= 1``); ``a`` may be an expanded view.
        h0: ``(B, D)``.

    Returns:
        ``h``: ``(B, T, D)``.
    """
    # the op's body runs eagerly, so scan_into calls the native op directly
    return scan_into(a, b, h0, torch.empty(a.shape, dtype=b.dtype, device=b.device), reverse=False)


@scan_with_grad.register_fake
def _scan_with_grad_fake(a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
    return torch.empty(a.shape, dtype=b.dtype, device=b.device)


def _scan_with_grad_context(
    ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor
) -> None:
    a, _, h0 = inputs
    ctx.save_for_backward(a, output, h0)


def _scan_with_grad_backward(
    ctx: Any, dh: Tensor
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    a, h, h0 = ctx.saved_tensors
    need_a, need_b, need_h0 = ctx.needs_input_grad
    # the final state's gradient reaches dh through h[:, -1]: none comes separately
    db, da, dh0 = _scan_backward_functional(
        _plain(a), h, h0.contiguous(), _plain(dh), torch.zeros_like(h0), need_a
    )
    return (da if need_a else None), (db if need_b else None), (dh0 if need_h0 else None)


scan_with_grad.register_autograd(_scan_with_grad_backward, setup_context=_scan_with_grad_context)
