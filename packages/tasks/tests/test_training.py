"""Every task's default model trains a few steps; checkpoints resume to identical results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import task_data

from rnnkit.tasks import CheckpointError, Split, TaskData, TrainConfig, Trainer, list_tasks
from rnnkit.tasks.trainer import batch_indices, train


def _small(data: TaskData, n: int = 48) -> TaskData:
    def cut(s: Split) -> Split:
        return s.take(torch.arange(min(n, len(s))))

    return TaskData(cut(data.train), cut(data.valid), cut(data.test), data.info)


@pytest.mark.parametrize("name", list_tasks())
def test_default_model_trains(name: str, tmp_path: Path) -> None:
    cfg = TrainConfig(
        task=name,
        steps=2,
        batch_size=16,
        eval_every=2,
        out=str(tmp_path),
        verbose=False,
        plot=False,
    )
    result = Trainer(cfg, data=_small(task_data(name))).run()
    assert result.steps == 2
    assert result.primary in result.test
    assert result.test["loss"] == result.test["loss"]  # not NaN
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["task"] == name
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_batches_are_a_function_of_the_step() -> None:
    a = batch_indices(100, 32, 5, 0, {})
    assert torch.equal(a, batch_indices(100, 32, 5, 0, {}))
    epoch = torch.cat([batch_indices(100, 32, s, 0, {}) for s in (1, 2, 3)])
    assert len(set(epoch.tolist())) == 96  # no repeats within an epoch


def _config(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "task": "digits_rows",
        "steps": 12,
        "batch_size": 16,
        "eval_every": 4,
        "out": str(out),
        "model_config": {"hidden_size": 16, "num_layers": 2, "dropout": 0.3},  # uses RNG
        "verbose": False,
        "plot": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def _records(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.pop("seconds")
        out.append(r)
    return out


def test_resume_gives_identical_parameters_and_metrics(tmp_path: Path) -> None:
    data = _small(task_data("digits_rows"), 200)
    straight = Trainer(_config(tmp_path / "a"), data=data)
    ra = straight.run()
    first = Trainer(_config(tmp_path / "b", stop_after=6), data=data)  # not an eval step
    r1 = first.run()
    assert r1.interrupted and r1.steps == 6
    assert not (tmp_path / "b" / "final.json").exists()
    resumed = Trainer(_config(tmp_path / "b", resume=True), data=data)
    assert resumed.step == 6
    rb = resumed.run()
    for (k, va), (_, vb) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert ra.test == rb.test and ra.valid == rb.valid
    assert _records(tmp_path / "a" / "metrics.jsonl") == _records(tmp_path / "b" / "metrics.jsonl")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_corrupt_checkpoint_is_a_clear_error_and_leaves_the_run_alone(tmp_path: Path) -> None:
    data = _small(task_data("digits_rows"))
    Trainer(_config(tmp_path, stop_after=4), data=data).run()
    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100] + b"garbage")
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(_config(tmp_path, resume=True), data=data)
    assert _snapshot(tmp_path) == before


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    data = _small(task_data("digits_rows"))
    Trainer(_config(tmp_path, stop_after=4), data=data).run()
    before = _snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=r"different run.*budget"):
        Trainer(_config(tmp_path, resume=True, lr=0.5), data=data)
    with pytest.raises(CheckpointError, match="model_config"):
        Trainer(_config(tmp_path, resume=True, model_config={"hidden_size": 8}), data=data)
    with pytest.raises(ValueError, match="--resume"):
        Trainer(_config(tmp_path), data=data)
    assert _snapshot(tmp_path) == before


def test_training_gives_back_the_callers_thread_count(tmp_path: Path) -> None:
    """The trainer runs on one CPU thread by default; the caller's setting is restored when
    the run ends, and when setting up the run fails."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        data = _small(task_data("digits_rows"))
        Trainer(_config(tmp_path / "a"), data=data).run()
        assert torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="--steps must be a positive integer"):
            train(task="digits_rows", steps=0, out=str(tmp_path / "b"), verbose=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("threads", "unset", "inside"),
    [(2, 1, 2), (None, 1, 1), (None, None, 3)],
    ids=["given", "unset-one", "unset-keep"],
)
def test_torch_threads_sets_and_gives_back(
    threads: int | None, unset: int | None, inside: int
) -> None:
    """``torch_threads`` runs its block on ``threads`` (``unset`` where that is ``None``; an
    ``unset`` of ``None`` keeps torch's count, as the PPO, world-model and counts runs ask for
    with ``threads=None``) and restores the caller's count, also when the block raises."""
    from rnnkit.tasks._util import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen: list[int] = []

        def body() -> None:
            with torch_threads(threads, unset=unset):
                seen.append(torch.get_num_threads())
                raise RuntimeError("inside")

        with pytest.raises(RuntimeError, match="inside"):
            body()
        assert seen == [inside] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
