"""N-parity and N-DMS curricula for leaky RNNs with trainable timescales (``rnnkit curriculum``).

After Khajehabdollahi, Zeraati et al. (ICLR 2024, arXiv 2309.12927): a network learns to
integrate over ``N`` past bits with ``N`` raised step by step.

- ``single``: one readout trained on ``N`` alone; when its accuracy reaches ``threshold`` the
  same readout moves on to ``N + 1`` (earlier ``N`` may be forgotten).
- ``multi``: one readout per ``N`` in ``2..N_max``, all trained together (the loss is the sum
  of their cross-entropies); when the mean accuracy and that of ``N_max`` both reach
  ``threshold`` a head for ``N_max + 1`` is added.
- ``none`` (the uncurriculated baseline): a fresh network trained on one ``N`` for the whole
  budget; :func:`baseline_reach` tries ``N = n_start, n_start + 1, ...`` with the same budget
  each and reports the largest ``N`` solved before the first failure.

Batches are drawn afresh every step as in the paper: a length ``T`` per batch
(parity ``U{N_max+2 .. ceil(2.5 N_max + 2) - 1}``, DMS ``U{N_max+2 .. 4 N_max + 2}``), parity
bits Bernoulli(p) with ``p ~ U(0, 1)`` per batch, DMS bits Bernoulli(0.5). Accuracy is measured
on a fresh batch of ``eval_batch`` sequences every ``eval_every`` steps and, with
``early_eval``, also after any step whose own training batch (fresh data, scored before the
update) met the threshold; only that evaluation batch decides "solved". Its parity sequences
draw ``p`` one by one, so that the batch covers the range of ``p`` as the paper's average over
50 test batches does: with one ``p`` for the whole batch, a ``p`` near 0 or 1 makes parity
almost constant, and a network at chance for ``p = 0.5`` was declared to solve ``N = 19``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models.cells import LeakyRNN
from rnnkit.tasks._util import add_threads_option, torch_threads

CURRICULUM_HELP = "single-head vs multi-head curricula on N-parity / N-DMS (leaky RNN, learned tau)"
CURRICULUM_TASKS = ("parity", "dms")
MODES = ("single", "multi", "none")
OPTIMIZERS = ("adam", "sgd")


def curriculum_batch(
    task: str,
    ns: Sequence[int],
    batch: int,
    g: torch.Generator,
    *,
    p_per_sequence: bool = False,
) -> tuple[Tensor, Tensor]:
    """One batch for the ``N`` values ``ns``: ``(x (batch, T, 1) float, y (batch, len(ns))
    int64)``, ``T`` drawn from the range of ``max(ns)`` (see the module docstring).

    ``p_per_sequence`` (parity only): draw the bits' probability ``p ~ U(0, 1)`` for each
    sequence instead of once for the batch, so that the batch covers the whole range of ``p``
    (the evaluation batches: one ``p`` near 0 or 1 makes parity almost constant, which a
    network that cannot compute it still scores)."""
    if task not in CURRICULUM_TASKS:
        raise ValueError(f"task must be one of {CURRICULUM_TASKS}, got {task!r}")
    n_max = max(ns)
    p: float | Tensor
    if task == "parity":
        t_lo, t_hi = n_max + 2, math.ceil(n_max + 2 + 1.5 * n_max) - 1
        p = (
            torch.rand(batch, 1, generator=g)
            if p_per_sequence
            else float(torch.rand((), generator=g))
        )
    else:
        t_lo, t_hi, p = n_max + 2, n_max + 2 + 3 * n_max, 0.5
    t = int(torch.randint(t_lo, t_hi + 1, (), generator=g))
    bits = (torch.rand(batch, t, generator=g) < p).long()
    if task == "parity":
        y = torch.stack([bits[:, -n:].sum(-1) % 2 for n in ns], -1)
    else:
        y = torch.stack([(bits[:, -n] == bits[:, -1]).long() for n in ns], -1)
    return bits.float()[..., None], y


class MultiHeadLeakyRNN(nn.Module):
    """A :class:`~rnnkit.models.cells.LeakyRNN` (leaky-ReLU, ``tau ~ 1 + U(0, 1)`` trained)
    read out at the last step by one linear head per ``N``.

    ``forward(x: (B, T, 1)) -> (B, heads, 2)`` logits.
    """

    def __init__(self, hidden_size: int, heads: int = 1) -> None:
        super().__init__()
        self.cell = LeakyRNN(1, hidden_size, activation="leaky_relu", tau_init=(1.0, 2.0))
        self.heads = nn.ModuleList(nn.Linear(hidden_size, 2) for _ in range(heads))

    def add_head(self) -> None:
        """Append a fresh head (on the cell's device and dtype)."""
        w = self.cell.recurrent
        self.heads.append(nn.Linear(self.cell.hidden_size, 2, device=w.device, dtype=w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.cell(x)
        last = y[:, -1]
        return torch.stack([head(last) for head in self.heads], 1)


@dataclass
class CurriculumResult:
    """What :func:`run_curriculum` returns.

    ``n_reached``: the largest ``N`` solved (accuracy ``>= threshold``; ``n_start - 1`` if
    none); ``steps``: training steps used; ``history``: ``(step, N trained, accuracy)`` at each
    evaluation (``N trained`` is ``N_max`` for ``multi``; the accuracy is that of ``N_max``);
    ``tau``: the learned timescales' ``mean``, ``median`` and ``max``; ``taus``: all of them.
    """

    task: str
    mode: str
    n_reached: int
    steps: int
    seconds: float
    tau: dict[str, float]
    history: list[tuple[int, int, float]] = field(default_factory=list)
    taus: list[float] = field(default_factory=list)
    n_start: int = 2

    @property
    def solved_any(self) -> bool:
        """Whether any ``N`` was solved (``n_reached >= n_start``)."""
        return self.n_reached >= self.n_start


#: the ``rnnkit curriculum`` option of each :func:`run_curriculum` argument it sets (the CLI's
#: errors name the option typed, not the Python argument)
_FLAGS = {
    "task": "--task",
    "mode": "--mode",
    "optimizer": "--optimizer",
    "budget": "--steps",
    "hidden_size": "--hidden-size",
    "batch_size": "--batch-size",
    "eval_every": "--eval-every",
    "max_n": "--max-n",
    "lr": "--lr",
    "threshold": "--threshold",
}


def _check(name: str, value: object, *, low: float, integer: bool = True) -> None:
    ok = (
        isinstance(value, int) if integer else isinstance(value, (int, float))
    ) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < low:  # type: ignore[arg-type]
        kind = "an int" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} >= {low}, got {value!r}")


def _check_settings(
    task: str,
    mode: str,
    *,
    optimizer: str,
    budget: int,
    hidden_size: int,
    batch_size: int,
    eval_every: int,
    eval_batch: int,
    n_start: int,
    max_n: int,
    lr: float,
    clip: float,
    threshold: float,
    flags: bool = False,
) -> None:
    """The argument checks of :func:`run_curriculum` (``ValueError`` naming the argument, or
    with ``flags`` the ``rnnkit curriculum`` option that sets it)."""

    def name(arg: str) -> str:
        return _FLAGS.get(arg, arg) if flags else arg

    if task not in CURRICULUM_TASKS:
        raise ValueError(f"{name('task')} must be one of {CURRICULUM_TASKS}, got {task!r}")
    if mode not in MODES:
        raise ValueError(f"{name('mode')} must be one of {MODES}, got {mode!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{name('optimizer')} must be one of {OPTIMIZERS}, got {optimizer!r}")
    for arg, value in (
        ("budget", budget),
        ("hidden_size", hidden_size),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
        ("eval_batch", eval_batch),
    ):
        _check(name(arg), value, low=1)
    _check(name("n_start"), n_start, low=2)
    _check(name("max_n"), max_n, low=n_start)
    _check(name("lr"), lr, low=0, integer=False)
    _check(name("clip"), clip, low=0, integer=False)
    if lr <= 0 or clip <= 0:
        raise ValueError(f"{name('lr') if lr <= 0 else name('clip')} must be > 0")
    if not 0 < threshold <= 1:
        raise ValueError(f"{name('threshold')} must be in (0, 1], got {threshold!r}")


def run_curriculum(
    task: str = "parity",
    mode: str = "multi",
    *,
    budget: int = 2000,
    n_start: int = 2,
    hidden_size: int = 128,
    batch_size: int = 128,
    lr: float = 5e-3,
    optimizer: str = "adam",
    clip: float = 2.0,
    threshold: float = 0.98,
    eval_every: int = 50,
    eval_batch: int = 512,
    max_n: int = 100,
    seed: int = 0,
    early_eval: bool = True,
    reset_optimizer: bool = False,
) -> CurriculumResult:
    """Train one network under ``mode`` for at most ``budget`` steps (see the module
    docstring). ``optimizer``: ``"adam"`` (default, for small budgets) or ``"sgd"`` (the
    paper's: momentum 0.1, Nesterov). ``mode="none"`` trains on ``N = n_start`` only and
    stops once solved. Stops early when ``max_n`` is solved. ``early_eval``: also evaluate
    after a step whose training batch met the threshold (default; ``False``: every
    ``eval_every`` steps only). ``reset_optimizer``: ``multi`` builds a fresh optimiser when
    it adds a head (``False``, the default: the new head joins the optimiser, which keeps its
    state)."""
    _check_settings(
        task,
        mode,
        optimizer=optimizer,
        budget=budget,
        hidden_size=hidden_size,
        batch_size=batch_size,
        eval_every=eval_every,
        eval_batch=eval_batch,
        n_start=n_start,
        max_n=max_n,
        lr=lr,
        clip=clip,
        threshold=threshold,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    g_eval = torch.Generator().manual_seed(seed + 10_000)
    model = MultiHeadLeakyRNN(hidden_size, 1)
    ns = [n_start]  # the N of each head (single, none: one head whose N changes)

    def make_opt() -> torch.optim.Optimizer:
        if optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.1, nesterov=True)

    opt = make_opt()
    reached, history, step, since = n_start - 1, [], 0, 0
    while step < budget:
        model.train()
        x, y = curriculum_batch(task, ns, batch_size, g)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1), reduction="sum") / len(y)
        opt.zero_grad()
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        step += 1
        since += 1
        # this batch was drawn fresh and scored before the update: when it already meets the
        # threshold, an evaluation now can end this N without waiting for the next periodic one
        with torch.no_grad():
            tacc = (logits.argmax(-1) == y).float().mean(0)
        promising = early_eval and bool(tacc[-1] >= threshold) and bool(tacc.mean() >= threshold)
        if since < eval_every and step != budget and not promising:
            continue
        since = 0
        model.eval()
        with torch.no_grad():
            x, y = curriculum_batch(task, ns, eval_batch, g_eval, p_per_sequence=True)
            acc = (model(x).argmax(-1) == y).float().mean(0)
        history.append((step, max(ns), float(acc[-1])))
        solved = bool(acc[-1] >= threshold) and bool(acc.mean() >= threshold)
        if not solved:
            continue
        reached = max(ns)
        if mode == "none" or reached >= max_n:
            break
        if mode == "single":
            ns = [ns[0] + 1]
        else:
            ns.append(max(ns) + 1)
            model.add_head()
            if reset_optimizer:
                opt = make_opt()  # the new head's parameters join the optimiser
            else:  # keep Adam's moments: a fresh optimiser restarts every parameter's steps
                opt.add_param_group({"params": list(model.heads[-1].parameters())})
    taus = model.cell.tau().detach().double()
    return CurriculumResult(
        task=task,
        mode=mode,
        n_reached=reached,
        steps=step,
        seconds=time.perf_counter() - start,
        tau={"mean": float(taus.mean()), "median": float(taus.median()), "max": float(taus.max())},
        history=history,
        taus=taus.tolist(),
        n_start=n_start,
    )


