"""The state cache of rnnkit's networks, for generation one token at a time.

A network with per-step outputs (:class:`~rnnkit.models.SequenceModel`,
:class:`~rnnkit.models.networks.SSMNetwork`, :class:`~rnnkit.models.hybrid.HybridNetwork`)
exposes three methods (:class:`CachedModel`):

- ``init_cache(batch)``: the cache before any input (zero states, empty key/value caches);
- ``prefill(x, cache=None)``: the full forward over ``x: (B, T)`` ids or ``(B, T, F)``
  features, from ``cache`` (``None``: the start), returning every step's outputs
  ``(B, T, C)`` -- equal to ``forward(x)`` -- and the cache after the last step;
- ``step(x_t, cache)``: one input ``(B,)`` ids or ``(B, F)`` features, returning the outputs
  ``(B, C)`` and the cache after it, at the cost of one step per layer.

The cache (:class:`ModelCache`) holds one entry per layer that carries something from one
step to the next: a cell's state ``NamedTuple`` (its ``state_spec`` shapes with a leading
batch dimension) or, for a causal attention layer, the keys and values of every position read
so far (:class:`KVCache`). A cache belongs to the model and the batch it was made for: a step
with another batch size, or on a model whose layers or widths are not the ones the cache was
made with, raises :class:`CacheMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.errors import RnnkitError

__all__ = [
    "CacheMismatchError",
    "CachedModel",
    "KVCache",
    "ModelCache",
    "check_cache",
    "check_cell_state",
]


class CacheMismatchError(RnnkitError, ValueError):
    """A cache that does not fit the call: made for another batch size, for a model with other
    layers or widths, or in another dtype; the message names the layer and the shapes."""


class KVCache(NamedTuple):
    """The keys and values a causal attention layer has seen: ``keys, values:
    (B, kv_heads, L, head_dim)`` for ``L`` positions read."""

    keys: Tensor
    values: Tensor


@dataclass(frozen=True)
class ModelCache:
    """What a network carries from one step to the next.

    Attributes:
        states: one entry per stateful layer, in order: a cell's state ``NamedTuple``
            (fields ``(B, ...)``; for a :class:`~rnnkit.models.SequenceModel`, one entry: its
            recurrent stack's state, fields ``(num_layers, B, ...)``) or a :class:`KVCache`.
        batch: ``B``, the number of sequences.
        length: the number of positions read so far.
    """

    states: tuple[Any, ...]
    batch: int
    length: int

    def advanced(self, states: tuple[Any, ...], steps: int) -> ModelCache:
        """The cache after ``steps`` more positions, holding ``states``."""
        return ModelCache(states, self.batch, self.length + steps)


@runtime_checkable
class CachedModel(Protocol):
    """A network that generates through a :class:`ModelCache` (see the module docstring)."""

    def init_cache(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelCache:
        """The cache before any input, for ``batch`` sequences."""
        ...

    def prefill(
        self, x: Tensor, cache: ModelCache | None = None, *, backend: str = "auto"
    ) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, T, C)`` over ``x`` (from ``cache``) and the cache after it."""
        ...

    def step(self, x_t: Tensor, cache: ModelCache | None = None) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, C)`` after one more input and the cache after it."""
        ...


def check_cache(cache: object, *, batch: int, layers: int) -> ModelCache:
    """Check that ``cache`` is a :class:`ModelCache` for ``batch`` sequences with one entry for
    each of ``layers`` stateful layers.

    Raises:
        TypeError: not a :class:`ModelCache`.
        CacheMismatchError: another batch size or another number of layers.
    """
    if not isinstance(cache, ModelCache):
        raise TypeError(f"cache must be a ModelCache (from init_cache or prefill), got {cache!r}")
    if cache.batch != batch:
        raise CacheMismatchError(
            f"the cache holds the state of {cache.batch} sequences, the input has {batch}: "
            "a cache continues the batch it was made for (init_cache(batch) for another)"
        )
    if len(cache.states) != layers:
        raise CacheMismatchError(
            f"the cache holds {len(cache.states)} layer states, the model has {layers} stateful "
            "layers: it was made for another model"
        )
    return cache


def check_cell_state(
    cell: Cell[Any], state: object, *, batch: int, like: Tensor, where: str
) -> Any:
    """``cell.check_state`` with its complaint (a shape, dtype or device that differs from the
    cell's ``state_spec``) raised as :class:`CacheMismatchError` naming ``where``."""
    try:
        return cell.check_state(state, batch=batch, like=like)
    except (TypeError, ValueError) as exc:
        raise CacheMismatchError(
            f"{where}: {exc}; the cache was made for a model with other shapes (or dtype)"
        ) from exc


def check_kv_cache(
    kv: object, *, batch: int, heads: int, head_dim: int, length: int, like: Tensor, where: str
) -> KVCache:
    """Check a :class:`KVCache` holds ``(batch, heads, length, head_dim)`` keys and values in
    ``like``'s dtype and device; :class:`CacheMismatchError` naming ``where`` if not."""
    if not isinstance(kv, KVCache):
        raise CacheMismatchError(f"{where}: expected a KVCache, got {type(kv).__name__}")
    want = (batch, heads, length, head_dim)
    for name, t in zip(KVCache._fields, kv, strict=True):
        if tuple(t.shape) != want:
            raise CacheMismatchError(
                f"{where}: {name} must have shape (batch, kv_heads, length, head_dim) = {want}, "
                f"got {tuple(t.shape)}; the cache was made for a model with other shapes"
            )
        if t.dtype != like.dtype or t.device != like.device:
            raise CacheMismatchError(
                f"{where}: {name} is {t.dtype} on {t.device}, the layer computes in "
                f"{like.dtype} on {like.device}"
            )
    return kv
