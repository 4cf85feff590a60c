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
    more than 0.65 of the time (0.795 when this was written, 15 s on a loaded machine; Moneta
    took 56 s for the same budget, so only Titans runs in the default selection)."""
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


NOT_LEARNED = pytest.mark.xfail(
    reason="first query at or below the shortcut at this budget (docs/tasks.md)", strict=True
)


@pytest.mark.experiment
@pytest.mark.parametrize(
    ("cell", "seed"),
    [
        ("memora", 0),
        ("memora", 1),
        pytest.param("titans", 0, marks=NOT_LEARNED),
        pytest.param("moneta", 0, marks=NOT_LEARNED),
        pytest.param("yaad", 0, marks=NOT_LEARNED),
    ],
)
def test_miras_cell_mqar_score(cell: str, seed: int, tmp_path: Path) -> None:
    """The task's budget (300 x 64, DeltaNet's) with each cell at 64 units, one head, the exact
    update; the scores are in docs/tasks.md (same as ``rnnkit train --task mqar --cell
    CELL --seed SEED``). Memora answers the first query (0.979 at seed 0); Titans (0.351),
    Moneta (0.270) and Yaad (0.140) do not at this budget: strict expected failures, so a
    change that makes them learn shows."""
    result = Trainer(
        TrainConfig(task="mqar", cell=cell, seed=seed, out=str(tmp_path), verbose=False, plot=False)
    ).run()
    print(
        f"mqar {cell} seed {seed}: token_accuracy {result.test['token_accuracy']:.3f} "
        f"first_query {result.test['first_query_accuracy']:.3f}"
    )
    assert result.test["first_query_accuracy"] > 0.5
