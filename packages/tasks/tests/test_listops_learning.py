"""listops_spread: an SSM learns a tiny version in seconds; S4D, S5 and Mamba beat an LSTM at
T=1024.

The default-run test trains S4D on expressions followed by padding to 64 steps and asks for
accuracy above the majority-label baseline by a stated margin. The experiment reproduces the
scores of docs/tasks.md ("Long range, short expressions: `listops_spread`"): the task's
default budget for S4D, S5, Mamba (`mamba_classifier`) and an LSTM, each with its own
learning rate.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.listops import listops_spread_data


def test_s4d_beats_the_majority_label_on_a_tiny_spread_listops(tmp_path: Path) -> None:
    data = listops_spread_data(0, length=64, sizes=(2000, 300, 300))
    cfg = TrainConfig(
        task="listops_spread",
        model_config={"hidden_size": 32, "state_size": 32},
        steps=STEPS_TINY,
        eval_every=STEPS_TINY,
        out=str(tmp_path / "run"),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=data).run()
    # the margin: at least 10 points above always answering the most frequent label
    assert result.test["accuracy"] >= result.test["majority_accuracy"] + 0.10, result.test


STEPS_TINY = 150


@pytest.mark.experiment
def test_s4d_s5_and_mamba_beat_an_lstm_at_t1024(tmp_path: Path) -> None:
    scores = {}
    runs = {
        "s4d": {},
        "s5": {"cell": "s5"},
        "mamba": {"model": "mamba_classifier"},
        # the LSTM's own learning rate (the task's 1e-2 is measured in docs/tasks.md too)
        "lstm": {"model": "sequence_classifier", "cell": "lstm", "lr": 3e-3},
    }
    for name, kw in runs.items():
        cfg = TrainConfig(
            task="listops_spread", out=str(tmp_path / name), verbose=False, plot=False, **kw
        )
        scores[name] = Trainer(cfg).run().test
    print(scores)
    lstm = scores["lstm"]["accuracy"]
    for name in ("s4d", "s5", "mamba"):
        assert scores[name]["accuracy"] >= lstm + 0.05, scores
        assert scores[name]["accuracy"] >= scores[name]["majority_accuracy"] + 0.05, scores
