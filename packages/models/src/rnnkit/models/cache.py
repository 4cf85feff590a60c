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

Language models (token ids in, logits out) also get ``generate(prompt, max_new, temperature,
top_k)`` from :class:`Generates`: the prompt read once by ``prefill``, then one ``step`` per
sampled token.

Networks of residual blocks (:class:`~rnnkit.models.networks.SSMNetwork`,
:class:`~rnnkit.models.hybrid.HybridNetwork`) get the three methods from :class:`BlockCache`.

The cache (:class:`ModelCache`) holds one entry per layer that carries something from one
step to the next: a cell's state ``NamedTuple`` (its ``state_spec`` shapes with a leading
batch dimension) or, for a causal attention layer, the keys and values of every position read
so far (:class:`KVCache`, written in place into a buffer that doubles when full: a decoded
token costs no copy of the positions before it). A cache belongs to the model and the batch it
was made for: a step with another batch size, or on a model whose layers or widths are not the
ones the cache was made with, raises :class:`CacheMismatchError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.errors import RnnkitError
from rnnkit.core.validation import check_positive_int

__all__ = [
    "BlockCache",
    "CacheMismatchError",
    "CachedBlock",
    "CachedModel",
    "Generates",
    "KVBuffer",
    "KVCache",
    "ModelCache",
    "check_cache",
    "check_cell_state",
    "check_inputs",
    "check_sampling",
    "next_token_probs",
    "require_per_step",
]


class CacheMismatchError(RnnkitError, ValueError):
    """A cache that does not fit the call: made for another batch size, for a model with other
    layers or widths, or in another dtype; the message names the layer and the shapes."""


class KVBuffer:
    """Preallocated storage for the keys and values of a chain of :class:`KVCache` entries:
    ``keys, values: (B, kv_heads, capacity, head_dim)``, of which the first ``filled``
    positions are written.

    Each decoding step writes its position in place after the ``filled`` ones and returns a
    cache that views one position more; the caches of earlier steps view a prefix of the same
    storage, which later writes leave unchanged. ``filled`` tells whether a cache is the
    longest one on the buffer, the only one that may write in place (see
    :meth:`KVCache.appended`).
    """

    __slots__ = ("filled", "keys", "values")

    def __init__(self, keys: Tensor, values: Tensor, filled: int) -> None:
        self.keys, self.values, self.filled = keys, values, filled

    @property
    def capacity(self) -> int:
        """The positions the buffer holds before it must be replaced by a larger one."""
        return int(self.keys.shape[2])

    def holds(self, cache: KVCache) -> bool:
        """Whether ``cache`` views this buffer's first ``filled`` positions (so the next
        position may be written in place for it)."""
        return (
            cache.keys.shape[2] == self.filled
            and cache.keys.data_ptr() == self.keys.data_ptr()
            and cache.values.data_ptr() == self.values.data_ptr()
        )


class KVCache(NamedTuple):
    """The keys and values a causal attention layer has seen: ``keys, values:
    (B, kv_heads, L, head_dim)`` for ``L`` positions read, and the :class:`KVBuffer` they are
    views of (``None``: they are tensors of their own, as after a full forward or a prefill
    from the start)."""

    keys: Tensor
    values: Tensor
    buffer: KVBuffer | None = None

    def appended(self, keys: Tensor, values: Tensor) -> KVCache:
        """The cache of these ``L`` positions followed by ``keys, values: (B, kv_heads, t,
        head_dim)``.

        Without gradients (decoding), the new positions are written in place into the buffer
        when this cache is the longest one on it and it has room; otherwise a buffer of twice
        the positions (at least ``L + t``) is allocated and the ``L`` positions copied once, so
        ``n`` one-position steps copy ``O(n)`` positions in all, not ``O(n^2)``. A cache
        stepped a second time (a branch) gets a buffer of its own: the first branch's positions
        stay as they were. When autograd records the call, the result is a concatenation (as
        a write in place would change tensors saved for the backward pass of earlier steps).
        """
        length, need = self.keys.shape[2], self.keys.shape[2] + keys.shape[2]
        if torch.is_grad_enabled() and any(
            t.requires_grad for t in (self.keys, self.values, keys, values)
        ):
            return KVCache(torch.cat((self.keys, keys), 2), torch.cat((self.values, values), 2))
        if length == 0:  # nothing to keep: take the new positions as they are
            return KVCache(keys, values)
        buf = self.buffer
        if buf is None or not buf.holds(self) or need > buf.capacity:
            b, h, _, d = self.keys.shape
            shape = (b, h, max(need, 2 * length), d)
            buf = KVBuffer(self.keys.new_empty(shape), self.values.new_empty(shape), length)
            buf.keys[:, :, :length] = self.keys
            buf.values[:, :, :length] = self.values
        buf.keys[:, :, length:need] = keys
        buf.values[:, :, length:need] = values
        buf.filled = need
        return KVCache(buf.keys[:, :, :need], buf.values[:, :, :need], buf)


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
    if kv.buffer is not None and not isinstance(kv.buffer, KVBuffer):
        raise CacheMismatchError(
            f"{where}: the KVCache's buffer must be a KVBuffer or None, got "
            f"{type(kv.buffer).__name__}"
        )
    want = (batch, heads, length, head_dim)
    for name, t in (("keys", kv.keys), ("values", kv.values)):
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


def require_per_step(model: object, pooling: str) -> None:
    """Refuse the state cache of a model that pools over the sequence (a classifier)."""
    if pooling != "none":
        raise ValueError(
            f"{type(model).__name__} pools over the sequence (pooling={pooling!r}): it has one "
            "output per sequence, not one per step, and cannot be stepped"
        )


def check_inputs(x: Tensor, *, ids: bool, step: bool) -> None:
    """Refuse inputs of the wrong rank for ``prefill`` (``step=False``: ids ``(B, T)`` or
    features ``(B, T, F)``) or ``step`` (``step=True``: ids ``(B,)`` or features ``(B, F)``),
    with a ``ValueError`` naming the shape expected: a whole sequence given to ``step`` (or a
    single position to ``prefill``) would otherwise fail deep in a layer, or be read wrongly."""
    rank = (1 if ids else 2) + (0 if step else 1)
    if x.dim() == rank:
        return
    call, want = ("step", "one position") if step else ("prefill", "a sequence")
    shape = ("(B,)" if ids else "(B, F)") if step else ("(B, T)" if ids else "(B, T, F)")
    kind = "token ids" if ids else "features"
    other = "prefill reads a sequence" if step else "step reads one position"
    raise ValueError(
        f"{call} reads {want} of {kind}, shape {shape}; got x of shape {tuple(x.shape)} ({other})"
    )


def check_sampling(temperature: float, top_k: int | None) -> None:
    """Raise ``ValueError`` unless ``temperature >= 0`` and ``top_k`` is ``None`` or a
    positive int (the sampling settings of :func:`next_token_probs`)."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None:
        check_positive_int("top_k", top_k)


def next_token_probs(logits: Tensor, temperature: float, top_k: int | None = None) -> Tensor:
    """Sampling distribution ``(..., V)`` from logits ``(..., V)``, in float32: the softmax of
    ``logits / temperature`` over the ``top_k`` likeliest tokens (``None``: all of them; the
    others get probability 0); ``temperature=0`` is one-hot on the argmax (greedy)."""
    check_sampling(temperature, top_k)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits / temperature, dim=-1)


class Generates:
    """``generate`` for a language model with the state cache (a :class:`CachedModel` whose
    inputs are token ids and whose outputs are logits over the same vocabulary)."""

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        *,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> Tensor:
        """The prompt followed by ``max_new`` sampled tokens: ids ``(B, T)`` ->
        ``(B, T + max_new)``.

        The prompt is read once (``prefill``, on ``backend``); each token is then drawn from
        :func:`next_token_probs` of the last logits and fed back with one ``step`` (one step
        per layer), so the tokens are the ones a full forward over the growing sequence would
        give. Runs in the model's current mode (call ``eval()`` first to turn off dropout).

        Args:
            prompt: ``(B, T)`` int64 token ids, ``T >= 1``.
            max_new: tokens to add (``>= 0``).
            temperature: divides the logits; ``0`` is greedy (the likeliest token).
            top_k: sample among the ``top_k`` likeliest tokens only (``None``: all).
            generator: the random generator of the draws (``None``: torch's global one).
            backend: the backend that reads the prompt.
        """
        model = cast(CachedModel, self)
        if prompt.dim() != 2 or prompt.shape[1] < 1 or prompt.is_floating_point():
            raise ValueError(
                f"prompt must be token ids of shape (B, T) with T >= 1, got {prompt.dtype} of "
                f"shape {tuple(prompt.shape)}"
            )
        count: object = max_new  # checked as a user may pass it, not as annotated
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"max_new must be an int >= 0, got {max_new!r}")
        check_sampling(temperature, top_k)
        out, cache = model.prefill(prompt, backend=backend)
        logits, tokens = out[:, -1], [prompt]
        for i in range(max_new):
            probs = next_token_probs(logits, temperature, top_k)
            token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            tokens.append(token.to(prompt.dtype))
            if i + 1 < max_new:
                logits, cache = model.step(token[:, 0], cache)
        return torch.cat(tokens, dim=1)


class CachedBlock(Protocol):
    """A residual block of a :class:`BlockCache` network: its entry in the cache, checked, and
    one step on ``(B, width)``."""

    def init_state(
        self, batch: int, *, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> Any:
        """The block's cache entry before any input."""
        ...

    def check_state(
        self, state: object, *, batch: int, length: int, like: Tensor, where: str
    ) -> Any:
        """``state`` checked against the block (:class:`CacheMismatchError` naming ``where``
        if it does not fit), for ``batch`` sequences after ``length`` positions."""
        ...

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One position, ``(B, width) -> (B, width)``, and the state after it."""
        ...


class BlockCache(Generates):
    """``init_cache``, ``prefill`` and ``step`` (:class:`CachedModel`) of a network ``encoder
    -> blocks -> norm -> head`` whose blocks are :class:`CachedBlock`: one cache entry per
    block, in order.

    The network (an ``nn.Module`` listing this class first among its bases) provides
    ``pooling``, ``encoder``, ``norm``, ``head``, :meth:`_blocks` and :meth:`_trunk`, and may
    rename its layers in error messages (:meth:`_cache_where`) and add positional information
    to a step's input (:meth:`_at_position`)."""

    pooling: str
    encoder: nn.Module
    norm: nn.Module
    head: nn.Module

    def _blocks(self) -> Sequence[CachedBlock]:
        """The blocks, in order."""
        raise NotImplementedError

    def _trunk(
        self, x: Tensor, cache: ModelCache | None, backend: str
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """The encoder and the blocks over ``x`` from ``cache`` (``None``: the start), with
        ``backend``: ``(features (B, T, width), each block's state after the last step)``."""
        raise NotImplementedError

    def _cache_where(self, i: int) -> str:
        """How an error message names block ``i``."""
        return f"block {i}"

    def _at_position(self, y: Tensor, position: int) -> Tensor:
        """The encoded step input ``y: (B, width)`` at sequence position ``position`` (the
        number of positions read before it): unchanged here; a network with positional
        embeddings adds its own (and refuses a position past its limit)."""
        del position
        return y

    def init_cache(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelCache:
        """The cache before any input: each block's initial state (a cell's initial state, an
        attention layer's empty :class:`KVCache`)."""
        require_per_step(self, self.pooling)
        states = tuple(b.init_state(batch, device=device, dtype=dtype) for b in self._blocks())
        return ModelCache(states, batch, 0)

    def _states(self, cache: object, h: Tensor) -> list[Any]:
        """Each block's state in ``cache``, checked against the block and ``h: (B, ...)``."""
        blocks = self._blocks()
        valid = check_cache(cache, batch=h.shape[0], layers=len(blocks))
        return [
            b.check_state(
                s, batch=valid.batch, length=valid.length, like=h, where=self._cache_where(i)
            )
            for i, (b, s) in enumerate(zip(blocks, valid.states, strict=True))
        ]

    def _start_states(self, cache: ModelCache | None, h: Tensor) -> list[Any]:
        """:meth:`_states` of ``cache``; ``None`` for every block where ``cache`` is ``None``."""
        return [None] * len(self._blocks()) if cache is None else self._states(cache, h)

    def prefill(
        self, x: Tensor, cache: ModelCache | None = None, *, backend: str = "auto"
    ) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, T, output_size)`` over ``x`` (ids ``(B, T)`` or ``(B, T, F)``) from
        ``cache`` (``None``: the start) and the cache after the last position."""
        require_per_step(self, self.pooling)
        check_inputs(x, ids=isinstance(self.encoder, nn.Embedding), step=False)
        y, finals = self._trunk(x, cache, backend)
        out: Tensor = self.head(self.norm(y))
        length = 0 if cache is None else cache.length
        return out, ModelCache(finals, y.shape[0], length + y.shape[1])

    def step(self, x_t: Tensor, cache: ModelCache | None = None) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, output_size)`` after one input (ids ``(B,)`` or ``(B, F)``) and the
        cache after it: one step per block; ``None``: from :meth:`init_cache`."""
        require_per_step(self, self.pooling)
        check_inputs(x_t, ids=isinstance(self.encoder, nn.Embedding), step=True)
        y = self.encoder(x_t)
        if cache is None:
            cache = self.init_cache(y.shape[0], device=y.device, dtype=y.dtype)
        states = self._states(cache, y)
        y = self._at_position(y, cache.length)
        finals = []
        for block, s in zip(self._blocks(), states, strict=True):
            y, s = block.step(y, s)
            finals.append(s)
        out: Tensor = self.head(self.norm(y))
        return out, cache.advanced(tuple(finals), 1)
