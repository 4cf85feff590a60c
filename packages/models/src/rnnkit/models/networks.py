"""Generic networks: a :class:`~rnnkit.core.recurrent.Recurrent` stack with an encoder and a
head (:class:`SequenceModel`), and residual blocks of channel-wise state space cells
(:class:`SSMNetwork`). Both generate through the state cache of :mod:`rnnkit.models.cache`
(``init_cache``, ``prefill``, ``step``) when their outputs are per step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.api import create_cell
from rnnkit.core.recurrent import Recurrent
from rnnkit.models.cache import (
    BlockCache,
    CacheMismatchError,
    Generates,
    ModelCache,
    check_cache,
    check_cell_state,
    check_inputs,
    require_per_step,
)

#: How a network turns per-step features into its outputs.
POOLINGS: tuple[str, ...] = ("none", "last", "mean")


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be 'none', 'last' or 'mean', got {pooling!r}")
    return pooling


def _pool(y: Tensor, pooling: str) -> Tensor:
    """``(B, T, F)`` -> ``(B, T, F)`` for ``"none"``, ``(B, F)`` for ``"last"`` / ``"mean"``."""
    if pooling == "last":
        return y[:, -1]
    if pooling == "mean":
        return y.mean(1)
    return y


class SequenceModel(Generates, nn.Module):
    """Encoder -> recurrent stack -> linear head, for per-step or per-sequence outputs.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output (classes, targets or vocabulary).
        cell: a registered cell name.
        hidden_size, num_layers, bidirectional, dropout: of the recurrent stack.
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"`` (per-step outputs ``(B, T, output_size)``) or ``"last"``
            (the output at the last step, ``(B, output_size)``; with ``bidirectional``, the
            forward direction's output at the last step and the backward direction's at the
            first, each having read the whole sequence) or ``"mean"``.
        **cell_kwargs: passed to every cell (``heads=4``, ...).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        pooling: str = "none",
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        self.embed = nn.Embedding(vocab_size, hidden_size) if vocab_size else None
        rnn_in = hidden_size if vocab_size else input_size
        self.rnn = Recurrent(
            cell,
            rnn_in,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            **cell_kwargs,
        )
        self.head = nn.Linear(self.rnn.output_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``)."""
        if self.embed is not None:
            x = self.embed(x)
        y, _ = self.rnn(x, backend=backend, resets=resets)
        if self.pooling == "last" and self.rnn.num_directions == 2:
            # the backward direction has read the whole sequence at step 0, not at T - 1
            half = y.shape[-1] // 2
            last: Tensor = self.head(torch.cat((y[:, -1, :half], y[:, 0, half:]), -1))
            return last
        out: Tensor = self.head(_pool(y, self.pooling))
        return out

    # -- the state cache (rnnkit.models.cache) ----------------------------------------------------

    def _require_steppable(self) -> None:
        require_per_step(self, self.pooling)
        if self.rnn.num_directions != 1:
            raise ValueError(
                "the model's recurrent stack is bidirectional: its backward cells read the "
                "sequence from its end, so it cannot be stepped one token at a time"
            )

    def _encode(self, x: Tensor) -> Tensor:
        return self.embed(x) if self.embed is not None else x

    def init_cache(
        self,
        batch: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ModelCache:
        """The cache before any input: one entry, the stack's initial state (each field
        ``(num_layers, batch, ...)``)."""
        self._require_steppable()
        return ModelCache((self.rnn.init_state(batch, device=device, dtype=dtype),), batch, 0)

    def _state(self, cache: object, h: Tensor) -> Any:
        """The stack's state in ``cache``, checked against every layer's cell."""
        valid = check_cache(cache, batch=h.shape[0], layers=1)
        state = valid.states[0]
        n = len(self.rnn.cells)
        if not isinstance(state, tuple) or not all(
            isinstance(f, Tensor) and f.dim() >= 1 and f.shape[0] == n for f in state
        ):
            raise CacheMismatchError(
                f"the cache's state must be a {self.rnn.state_type.__name__} with fields of "
                f"leading size num_layers = {n}: it was made for another model"
            )
        for k in range(n):
            where = f"recurrent layer {k}"
            check_cell_state(
                self.rnn.cell(k), tuple(f[k] for f in state), batch=h.shape[0], like=h, where=where
            )
        return state

    def prefill(
        self, x: Tensor, cache: ModelCache | None = None, *, backend: str = "auto"
    ) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, T, output_size)`` over ``x`` (ids ``(B, T)`` or ``(B, T, F)``) from
        ``cache`` (``None``: the start) and the cache after the last step."""
        self._require_steppable()
        check_inputs(x, ids=self.embed is not None, step=False)
        h = self._encode(x)
        state = None if cache is None else self._state(cache, h)
        y, final = self.rnn(h, state, backend=backend)
        out: Tensor = self.head(y)
        length = 0 if cache is None else cache.length
        return out, ModelCache((final,), h.shape[0], length + h.shape[1])

    def step(self, x_t: Tensor, cache: ModelCache | None = None) -> tuple[Tensor, ModelCache]:
        """Outputs ``(B, output_size)`` after one input (ids ``(B,)`` or ``(B, F)``) and the
        cache after it; ``None``: from :meth:`init_cache`."""
        self._require_steppable()
        check_inputs(x_t, ids=self.embed is not None, step=True)
        h = self._encode(x_t)
        if cache is None:
            cache = self.init_cache(h.shape[0], device=h.device, dtype=h.dtype)
        y, final = self.rnn.step(h, self._state(cache, h))
        out: Tensor = self.head(y)
        return out, cache.advanced((final,), 1)


