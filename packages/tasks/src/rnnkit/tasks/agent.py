"""The recurrent trunk and the command-line options shared by the reinforcement-learning
commands: ``rnnkit rl`` (:mod:`rnnkit.tasks.rl`, the PPO actor-critic) and ``rnnkit
world-model`` (:mod:`rnnkit.tasks.world_model`, the world model).

:class:`RecurrentStack` is ``num_layers`` residual layers around any registered cell
(:class:`ResidualCellLayer`). It runs a whole sequence at once, the state restarting wherever
``resets`` says (a scan backend parallelises that over time), or one step at a time, the rows
named by ``starts`` restarting first; both give the same numbers, so an agent can act step by
step and be trained on the whole rollout.

:func:`add_agent_options` and :func:`add_run_options` add the options both commands take
(``--cell``, ``--hidden-size``, ``--state-size``, ``--layers``, ``--set``; ``--seed``,
``--backend``, ``--threads``, ``--out``, ``--json``), each command keeping its own defaults
and help; :func:`agent_config` turns them into the keywords both commands' configurations
share, and :func:`emit_result` writes ``--out`` and prints ``--json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.api import create_cell
from rnnkit.tasks._util import parse_set

__all__ = [
    "AgentDefaults",
    "AgentOptions",
    "RecurrentStack",
    "ResidualCellLayer",
    "add_agent_options",
    "add_run_options",
    "agent_config",
    "emit_result",
]


# --- the recurrent trunk ----------------------------------------------------------------------


class ResidualCellLayer(nn.Module):
    """``x + Linear(GELU(cell(LayerNorm(x))))`` on ``(B, T, width)``, for any registered cell
    (the linear layer maps the cell's output width back to ``width``, so the cell need not be
    channel-wise).

    Args:
        cell: a registered cell name.
        width: the layer's input and output width (the cell's input size).
        state_size: the cell's ``hidden_size``.
        **cell_kwargs: passed to the cell.
    """

    def __init__(self, cell: str, width: int, state_size: int, **cell_kwargs: Any) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.cell = create_cell(cell, input_size=width, hidden_size=state_size, **cell_kwargs)
        self.mix = nn.Linear(self.cell.output_size, width)

    def forward(
        self, x: Tensor, state: Any, resets: Tensor | None, backend: str
    ) -> tuple[Tensor, Any]:
        """``x: (B, T, width)`` from the cell's ``state`` (``None``: its initial state),
        ``resets: (B, T)`` bool -> ``((B, T, width), the cell's final state)``."""
        y, final = self.cell(self.norm(x), state, backend=backend, resets=resets)
        return x + self.mix(F.gelu(y)), final

    def step(self, x_t: Tensor, state: Any, starts: Tensor | None) -> tuple[Tensor, Any]:
        """One step on ``(B, width)``: equal to :meth:`forward` on a sequence of length 1
        (``starts: (B,)`` bool, the rows whose state restarts), without the per-call checks
        and dispatch of a whole-sequence call, which dominate the cost of a single step."""
        if starts is not None:
            init = self.cell.init_state(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
            keep = starts.logical_not()
            state = type(state)._make(
                torch.where(keep.view(-1, *([1] * (f.dim() - 1))), f, f0)
                for f, f0 in zip(state, init, strict=True)
            )
        y, new = self.cell.step_unchecked(self.norm(x_t), state)
        return x_t + self.mix(F.gelu(y)), new


class RecurrentStack(nn.ModuleList):
    """``num_layers`` :class:`ResidualCellLayer` of the same cell, one state per layer.

    A ``ModuleList`` of the layers (the parameters are named ``<i>.norm``, ``<i>.cell``,
    ``<i>.mix``), callable on a whole sequence and steppable.

    Args:
        cell: a registered cell name (``"s5"``, ``"lstm"``, ``"mamba"``, ...).
        width: the layers' width.
        state_size: the cell's ``hidden_size`` (the state size of S5 and S4D, the hidden width
            of an LSTM, Mamba's inner channels).
        num_layers: at least 1.
        **cell_kwargs: passed to every cell.
    """

    def __init__(
        self, cell: str, width: int, state_size: int, num_layers: int, **cell_kwargs: Any
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        super().__init__(
            ResidualCellLayer(cell, width, state_size, **cell_kwargs) for _ in range(num_layers)
        )

    def _layers(self) -> list[ResidualCellLayer]:
        return [cast(ResidualCellLayer, layer) for layer in self]

    def initial_state(self, batch: int) -> list[Any]:
        """One initial cell state per layer, each field ``(batch, ...)``."""
        return [layer.cell.init_state(batch) for layer in self._layers()]

    def forward(
        self,
        h: Tensor,
        state: Sequence[Any] | None = None,
        *,
        resets: Tensor | None = None,
        backend: str = "auto",
    ) -> tuple[Tensor, list[Any]]:
        """``h: (B, T, width)`` from ``state`` (one per layer; ``None``: the initial states),
        ``resets: (B, T)`` bool (the state entering step ``t`` is the initial state where
        true) -> ``((B, T, width), the final state per layer)``."""
        layers = self._layers()
        states: Sequence[Any] = state if state is not None else [None] * len(layers)
        finals = []
        for layer, s in zip(layers, states, strict=True):
            h, s = layer(h, s, resets, backend)
            finals.append(s)
        return h, finals

    def step(
        self, h: Tensor, state: Sequence[Any], starts: Tensor | None = None
    ) -> tuple[Tensor, list[Any]]:
        """One step: ``h: (B, width)``, ``starts: (B,)`` bool (the rows whose state restarts)
        -> ``((B, width), the state per layer)``; equal to :meth:`forward` on a sequence of
        length 1 with ``resets=starts[:, None]``."""
        finals = []
        for layer, s in zip(self._layers(), state, strict=True):
            h, s = layer.step(h, s, starts)
            finals.append(s)
        return h, finals


# --- command-line options ---------------------------------------------------------------------


class AgentDefaults(Protocol):
    """What :func:`add_agent_options` and :func:`add_run_options` read their defaults from
    (a command's configuration dataclass, such as ``PPOConfig()``)."""

    @property
    def cell(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def backend(self) -> str: ...
    @property
    def threads(self) -> int | None: ...


class AgentOptions(TypedDict):
    """The configuration keywords :func:`agent_config` reads from the options."""

    cell: str
    hidden_size: int
    state_size: int | None
    num_layers: int
    cell_kwargs: dict[str, Any]
    seed: int
    backend: str
    threads: int | None


def add_agent_options(
    p: Any,
    defaults: AgentDefaults,
    *,
    cell_help: str,
    state_help: str = "the cell's hidden_size; default --hidden-size",
) -> None:
    """Add ``--cell``, ``--hidden-size``, ``--state-size``, ``--layers`` and ``--set`` to
    ``p`` (an ``argparse.ArgumentParser``); ``cell_help`` says whose cell it is (the default
    follows it in brackets)."""
    d = defaults
    p.add_argument("--cell", default=d.cell, help=f"{cell_help} ({d.cell})")
    p.add_argument(
        "--hidden-size", type=int, default=d.hidden_size, help=f"layer width ({d.hidden_size})"
    )
    p.add_argument("--state-size", type=int, help=state_help)
    p.add_argument(
        "--layers", type=int, default=d.num_layers, dest="num_layers", help=f"({d.num_layers})"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra cell keyword (VALUE parsed as JSON when it can be), repeatable",
    )


def add_run_options(p: Any, defaults: AgentDefaults, *, writes: str) -> None:
    """Add ``--seed``, ``--backend``, ``--threads``, ``--out`` and ``--json`` to ``p``;
    ``writes`` names the result file ``--out`` receives."""
    d = defaults
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed ({d.seed})")
    p.add_argument("--backend", default=d.backend, help=f"kernel backend ({d.backend})")
    p.add_argument(
        "--threads", type=int, default=d.threads, help=f"torch CPU threads ({d.threads})"
    )
    p.add_argument("--out", metavar="DIR", help=f"write {writes} there")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def agent_config(args: Any) -> AgentOptions:
    """The configuration keywords of :func:`add_agent_options` and :func:`add_run_options`'
    options in ``args`` (an ``argparse.Namespace``), ``--set`` items parsed as keywords."""
    return AgentOptions(
        cell=args.cell,
        hidden_size=args.hidden_size,
        state_size=args.state_size,
        num_layers=args.num_layers,
        cell_kwargs=parse_set(args.set),
        seed=args.seed,
        backend=args.backend,
        threads=args.threads,
    )


def emit_result(args: Any, filename: str, data: dict[str, Any]) -> bool:
    """Write ``data`` as ``filename`` into ``--out`` (when given) and print it as one line of
    JSON with ``--json``; returns whether it printed (the caller prints its summary
    otherwise)."""
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / filename).write_text(json.dumps(data, indent=1) + "\n")
    if args.json:
        print(json.dumps(data))
    return bool(args.json)
