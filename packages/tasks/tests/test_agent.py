"""The recurrent agent shared by ``rnnkit rl`` and ``rnnkit world-model``: the stack of
residual recurrent layers computes exactly what a plain per-layer loop over its cells computes
(an oracle written here, float64, 1e-12), stepping with per-row restarts as well as over whole
sequences with ``resets``, and both commands turn their options into the same configurations
as the dataclasses' defaults and explicit values say."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.tasks import rl, world_model
from rnnkit.tasks.agent import RecurrentStack
from rnnkit.tasks.rl import PPOConfig, RecurrentActorCritic
from rnnkit.tasks.world_model import DreamerConfig, DreamerResult, WorldModel

TOL = {"atol": 1e-12, "rtol": 0.0}


def _oracle_sequence(
    layers: nn.ModuleList, h: Tensor, states: list[Any], resets: Tensor
) -> tuple[Tensor, list[Any]]:
    """``h + mix(gelu(cell(norm(h))))`` layer after layer over ``(B, T, width)``."""
    finals = []
    for layer, s in zip(layers, states, strict=True):
        y, s = layer.cell(layer.norm(h), s, resets=resets)
        h = h + layer.mix(F.gelu(y))
        finals.append(s)
    return h, finals


def _oracle_step(
    layers: nn.ModuleList, h: Tensor, states: list[Any], starts: Tensor
) -> tuple[Tensor, list[Any]]:
    """One step on ``(B, width)``: rows where ``starts`` is true restart from the cell's
    initial state, then every layer steps (the checked ``step``)."""
    finals = []
    for layer, s in zip(layers, states, strict=True):
        init = layer.cell.init_state(h.shape[0], dtype=h.dtype)
        s = type(s)._make(
            torch.where(starts.view(-1, *([1] * (f.dim() - 1))), f0, f)
            for f, f0 in zip(s, init, strict=True)
        )
        y, s = layer.cell.step(layer.norm(h), s)
        h = h + layer.mix(F.gelu(y))
        finals.append(s)
    return h, finals


def _random_state(states: list[Any]) -> list[Any]:
    return [type(s)._make(torch.randn_like(f) for f in s) for s in states]


def _assert_states_equal(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        for fa, fb in zip(sa, sb, strict=True):
            torch.testing.assert_close(fa, fb, **TOL)


def _resets(B: int, T: int) -> Tensor:
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 2] = resets[2, 1] = resets[2, 4] = True
    return resets


@pytest.mark.parametrize("cell", ["s5", "lstm"])
def test_actor_critic_equals_the_per_layer_oracle(cell: str) -> None:
    torch.manual_seed(0)
    model = RecurrentActorCritic(5, 3, cell=cell, hidden_size=8, num_layers=2).double()
    B, T = 3, 6
    x = torch.randn(B, T, 5, dtype=torch.float64)
    resets = _resets(B, T)
    start = _random_state(model.initial_state(B))
    logits, values, finals = model(x, start, resets=resets)
    h, want_finals = _oracle_sequence(model.layers, F.gelu(model.encoder(x)), start, resets)
    torch.testing.assert_close(logits, model.actor(model.norm(h)), **TOL)
    torch.testing.assert_close(values, model.critic(model.norm(h)).squeeze(-1), **TOL)
    _assert_states_equal(finals, want_finals)
    state, want = start, start
    for t in range(T):
        lt, vt, state = model.step(x[:, t], state, starts=resets[:, t])
        ht, want = _oracle_step(model.layers, F.gelu(model.encoder(x[:, t])), want, resets[:, t])
        torch.testing.assert_close(lt, model.actor(model.norm(ht)), **TOL)
        torch.testing.assert_close(vt, model.critic(model.norm(ht)).squeeze(-1), **TOL)
        _assert_states_equal(state, want)


def test_world_model_equals_the_per_layer_oracle() -> None:
    torch.manual_seed(0)
    model = WorldModel(2, 3, cell="gru", hidden_size=8, num_layers=2).double()
    B, T = 3, 6
    obs = torch.randn(B, T, 2, dtype=torch.float64)
    actions = torch.randint(0, 3, (B, T))
    resets = _resets(B, T)
    start = _random_state(model.initial_state(B))

    def inp(o: Tensor, a: Tensor) -> Tensor:
        out: Tensor = model.inp(torch.cat([model.embed(o), F.one_hot(a, 3).double()], -1))
        return out

    def heads(o: Tensor, h: Tensor) -> list[Tensor]:
        n = model.norm(h)
        return [o + model.obs_head(n), model.reward_head(n)[..., 0], model.term_head(n)[..., 0]]

    *got, finals = model(obs, actions, resets=resets, state=start)
    h, want_finals = _oracle_sequence(model.layers, inp(obs, actions), start, resets)
    for g, w in zip(got, heads(obs, h), strict=True):
        torch.testing.assert_close(g, w, **TOL)
    _assert_states_equal(finals, want_finals)
    state, want = start, start
    for t in range(T):
        *got, state = model.step(obs[:, t], actions[:, t], state, resets[:, t])
        ht, want = _oracle_step(model.layers, inp(obs[:, t], actions[:, t]), want, resets[:, t])
        for g, w in zip(got, heads(obs[:, t], ht), strict=True):
            torch.testing.assert_close(g, w, **TOL)
        _assert_states_equal(state, want)


class _StopError(Exception):
    """Raised by the stand-in trainers once they hold the configuration."""


def _parse(configure: Any, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


_SHARED = ["--cell", "gru", "--hidden-size", "12", "--state-size", "5", "--layers", "3"]
_SHARED += ["--set", "init=1", "--set", "mode=fast", "--seed", "7", "--backend", "torch"]
_SHARED += ["--threads", "2", "--json"]
# what _SHARED sets, as configuration keywords
_SHARED_CONFIG: dict[str, Any] = {
    "cell": "gru",
    "hidden_size": 12,
    "state_size": 5,
    "num_layers": 3,
    "cell_kwargs": {"init": 1, "mode": "fast"},
    "seed": 7,
    "backend": "torch",
    "threads": 2,
}


def test_rl_options_make_the_ppo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[PPOConfig] = []

    def fake(config: PPOConfig, **_: Any) -> Any:
        seen.append(config)
        raise _StopError

    monkeypatch.setattr(rl, "train_ppo", fake)
    for argv in ([], ["--env", "CountRecallEasy", "--no-resets", "--lr", "0.01", *_SHARED]):
        with pytest.raises(_StopError):
            rl.run_rl(_parse(rl.configure_rl, argv))
    assert seen[0] == PPOConfig()
    assert seen[1] == PPOConfig(env="CountRecallEasy", resets=False, lr=0.01, **_SHARED_CONFIG)


def test_world_model_options_make_the_dreamer_and_baseline_configs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []

    def fake_dreamer(config: DreamerConfig, **_: Any) -> DreamerResult:
        seen.append(config)
        nan = float("nan")
        return DreamerResult({}, 0, config.steps, 0.0, nan, nan, nan, nan, [])

    def fake_ppo(config: PPOConfig, **_: Any) -> Any:
        seen.append(config)
        raise _StopError

    monkeypatch.setattr(world_model, "train_dreamer", fake_dreamer)
    monkeypatch.setattr(world_model, "train_ppo", fake_ppo)
    for argv in ([], ["--env", "Acrobot-v1", "--horizon", "9", *_SHARED]):
        with pytest.raises(_StopError):
            world_model.run_world_model(_parse(world_model.configure_world_model, argv))
    assert seen[0] == DreamerConfig()
    # the PPO baseline: a GRU at the world model's width, 4 envs x 64 steps, 2 minibatches
    baseline: dict[str, Any] = {"cell": "gru", "num_envs": 4, "rollout": 64, "minibatches": 2}
    baseline |= {"steps": 8192, "eval_episodes": 20}
    assert seen[1] == PPOConfig(env="CartPole-v1", **baseline)
    assert seen[2] == DreamerConfig(env="Acrobot-v1", horizon=9, **_SHARED_CONFIG)
    shared_run = {"seed": 7, "backend": "torch", "threads": 2}
    assert seen[3] == PPOConfig(env="Acrobot-v1", hidden_size=12, **shared_run, **baseline)


def test_stack_refuses_no_layers() -> None:
    with pytest.raises(ValueError, match="num_layers must be at least 1, got 0"):
        RecurrentStack("gru", 4, 4, 0)
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentActorCritic(3, 2, num_layers=0)