def _builder(pooling: str, doc: str) -> Any:
    def build(**cfg: Any) -> SequenceModel:
        cfg.setdefault("pooling", pooling)
        return SequenceModel(**cfg)

    build.__doc__ = doc
    return build


sequence_tagger = _builder("none", "per-step outputs: (B, T, input) -> (B, T, output)")
sequence_classifier = _builder("last", "one output per sequence from the last step")


def char_lm(vocab_size: int = 128, **cfg: Any) -> SequenceModel:
    """character-level language model: token ids (B, T) -> logits (B, T, vocab)"""
    return SequenceModel(0, vocab_size, vocab_size=vocab_size, pooling="none", **cfg)


class SSMBlock(nn.Module):
    """One residual block of a deep state space model, on ``(B, T, width)``: with ``mix`` (the
    S4/S4D layout) ``x + Linear(GELU(cell(LayerNorm(x))))``, without (the Mamba layout, for
    cells that mix channels themselves) ``x + cell(LayerNorm(x))``.

    The cell must keep the width (``output_size == input_size == width``: S4D, S5, LSSL, LRU,
    Mamba).
    """

    def __init__(
        self, cell: str, width: int, state_size: int, dropout: float, *, mix: bool = True, **kw: Any
    ):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cell = create_cell(cell, input_size=width, hidden_size=state_size, **kw)
        if self.cell.output_size != width:
            raise ValueError(
                f"cell {cell!r} maps {width} channels to {self.cell.output_size}: an SSM block "
                "needs a channel-wise cell (output width = input width, e.g. s4d, lru, mamba)"
            )
        self.mix: nn.Module = nn.Linear(width, width) if mix else nn.Identity()
        self.act: Callable[[Tensor], Tensor] = F.gelu if mix else _identity
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``(B, T, width) -> (B, T, width)``."""
        return self.run(x, None, backend=backend, resets=resets)[0]

    def run(
        self, x: Tensor, state: Any, *, backend: str = "auto", resets: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """``(B, T, width)`` from the cell's ``state`` (``None``: its initial state) ->
        ``((B, T, width), the cell's final state)``."""
        y, final = self.cell(self.norm(x), state, backend=backend, resets=resets)
        out: Tensor = x + self.drop(self.mix(self.act(y)))
        return out, final

    def init_state(
        self, batch: int, *, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> Any:
        """The cell's state before any input."""
        return self.cell.init_state(batch, device=device, dtype=dtype)

    def check_state(
        self, state: object, *, batch: int, length: int, like: Tensor, where: str
    ) -> Any:
        """``state`` checked against the cell (a :class:`CacheMismatchError` if it does not
        fit; ``length`` does not matter to a cell)."""
        return check_cell_state(self.cell, state, batch=batch, like=like, where=where)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One step, ``(B, width) -> (B, width)``, and the cell's next state."""
        y, new = self.cell.step(self.norm(x_t), state)
        out: Tensor = x_t + self.drop(self.mix(self.act(y)))
        return out, new


def _identity(x: Tensor) -> Tensor:
    return x


class SSMNetwork(BlockCache, nn.Module):
    """Encoder -> ``num_layers`` :class:`SSMBlock` -> final norm -> pooling -> linear head.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output.
        cell: a registered channel-wise cell (default ``"s4d"``).
        hidden_size: the model width (channels of every block).
        num_layers: number of blocks.
        state_size: the cell's ``hidden_size``: the state size per channel (S4D, LRU) or the
            inner channels (Mamba).
        dropout: after each block's mixing layer.
        mix: each block's GELU and linear mixing layer after the cell (``False``: the Mamba
            layout, see :class:`SSMBlock`).
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"``, ``"last"`` or ``"mean"`` (as :class:`SequenceModel`).
        **cell_kwargs: passed to every cell (``init="inv"``, ...).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        cell: str = "s4d",
        hidden_size: int = 64,
        num_layers: int = 2,
        state_size: int = 64,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        pooling: str = "mean",
        mix: bool = True,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        self.encoder: nn.Module = (
            nn.Embedding(vocab_size, hidden_size)
            if vocab_size
            else nn.Linear(input_size, hidden_size)
        )
        self.blocks = nn.ModuleList(
            SSMBlock(cell, hidden_size, state_size, dropout, mix=mix, **cell_kwargs)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto", resets: Tensor | None = None) -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``)."""
        y = self.encoder(x)
        for block in self.blocks:
            y = block(y, backend=backend, resets=resets)
        out: Tensor = self.head(_pool(self.norm(y), self.pooling))
        return out

    # -- the state cache (rnnkit.models.cache.BlockCache) ----------------------------------------

    def _blocks(self) -> list[SSMBlock]:
        return [cast(SSMBlock, b) for b in self.blocks]

    def _trunk(
        self, x: Tensor, cache: ModelCache | None, backend: str
    ) -> tuple[Tensor, tuple[Any, ...]]:
        y = self.encoder(x)
        finals = []
        for block, s in zip(self._blocks(), self._start_states(cache, y), strict=True):
            y, s = block.run(y, s, backend=backend)
            finals.append(s)
        return y, tuple(finals)


def ssm_classifier(**cfg: Any) -> SSMNetwork:
    """deep SSM (S4D blocks by default), one output per sequence (mean over time)"""
    cfg.setdefault("pooling", "mean")
    return SSMNetwork(**cfg)


def ssm_tagger(**cfg: Any) -> SSMNetwork:
    """deep SSM (S4D blocks by default), per-step outputs: (B, T, input) -> (B, T, output)"""
    cfg.setdefault("pooling", "none")
    return SSMNetwork(**cfg)


def _mamba_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg.setdefault("cell", "mamba")
    cfg.setdefault("mix", False)
    cfg.setdefault("hidden_size", 64)
    cfg.setdefault("state_size", 2 * int(cfg["hidden_size"]))  # inner channels: expand 2
    return cfg


def mamba_classifier(**cfg: Any) -> SSMNetwork:
    """Mamba-1 blocks (x + Mamba(LayerNorm(x))), one output per sequence (mean over time)"""
    cfg.setdefault("pooling", "mean")
    return SSMNetwork(**_mamba_defaults(cfg))


def mamba_lm(
    vocab_size: int = 128, *, input_size: int = 0, output_size: int | None = None, **cfg: Any
) -> SSMNetwork:
    """Mamba-1 language model: token ids (B, T) -> logits (B, T, vocab)"""
    # input_size: the task contract passes it (0 for token ids); the ids are embedded
    del input_size
    out = vocab_size if output_size is None else output_size
    cfg = _mamba_defaults(cfg)
    return SSMNetwork(0, out, vocab_size=vocab_size, pooling="none", **cfg)


def _mamba2_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg.setdefault("cell", "mamba2")
    cfg.setdefault("mix", False)
    cfg.setdefault("hidden_size", 64)
    cfg.setdefault("state_size", 2 * int(cfg["hidden_size"]))  # inner channels: expand 2
    return cfg


def mamba2_lm(
    vocab_size: int = 128, *, input_size: int = 0, output_size: int | None = None, **cfg: Any
) -> SSMNetwork:
    """Mamba-2 language model: token ids (B, T) -> logits (B, T, vocab)"""
    # input_size: the task contract passes it (0 for token ids); the ids are embedded
    del input_size
    out = vocab_size if output_size is None else output_size
    return SSMNetwork(0, out, vocab_size=vocab_size, pooling="none", **_mamba2_defaults(cfg))
