"""Short learning runs of the issue-18 forecasters: ``time_llm`` (a frozen char_lm backbone
trained here, read back from its run directory) and its ablation ``patch_forecaster`` on
``ar``; ``conv_ffn_rnn`` on ``vessels``. The score runs are under ``-m experiment``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rnnkit.tasks import TaskData, TrainConfig, Trainer, get_task
from rnnkit.tasks.vessels import vessel_data


def _train(tmp: Path, task: str, model: str, data: TaskData | None, **kw: Any) -> Trainer:
    model_config = kw.pop("model_config", {})
    tr = Trainer(
        TrainConfig(
            task=task,
            model=model,
            model_config=model_config,
            out=str(tmp / f"{task}-{model}"),
            progress=False,
            plot=False,
            **kw,
        ),
        data=data,
    )
    tr.run()
    return tr


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small char_lm (GRU 32) trained for 5 steps on ``charlm``: its run directory."""
    tmp = tmp_path_factory.mktemp("charlm")
    _train(
        tmp,
        "charlm",
        "char_lm",
        None,
        model_config={"cell": "gru", "hidden_size": 32},
        steps=5,
        eval_every=5,
    )
    return str(tmp / "charlm-char_lm")


def _ar_small() -> TaskData:
    data = get_task("ar").data(0)
    # fewer training windows: the runs below take seconds
    tr = data.train
    return TaskData(type(tr)(tr.inputs[:512], tr.targets[:512]), data.valid, data.test, data.info)


def test_time_llm_learns_ar_through_the_frozen_backbone(tmp_path: Path, backbone_run: str) -> None:
    """80 steps: test MSE below 0.6x the naive (last value) forecast's, the backbone's
    weights exactly as loaded from its run."""
    from rnnkit.tasks import load_run

    data = _ar_small()
    cfg = {"backbone_run": backbone_run, "hidden_size": 16, "prototypes": 8, "heads": 2}
    tr = _train(tmp_path, "ar", "time_llm", data, model_config=cfg, steps=80, eval_every=80)
    test = tr._evaluate("test")
    naive = get_task("ar").metrics(data.test.inputs, data.test.targets, data.test.inputs, data.info)
    assert test["mse_ratio"] < 0.6 * naive["mse_ratio"], (test, naive)
    trained = tr.model.backbone
    loaded = load_run(backbone_run).model
    for (k, v), (k2, v2) in zip(
        trained.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v.cpu(), v2), k


def test_time_llm_needs_a_char_lm_run() -> None:
    from rnnkit.models import create_model

    with pytest.raises(ValueError, match="backbone_run"):
        create_model("time_llm", input_size=1, output_size=1)


def test_conv_ffn_rnn_learns_vessels(tmp_path: Path) -> None:
    """60 steps on 300 short tracks: test RPD below half that of predicting the mean
    training displacement (a trivial baseline); the per-horizon RPDs are reported."""
    data = vessel_data(0, reports=16, sizes=(300, 60, 60))
    tr = _train(
        tmp_path,
        "vessels",
        "conv_ffn_rnn",
        data,
        model_config={"hidden_size": 32, "conv_channels": 32, "ffn_size": 64},
        steps=60,
        eval_every=60,
    )
    test = tr._evaluate("test")
    t = data.train.targets
    mean = t[~torch.isnan(t).any(-1)].mean(0)
    trivial = get_task("vessels").metrics(
        mean.expand_as(data.test.targets), data.test.targets, data.test.inputs, data.info
    )
    assert test["rpd"] < 0.5 * trivial["rpd"], (test, trivial)
    assert {"rpd_h_le1min", "rpd_h_1to3min", "rpd_h_gt3min"} <= set(test)


# --- the score runs of docs/tasks.md (default budgets; minutes) -----------------------------


@pytest.mark.experiment
def test_scores_vessels_conv_ffn_rnn_and_lstm(tmp_path: Path) -> None:
    """``rnnkit train --task vessels [--model conv_ffn_rnn]``: both well below the trivial
    mean-displacement forecast's RPD; the scores are printed for docs/tasks.md."""
    data = get_task("vessels").data(0)
    t = data.train.targets
    mean = t[~torch.isnan(t).any(-1)].mean(0)
    trivial = get_task("vessels").metrics(
        mean.expand_as(data.test.targets), data.test.targets, data.test.inputs, data.info
    )
    for model in ("sequence_tagger", "conv_ffn_rnn"):
        test = _train(tmp_path, "vessels", model, data)._evaluate("test")
        print(model, test)
        assert test["rpd"] < 0.5 * trivial["rpd"], (model, test, trivial)


@pytest.mark.experiment
def test_scores_ar_time_llm_and_ablation(tmp_path: Path) -> None:
    """``rnnkit train --task charlm`` (the backbone), then ``rnnkit train --task ar --model
    time_llm --set backbone_run=DIR`` and ``--model patch_forecaster``: both within 1.3x the
    optimal MSE (the naive forecast is 2.5x); the scores are printed for docs/tasks.md."""
    _train(tmp_path, "charlm", "char_lm", None)
    cfg = {"backbone_run": str(tmp_path / "charlm-char_lm")}
    for model, mc in (("patch_forecaster", {}), ("time_llm", cfg)):
        test = _train(tmp_path, "ar", model, None, model_config=mc)._evaluate("test")
        print(model, test)
        assert test["mse_ratio"] < 1.3, (model, test)
