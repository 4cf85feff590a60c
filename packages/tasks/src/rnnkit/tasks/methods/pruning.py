"""Pruning the recurrent weights of a trained network, and the accuracy-vs-sparsity curve.

Masks apply to the recurrent matrices of the gated cells (``elman``, ``gru``, ``lstm``: the
parameter ``recurrent: (G, heads, D, D)``, gate ``g`` mapping ``h`` to its pre-activation by
``R_g h``; ``R_g[j, i]`` is the connection from unit ``i`` to unit ``j``). A mask is
``(G, heads, D, D)`` of 0/1; ``sparsity`` is the fraction of recurrent weights set to zero.

Methods (:data:`METHODS`):

- ``magnitude``: the smallest ``|w|`` over all recurrent weights of the model (global).
- ``magnitude_gate``: the smallest ``|w|`` within each gate's matrix separately (Darji's
  masked GRU/LSTM layers prune per weight matrix, gates chunked as in ``torch.nn``).
- ``erdos_renyi``: a random directed graph on the units, each connection kept with
  probability ``1 − sparsity``; one graph for every gate of a layer.
- ``watts_strogatz``: each unit receives from its ``k = round((1 − sparsity) · D)`` nearest
  units on a ring (itself included), each connection rewired to a random source with
  probability ``beta``; one graph for every gate. (Darji's Sparse-RNNs use such graphs,
  layered into a DAG, for the input-to-hidden masks and skip layers; here they mask the
  recurrent matrix, as the issue asks.)
- ``lattice``: after Sengupta (arXiv 2502.16525), in our reading: the units form a poset
  under "``i`` influences ``j``" (reachability in an acyclic graph of the strongest
  connections, summed ``|w|`` over gates, added strongest first while acyclic, ``3 D`` of
  them); the units that are meet-irreducible in its lattice completion (``x`` is not the meet
  of the units strictly above it: the common lower bounds of those are more than ``↓x``) are
  kept whole: their incoming and outgoing connections are pruned last. The rest is pruned by
  magnitude.

:func:`prune_curve` trains a dense model with the task's trainer, then for every method and
sparsity prunes a copy, scores it, fine-tunes it for ``retrain_steps`` with the mask held
(masked gradients) and scores it again.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

__all__ = [
    "METHODS",
    "PruneRow",
    "apply_masks",
    "lattice_critical_units",
    "make_masks",
    "prune_curve",
    "recurrent_parameters",
]

METHODS: tuple[str, ...] = (
    "magnitude",
    "magnitude_gate",
    "erdos_renyi",
    "watts_strogatz",
    "lattice",
)

PRUNE_HELP = (
    "prune the recurrent weights of a network trained on a task (magnitude, per-gate "
    "magnitude, Erdos-Renyi, Watts-Strogatz, lattice) and print the accuracy-vs-sparsity "
    "curve before and after a short fine-tuning"
)


def recurrent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``recurrent: (G, heads, D, D)`` parameters of the model's gated cells, in module
    order; a ValueError if there is none."""
    from rnnkit.core.cells._gated import GatedCell

    found = [m.recurrent for m in model.modules() if isinstance(m, GatedCell)]
    if not found:
        raise ValueError(
            "pruning masks the recurrent matrices of elman, gru or lstm cells; the model has none"
        )
    return found


def _keep_top(scores: Tensor, keep: int) -> Tensor:
    """A 0/1 mask of ``scores``' shape keeping the ``keep`` largest entries."""
    flat = torch.zeros(scores.numel(), dtype=scores.dtype)
    if keep > 0:
        flat[torch.topk(scores.flatten(), keep).indices] = 1.0
    return flat.view_as(scores)


def _n_keep(total: int, sparsity: float) -> int:
    return round((1.0 - sparsity) * total)


def _graph_mask(adjacency: Tensor, shape: torch.Size) -> Tensor:
    """``adjacency[j, i]`` (``i -> j``) of each head, repeated over the gates."""
    return adjacency.to(torch.float32).expand(shape).clone()


