"""Drama-style model-based RL (issue 18, item 9): the world model learns a deterministic toy
environment, imagined rollouts have the documented shapes and stop at predicted terminations,
bad settings raise ``ValueError`` naming the argument, and ``rnnkit world-model`` runs
CartPole (skipped without gymnasium, the ``rl`` extra); the score run is an experiment."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.tasks.world_model import (
    ActorCritic,
    DreamerConfig,
    ReplayBuffer,
    WorldModel,
    imagine,
    lambda_returns,
    train_dreamer,
    world_model_loss,
)

needs_gymnasium = pytest.mark.skipif(
    importlib.util.find_spec("gymnasium") is None,
    reason="CartPole needs gymnasium: pip install 'rnnkit-tasks[rl]'",
)


class Box:
    """gymnasium's ``Box`` as the encoder sees it (``shape``)."""

    def __init__(self, size: int) -> None:
        self.shape = (size,)


class Discrete:
    def __init__(self, n: int) -> None:
        self.n, self.start = n, 0


class Corridor:
    """Positions 0..4, observed as ``[pos / 4, 1]``; action 1 steps right, 0 left (walls
    hold); reaching 4 pays 1 and terminates; every step costs nothing otherwise."""

    def __init__(self) -> None:
        self.observation_space = Box(2)
        self.action_space = Discrete(2)
        self.pos = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.pos / 4.0, 1.0], dtype=np.float32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, object]]:
        self.pos = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, object]]:
        self.pos = min(4, max(0, self.pos + (1 if action == 1 else -1)))
        done = self.pos == 4
        return self._obs(), float(done), done, False, {}


def _corridor_buffer(steps: int, seed: int = 0) -> ReplayBuffer:
    env, rng = Corridor(), np.random.default_rng(seed)
    buf = ReplayBuffer(2)
    obs, _ = env.reset()
    first = True
    for _ in range(steps):
        a = int(rng.random() < 0.7)
        nxt, r, term, trunc, _ = env.step(a)
        buf.add(obs, a, r, term, first)
        first = term or trunc
        obs = env.reset()[0] if first else nxt
    return buf