def baseline_reach(task: str = "parity", *, n_start: int = 2, **kw: object) -> CurriculumResult:
    """The uncurriculated baseline: fresh networks trained on ``N = n_start, n_start + 1,
    ...`` alone, each with the whole budget, until one fails; the result is that of the last
    run, with ``n_reached`` the largest ``N`` solved and ``steps`` the total over the runs."""
    total, n, last = 0, n_start, None
    while True:
        r = run_curriculum(task, "none", n_start=n, **kw)  # type: ignore[arg-type]
        total += r.steps
        r.n_start = n_start
        if last is not None and r.n_reached < n:
            r.n_reached = last.n_reached
        last = r
        if r.n_reached < n or n >= int(kw.get("max_n", 100)):  # type: ignore[call-overload]
            break
        n += 1
    last.steps = total
    return last


def configure_curriculum(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit curriculum``."""
    p.add_argument("--task", choices=CURRICULUM_TASKS, default="parity")
    p.add_argument(
        "--mode",
        choices=MODES,
        nargs="+",
        default=list(MODES),
        help="curricula to run (default: all three; none = uncurriculated baseline)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="training steps per network (the budget; the baseline gets it per N)",
    )
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--threshold", type=float, default=0.98)
    p.add_argument(
        "--eval-every",
        type=int,
        default=50,
        help="evaluate on a fresh batch every this many steps (and, unless --no-early-eval, "
        "after any step whose training batch met the threshold)",
    )
    p.add_argument(
        "--no-early-eval",
        dest="early_eval",
        action="store_false",
        help="evaluate every --eval-every steps only",
    )
    p.add_argument(
        "--reset-optimizer",
        action="store_true",
        help="multi-head: a fresh optimiser at each new head (default: the head joins it)",
    )
    p.add_argument("--max-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    add_threads_option(p)
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the results to FILE as JSON; without FILE, print them as JSON on stdout "
        "and nothing else there",
    )


def run_curriculum_command(args: argparse.Namespace) -> int:
    """``rnnkit curriculum``: train each mode and print the N reached and the timescales."""
    # a mode named twice would train the same curriculum twice: once each, in the order given
    args.mode = list(dict.fromkeys(args.mode))
    kw: dict[str, Any] = {
        "budget": args.steps,
        "hidden_size": args.hidden_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "threshold": args.threshold,
        "eval_every": args.eval_every,
        "early_eval": args.early_eval,
        "reset_optimizer": args.reset_optimizer,
        "max_n": args.max_n,
        "seed": args.seed,
    }
    # checked before the table's header, so a bad flag prints one line only
    _check_settings(
        args.task,
        args.mode[0],
        optimizer=args.optimizer,
        budget=args.steps,
        hidden_size=args.hidden_size,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_batch=512,
        n_start=2,
        max_n=args.max_n,
        lr=args.lr,
        clip=2.0,
        threshold=args.threshold,
        flags=True,
    )
    with torch_threads(args.threads):
        results = _run_modes(args, kw)
    records = [asdict(r) for r in results]
    if args.json == "-":
        print(json.dumps(records))
    elif args.json is not None:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


def _run_modes(args: argparse.Namespace, kw: dict[str, Any]) -> list[CurriculumResult]:
    """Train each of ``args.mode`` with the keywords ``kw`` and print the table's rows (unless
    a bare ``--json`` asked for JSON only)."""
    results = []
    table = args.json != "-"  # a bare --json prints the JSON document only
    if table:
        print(
            f"{'mode':>7} {'N reached':>9} {'steps':>6} {'tau mean':>8} {'median':>7} "
            f"{'max':>7} {'seconds':>7}"
        )
    for mode in args.mode:
        if mode == "none":
            r = baseline_reach(args.task, **kw)
        else:
            r = run_curriculum(args.task, mode, **kw)
        results.append(r)
        if table:
            # n_reached is n_start - 1 when nothing was solved: say so rather than print an N
            reached = str(r.n_reached) if r.solved_any else "none"
            print(
                f"{mode:>7} {reached:>9} {r.steps:>6} {r.tau['mean']:>8.3f} "
                f"{r.tau['median']:>7.3f} {r.tau['max']:>7.3f} {r.seconds:>7.1f}",
                flush=True,
            )
    if table and not all(r.solved_any for r in results):
        print(
            f"none: no N solved (N = {results[0].n_start} below the {args.threshold:.0%} threshold)"
        )
    return results
