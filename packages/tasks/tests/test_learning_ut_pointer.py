"""Short runs that fail if the Universal Transformer or the pointer network stops learning."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.algorithmic import ALPHABET, lengen_data
from rnnkit.tasks.geometry import hull_data, hull_metrics


def test_universal_transformer_learns_copy_above_chance(tmp_path: Path) -> None:
    """Copy with strings of 1-4 symbols, 200 steps: the answer slots' token accuracy on
    held-out strings of the training lengths must beat chance (1/8) by 0.25."""
    data = lengen_data(0, op="copy", length=4, sizes=(3000, 300, 300))
    cfg = TrainConfig(
        task="copy_lengen",
        steps=200,
        batch_size=32,
        eval_every=200,
        lr=3e-3,
        model_config={"hidden_size": 32, "max_steps": 4, "position_offset": 0},
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    trainer = Trainer(cfg, data=data)
    result = trainer.run()
    assert result.valid["token_accuracy"] > 1 / ALPHABET + 0.25
    ponder = trainer.model.mean_ponder_time()  # type: ignore[operator]
    assert 1.0 <= ponder <= 5.0


def test_pointer_net_hull_beats_the_input_order_baseline(tmp_path: Path) -> None:
    """Hulls of 5-6 points, 250 steps of 128: exact-sequence accuracy at least 0.2 above the
    input-order baseline (every point in index order, then END), and area coverage above it."""
    data = hull_data(0, n_min=5, n_max=6, sizes=(4000, 300, 300))
    test = data.test
    n_max = 6
    end = n_max + 1  # the column after the n_max + 1 rows
    base = torch.full(test.targets.shape, end, dtype=torch.long)
    for b in range(len(test)):
        n = int(test.inputs[b, :, 2].sum())
        base[b, :n] = torch.arange(n)
    baseline = hull_metrics(
        torch.nn.functional.one_hot(base, end + 1).float(), test.targets, test.inputs, data.info
    )
    cfg = TrainConfig(
        task="convex_hull",
        steps=250,
        batch_size=128,
        eval_every=250,
        lr=3e-3,
        model_config={"hidden_size": 128, "output_size": end + 1},
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=data).run()
    assert result.test["accuracy"] > baseline["accuracy"] + 0.2
    assert result.test["area_coverage"] > baseline["area_coverage"]
