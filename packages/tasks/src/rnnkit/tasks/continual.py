"""Continual learning on split digits: a recurrent hypernetwork against plain fine-tuning.

**Tasks** (:func:`split_digits`): scikit-learn's 8x8 digits (the 1,197 / 300 / 300 split of
``digits_rows``, pixels flattened to 64 features) cut into five binary tasks, digits
(0, 1), (2, 3), (4, 5), (6, 7), (8, 9); in task ``t`` label 0 is the first digit and 1 the
second. The task id is known at training and test time (task-incremental learning).

**Methods** (:func:`run_continual`), each trained on the tasks in order, ``steps`` Adam
steps per task, never revisiting earlier data:

- ``hypernet``: ``rnn_hypernet`` generates the weights of an MLP ``64 -> 32 -> 2`` per task
  embedding, with the output regulariser (``model.regularization``) keeping the weights it
  generates for earlier tasks' embeddings where they were;
- ``finetune``: the same MLP ``64 -> 32 -> 2`` trained directly on each task in turn;
- ``finetune_multihead``: the MLP's hidden layer shared, one output layer per task (the
  usual task-incremental fine-tuning baseline).

**Metrics**: ``R[i, j]``, the test accuracy on task ``j`` after training on task ``i``;
``average_accuracy = mean_j R[T-1, j]`` and ``forgetting = mean_{j < T-1} (R[j, j] -
R[T-1, j])`` (how much each task lost since it was learnt).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.validation import check_positive_int
from rnnkit.tasks._util import add_threads_option, generator, torch_threads
from rnnkit.tasks.base import Split, TaskData
from rnnkit.tasks.digits import digits_data

#: the digit pairs of the five tasks
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
METHODS: tuple[str, ...] = ("hypernet", "finetune", "finetune_multihead")


def split_digits(seed: int = 0, pairs: Sequence[tuple[int, int]] = PAIRS) -> list[TaskData]:
    """One binary :class:`TaskData` per digit pair: inputs ``(N, 64)`` float in ``[0, 1]``,
    targets ``(N,)`` int64, 0 for the pair's first digit and 1 for its second."""
    if not pairs:
        raise ValueError("pairs must name at least one pair of digits")
    for pair in pairs:
        digits = tuple(pair)
        if len(digits) != 2 or digits[0] == digits[1] or not all(0 <= d <= 9 for d in digits):
            raise ValueError(f"pairs must hold pairs of two different digits 0-9, got {pair!r}")
    data = digits_data(seed)
    out = []
    for a, b in pairs:
        parts = []
        for name in ("train", "valid", "test"):
            s = data.split(name)
            keep = (s.targets == a) | (s.targets == b)
            parts.append(Split(s.inputs[keep].reshape(-1, 64), (s.targets[keep] == b).long()))
        out.append(TaskData(parts[0], parts[1], parts[2], {"digits": (a, b)}))
    return out


class _MultiHead(nn.Module):
    """Shared hidden layer, one output layer per task."""

    def __init__(self, sizes: Sequence[int], tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(sizes[1], sizes[-1]) for _ in range(tasks))
        self.current_task = 0

    def forward(self, x: Tensor, *, task: int | None = None) -> Tensor:
        t = self.current_task if task is None else task
        out: Tensor = self.heads[t](self.trunk(x))
        return out


def _build(method: str, sizes: Sequence[int], tasks: int, hyper: dict[str, Any]) -> nn.Module:
    if method == "hypernet":
        from rnnkit.models import create_model

        return create_model(
            "rnn_hypernet",
            input_size=sizes[0],
            output_size=sizes[-1],
            hidden_sizes=tuple(sizes[1:-1]),
            tasks=tasks,
            **hyper,
        )
    if method == "finetune":
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
    if method == "finetune_multihead":
        if len(sizes) != 3:
            raise ValueError(f"finetune_multihead takes one hidden layer, got sizes {sizes!r}")
        return _MultiHead(sizes, tasks)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _logits(model: nn.Module, x: Tensor, task: int) -> Tensor:
    out: Tensor = model(x) if isinstance(model, nn.Sequential) else model(x, task=task)
    return out


@torch.no_grad()
def _accuracy(model: nn.Module, split: Split, task: int) -> float:
    model.eval()
    pred = _logits(model, split.inputs, task).argmax(-1)
    model.train()
    return int((pred == split.targets).sum()) / max(len(split), 1)


@dataclass
class ContinualResult:
    """Accuracies of one method: ``matrix[i][j]`` is the test accuracy on task ``j`` after
    training on task ``i``; ``average_accuracy`` and ``forgetting`` as in the module
    docstring; ``drift`` (hypernetwork only, else NaN) is the mean over the earlier tasks of
    ``||theta_t(end) - theta_t(learnt)|| / ||theta_t(learnt)||``, how far the weights
    generated for task ``t`` moved after task ``t`` was learnt."""

    method: str
    matrix: list[list[float]]
    average_accuracy: float
    forgetting: float
    seconds: float
    drift: float = float("nan")
    config: dict[str, Any] = field(default_factory=dict)


