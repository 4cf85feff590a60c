"""How ``backend="auto"`` ranks the kernels for one call, and why it picks the one it does.

:func:`rank_backends` lists every kernel that targets the call's cell, in the order ``auto``
tries them (highest :meth:`Kernel.rank` first), each with the reason it cannot run the call (or
``None``) and whether it is the one :func:`rnnkit.core.dispatch.select` picks.
:func:`probe_call` builds a call from a cell name and sizes, without data, for
``rnnkit list backends --cell NAME``.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch

from rnnkit.core.api import get_cell_class
from rnnkit.core.dispatch import (
    BACKEND_ENV,
    Kernel,
    KernelCall,
    kernels_for,
    rank_of,
    ranking,
    select,
)
from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.validation import check_device

#: ``--dtype`` names accepted by :func:`probe_call`.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class RankedKernel:
    """One kernel as ``backend="auto"`` sees it for one call.

    Attributes:
        kernel: the registered kernel.
        priority: the kernel's rank for the call (:func:`~rnnkit.core.dispatch.rank_of`: the
            cell's ``backend_priority`` entry, else ``kernel.rank(call)``); ``auto`` tries
            higher values first.
        reason: ``kernel.why_not(call)``: why it cannot run the call, ``None`` when it can.
        chosen: whether ``select(call, "auto")`` returns this kernel.
    """

    kernel: Kernel
    priority: int
    reason: str | None
    chosen: bool


@dataclass(frozen=True)
class Ranking:
    """The kernels for one call in ``auto``'s order and the outcome of ``select``.

    Attributes:
        kernels: every kernel targeting the cell, highest priority first (ties keep the
            registry's order, as in ``select``).
        error: why ``select(call, "auto")`` raised (no kernel can run the call), else ``None``.
        forced: the value of ``RNNKIT_BACKEND`` when it replaces ``"auto"``, else ``None``.
    """

    kernels: list[RankedKernel]
    error: str | None = None
    forced: str | None = None

    @property
    def chosen(self) -> Kernel | None:
        """The kernel ``auto`` runs the call with, ``None`` when none can."""
        return next((r.kernel for r in self.kernels if r.chosen), None)


def rank_backends(call: KernelCall) -> Ranking:
    """The ranking ``backend="auto"`` applies to ``call`` (``RNNKIT_BACKEND`` honoured)."""
    candidates = kernels_for(call.cell)
    ordered = ranking(call, candidates)
    forced = os.environ.get(BACKEND_ENV, "").strip() or None
    chosen: Kernel | None
    error: str | None = None
    try:
        chosen = select(call, "auto")
    except (BackendUnavailableError, ValueError) as exc:
        # ValueError: RNNKIT_BACKEND names an unknown backend
        chosen, error = None, str(exc)
    kernels = [RankedKernel(k, rank_of(k, call), k.why_not(call), k is chosen) for k in ordered]
    return Ranking(kernels, error, forced)


def takes_heads(cell_name: str) -> bool:
    """Whether the registered cell's constructor has a ``heads`` argument, or ``**kwargs``
    that may pass it on (to :class:`~rnnkit.core.GatedCell`, say; the constructor then says
    itself if it refuses ``heads``)."""
    params = inspect.signature(get_cell_class(cell_name)).parameters
    return "heads" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def probe_call(
    cell_name: str,
    *,
    batch: int = 4,
    time: int = 16,
    input_size: int = 8,
    hidden_size: int = 32,
    heads: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    inference: bool = False,
    resets: bool = False,
) -> KernelCall:
    """A :class:`KernelCall` for the registered cell ``cell_name`` built with these sizes.

    The cell gets ``input_size``, ``hidden_size`` and, when given, ``heads`` (an error if the
    cell takes none); ``x: (batch, time, input_size)`` is zeros of ``dtype`` on ``device``, with
    no initial state; ``resets`` adds an all-false ``(batch, time)`` mask; ``needs_grad`` is
    ``not inference``.
    """
    if batch < 1 or time < 1:
        raise ValueError(f"batch and time must be positive, got {batch} and {time}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dev = check_device(device)
    config: dict[str, Any] = {"input_size": input_size, "hidden_size": hidden_size}
    if heads is not None:
        if not takes_heads(cell_name):
            raise ValueError(f"cell {cell_name!r} takes no heads argument")
        config["heads"] = heads
    cell = get_cell_class(cell_name)(**config).to(device=dev, dtype=DTYPES[dtype])
    x = torch.zeros(batch, time, input_size, dtype=DTYPES[dtype], device=dev)
    mask = torch.zeros(batch, time, dtype=torch.bool, device=dev) if resets else None
    return KernelCall(cell, x, None, mask, needs_grad=not inference)
