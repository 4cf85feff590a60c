"""Input checks shared by every cell and backend; each error names the argument at fault."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from rnnkit.core.cell import Cell
    from rnnkit.core.state import StateField


def cell_dtype_device(cell: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of a module's first floating parameter (``None`` if it has none)."""
    for p in cell.parameters():
        if p.is_floating_point():
            return p.dtype, p.device
    return None, None


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive ``int`` (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_device(device: str | torch.device, *, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that this machine has, else a ``ValueError`` naming
    ``name``: a string torch cannot parse (``"gpu"``, ``"CPU"``), CUDA or MPS where torch
    has none, or a CUDA index beyond the visible devices. Other device types pass as parsed.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{name} must name a torch device (cpu, cuda, cuda:N, mps, ...; lower case), "
            f"got {device!r}"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available")
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:  # a bare "cuda" has index None: the current device
            raise ValueError(
                f"device {str(device)!r} was asked for but this machine has {count} CUDA "
                f"device(s) (cuda:0 to cuda:{count - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but MPS is not available")
    return dev


def check_heads(hidden_size: int, heads: object) -> int:
    """``heads`` if it is a positive ``int`` dividing ``hidden_size``, else a ``ValueError``."""
    n = check_positive_int("heads", heads)
    if hidden_size % n:
        raise ValueError(
            f"heads must be a positive divisor of hidden_size={hidden_size} (heads must divide "
            f"it into equal head widths), got {heads!r}"
        )
    return n


def check_sequence(cell: Cell[Any], x: object, *, name: str = "x") -> Tensor:
    """Check ``x`` is a ``(B, T, input_size)`` floating tensor matching the cell's dtype/device."""
    return _check_input(cell, x, name=name, rank=3, what="(batch, time, input_size)")


def check_step_input(cell: Cell[Any], x: object, *, name: str = "x_t") -> Tensor:
    """Check ``x`` is a ``(B, input_size)`` floating tensor matching the cell's dtype/device."""
    return _check_input(cell, x, name=name, rank=2, what="(batch, input_size)")


def _check_input(cell: Cell[Any], x: object, *, name: str, rank: int, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {what}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(
            f"{name} must have {rank} dimensions {what}, got shape {tuple(x.shape)}"
            + (" (rnnkit is batch-first)" if rank == 3 and x.dim() == 2 else "")
        )
    if x.shape[-1] != cell.input_size:
        raise ValueError(
            f"{name} has input width {x.shape[-1]} but the cell expects input_size="
            f"{cell.input_size} (shape {tuple(x.shape)}, expected {what})"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    dtype, device = cell_dtype_device(cell)
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the cell's parameters are {dtype}; "
            f"convert one of them (e.g. cell.to({x.dtype}) or x.to({dtype}))"
        )
    if device is not None and x.device != device:
        raise ValueError(
            f"{name} is on device {x.device} but the cell's parameters are on {device}"
        )
    return x


def check_state(
    spec: Sequence[StateField],
    state: object,
    *,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    state_type: type[Any],
    name: str = "state",
) -> tuple[Tensor, ...]:
    """Check a state against ``spec`` and return it as an instance of ``state_type``.

    A plain tuple or list with the right fields in order is accepted and converted.
    """
    if not isinstance(state, (tuple, list)):
        raise TypeError(
            f"{name} must be a {state_type.__name__} (a NamedTuple of tensors), "
            f"got {type(state).__name__}"
        )
    if len(state) != len(spec):
        raise ValueError(
            f"{name} must have {len(spec)} fields ({', '.join(f.name for f in spec)}), "
            f"got {len(state)}"
        )
    for field, value in zip(spec, state, strict=True):
        label = f"{name}.{field.name}"
        if not isinstance(value, Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(value).__name__}")
        want = field.full_shape(batch)
        if tuple(value.shape) != want:
            raise ValueError(f"{label} must have shape {want}, got {tuple(value.shape)}")
        want_dtype = field.resolve_dtype(dtype)
        if value.dtype != want_dtype:
            raise TypeError(f"{label} must have dtype {want_dtype}, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{label} must be on device {device}, got {value.device}")
    out: tuple[Tensor, ...] = state_type._make(state)
    return out


def check_resets(resets: object, *, batch: int, time: int, device: torch.device) -> Tensor:
    """Check ``resets`` is a bool tensor of shape ``(batch, time)`` on ``device``."""
    if not isinstance(resets, Tensor):
        raise TypeError(
            f"resets must be a bool torch.Tensor of shape ({batch}, {time}), "
            f"got {type(resets).__name__}"
        )
    if resets.dtype != torch.bool:
        raise TypeError(f"resets must have dtype torch.bool, got {resets.dtype}")
    if tuple(resets.shape) != (batch, time):
        raise ValueError(
            f"resets must have shape (batch, time) = ({batch}, {time}), got {tuple(resets.shape)}"
        )
    if resets.device != device:
        raise ValueError(f"resets must be on device {device}, got {resets.device}")
    return resets


def check_lengths(lengths: object, *, batch: int, time: int) -> Tensor:
    """Check ``lengths`` holds ``batch`` integers in ``[0, time]``; return them int64 on the CPU.

    A tensor (any integer dtype, on any device: a CUDA tensor is copied to the host, one
    synchronisation) or a sequence of ints is accepted, as ``pack_padded_sequence`` does.
    """
    what = f"an integer tensor or list of shape ({batch},) with values in [0, {time}]"
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be {what}, got dtype {lengths.dtype}")
        out = lengths.detach().to(device="cpu", dtype=torch.int64)
    elif isinstance(lengths, Sequence) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in lengths
    ):
        out = torch.tensor(list(lengths), dtype=torch.int64)
    else:
        raise TypeError(f"lengths must be {what}, got {type(lengths).__name__}")
    if tuple(out.shape) != (batch,):
        raise ValueError(f"lengths must have shape (batch,) = ({batch},), got {tuple(out.shape)}")
    if batch:
        low, high = int(out.min()), int(out.max())
        if low < 0 or high > time:
            raise ValueError(
                f"lengths must be in [0, time] = [0, {time}], got values from {low} to {high}"
            )
    return out
