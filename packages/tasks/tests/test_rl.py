"""Memory RL (issue 15): the recurrent actor-critic steps exactly like its whole-sequence pass
with resets, PPO learns a memory task a memoryless agent cannot solve, and ``rnnkit rl`` runs
POPGym environments (skipped without the ``rl`` extra)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.tasks.rl import (
    PopgymUnavailableError,
    PPOConfig,
    RecurrentActorCritic,
    VectorEnv,
    encode_observation,
    make_env,
    observation_size,
    train_ppo,
)

needs_popgym = pytest.mark.skipif(
    importlib.util.find_spec("popgym") is None,
    reason="POPGym environments need popgym: pip install 'rnnkit-tasks[rl]'",
)


class Discrete:
    """gymnasium's ``Discrete`` as the encoder sees it (``n``, ``start``)."""

    def __init__(self, n: int, start: int = 0) -> None:
        self.n, self.start = n, start


class MultiDiscrete:
    def __init__(self, nvec: list[int]) -> None:
        self.nvec = np.asarray(nvec)


class TupleSpace:
    def __init__(self, *spaces: Any) -> None:
        self.spaces = spaces


class CueRecall:
    """A cue (0 or 1) shown at the first step, a blank (2) after it; every step pays
    ``+1/length`` for naming the cue and ``-1/length`` otherwise. A memoryless agent scores
    ``1/length`` at best (it sees the cue once); a random one 0; one that remembers, 1."""

    length = 8

    def __init__(self) -> None:
        self.observation_space = Discrete(3)
        self.action_space = Discrete(2)
        self.rng = np.random.default_rng(0)
        self.cue, self.t = 0, 0

    def reset(self, *, seed: int | None = None) -> tuple[int, dict[str, Any]]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.cue, self.t = int(self.rng.integers(2)), 0
        return self.cue, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        reward = (1.0 if action == self.cue else -1.0) / self.length
        self.t += 1
        return 2, reward, self.t >= self.length, False, {}


def test_encoding_of_discrete_multidiscrete_and_tuple_spaces() -> None:
    space = TupleSpace(Discrete(2, start=1), MultiDiscrete([2, 3]))
    assert observation_size(space) == 7
    v = encode_observation(space, (2, np.array([1, 0])))
    assert v.tolist() == [0, 1, 0, 1, 1, 0, 0]


def test_vector_env_marks_episode_starts_and_previous_actions() -> None:
    envs = VectorEnv(CueRecall, 2, seed=0)
    assert envs.feature_size == 3 + 2 and envs.starts.all()
    for t in range(CueRecall.length):
        _, dones, finished = envs.step(np.array([1, 0]))
        last = t == CueRecall.length - 1
        assert dones.tolist() == [last, last]
        assert envs.starts.tolist() == [last, last]
        # the previous action's one-hot follows the observation, cleared at a new episode
        expected = [[0, 0], [0, 0]] if last else [[0, 1], [1, 0]]
        assert envs.features[:, 3:].tolist() == expected
    assert len(finished) == 2


