"""Passkey retrieval beyond the training length, and the state statistics of state collapse.

After Chen et al. ("Stuffed Mamba", 2024): a recurrent model trained on short contexts may
fail to retrieve a passkey from longer ones, and its state may "collapse" (some channels grow
without bound) past the lengths it was trained on. This module trains a model on the
``passkey`` task (:func:`rnnkit.tasks.recall.passkey_data`) with ``train_blocks`` filler
sentences and evaluates it on contexts ``factor`` times as long (``1x``, ``4x``, ``16x`` by
default; the filler grows, the key and the question stay), recording per layer how the state
evolves over the sequence.

State statistics (:func:`state_statistics`), for every cell of the model (one per layer, in
module order) at evenly spaced positions ``t`` (the state after step ``t - 1``): every field of
the cell's state except Mamba's convolution window ``conv`` (recent inputs, not memory),
flattened per example to ``s: (B, F)`` (complex states as real and imaginary parts):

- ``norm``: the mean over examples of ``||s_b||_2``;
- ``rms``, ``mean``, ``var``: of all entries of ``s`` (the paper's per-head mean, variance
  and RMS, here per layer);
- ``max_channel_rms``: the largest over entries ``f`` of the RMS of ``s[:, f]`` over
  examples, which exposes a single exploding channel that the layer's mean hides.

The model runs the sequence in chunks ending at the recorded positions, carrying the state
from chunk to chunk (``Cell.forward(x, state)``), which the cell ABI makes equal to one call
on the whole sequence; so any model built of cells (``ssm_tagger`` with ``mamba``, ``s4d``,
...; ``sequence_tagger`` with ``lstm``, ...) can be traced, bidirectional ones excepted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import add_threads_option, parse_set, torch_threads
from rnnkit.tasks.recall import passkey_data

#: the statistics :func:`state_statistics` returns, in order
STATISTICS: tuple[str, ...] = ("norm", "rms", "mean", "var", "max_channel_rms")
#: the context lengths evaluated, as multiples of the training length
DEFAULT_FACTORS: tuple[int, ...] = (1, 4, 16)
#: fields of a state that hold recent inputs rather than memory (left out of the statistics)
SKIPPED_FIELDS: frozenset[str] = frozenset({"conv"})


def passkey_length(blocks: int, *, sentence: int = 4, digits: int = 5) -> int:
    """The sequence length ``T`` of a passkey example with ``blocks`` filler sentences."""
    return blocks * sentence + 1 + 2 * digits


def blocks_for(factor: int, train_blocks: int, *, sentence: int = 4, digits: int = 5) -> int:
    """The number of filler sentences whose examples are closest to ``factor`` times as long
    as those of ``train_blocks`` (at least one)."""
    target = factor * passkey_length(train_blocks, sentence=sentence, digits=digits)
    return max(1, round((target - 1 - 2 * digits) / sentence))


def _state_matrix(state: Any) -> Tensor | None:
    """The state's memory fields flattened per example: ``(B, F)`` real, or ``None``."""
    if isinstance(state, Tensor):
        items: list[tuple[str, Tensor]] = [("h", state)]
    elif hasattr(state, "_fields"):
        items = [(name, getattr(state, name)) for name in state._fields]
    else:
        items = [(str(i), s) for i, s in enumerate(state)]
    parts = []
    for name, t in items:
        if name in SKIPPED_FIELDS or not isinstance(t, Tensor):
            continue
        t = torch.view_as_real(t) if t.is_complex() else t
        parts.append(t.detach().reshape(t.shape[0], -1).double())
    return torch.cat(parts, 1) if parts else None


def state_statistics(state: Any) -> dict[str, float]:
    """The statistics of the module docstring for one cell's state (a ``NamedTuple`` of
    ``(B, ...)`` tensors, real or complex); NaN for a state without memory fields."""
    s = _state_matrix(state)
    if s is None or s.numel() == 0:
        return dict.fromkeys(STATISTICS, math.nan)
    return {
        "norm": float(s.norm(dim=1).mean()),
        "rms": float(s.square().mean().sqrt()),
        "mean": float(s.mean()),
        "var": float(s.var(unbiased=False)),
        "max_channel_rms": float(s.square().mean(0).sqrt().max()),
    }