def _erdos_renyi(shape: torch.Size, sparsity: float, g: torch.Generator) -> Tensor:
    heads, d = shape[1], shape[2]
    adj = torch.rand(heads, d, d, generator=g) < (1.0 - sparsity)
    return _graph_mask(adj, shape)


def _watts_strogatz(shape: torch.Size, sparsity: float, beta: float, g: torch.Generator) -> Tensor:
    heads, d = shape[1], shape[2]
    k = _n_keep(d, sparsity)
    adj = torch.zeros(heads, d, d, dtype=torch.bool)
    offsets = [(o + 1) // 2 * (1 if o % 2 else -1) for o in range(k)]  # 0, 1, -1, 2, -2, ...
    for h in range(heads):
        for j in range(d):
            sources = [(j + o) % d for o in offsets]
            for n, i in enumerate(sources):
                if n > 0 and float(torch.rand((), generator=g)) < beta:
                    free = [s for s in range(d) if not adj[h, j, s] and s not in sources]
                    if free:
                        i = free[int(torch.randint(len(free), (), generator=g))]
                adj[h, j, i] = True
    return _graph_mask(adj, shape)


def lattice_critical_units(strength: Tensor, edges: int | None = None) -> Tensor:
    """``(D,)`` bool: the units meet-irreducible in the influence lattice of ``strength``.

    Args:
        strength: ``(D, D)``, ``strength[j, i] >= 0`` the weight of ``i -> j``.
        edges: connections of the acyclic influence graph (default ``3 D``).
    """
    d = strength.shape[0]
    edges = 3 * d if edges is None else edges
    s = strength.clone()
    s.fill_diagonal_(-1.0)
    order = torch.argsort(s.flatten(), descending=True).tolist()
    reach = torch.eye(d, dtype=torch.bool)  # reach[a, b]: b reachable from a
    added = 0
    for idx in order:
        if added >= edges:
            break
        j, i = divmod(idx, d)
        if i == j or reach[j, i]:  # i -> j would close a cycle (i reachable from j)
            continue
        # everything reaching i now reaches everything j reaches
        reach |= reach[:, i : i + 1] & reach[j : j + 1, :]
        added += 1
    leq = reach  # leq[x, y]: x <= y (y is influenced by x)
    critical = torch.zeros(d, dtype=torch.bool)
    for x in range(d):
        above = leq[x].clone()
        above[x] = False
        if not bool(above.any()):
            critical[x] = not bool(leq[:, x].all())  # maximal and not the top of P
            continue
        common = leq[:, above].all(1)  # lower bounds of every unit strictly above x
        critical[x] = not torch.equal(common, leq[:, x])
    return critical


def _lattice(weight: Tensor, sparsity: float) -> tuple[Tensor, int]:
    gates, heads, d, _ = weight.shape
    mask = torch.zeros_like(weight)
    n_critical = 0
    for h in range(heads):
        w = weight[:, h].abs()
        critical = lattice_critical_units(w.sum(0))
        n_critical += int(critical.sum())
        incident = (critical[:, None] | critical[None, :]).expand(gates, d, d)
        # lexicographic: connections of critical units first, each group by magnitude
        top = float(w.max()) + 1.0
        score = w + top * incident.to(w.dtype)
        mask[:, h] = _keep_top(score, _n_keep(w.numel(), sparsity))
    return mask, n_critical


def make_masks(
    model: nn.Module, method: str, sparsity: float, *, seed: int = 0, beta: float = 0.1
) -> list[Tensor]:
    """One 0/1 mask per :func:`recurrent_parameters` entry (same shapes).

    Args:
        model: the trained model.
        method: one of :data:`METHODS`.
        sparsity: fraction of recurrent weights to remove, in ``[0, 1)``.
        seed: seeds the random graphs.
        beta: Watts-Strogatz rewiring probability.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if not (0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    params = [p.detach().cpu().float() for p in recurrent_parameters(model)]
    g = torch.Generator().manual_seed(seed)
    if method == "magnitude":
        scores = torch.cat([p.abs().flatten() for p in params])
        flat = _keep_top(scores, _n_keep(scores.numel(), sparsity))
        pieces = torch.split(flat, [p.numel() for p in params])
        return [m.view_as(p) for m, p in zip(pieces, params, strict=True)]
    masks = []
    for p in params:
        if method == "magnitude_gate":
            per_gate = p.abs().flatten(1)
            keep = _n_keep(per_gate.shape[1], sparsity)
            masks.append(torch.stack([_keep_top(row, keep) for row in per_gate]).view_as(p))
        elif method == "erdos_renyi":
            masks.append(_erdos_renyi(p.shape, sparsity, g))
        elif method == "watts_strogatz":
            masks.append(_watts_strogatz(p.shape, sparsity, beta, g))
        else:
            masks.append(_lattice(p, sparsity)[0])
    return masks


def apply_masks(model: nn.Module, masks: Sequence[Tensor], *, hold: bool = True) -> None:
    """Zero the masked recurrent weights in place; ``hold``: also mask their gradients, so
    that fine-tuning (Adam/AdamW) keeps them at zero."""
    params = recurrent_parameters(model)
    if len(params) != len(masks):
        raise ValueError(f"masks: expected {len(params)} masks, got {len(masks)}")
    for p, m in zip(params, masks, strict=True):
        if m.shape != p.shape:
            raise ValueError(f"masks: a mask is {tuple(m.shape)}, its weight {tuple(p.shape)}")
        mask = m.to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            p.mul_(mask)
        if hold:
            hook = cast(Callable[..., Any], p.register_hook)  # untyped in torch's stubs
            hook(lambda grad, mask=mask: grad * mask)


@dataclass(frozen=True)
class PruneRow:
    """One point of the curve: the achieved ``sparsity`` of the recurrent weights, the test
    metric without and with fine-tuning."""

    method: str
    sparsity: float
    pruned: float
    retrained: float


def _evaluate(task: object, model: nn.Module, data: object) -> float:
    from rnnkit.tasks.trainer import evaluate

    metrics = evaluate(
        task,  # type: ignore[arg-type]
        model,
        data.test,  # type: ignore[attr-defined]
        data.info,  # type: ignore[attr-defined]
        device=torch.device("cpu"),
        backend="auto",
        batch_size=256,
    )
    return float(metrics[task.primary])  # type: ignore[attr-defined]


def prune_curve(
    *,
    task: str = "digits_rows",
    cell: str | None = None,
    hidden_size: int | None = None,
    steps: int | None = None,
    methods: Sequence[str] = METHODS,
    sparsities: Sequence[float] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95),
    retrain_steps: int = 100,
    seed: int = 0,
) -> tuple[float, list[PruneRow]]:
    """The dense test score and one :class:`PruneRow` per method and sparsity."""
    from rnnkit.tasks.methods import quiet_config
    from rnnkit.tasks.registry import get_task
    from rnnkit.tasks.trainer import Trainer

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods: {m!r} is not one of {', '.join(METHODS)}")
    for s in sparsities:
        if not (0.0 <= s < 1.0):
            raise ValueError(f"sparsities: {s} is not in [0, 1)")
    if retrain_steps < 0:
        raise ValueError(f"retrain_steps must be >= 0, got {retrain_steps}")
    t = get_task(task)
    model_config = {} if hidden_size is None else {"hidden_size": hidden_size}
    with tempfile.TemporaryDirectory() as tmp:
        base = quiet_config(
            task, f"{tmp}/dense", cell=cell, model_config=model_config, steps=steps, seed=seed
        )
        trainer = Trainer(base)
        trainer.run_to_end()
        dense = trainer.model
        data = trainer.data
        recurrent_parameters(dense)  # a model without gated cells fails before the sweep
        dense_score = _evaluate(t, dense, data)
        rows = []
        for method in methods:
            for n, s in enumerate(sparsities):
                model = copy.deepcopy(dense)
                apply_masks(model, make_masks(model, method, s, seed=seed))
                total = sum(p.numel() for p in recurrent_parameters(model))
                zeros = sum(int((p == 0).sum()) for p in recurrent_parameters(model))
                pruned = _evaluate(t, model, data)
                retrained = pruned
                if retrain_steps and s > 0:
                    cfg = quiet_config(
                        task,
                        f"{tmp}/{method}-{n}",
                        cell=cell,
                        model_config=model_config,
                        steps=retrain_steps,
                        eval_every=retrain_steps,
                        seed=seed,
                    )
                    tuner = Trainer(cfg, data=data, model=model)
                    tuner.run_to_end()
                    retrained = _evaluate(t, tuner.model, data)
                rows.append(PruneRow(method, zeros / total, pruned, retrained))
    return dense_score, rows


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def configure_prune(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit prune``."""
    p.add_argument("--task", default="digits_rows", help="default digits_rows")
    p.add_argument("--cell", help="elman, gru or lstm (default: the task's)")
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--steps", type=int, help="dense training steps (default: the task's)")
    p.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated (default: all five)"
    )
    p.add_argument(
        "--sparsity", default="0,0.5,0.7,0.8,0.9,0.95", help="comma-separated levels in [0, 1)"
    )
    p.add_argument(
        "--retrain-steps", type=int, default=100, help="fine-tuning steps per point (100)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", metavar="FILE", help="write the curves as a PNG")
    p.add_argument("--json", action="store_true", help="print JSON")


def plot_prune(dense: float, rows: Sequence[PruneRow], path: str, title: str) -> None:
    """Test score against sparsity, per method: pruned (dashed) and fine-tuned (solid)."""
    from pathlib import Path

    from rnnkit.tasks.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, method in enumerate(dict.fromkeys(r.method for r in rows)):
        mine = sorted((r for r in rows if r.method == method), key=lambda r: r.sparsity)
        xs = [r.sparsity for r in mine]
        color = f"C{n}"
        ax.plot(xs, [r.retrained for r in mine], "-o", color=color, ms=3, label=method)
        ax.plot(xs, [r.pruned for r in mine], "--", color=color, lw=1)
    ax.axhline(dense, color="gray", lw=1, ls=":", label=f"dense {dense:.3f}")
    ax.set_xlabel("sparsity of the recurrent weights")
    ax.set_ylabel("test score (dashed: pruned, solid: fine-tuned)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, plt, Path(path))


def run_prune(args: argparse.Namespace) -> int:
    """Run ``rnnkit prune``."""
    from rnnkit.core.listing import format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.hidden_size is not None and args.hidden_size < 1:
        raise ValueError(f"--hidden-size must be a positive integer, got {args.hidden_size}")
    dense, rows = prune_curve(
        task=args.task,
        cell=args.cell,
        hidden_size=args.hidden_size,
        steps=args.steps,
        methods=methods,
        sparsities=_floats(args.sparsity, "--sparsity"),
        retrain_steps=args.retrain_steps,
        seed=args.seed,
    )
    if args.plot:
        plot_prune(dense, rows, args.plot, f"rnnkit prune: {args.task}")
    if args.json:
        print(json.dumps({"dense": dense, "rows": [asdict(r) for r in rows]}, indent=1))
        return 0
    table = [[r.method, f"{r.sparsity:.3f}", f"{r.pruned:.4f}", f"{r.retrained:.4f}"] for r in rows]
    print(format_table(table, ["method", "sparsity", "pruned", "fine-tuned"]))
    print(f"\ndense model: test score {dense:.4f} ({args.task})")
    return 0
