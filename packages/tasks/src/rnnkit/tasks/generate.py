"""Step-by-step inference with a trained model: sampling text, rolling a forecast forward.

A recurrent model needs its whole past only through its state, so generation reads the prompt
once (one forward over it, which may use the fast parallel kernels) and then advances one token
at a time, one step per layer, never re-running the prefix. :func:`incremental` gives that
interface (:class:`Incremental`) for every model with the state cache of
:mod:`rnnkit.models.cache` (rnnkit's networks with per-step outputs); any model with
``prefill`` and ``step`` methods of the signatures below is used as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from rnnkit.tasks.reuse import LoadedRun


@runtime_checkable
class Incremental(Protocol):
    """A model that reads a prefix once, then advances one step at a time.

    Inputs are token ids (``(B, T)`` for a prefix, ``(B,)`` for a step) or features
    (``(B, T, F)``, ``(B, F)``); outputs are the model's per-step outputs ``(B, C)`` at the last
    position read.
    """

    def prefill(self, x: Tensor) -> tuple[Tensor, Any]:
        """Read ``x`` (the whole prefix); ``(output at its last step (B, C), state)``."""
        ...

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Advance by one input ``x_t``; ``(output (B, C), state)``."""
        ...


class _CachedSteps:
    """:class:`Incremental` over a model's state cache
    (:class:`rnnkit.models.cache.CachedModel`): the prefix through its ``prefill`` (the full
    forward, returning the cache), then one ``step`` per input (one step per layer)."""

    def __init__(self, model: Any, backend: str) -> None:
        self.model, self.backend = model, backend

    def prefill(self, x: Tensor) -> tuple[Tensor, Any]:
        out, cache = self.model.prefill(x, backend=self.backend)
        last: Tensor = out[:, -1]
        return last, cache

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        out, cache = self.model.step(x_t, state)
        return out, cache


def incremental(model: nn.Module, backend: str = "auto") -> Incremental:
    """The step-by-step interface of ``model`` (see the module docstring).

    A model with the state cache of :mod:`rnnkit.models.cache` (``init_cache``, ``prefill``
    and ``step``: rnnkit's :class:`~rnnkit.models.SequenceModel`,
    :class:`~rnnkit.models.networks.SSMNetwork` and
    :class:`~rnnkit.models.hybrid.HybridNetwork`) is stepped through it; ``backend`` runs the
    prefix. Any other model with ``prefill`` and ``step`` methods (:class:`Incremental`) is
    used as it is. Raises ``ValueError`` for a model that has neither; the cache's
    ``prefill`` raises it for one that pools over the sequence (a classifier) or has a
    bidirectional stack.
    """
    from rnnkit.models.cache import CachedModel

    if isinstance(model, CachedModel):
        return _CachedSteps(model, backend)
    if isinstance(model, Incremental):
        return model
    raise ValueError(
        f"{type(model).__name__} cannot be stepped: give it the state cache of "
        "rnnkit.models.cache (init_cache, prefill, step) or prefill(x) and step(x_t, state) "
        "methods (rnnkit.tasks.generate.Incremental)"
    )


def next_distribution(logits: Tensor, temperature: float, top_k: int | None = None) -> Tensor:
    """Softmax of ``logits (B, V) / temperature`` in float32 over the ``top_k`` likeliest tokens
    (``None``: all); ``temperature=0``: one-hot on the argmax (greedy).
    (:func:`rnnkit.models.cache.next_token_probs`.)"""
    from rnnkit.models.cache import next_token_probs

    return next_token_probs(logits, temperature, top_k)


