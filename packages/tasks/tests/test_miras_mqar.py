"""The Miras cells (Moneta, Yaad, Memora) and Titans' memory on MQAR: a short run in the
default test selection that must beat the no-recall shortcut, and the score runs quoted in
docs/tasks.md under the ``experiment`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.synthetic import mqar_data


def test_titans_memory_recalls_on_a_small_instance(tmp_path: Path) -> None:
    """2 pairs, L=8, vocab 16, 100 steps of 32 with Titans' memory (the cheapest of the four
    per step): the first query, which the elimination shortcut answers at 1/2, is answered
    more than 0.65 of the time (0.845 with the retention starting near 1, 0.795 before; 15 s
    on a loaded machine; Moneta took 56 s for the same budget, so only Titans runs in the
    default selection)."""
    cell = "titans"
    data = mqar_data(0, vocab=16, seq_len=8, pairs=2, sizes=(2000, 200, 200))
    cfg = TrainConfig(
        task="mqar",
        cell=cell,
        steps=100,
        batch_size=32,
        eval_every=100,
        lr=1e-2,
        model_config={"hidden_size": 16},
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=data).run()
    assert result.test["first_query_accuracy"] > 0.65


MEMORY_BOUND_TOO_SMALL = pytest.mark.xfail(
    reason=(
        "Moneta p=3, q=4 at radius 1: first query 0.270, the shortcut level; the l_4 "
        "normalisation bounds the memory (norm_4(W) <= radius / sqrt(2)) below what the "
        "bindings need, so A keeps growing and the read-out shrinks; radius=4 learns it "
        "(docs/tasks.md)"
    ),
    strict=True,
)
SWITCH_OVERSHOOTS = pytest.mark.xfail(
    reason=(
        "Yaad's default switch writes eta delta sign(e) in every coordinate once ||e|| > "
        "delta, up to sqrt(d) times the residual: it overshoots and the residuals grow "
        "(first query 0.15-0.28 in every variant tried; huber='coordinate' learns it; "
        "docs/tasks.md)"
    ),
    strict=True,
)


@pytest.mark.experiment
@pytest.mark.parametrize(
    ("cell", "seed", "options"),
    [
        ("memora", 0, {}),
        ("memora", 1, {}),
        ("titans", 0, {}),
        ("titans", 1, {}),
        ("yaad", 0, {"huber": "coordinate"}),
        ("moneta", 0, {"radius": 4.0}),
        ("moneta", 1, {"radius": 4.0}),
        pytest.param("moneta", 0, {}, marks=MEMORY_BOUND_TOO_SMALL),
        pytest.param("yaad", 0, {}, marks=SWITCH_OVERSHOOTS),
    ],
)
def test_miras_cell_mqar_score(
    cell: str, seed: int, options: dict[str, str | float], tmp_path: Path
) -> None:
    """The task's budget (300 x 64, DeltaNet's) with each cell at 64 units, one head, the exact
    update; the scores are in docs/tasks.md (same as ``rnnkit train --task mqar --cell CELL
    --seed SEED [--set huber=coordinate | --set radius=4]``). Memora, Titans, Yaad with the
    per-coordinate Huber loss and Moneta with radius 4 answer the first query (seed 0: 0.981,
    0.988, 0.939, 0.959); Moneta at its default radius 1 and Yaad's default switch do not:
    strict expected failures, so a change that makes them learn shows."""
    model_config = {"cell": cell, "hidden_size": 64, **options}
    result = Trainer(
        TrainConfig(
            task="mqar",
            cell=cell,
            seed=seed,
            model_config=model_config,
            out=str(tmp_path),
            verbose=False,
            plot=False,
        )
    ).run()
    print(
        f"mqar {cell} {options} seed {seed}: token_accuracy "
        f"{result.test['token_accuracy']:.3f} first_query {result.test['first_query_accuracy']:.3f}"
    )
    assert result.test["first_query_accuracy"] > 0.5