def summarise(matrix: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(average_accuracy, forgetting)`` of an accuracy matrix ``R (T, T)``."""
    t = len(matrix)
    if t == 0 or any(len(row) != t for row in matrix):
        raise ValueError("matrix must be a non-empty square list of accuracies")
    final = matrix[-1]
    average = sum(final) / t
    forgetting = sum(matrix[j][j] - final[j] for j in range(t - 1)) / (t - 1) if t > 1 else 0.0
    return average, forgetting


def run_continual(
    method: str,
    tasks: Sequence[TaskData],
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    hidden: int = 32,
    seed: int = 0,
    split: str = "test",
    hyper: dict[str, Any] | None = None,
) -> ContinualResult:
    """Train ``method`` (one of :data:`METHODS`) on ``tasks`` in order and score it.

    Args:
        method: ``"hypernet"``, ``"finetune"`` or ``"finetune_multihead"``.
        tasks: from :func:`split_digits`; inputs ``(N, F)``, binary targets.
        steps: Adam steps per task (a fresh optimiser per task).
        batch_size, lr: of each step.
        hidden: the target MLP's hidden width (``F -> hidden -> 2``).
        seed: initialisation and batch order.
        split: where the accuracy matrix is measured (``"valid"`` or ``"test"``).
        hyper: extra ``rnn_hypernet`` keywords (``beta``, ``hidden_size``, ``cell``, ...).
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("hidden", hidden)):
        check_positive_int(name, value)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if not tasks:
        raise ValueError("tasks must hold at least one task")
    started = time.perf_counter()
    torch.manual_seed(seed)
    sizes = (int(tasks[0].train.inputs.shape[-1]), hidden, 2)
    model = _build(method, sizes, len(tasks), dict(hyper or {}))
    generate: Any = getattr(model, "generate", None)
    matrix: list[list[float]] = []
    learnt: list[Tensor] = []  # hypernet: the weights generated for each task once learnt
    g = generator(seed, 5)
    for t, data in enumerate(tasks):
        remember: Any = getattr(model, "remember", None)
        if callable(remember):
            remember(t)
        elif isinstance(model, _MultiHead):
            model.current_task = t
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        n = len(data.train)
        for _ in range(steps):
            idx = torch.randint(n, (min(batch_size, n),), generator=g)
            loss = F.cross_entropy(
                _logits(model, data.train.inputs[idx], t), data.train.targets[idx]
            )
            reg: Any = getattr(model, "regularization", None)
            if callable(reg):
                loss = loss + reg(0.0)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
        matrix.append([_accuracy(model, tasks[j].split(split), j) for j in range(len(tasks))])
        if callable(generate):
            with torch.no_grad():
                learnt.append(generate(t).detach().clone())
    average, forgetting = summarise(matrix)
    drift = float("nan")
    if learnt and len(tasks) > 1:
        with torch.no_grad():
            final = [generate(t) for t in range(len(tasks) - 1)]
        drift = sum(
            float((f - w).norm() / w.norm()) for f, w in zip(final, learnt, strict=False)
        ) / (len(tasks) - 1)
    config = {"steps": steps, "batch_size": batch_size, "lr": lr, "hidden": hidden, "seed": seed}
    config.update(hyper or {})
    return ContinualResult(
        method, matrix, average, forgetting, time.perf_counter() - started, drift, config
    )


# --- rnnkit continual ------------------------------------------------------------------------

CONTINUAL_HELP = (
    "continual learning on split digits (5 binary tasks of 2 digits): a recurrent "
    "hypernetwork with output regularisation against plain fine-tuning of its target "
    "network; prints average accuracy and forgetting"
)


def configure_continual(p: Any) -> None:
    """Arguments of ``rnnkit continual`` (``p``: an ``argparse.ArgumentParser``)."""
    p.add_argument(
        "--method",
        action="append",
        choices=METHODS,
        help="method to run, repeatable (default: all three)",
    )
    p.add_argument("--steps", type=int, default=300, help="Adam steps per task (300)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (32)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    p.add_argument("--hidden", type=int, default=32, help="target MLP hidden width (32)")
    p.add_argument("--beta", type=float, default=0.01, help="output regulariser weight (0.01)")
    p.add_argument("--cell", default="lstm", help="hypernetwork cell (lstm)")
    p.add_argument("--hyper-hidden", type=int, default=64, help="hypernetwork width (64)")
    p.add_argument("--chunk-size", type=int, default=128, help="weights per hypernet step (128)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training (0)")
    p.add_argument("--split", default="test", choices=("valid", "test"), help="scored split")
    add_threads_option(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run_continual_command(args: Any) -> int:
    """Run ``rnnkit continual``."""
    with torch_threads(args.threads):
        return _run_continual_command(args)


def _run_continual_command(args: Any) -> int:
    tasks = split_digits(args.seed)
    hyper = {
        "beta": args.beta,
        "cell": args.cell,
        "hidden_size": args.hyper_hidden,
        "chunk_size": args.chunk_size,
    }
    results = []
    for method in args.method or METHODS:
        results.append(
            run_continual(
                method,
                tasks,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                hidden=args.hidden,
                seed=args.seed,
                split=args.split,
                hyper=hyper if method == "hypernet" else None,
            )
        )
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
        return 0
    print(f"split digits, {len(tasks)} tasks, {args.steps} steps per task, seed {args.seed}")
    print(
        f"{'method':<20} {'average acc.':>12} {'forgetting':>10} {'drift':>7} {'seconds':>8}"
        "  final per task"
    )
    for r in results:
        final = " ".join(f"{a:.3f}" for a in r.matrix[-1])
        drift = "-" if r.drift != r.drift else f"{r.drift:.4f}"
        print(
            f"{r.method:<20} {r.average_accuracy:>12.4f} {r.forgetting:>10.4f} {drift:>7} "
            f"{r.seconds:>8.1f}  {final}"
        )
    return 0