@dataclass(frozen=True)
class Sample:
    """One generated token: its ``id`` and the distribution ``probs (V,)`` it was drawn from."""

    id: int
    probs: Tensor


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    prompt: Tensor,
    length: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
    backend: str = "auto",
) -> Iterator[Sample]:
    """Sample ``length`` tokens after ``prompt`` from a language model, one step at a time.

    The prompt is read once (:meth:`Incremental.prefill`); each sampled token is then fed
    back with one :meth:`Incremental.step`. The same ``seed`` gives the same tokens.

    Args:
        model: a language model, token ids ``(B, T)`` -> logits ``(B, T, V)`` (in eval mode).
        prompt: ``(T,)`` int64 token ids, ``T >= 1``.
        length: tokens to generate (``>= 0``).
        temperature: divides the logits; ``0`` is greedy (always the likeliest token).
        top_k: sample among the ``top_k`` likeliest tokens only (``None``: all of them).
        seed: seeds the sampling generator (``None``: torch's global generator).
        backend: the backend that reads the prompt.

    Yields:
        :class:`Sample` per generated token, in order.
    """
    if prompt.dim() != 1 or prompt.shape[0] < 1:
        raise ValueError(f"the prompt must be a non-empty 1-D tensor of ids, got {prompt.shape}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    from rnnkit.models.cache import check_sampling

    check_sampling(temperature, top_k)
    steps = incremental(model, backend)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    logits, state = steps.prefill(prompt.to(device)[None])
    for _ in range(length):
        probs = next_distribution(logits, temperature, top_k)[0]
        token = torch.multinomial(probs, 1, generator=gen)
        yield Sample(int(token), probs)
        logits, state = steps.step(token, state)


def encode_text(text: str, vocab: str) -> Tensor:
    """``text`` as ``(len(text),)`` int64 ids into ``vocab`` (id = position of the symbol).

    Raises ``ValueError`` naming the characters ``vocab`` does not hold.
    """
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in text if c not in index})
    if unknown:
        raise ValueError(
            f"the prompt holds characters the model's vocabulary does not: "
            f"{''.join(unknown)!r} (its {len(vocab)} symbols: {vocab!r})"
        )
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def generate_text(
    run: LoadedRun,
    prompt: str,
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
    backend: str | None = None,
) -> str:
    """``length`` characters sampled after ``prompt`` by a loaded character-level LM run.

    The run's vocabulary comes from its ``config.json`` (``task_info["vocab"]``), so no
    corpus is needed. See :func:`sample_tokens` for ``temperature``, ``top_k`` and ``seed``;
    ``backend`` (default: the run's) reads the prompt. Returns the continuation only.
    """
    from rnnkit.tasks.reuse import require_use

    require_use(run.config, "generate")
    vocab: str = run.info["vocab"]
    ids = encode_text(prompt, vocab)
    samples = sample_tokens(
        run.model,
        ids,
        length,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        backend=backend or run.backend,
    )
    return "".join(vocab[s.id] for s in samples)


@torch.no_grad()
def rollout(model: nn.Module, series: Tensor, horizon: int, *, backend: str = "auto") -> Tensor:
    """Forecast ``horizon`` steps after ``series`` by feeding each forecast back as the input.

    For one-step forecasters whose output is the next input (``output_size == input_size``).
    ``series: (T, D)`` float; returns ``(horizon, D)``: row 0 is the model's output after the
    last value of ``series``, row ``k`` its output after being fed rows ``0..k-1``.
    """
    if series.dim() != 2 or series.shape[0] < 1:
        raise ValueError(f"series must be (T, D) with T >= 1, got {tuple(series.shape)}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    steps = incremental(model, backend)
    out, state = steps.prefill(series.to(device)[None])
    rows = [out[0]]
    for _ in range(horizon - 1):
        if out.shape[-1] != series.shape[-1]:
            raise ValueError(
                f"the model outputs {out.shape[-1]} values per step for {series.shape[-1]} "
                "inputs: its forecasts cannot be fed back (use --horizon 1)"
            )
        out, state = steps.step(out, state)
        rows.append(out[0])
    return torch.stack(rows).float().cpu()


__all__ = [
    "Incremental",
    "Sample",
    "encode_text",
    "generate_text",
    "incremental",
    "next_distribution",
    "rollout",
    "sample_tokens",
]
