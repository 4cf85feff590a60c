"""The shell every backend of the selective diagonal form shares, so that a backend holds only
its own compute and its availability check:

- :func:`autograd_scan`: the autograd node around a backend's forward and backward
  (what to save, the zero gradients of unused outputs, which input gradients to return);
- :func:`scan_function`: the public ``selective_scan_<backend>`` function (its signature,
  the ``chunk`` argument's default and check, the backend's own check of the input);
- :func:`selective_kernel`: the backend's :class:`~rnnkit.core.dispatch.Kernel` for the form.

Shapes throughout are those of
:func:`~rnnkit.kernels.selective.reference.selective_scan_reference`: ``x, dt: (B, T, D)``,
``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0`` and ``h: (B, D, N)``,
``y: (B, T, D)``, ``resets``: optional bool ``(B, T)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from rnnkit.core.cell import fill_restart_refusal
from rnnkit.core.dispatch import Kernel, KernelCall, Priority
from rnnkit.core.forms import Form
from rnnkit.kernels.selective._run import ScanFn, protocol_gap, run_selective

__all__ = [
    "ChunkedScanFn",
    "ScanBackward",
    "ScanCompute",
    "ScanForward",
    "ScanInputs",
    "autograd_scan",
    "scan_function",
    "selective_kernel",
]


class ScanInputs(NamedTuple):
    """The scan's tensor arguments, those that can take gradients, in the order of its
    signature."""

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    h0: Tensor


#: A backend's forward: ``(inputs, resets, chunk, save) -> (y, h, saved)``, ``resets`` already
#: contiguous; ``saved`` is what the backward needs (anything unless ``save``), its first
#: tensor of the dtype and device of ``x``.
ScanForward = Callable[
    [ScanInputs, Tensor | None, int, bool], tuple[Tensor, Tensor, tuple[Tensor, ...]]
]
#: A backend's backward: ``(saved, resets, chunk, dy, dh) -> (dx, ddt, dA, dB, dC, dD, dh0)``,
#: ``dy: (B, T, D)`` and ``dh: (B, D, N)`` contiguous (zeros where an output took no gradient).
ScanBackward = Callable[
    [tuple[Tensor, ...], Tensor | None, int, Tensor, Tensor], tuple[Tensor, ...]
]
#: ``(inputs, resets, chunk) -> (y, h)``, the arguments already checked.
ScanCompute = Callable[[ScanInputs, Tensor | None, int], tuple[Tensor, Tensor]]


class ChunkedScanFn(Protocol):
    """A public ``selective_scan_<backend>(x, dt, A, B, C, D, h0, *, resets=None, chunk=None)
    -> (y, h)``; ``chunk=None`` takes the backend's ``CHUNK``."""

    def __call__(
        self,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        h0: Tensor,
        *,
        resets: Tensor | None = None,
        chunk: int | None = None,
    ) -> tuple[Tensor, Tensor]: ...


def autograd_scan(name: str, forward: ScanForward, backward: ScanBackward) -> ScanCompute:
    """One autograd node (a ``torch.autograd.Function`` named ``name``) over a backend's
    ``forward`` and ``backward``: the forward saves nothing unless an input needs a gradient,
    and the backward returns only the gradients of the inputs that need one."""

    def fwd(ctx: Any, *args: Any) -> tuple[Tensor, Tensor]:
        # apply's arguments: the inputs (ctx.needs_input_grad flags them), resets, chunk
        *tensors, resets, chunk = args
        inputs = ScanInputs(*tensors)
        rs = resets.contiguous() if resets is not None else None
        save = any(ctx.needs_input_grad[: len(inputs)])
        y, h, saved = forward(inputs, rs, chunk, save)
        if save:
            ctx.save_for_backward(*saved)
            ctx.resets = rs
            ctx.chunk = chunk
            ctx.out_shapes = (y.shape, h.shape)
        return y, h

    def bwd(ctx: Any, dy: Tensor | None, dh: Tensor | None) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        y_shape, h_shape = ctx.out_shapes
        dy = saved[0].new_zeros(y_shape) if dy is None else dy.contiguous()
        dh = saved[0].new_zeros(h_shape) if dh is None else dh.contiguous()
        grads = backward(saved, ctx.resets, ctx.chunk, dy, dh)
        need = ctx.needs_input_grad
        # no gradient for resets and chunk
        return (*(g if need[i] else None for i, g in enumerate(grads)), None, None)

    function: type[torch.autograd.Function] = type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(fwd), "backward": staticmethod(bwd), "__module__": __name__},
    )

    def apply(inputs: ScanInputs, resets: Tensor | None, chunk: int) -> tuple[Tensor, Tensor]:
        out: tuple[Tensor, Tensor] = function.apply(  # type: ignore[no-untyped-call]
            *inputs, resets, chunk
        )
        return out

    return apply


_ARGS_DOC = """
Same arguments and results as
:func:`~rnnkit.kernels.selective.reference.selective_scan_reference` (``x, dt: (B, T, D)``,
``A: (D, N)``, ``B, C: (B, T, N)``, ``D: (D,)``, ``h0: (B, D, N)``, ``resets``: optional bool
``(B, T)``; returns ``y: (B, T, D)`` and ``h: (B, D, N)``), plus ``chunk``: steps per chunk
(``None``: the backend module's ``CHUNK`` at the time of the call).

Raises:
    ValueError: ``chunk`` is not positive.
"""


def scan_function(
    name: str,
    compute: ScanCompute,
    *,
    default_chunk: Callable[[], int],
    summary: str,
    check: Callable[[Tensor], None] | None = None,
    raises: str = "",
) -> ChunkedScanFn:
    """The public scan function ``name`` of a backend: checks ``chunk`` (``default_chunk()``
    when ``None``: read at each call, so the module's ``CHUNK`` can be changed), runs
    ``check(x)`` (which raises where the backend cannot run ``x``), then ``compute``.
    ``summary`` and ``raises`` (lines of the docstring's ``Raises:`` section) document it."""

    def scan(
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        h0: Tensor,
        *,
        resets: Tensor | None = None,
        chunk: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        if chunk is None:
            chunk = default_chunk()
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if check is not None:
            check(x)
        return compute(ScanInputs(x, dt, A, B, C, D, h0), resets, chunk)

    scan.__name__ = scan.__qualname__ = name
    scan.__doc__ = summary + "\n" + _ARGS_DOC + raises
    return scan


def selective_kernel(
    backend: str,
    scan: ScanFn,
    *,
    description: str,
    priority: Priority | Callable[[KernelCall], int],
    available: Callable[[], str | None] | None = None,
    supports: Callable[[KernelCall], str | None] = protocol_gap,
) -> Kernel:
    """The :class:`~rnnkit.core.dispatch.Kernel` of ``backend`` for every cell of the
    selective diagonal form: it runs the cell's call through ``scan``
    (:func:`~rnnkit.kernels.selective._run.run_selective`). Besides ``supports``' reasons it
    refuses resets for a cell overriding ``init_state``: the scans restart ``h`` from zero
    (and ``selective_inputs`` its own carry from what the cell class restarts it from)."""

    def run(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        return run_selective(call, scan)

    def supports_call(call: KernelCall) -> str | None:
        return supports(call) or fill_restart_refusal(call, "reference")

    kernel = Kernel(
        backend=backend,
        target=Form.SELECTIVE_DIAGONAL.value,
        run=run,
        description=description,
        priority=priority,
        supports=supports_call,
    )
    # without `available`, the Kernel's own default (always available)
    return kernel if available is None else replace(kernel, available=available)
