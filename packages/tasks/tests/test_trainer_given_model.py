"""``Trainer(config, model=...)`` trains a model built (or converted) outside the trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rnnkit.tasks import TrainConfig, Trainer, get_task


def _config(out: Path, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        task="parity",
        model_config={"hidden_size": 8},
        steps=3,
        batch_size=8,
        eval_every=3,
        seed=seed,
        device="cpu",
        out=str(out),
        verbose=False,
        plot=False,
    )


def test_given_model_is_the_one_trained_in_place(tmp_path: Path) -> None:
    model = get_task("parity").build_model(hidden_size=8)
    before = copy.deepcopy(model.state_dict())
    trainer = Trainer(_config(tmp_path / "given"), model=model)
    assert trainer.model is model
    result = trainer.run()
    assert result.steps == 3
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the caller's model was updated, not a copy


def test_given_model_trains_like_the_built_one(tmp_path: Path) -> None:
    # the hook changes where the model comes from, nothing else: a copy of the model the
    # trainer built, passed in, trains to the same parameters on the same data and seed.
    built = Trainer(_config(tmp_path / "built", seed=3))
    given = copy.deepcopy(built.model)
    built.run()
    Trainer(_config(tmp_path / "given", seed=3), data=built.data, model=given).run()
    for (k, a), b in zip(
        built.model.state_dict().items(), given.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