def test_world_model_loss_falls_on_a_deterministic_toy() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    buf = _corridor_buffer(400)
    model = WorldModel(2, 2, cell="mamba", hidden_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fixed = buf.sample(32, 12, np.random.default_rng(1))
    with torch.no_grad():
        before, parts_before = world_model_loss(model, fixed)
    for _ in range(80):
        loss, _ = world_model_loss(model, buf.sample(16, 12, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, parts_after = world_model_loss(model, fixed)
    assert after.item() < 0.3 * before.item(), (parts_before, parts_after)
    # every part learns, not only the easiest one
    for key in ("obs", "reward", "term"):
        assert parts_after[key] < parts_before[key], (key, parts_before, parts_after)


def test_imagined_rollouts_shapes_and_termination() -> None:
    torch.manual_seed(0)
    buf = _corridor_buffer(100)
    model = WorldModel(2, 2, cell="mamba", hidden_size=16)
    agent = ActorCritic(2, 2, hidden_size=8)
    batch = buf.sample(5, 4, np.random.default_rng(0))
    img = imagine(model, agent, batch, horizon=6)
    assert img.obs.shape == (5, 7, 2)
    assert img.actions.shape == img.rewards.shape == img.dones.shape == img.alive.shape == (5, 6)
    assert img.actions.dtype == torch.long
    # the rollout starts at the window's last real observation
    torch.testing.assert_close(img.obs[:, 0], batch["obs"][:, -1])
    final = model.term_head[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.fill_(50.0)  # the model predicts termination after every step
    img = imagine(model, agent, batch, horizon=6)
    assert torch.equal(img.dones, torch.ones(5, 6))
    assert torch.equal(img.alive[:, 0], torch.ones(5))
    assert torch.equal(img.alive[:, 1:], torch.zeros(5, 5))
    with torch.no_grad():
        final.bias.fill_(-50.0)  # never terminates
    img = imagine(model, agent, batch, horizon=6)
    assert torch.equal(img.alive, torch.ones(5, 6))


def test_lambda_returns_stop_at_termination() -> None:
    rewards = torch.ones(1, 4)
    values = torch.full((1, 5), 10.0)
    dones = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    out = lambda_returns(rewards, values, dones, gamma=0.5, lam=1.0)
    # step 1 ends the episode: its return is its reward; step 0 adds half of it
    torch.testing.assert_close(out[0, :2], torch.tensor([1.5, 1.0]))
    # after the termination the bootstrap value 10 counts again: 1 + 0.5 (1 + 0.5 * 10)
    torch.testing.assert_close(out[0, 2], torch.tensor(4.0))
    with pytest.raises(ValueError, match="values"):
        lambda_returns(rewards, values[:, :4], dones, gamma=0.5, lam=1.0)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"horizon": 0}, "horizon"),
        ({"context": 0}, "context"),
        ({"wm_length": 1}, "wm_length"),
        ({"prefill": 4}, "prefill"),
        ({"gamma": 1.5}, "gamma"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_name_the_argument(change: dict[str, float], name: str) -> None:
    config = DreamerConfig(**{"steps": 64, "prefill": 32, **change})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        train_dreamer(config, make=Corridor)


def test_world_model_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        WorldModel(2, 2, hidden_size=0)
    buf = _corridor_buffer(10)
    with pytest.raises(ValueError, match="length"):
        buf.sample(2, 11, np.random.default_rng(0))


def test_short_run_on_the_toy_trains_both_parts() -> None:
    config = DreamerConfig(
        cell="mamba",
        hidden_size=16,
        steps=160,
        prefill=48,
        train_every=8,
        wm_batch=8,
        wm_length=12,
        img_batch=16,
        context=4,
        horizon=5,
        eval_episodes=2,
    )
    result = train_dreamer(config, make=Corridor)
    assert result.env_steps == 160
    assert result.wm_loss_last < result.wm_loss_first
    assert np.isfinite(result.eval_return)


@needs_gymnasium
def test_cli_runs_cartpole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "world-model",
            "--env",
            "CartPole-v1",
            "--steps",
            "96",
            "--prefill",
            "48",
            "--train-every",
            "24",
            "--eval-episodes",
            "1",
            "--baseline",
            "none",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "world_model.json").read_text())
    assert data["dreamer"]["env_steps"] == 96
    assert "ppo" not in data
    assert json.loads(capsys.readouterr().out)["dreamer"]["eval_return"] >= 1.0


@needs_gymnasium
def test_unknown_env_names_env() -> None:
    with pytest.raises(ValueError, match="env"):
        train_dreamer(DreamerConfig(env="NoSuchEnv-v0", steps=64, prefill=32))


@pytest.mark.experiment
@needs_gymnasium
def test_cartpole_score_against_ppo_at_equal_steps() -> None:
    """The docs/tasks.md score: the model-based agent and PPO at 8192 CartPole steps; the
    world-model agent must beat a random policy (about 20) by far."""
    from rnnkit.tasks.rl import train_ppo
    from rnnkit.tasks.world_model import _ppo_config, make_gym_env

    config = DreamerConfig(steps=8192)
    dreamer = train_dreamer(config)
    ppo = train_ppo(_ppo_config(config), make=lambda: make_gym_env(config.env))
    print(
        f"dreamer greedy {dreamer.eval_return:.1f} (train {dreamer.final_return:.1f}), "
        f"ppo greedy {ppo.eval_return:.1f} (train {ppo.final_return:.1f}), "
        f"random {ppo.random_return:.1f}"
    )
    assert ppo.env_steps == dreamer.env_steps
    assert dreamer.wm_loss_last < 0.5 * dreamer.wm_loss_first
    assert dreamer.eval_return > 3 * ppo.random_return


def test_without_gymnasium_the_command_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rnnkit world-model`` without the ``rl`` extra: one line naming it, no traceback."""
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # an import of gymnasium now fails
    assert main(["world-model", "--steps", "64", "--prefill", "32", "--baseline", "none"]) == 2
    err = capsys.readouterr().err
    assert "rnnkit-tasks[rl]" in err and err.count("\n") == 1, err


def test_prefill_errors_name_the_options_to_change() -> None:
    with pytest.raises(ValueError, match=r"prefill \(4\) must cover .* raise --prefill"):
        train_dreamer(DreamerConfig(steps=64, prefill=4), make=Corridor)
    with pytest.raises(ValueError, match=r"prefill \(512\) cannot exceed .* raise --steps"):
        train_dreamer(DreamerConfig(steps=64), make=Corridor)