@dataclass
class StateTrace:
    """What :func:`trace_states` records: ``positions`` (the number of steps read) and, per
    traced cell (layer), one dict of :data:`STATISTICS` per position and forward call."""

    positions: list[int]
    layers: list[list[dict[str, float]]] = field(default_factory=list)

    def series(self, layer: int, statistic: str) -> list[float]:
        """``statistic`` of ``layer`` at each position (of the last forward call)."""
        rows = self.layers[layer][-len(self.positions) :]
        return [r[statistic] for r in rows]


def _cells(model: nn.Module) -> list[Cell[Any]]:
    if any(int(getattr(m, "num_directions", 1)) > 1 for m in model.modules()):
        raise ValueError(
            "state tracing needs a causal model: the backward cells of a bidirectional stack "
            "read the sequence from its end"
        )
    cells = [m for m in model.modules() if isinstance(m, Cell)]
    if not cells:
        raise ValueError(f"{type(model).__name__} has no rnnkit cell whose state could be traced")
    return cells


@contextmanager
def trace_states(model: nn.Module, positions: Sequence[int]) -> Iterator[StateTrace]:
    """Within the block every cell of ``model`` runs its sequences in chunks ending at
    ``positions`` (increasing step counts; the last should be the sequence length) and records
    :func:`state_statistics` after each chunk. Outputs are unchanged (see the module
    docstring). ``lengths`` (padded batches) are refused while tracing."""
    cuts = sorted({int(p) for p in positions})
    if not cuts or cuts[0] <= 0:
        raise ValueError(f"positions must be positive step counts, got {list(positions)}")
    trace = StateTrace(cuts)
    cells = _cells(model)
    for index, cell in enumerate(cells):
        trace.layers.append([])
        original = cell.forward

        def chunked(
            x: Tensor,
            state: Any = None,
            *,
            backend: str = "auto",
            resets: Tensor | None = None,
            lengths: Any = None,
            _forward: Any = original,
            _rows: list[dict[str, float]] = trace.layers[index],
        ) -> tuple[Tensor, Any]:
            if lengths is not None:
                raise ValueError("trace_states: padded batches (lengths) are not supported")
            time = x.shape[1]
            bounds = [0, *(c for c in cuts if c < time), time]
            ys = []
            for lo, hi in itertools.pairwise(bounds):
                r = None if resets is None else resets[:, lo:hi]
                y, state = _forward(x[:, lo:hi], state, backend=backend, resets=r)
                ys.append(y)
                if hi in cuts:
                    _rows.append(state_statistics(state))
            return torch.cat(ys, 1), state

        cell.forward = chunked  # type: ignore[method-assign]
    try:
        yield trace
    finally:
        for cell in cells:
            del cell.forward  # the instance attribute: back to the class's method


@dataclass
class LengthResult:
    """Passkey scores and the state trace at one context length."""

    factor: int
    blocks: int
    length: int
    metrics: dict[str, float]
    trace: StateTrace

    def as_dict(self, train_length: int) -> dict[str, Any]:
        """JSON-ready: the scores, and per layer each statistic over ``positions``, plus
        ``norm_growth``: the final norm over the norm at the training length (or at the
        nearest recorded position before it)."""
        layers = []
        for k in range(len(self.trace.layers)):
            stats = {s: self.trace.series(k, s) for s in STATISTICS}
            at_train = max(
                (i for i, p in enumerate(self.trace.positions) if p <= train_length), default=0
            )
            base = stats["norm"][at_train]
            stats_out: dict[str, Any] = dict(stats)
            stats_out["norm_growth"] = stats["norm"][-1] / base if base else math.nan
            layers.append(stats_out)
        return {
            "factor": self.factor,
            "blocks": self.blocks,
            "length": self.length,
            "metrics": self.metrics,
            "positions": self.trace.positions,
            "layers": layers,
        }


