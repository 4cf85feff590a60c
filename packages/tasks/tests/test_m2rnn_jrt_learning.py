"""M2RNN and Based / JRT-RNN learn: short runs in the default test run (seconds each, each
beating a trivial baseline by a stated margin), and the score runs of docs/tasks.md under
``@pytest.mark.experiment`` (minutes; ``nox -s experiments``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rnnkit.models import create_model
from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.base import Split, TaskData
from rnnkit.tasks.recall import set_disjointness_data
from rnnkit.tasks.synthetic import group_data


def _running_parity(seed: int, n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The word problem of Z2: one-hot bits ``(n, length, 2)`` and, at every step, the parity
    of the bits so far ``(n, length)``. One-hot, not a 0/1 channel: M2RNN's read-out ``H^T q_t``
    has no bias, so a zero input would read out zero whatever the state."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, length), generator=g)
    return F.one_hot(bits, 2).float(), bits.cumsum(1) % 2


def test_m2rnn_tracks_parity_in_a_short_run() -> None:
    """150 steps of one M2RNN layer (2 heads of 4 x 8) on the running parity of 4 bits: from
    the second step on, the answer is independent of the current bit alone, so any predictor
    that does not track the state scores 0.5 there; the run must clear 0.7 over steps 2-4
    (1.0, 0.88, 0.77 when this was written; 80 steps still sit at 0.5)."""
    torch.manual_seed(0)
    x, y = _running_parity(0, 2000, 4)
    xt, yt = _running_parity(1, 500, 4)
    model = create_model(
        "sequence_tagger", input_size=2, output_size=2, cell="m2rnn", hidden_size=16,
        value_dim=8, key_dim=4,
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        i = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[i]).flatten(0, 1), y[i].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(xt).argmax(-1) == yt).float().mean(0)
    assert acc[0] > 0.95  # the first step is the bit itself
    assert acc[1:].mean() > 0.7, acc


def _setdisj_small(seed: int, passes: int = 1) -> TaskData:
    return set_disjointness_data(
        seed, vocab=24, pairs=((2, 6), (6, 2), (4, 4)), passes=passes, sizes=(3000, 300, 300)
    )


def test_jrt_names_the_common_element_in_a_short_run(tmp_path: Path) -> None:
    """JRT-RNN (2 blocks, width 32, feature_dim 4) on set disjointness with 20 elements and
    sets of 2-6, 150 steps: a model that names a uniformly random element of the first set
    scores E[1/|A|] = 0.31 on this mix; the run must clear 0.6 (training seeds 0 and 1
    reached 0.95 and 0.92 when this was written)."""
    cfg = TrainConfig(
        task="setdisj",
        model="jrt_classifier",
        steps=150,
        batch_size=32,
        eval_every=150,
        lr=1e-2,
        model_config={"hidden_size": 32, "feature_dim": 4},
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=_setdisj_small(0)).run()
    assert result.test["accuracy"] > 0.6, result.test


# --- score runs (docs/tasks.md) --------------------------------------------------------------


def _train(tmp_path: Path, name: str, **kw: Any) -> dict[str, float]:
    cfg = TrainConfig(out=str(tmp_path / name), verbose=False, plot=False, **kw)
    return dict(Trainer(cfg).run().test)


@pytest.mark.experiment
def test_s5_m2rnn_against_lstm_and_deltanet(tmp_path: Path) -> None:
    """The s5 task's budget (1,200 steps, batch 64), width 128 for each cell: the figures of
    docs/tasks.md ("M2RNN on s5"). The LSTM reaches the task's documented score; M2RNN,
    DeltaNet and the Elman RNN are reported (steps 3-8 at chance, see the diagnosis there),
    not asserted beyond running."""
    lstm = _train(tmp_path, "lstm", task="s5", cell="lstm", model_config={"hidden_size": 128})
    m2 = _train(
        tmp_path, "m2rnn", task="s5", cell="m2rnn",
        model_config={"hidden_size": 128, "value_dim": 16, "key_dim": 16},
    )  # fmt: skip
    delta = _train(
        tmp_path, "deltanet", task="s5", cell="deltanet",
        model_config={"hidden_size": 128, "heads": 4},
    )  # fmt: skip
    # the diagnosis rows: M2RNN forgetting fast, and the Elman RNN that one row of it is
    m2_fast = _train(
        tmp_path, "m2rnn_fast", task="s5", cell="m2rnn",
        model_config={"hidden_size": 128, "value_dim": 16, "key_dim": 16, "dt_range": [1.0, 5.0]},
    )  # fmt: skip
    elman = _train(tmp_path, "elman", task="s5", cell="elman", model_config={"hidden_size": 128})
    assert lstm["token_accuracy"] > 0.9
    for r in (m2, delta, m2_fast, elman):  # at least the first step (the input), 1/8 of it
        assert r["token_accuracy"] > 0.12, r


def _parity_accuracy_by_length(cell: str, **kw: Any) -> dict[int, float]:
    """Width 16, trained 400 steps (batch 32, lr 1e-2, clip 1) on the running parity of 16
    bits; accuracy over the last 8 steps of 500 test sequences of 16, 64 and 256 bits."""
    torch.manual_seed(0)
    x, y = _running_parity(0, 4000, 16)
    model = create_model(
        "sequence_tagger", input_size=2, output_size=2, cell=cell, hidden_size=16, **kw
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        i = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[i]).flatten(0, 1), y[i].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    out = {}
    with torch.no_grad():
        for length in (16, 64, 256):
            xt, yt = _running_parity(1, 500, length)
            out[length] = (model(xt).argmax(-1) == yt)[:, -8:].float().mean().item()
    return out


@pytest.mark.experiment
def test_m2rnn_parity_reaches_16x_the_training_length_where_deltanet_does_not() -> None:
    """The Z2 word problem (docs/tasks.md, "M2RNN on s5"): M2RNN (2 heads of 4 x 8) and the
    LSTM keep the running parity 16x past the training length; DeltaNet, whose transitions
    ``I - beta k k^T`` with ``beta`` in (0, 1) have no negative eigenvalue, stays at chance
    even at the training length."""
    m2 = _parity_accuracy_by_length("m2rnn", value_dim=8, key_dim=4)
    lstm = _parity_accuracy_by_length("lstm")
    delta = _parity_accuracy_by_length("deltanet", heads=2)
    for r in (m2, lstm):
        assert min(r.values()) > 0.95, r
    assert max(delta.values()) < 0.6, delta


def _s3_accuracy_by_length(
    tmp_path: Path, cell: str, seed: int, **model_config: Any
) -> dict[int, float]:
    """Trained on the s3 task at its budget (words of 16, width 32 unless given); token
    accuracy on 500 test words of 16, 64 and 256 elements (the task's own test split at 64)."""
    cfg = TrainConfig(
        task="s3", cell=cell, seed=seed, model_config={"hidden_size": 32, **model_config},
        out=str(tmp_path / f"{cell}{seed}"), verbose=False, plot=False,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.run()
    out = {}
    with torch.no_grad():
        for length in (16, 64, 256):
            test = group_data(seed, group="S3", test_length=length, sizes=(10, 10, 500)).test
            right = trainer.model(test.inputs).argmax(-1) == test.targets
            out[length] = right.float().mean().item()
    return out


@pytest.mark.experiment
@pytest.mark.parametrize("seed", [0, 1])
def test_s3_lstm_generalises_in_length_where_m2rnn_and_deltanet_do_not_learn(
    tmp_path: Path, seed: int
) -> None:
    """The S3 word problem (docs/tasks.md, "M2RNN on the S3 word problem"): width 32 for each
    cell, trained on words of 16; the LSTM stays near 1.0 at 4x and 16x the training length,
    M2RNN (4 heads of K 4 x V 8) and DeltaNet (2 heads) stay near the input-only level (1/6
    after the first step) even at the training length. The margin is half the smallest gap
    measured over both seeds and the three lengths (LSTM minus the better of the other two)."""
    lstm = _s3_accuracy_by_length(tmp_path, "lstm", seed)
    m2 = _s3_accuracy_by_length(tmp_path, "m2rnn", seed, value_dim=8, key_dim=4)
    delta = _s3_accuracy_by_length(tmp_path, "deltanet", seed, heads=2)
    # measured: LSTM 1.000 / 0.997 / 0.984 (seed 0), M2RNN 0.295 / 0.196 / 0.175, DeltaNet
    # 0.293 / 0.199 / 0.174; seed 1: 1.000 / 1.000 / 0.995, 0.291 / 0.199 / 0.176, 0.264 /
    # 0.191 / 0.173. Smallest gap 0.705 (length 16, seed 0).
    for length in (16, 64, 256):
        assert lstm[length] > max(m2[length], delta[length]) + 0.35, (length, lstm, m2, delta)


@pytest.mark.experiment
def test_setdisj_read_once_jrt_and_read_twice(tmp_path: Path) -> None:
    """setdisj's budget, width 64, feature_dim 4 then width 16, feature_dim 1: causal Based
    read once, JRT-RNN (prefix read non-causally) and causal Based on setdisj_jrt (read
    twice); the table of docs/tasks.md."""
    common: dict[str, Any] = {"model_config": {"hidden_size": 64, "feature_dim": 4}}
    once = _train(tmp_path, "once", task="setdisj", model="based_classifier", **common)
    jrt = _train(tmp_path, "jrt", task="setdisj", model="jrt_classifier", **common)
    twice = _train(tmp_path, "twice", task="setdisj_jrt", model="based_classifier", **common)
    for r in (once, jrt, twice):
        assert r["accuracy"] > 0.9, r
    # a state of 3 features x 17 per layer: every variant far from solving it, all far above
    # the 1/60 of guessing
    small: dict[str, Any] = {"model_config": {"hidden_size": 16, "feature_dim": 1}}
    for name, task, model in (
        ("once16", "setdisj", "based_classifier"),
        ("jrt16", "setdisj", "jrt_classifier"),
        ("twice16", "setdisj_jrt", "based_classifier"),
    ):
        r = _train(tmp_path, name, task=task, model=model, **small)
        assert 0.1 < r["accuracy"] < 0.9, (name, r)


@pytest.mark.experiment
def test_setdisj_jrt_and_read_twice_learn_faster_than_read_once(tmp_path: Path) -> None:
    """Width 64, feature_dim 2 (7 features per layer), 800 steps (half of setdisj's budget),
    seed 0: the regime of docs/tasks.md where the JRT effect shows, as learning speed. JRT-RNN
    scored 0.995, read twice 0.921, read once 0.860 when this was written (seed 1: 0.994,
    0.936, 0.883); each margin is about half of the smaller measured gap (0.111, 0.053 and
    0.058 at seed 1). At the full 1,500 steps all three reach 0.98-1.00 (not run here)."""
    common: dict[str, Any] = {"model_config": {"hidden_size": 64, "feature_dim": 2}, "steps": 800}
    once = _train(tmp_path, "once", task="setdisj", model="based_classifier", **common)
    jrt = _train(tmp_path, "jrt", task="setdisj", model="jrt_classifier", **common)
    twice = _train(tmp_path, "twice", task="setdisj_jrt", model="based_classifier", **common)
    assert jrt["accuracy"] > once["accuracy"] + 0.07, (once, jrt)
    assert twice["accuracy"] > once["accuracy"] + 0.03, (once, twice)
    assert jrt["accuracy"] > twice["accuracy"] + 0.03, (twice, jrt)


def test_small_setdisj_is_what_the_short_run_trains_on() -> None:
    data = _setdisj_small(0)
    assert isinstance(data.train, Split) and data.info["vocab_size"] == 24
    assert data.train.inputs.shape[1] == 6 + 2 + 2 + 1
