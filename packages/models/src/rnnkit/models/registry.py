"""timm/torchvision-style model registry: ``create_model(name, **cfg)``, ``list_models(pattern)``.

Models are registered by plugins through the ``rnnkit_register_models`` hook; this module only
looks them up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from rnnkit.core.errors import check_keywords
from rnnkit.core.listing import matches
from rnnkit.core.plugins import get_host


def list_models(
    pattern: str | Iterable[str] | None = None, *, exclude: str | Iterable[str] | None = None
) -> list[str]:
    """Registered model names, sorted.

    Patterns select names as ``rnnkit list models PATTERN`` does (see
    :mod:`rnnkit.core.listing`): without glob characters a pattern matches the names containing
    it, with them (``"*lstm*"``) it is a glob over the whole name; case-insensitive.

    Args:
        pattern: pattern(s) a name must match (any of them).
        exclude: pattern(s) removing names afterwards.
    """
    names = get_host().models.names()
    if pattern is not None:
        pats = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in names if any(matches(n, p) for p in pats)]
    if exclude is not None:
        ex = [exclude] if isinstance(exclude, str) else list(exclude)
        names = [n for n in names if not any(matches(n, p) for p in ex)]
    return names


def get_model_builder(name: str) -> Callable[..., Any]:
    """The builder registered as ``name`` (unknown names raise with the closest ones)."""
    return get_host().models.get(name).obj


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in get_host().models


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword configuration ``config``.

    A keyword the builder does not take raises
    :class:`~rnnkit.core.errors.UnknownKeywordError` naming it and listing the builder's
    keywords (builders taking ``**kwargs`` pass them on to their cell, which checks them).
    """
    builder = get_model_builder(name)
    check_keywords("model", name, builder, config)
    model = builder(**config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model builder {name!r} returned {type(model).__name__}, not nn.Module")
    return model