@torch.no_grad()
def evaluate_length(
    model: nn.Module,
    *,
    blocks: int,
    seed: int = 0,
    size: int = 200,
    points: int = 16,
    train_length: int | None = None,
    backend: str = "auto",
    train_size: int = 8000,
) -> LengthResult:
    """Passkey scores of ``model`` on ``size`` held-out examples with ``blocks`` filler
    sentences (one forward call), with the state traced at ``points`` evenly spaced positions
    (and at ``train_length``, when given and shorter).

    The examples are the test split of :func:`passkey_data` ``(seed, blocks=blocks)`` whose
    training split has ``train_size`` examples (the ``passkey`` task's): at the training
    length and seed they never repeat a training example.
    """
    data = passkey_data(seed, blocks=blocks, sizes=(train_size, size, size))
    x, y = data.test.inputs, data.test.targets
    time = x.shape[1]
    step = max(1, math.ceil(time / points))
    positions = sorted({*range(step, time, step), time})
    if train_length is not None and train_length < time:
        positions = sorted({*positions, train_length})
    model.eval()
    with trace_states(model, positions) as trace:
        out = model(x, backend=backend)
    metrics = {
        "exact_match": M.sequence_accuracy(out, y),
        "digit_accuracy": M.token_accuracy(out, y),
    }
    return LengthResult(0, blocks, time, metrics, trace)


def evaluate_lengths(
    model: nn.Module,
    *,
    train_blocks: int = 9,
    factors: Sequence[int] = DEFAULT_FACTORS,
    seed: int = 0,
    size: int = 200,
    points_per_train: int = 4,
    backend: str = "auto",
) -> list[LengthResult]:
    """:func:`evaluate_length` at each of ``factors`` times the training length, recording the
    state ``points_per_train`` times per training length (so ``16x`` has 64 points)."""
    if size < 1 or points_per_train < 1:
        raise ValueError(
            f"size and points_per_train must be >= 1, got {size} and {points_per_train}"
        )
    train_length = passkey_length(train_blocks)
    results = []
    for factor in factors:
        if factor < 1:
            raise ValueError(f"factors must be positive integers, got {factor}")
        blocks = blocks_for(factor, train_blocks)
        r = evaluate_length(
            model,
            blocks=blocks,
            seed=seed,
            size=size,
            points=points_per_train * factor,
            train_length=train_length,
            backend=backend,
        )
        r.factor = factor
        results.append(r)
    return results


# --- rnnkit passkey --------------------------------------------------------------------------

PASSKEY_HELP = (
    "passkey retrieval beyond the training length (state collapse, Stuffed Mamba): train a "
    "model (Mamba by default) on the passkey task, or take a finished passkey run (--run), and "
    "evaluate it at 1x, 4x and 16x the training length with per-layer state statistics over "
    "time; writes passkey_length.json into the run directory"
)

#: cells that keep their width, built into ``ssm_tagger``'s residual blocks by default
SSM_CELLS: frozenset[str] = frozenset({"mamba", "s4d", "s5", "lssl", "lru"})