@pytest.mark.parametrize("cell", ["s5", "lstm"])
def test_step_equals_the_sequence_pass_with_resets(cell: str) -> None:
    torch.manual_seed(0)
    model = RecurrentActorCritic(5, 3, cell=cell, hidden_size=8, num_layers=2).double()
    B, T = 3, 7
    x = torch.randn(B, T, 5, dtype=torch.float64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[2, 1] = resets[2, 5] = True
    # a random state to start from (complex for S5: the cell's state dtype)
    start = [type(s)._make(torch.randn_like(f) for f in s) for s in model.initial_state(B)]
    logits, values, final = model(x, start, resets=resets)
    state: Any = start
    for t in range(T):
        lt, vt, state = model.step(x[:, t], state, starts=resets[:, t])
        torch.testing.assert_close(lt, logits[:, t], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(vt, values[:, t], atol=1e-10, rtol=1e-10)
    for a, b in zip(state, final, strict=True):
        for fa, fb in zip(a, b, strict=True):
            torch.testing.assert_close(fa, fb, atol=1e-10, rtol=1e-10)
    # a reset makes the outputs independent of everything before it
    x2 = x.clone()
    x2[2, :5] = torch.randn(5, 5, dtype=torch.float64)
    logits2, _, _ = model(x2, start, resets=resets)
    torch.testing.assert_close(logits2[2, 5:], logits[2, 5:], atol=1e-10, rtol=1e-10)
    assert not torch.allclose(logits2[2, :5], logits[2, :5])


def test_ppo_learns_to_remember_the_cue() -> None:
    """A few seconds of PPO: the S5 agent must beat the best memoryless agent's 1/8 = 0.125
    (and a random agent's 0) by a wide margin."""
    config = PPOConfig(
        cell="s5",
        hidden_size=16,
        steps=8 * 32 * 8,
        num_envs=8,
        rollout=32,
        epochs=4,
        minibatches=2,
        lr=3e-3,
        eval_episodes=64,
    )
    result = train_ppo(config, make=CueRecall)
    assert abs(result.random_return) < 0.1
    assert result.eval_return > 0.5, result.history[-3:]
    assert result.env_steps == 8 * 32 * 8


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="minibatches"):
        train_ppo(PPOConfig(num_envs=2, minibatches=4), make=CueRecall)


@pytest.mark.parametrize("seed", [-1, 2**40, True])
def test_a_seed_gymnasium_cannot_take_is_refused_before_set_up(seed: int) -> None:
    """gymnasium refuses negative seeds at the first reset (its own error, a traceback on the
    command line); the configuration check names the seed first."""
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*40\)"):
        train_ppo(PPOConfig(num_envs=2, minibatches=1, seed=seed), make=CueRecall)


@needs_popgym
def test_popgym_environment_and_unknown_name() -> None:
    envs = VectorEnv(lambda: make_env("CountRecallEasy"), 2, seed=0)
    assert envs.actions == 27  # counts 0..26 (POPGym's action space, not popjaxrl's Discrete(2))
    assert envs.features.shape == (2, envs.obs_size + 27)
    assert envs.features[:, : envs.obs_size].sum(1).tolist() == [2.0, 2.0]  # two one-hots
    with pytest.raises(ValueError, match="unknown POPGym environment"):
        make_env("RepeatSomething")


@needs_popgym
def test_rl_command_writes_its_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["rl", "--env", "RepeatPreviousEasy", "--cell", "s5", "--hidden-size", "8"]
    args += ["--steps", "256", "--num-envs", "4", "--rollout", "64", "--minibatches", "2"]
    args += ["--epochs", "1", "--eval-episodes", "4", "--out", str(tmp_path), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "rl.json").read_text())
    assert saved == printed
    assert saved["env_steps"] == 256 and len(saved["history"]) == 1
    assert saved["config"]["env"] == "RepeatPreviousEasy" and saved["config"]["resets"] is True
    # RepeatPrevious pays +-1/48 per step after the first four: a return lies in [-1, 1]
    assert -1.0 <= saved["random_return"] <= 1.0


@pytest.mark.experiment
@needs_popgym
def test_s5_learns_repeat_previous_easy() -> None:
    """The documented run (docs/tasks.md): S5 on RepeatPreviousEasy, 100,000 steps."""
    result = train_ppo(PPOConfig(env="RepeatPreviousEasy", cell="s5", steps=100_000))
    assert result.eval_return > result.random_return + 0.5, result.history[-3:]


def test_without_popgym_the_command_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "popgym", None)  # an import of popgym now fails
    monkeypatch.setitem(sys.modules, "popgym.envs", None)
    with pytest.raises(PopgymUnavailableError, match=r"rnnkit-tasks\[rl\]"):
        make_env("RepeatFirstEasy")
    assert main(["rl", "--steps", "1"]) != 0
    assert "rnnkit-tasks[rl]" in capsys.readouterr().err