def configure_passkey(p: Any) -> None:
    """Arguments of ``rnnkit passkey`` (``p``: an ``argparse.ArgumentParser``)."""
    p.add_argument("--run", metavar="DIR", help="evaluate this finished passkey run (no training)")
    p.add_argument("--cell", default="mamba", help="cell of the model (default: mamba)")
    p.add_argument(
        "--model",
        help="registered model (default: ssm_tagger for mamba, s4d, s5, lssl, lru, "
        "sequence_tagger for the other cells)",
    )
    p.add_argument("--hidden-size", type=int, default=64, help="model width (64)")
    p.add_argument("--layers", type=int, default=2, dest="num_layers", help="layers (2)")
    p.add_argument(
        "--d-state", type=int, help="Mamba's state entries per inner channel N (default 16)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model keyword (VALUE parsed as JSON when it can be), repeatable",
    )
    p.add_argument("--steps", type=int, default=600, help="training steps (600)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (3e-3)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training (0)")
    p.add_argument(
        "--blocks",
        type=int,
        default=9,
        help="filler sentences of the training examples (9: T = 47, the passkey task's)",
    )
    p.add_argument(
        "--factors",
        default="1,4,16",
        help="evaluated lengths as multiples of the training length (1,4,16)",
    )
    p.add_argument("--size", type=int, default=200, help="held-out examples per length (200)")
    p.add_argument("--points", type=int, default=4, help="state records per training length (4)")
    p.add_argument("--backend", default="auto", help="kernel backend (auto)")
    add_threads_option(p)
    p.add_argument("--out", help="run directory (default: runs/passkey-<model>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _model_config(args: Any) -> tuple[str, dict[str, Any]]:

    model = args.model or ("ssm_tagger" if args.cell in SSM_CELLS else "sequence_tagger")
    cfg: dict[str, Any] = {
        "cell": args.cell,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
    }
    if model == "ssm_tagger" and args.cell == "mamba":
        # the Mamba layout: no mixing layer after the block, 2x inner channels
        cfg.update(mix=False, state_size=2 * args.hidden_size)
    if args.d_state is not None:
        cfg["d_state"] = args.d_state
    cfg.update(parse_set(args.set))
    return model, cfg


def _factors(text: str) -> list[int]:
    try:
        factors = [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        factors = []
    if not factors or min(factors) < 1:
        raise ValueError(f"--factors expects positive integers such as 1,4,16, got {text!r}")
    return factors


def run_passkey(args: Any) -> int:
    """``rnnkit passkey``: train (or load ``--run``), evaluate at each length, report."""
    import json
    from pathlib import Path

    from rnnkit.core.listing import format_table
    from rnnkit.tasks.reuse import load_run
    from rnnkit.tasks.trainer import TrainConfig, Trainer

    factors = _factors(args.factors)
    # checked before training: a zero here used to surface as a traceback after the run
    for flag, value in (("--size", args.size), ("--points", args.points)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.run:
        loaded = load_run(args.run)
        if loaded.task.name != "passkey":
            raise ValueError(f"--run must be a passkey run, got a run of {loaded.task.name!r}")
        model, seed, out = loaded.model, loaded.seed, Path(args.run)
        train_blocks = int(loaded.info.get("blocks", 9))
        config = loaded.config
    else:
        name, model_config = _model_config(args)
        cfg = TrainConfig(
            task="passkey",
            model=name,
            model_config=model_config,
            backend=args.backend,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            seed=args.seed,
            out=args.out,
            threads=args.threads,
            progress=False if args.no_progress else None,
            plot=False,
            verbose=not args.json,
        )
        data = passkey_data(args.seed, blocks=args.blocks)
        result = Trainer(cfg, data=data).run_to_end()
        loaded = load_run(result.out)
        model, seed, out, train_blocks = loaded.model, args.seed, Path(result.out), args.blocks
        config = loaded.config
    with torch_threads(args.threads):
        results = evaluate_lengths(
            model,
            train_blocks=train_blocks,
            factors=factors,
            seed=seed,
            size=args.size,
            points_per_train=args.points,
            backend=args.backend,
        )
    train_length = passkey_length(train_blocks)
    payload = {
        "run": str(out),
        "model": config.get("model"),
        "model_kwargs": config.get("model_kwargs"),
        "train_blocks": train_blocks,
        "train_length": train_length,
        "lengths": [r.as_dict(train_length) for r in results],
    }
    (out / "passkey_length.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    rows = []
    lengths: list[dict[str, Any]] = payload["lengths"]  # type: ignore[assignment]
    for r in lengths:
        layers = r["layers"]
        rows.append(
            [
                f"{r['factor']}x",
                str(r["length"]),
                f"{r['metrics']['exact_match']:.3f}",
                f"{r['metrics']['digit_accuracy']:.3f}",
                " ".join(f"{lay['norm'][-1]:.3g}" for lay in layers),
                " ".join(f"{lay['norm_growth']:.2f}" for lay in layers),
                " ".join(f"{lay['max_channel_rms'][-1]:.3g}" for lay in layers),
            ]
        )
    header = ["length", "T", "exact match", "digit acc.", "final state norm per layer"]
    header += ["x norm at T_train", "max channel RMS"]
    print(format_table(rows, header))
    print(f"written: {out / 'passkey_length.json'}")
    return 0
