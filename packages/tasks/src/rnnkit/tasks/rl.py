"""Memory reinforcement learning: a recurrent actor-critic trained by PPO on POPGym's memory
environments (Morad et al. 2023), with the state reset at episode boundaries (Lu et al. 2023).

The environments come from the ``popgym`` package (the ``rl`` extra: ``pip install
'rnnkit-tasks[rl]'``); any object with gymnasium's interface works (``reset(seed=) -> (obs,
info)``, ``step(action) -> (obs, reward, terminated, truncated, info)``, a ``Discrete``
action space and an observation space made of ``Discrete``, ``MultiDiscrete``, ``Box``,
``Tuple`` or ``Dict``).

The agent (:class:`RecurrentActorCritic`) reads, at each step, the observation (one-hot for
the discrete parts) and the previous action (one-hot, zero at an episode's first step), as
popjaxrl does, through ``num_layers`` residual layers around any registered cell; an actor and
a critic head read the last layer. ``num_envs`` environments run side by side; each update
collects ``rollout`` steps from each, a sequence that crosses episode boundaries, and the cell
is run over it with ``resets`` marking the first step of every episode, so that the state
never carries one episode into the next (the rollout runs step by step; the update runs the
whole sequence at once, which a scan backend parallelises over time). Training is PPO with
generalised advantage estimation; minibatches are whole environment sequences, started from
the state each environment had when the rollout began.

``rnnkit rl --env RepeatPreviousEasy --cell s5`` trains one agent and writes ``rl.json``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError
from rnnkit.tasks._util import SEED_BOUND, torch_threads
from rnnkit.tasks.agent import (
    RecurrentStack,
    add_agent_options,
    add_run_options,
    agent_config,
    emit_result,
)

__all__ = [
    "RL_HELP",
    "PPOConfig",
    "PopgymUnavailableError",
    "RLResult",
    "RecurrentActorCritic",
    "VectorEnv",
    "action_count",
    "configure_rl",
    "encode_observation",
    "make_env",
    "observation_size",
    "run_rl",
    "train_ppo",
]

RL_HELP = (
    "memory RL: train a recurrent actor-critic (any registered cell, the state reset at "
    "episode boundaries) by PPO on a POPGym memory environment and report its mean episodic "
    "return against a random policy; writes rl.json (needs the rl extra: pip install "
    "'rnnkit-tasks[rl]')"
)

_NO_POPGYM = (
    "the POPGym environments need the popgym package: pip install 'rnnkit-tasks[rl]' "
    "(or pip install popgym)"
)


# --- environments -----------------------------------------------------------------------------


class PopgymUnavailableError(RnnkitError, ImportError):
    """``popgym`` is not installed: the message names the ``rl`` extra (``rnnkit rl`` prints
    it as one line)."""


def make_env(name: str) -> Any:
    """A new POPGym environment by class name (``"RepeatPreviousEasy"``, ``"CountRecallHard"``,
    see ``popgym.envs``). Raises :class:`PopgymUnavailableError` without ``popgym`` and
    ``ValueError`` for an unknown name."""
    try:
        envs = importlib.import_module("popgym.envs")
    except ImportError as exc:
        raise PopgymUnavailableError(_NO_POPGYM) from exc
    cls = getattr(envs, name, None)
    if not isinstance(cls, type):
        known = sorted(
            n for n in dir(envs) if n[:1].isupper() and n.endswith(("Easy", "Medium", "Hard"))
        )
        raise ValueError(f"unknown POPGym environment {name!r}; known: {', '.join(known)}")
    return cls()


def observation_size(space: Any) -> int:
    """Width of :func:`encode_observation`'s vector for a gymnasium observation space."""
    if hasattr(space, "nvec"):  # MultiDiscrete
        return int(np.asarray(space.nvec).sum())
    if hasattr(space, "n") and hasattr(space, "start"):  # Discrete
        return int(space.n)
    if isinstance(getattr(space, "spaces", None), dict):  # Dict
        return sum(observation_size(s) for s in space.spaces.values())
    if isinstance(getattr(space, "spaces", None), (tuple, list)):  # Tuple
        return sum(observation_size(s) for s in space.spaces)
    if hasattr(space, "shape") and space.shape is not None:  # Box
        return int(np.prod(space.shape))
    raise TypeError(f"unsupported observation space {space!r}")


def encode_observation(space: Any, obs: Any) -> np.ndarray:
    """One observation as a float32 vector of :func:`observation_size`: one-hot for discrete
    parts (``Discrete``, each entry of ``MultiDiscrete``), flattened for ``Box``, parts
    concatenated in order for ``Tuple`` and ``Dict``."""
    if hasattr(space, "nvec"):
        nvec = np.asarray(space.nvec).reshape(-1)
        values = np.asarray(obs).reshape(-1)
        out = np.zeros(int(nvec.sum()), dtype=np.float32)
        offsets = np.concatenate(([0], np.cumsum(nvec)[:-1]))
        out[offsets + values] = 1.0
        return out
    if hasattr(space, "n") and hasattr(space, "start"):
        out = np.zeros(int(space.n), dtype=np.float32)
        out[int(obs) - int(space.start)] = 1.0
        return out
    subs = getattr(space, "spaces", None)
    if isinstance(subs, dict):
        return np.concatenate([encode_observation(s, obs[k]) for k, s in subs.items()])
    if isinstance(subs, (tuple, list)):
        return np.concatenate([encode_observation(s, o) for s, o in zip(subs, obs, strict=True)])
    if hasattr(space, "shape") and space.shape is not None:
        return np.asarray(obs, dtype=np.float32).reshape(-1)
    raise TypeError(f"unsupported observation space {space!r}")


def action_count(space: Any) -> int:
    """The number of actions of a ``Discrete`` action space."""
    if not (hasattr(space, "n") and hasattr(space, "start")) or hasattr(space, "nvec"):
        raise TypeError(f"the agent needs a Discrete action space, got {space!r}")
    return int(space.n)


class VectorEnv:
    """``count`` environments stepped together, each reset when its episode ends.

    Features are ``(count, observation_size + actions)`` float32: the encoded observation and
    the previous action one-hot (zero at an episode's first step). ``starts: (count,)`` bool
    says which environments are at the first step of an episode.
    """

    def __init__(self, make: Callable[[], Any], count: int, seed: int) -> None:
        if count < 1:
            raise ValueError(f"need at least one environment, got {count}")
        self.envs = [make() for _ in range(count)]
        self.space = self.envs[0].observation_space
        self.actions = action_count(self.envs[0].action_space)
        self.obs_size = observation_size(self.space)
        self.feature_size = self.obs_size + self.actions
        self.features = np.zeros((count, self.feature_size), dtype=np.float32)
        self.starts = np.ones(count, dtype=bool)
        self.returns = np.zeros(count)
        for i, env in enumerate(self.envs):
            # seeded once: every later reset draws from the environment's own generator
            obs, _ = env.reset(seed=seed * 10_007 + i)
            self.features[i, : self.obs_size] = encode_observation(self.space, obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Apply ``actions: (count,)``; ``(rewards: (count,), dones: (count,) bool, the returns
        of the episodes that ended)``. ``features`` and ``starts`` then describe the next
        step (a new episode's first step where one ended)."""
        rewards = np.zeros(len(self.envs))
        dones = np.zeros(len(self.envs), dtype=bool)
        finished: list[float] = []
        for i, env in enumerate(self.envs):
            a = int(actions[i])
            obs, r, terminated, truncated, _ = env.step(a)
            rewards[i] = float(r)
            self.returns[i] += float(r)
            dones[i] = bool(terminated or truncated)
            self.features[i] = 0.0
            if dones[i]:
                finished.append(float(self.returns[i]))
                self.returns[i] = 0.0
                obs, _ = env.reset()
            else:
                self.features[i, self.obs_size + a] = 1.0
            self.features[i, : self.obs_size] = encode_observation(self.space, obs)
        self.starts = dones.copy()
        return rewards, dones, finished


# --- the agent --------------------------------------------------------------------------------


class RecurrentActorCritic(nn.Module):
    """Encoder -> ``num_layers`` residual recurrent layers (:class:`RecurrentStack`) -> actor
    and critic heads.

    Args:
        feature_size: width of the per-step input (observation and previous action).
        actions: number of discrete actions.
        cell: a registered cell name (``"s5"``, ``"lstm"``, ...).
        hidden_size: the width of the layers.
        state_size: the cell's ``hidden_size`` (the state size of S5 and S4D, the hidden width
            of an LSTM); default ``hidden_size``.
        num_layers: recurrent layers.
        **cell_kwargs: passed to every cell.
    """

    def __init__(
        self,
        feature_size: int,
        actions: int,
        *,
        cell: str = "s5",
        hidden_size: int = 64,
        state_size: int | None = None,
        num_layers: int = 1,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.encoder = nn.Linear(feature_size, hidden_size)
        self.layers = RecurrentStack(
            cell, hidden_size, state_size or hidden_size, num_layers, **cell_kwargs
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.actor = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, actions)
        )
        self.critic = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1)
        )

    def initial_state(self, batch: int) -> list[Any]:
        """One initial cell state per layer, each field ``(batch, ...)``."""
        return self.layers.initial_state(batch)

    def forward(
        self,
        x: Tensor,
        state: Sequence[Any] | None = None,
        *,
        resets: Tensor | None = None,
        backend: str = "auto",
    ) -> tuple[Tensor, Tensor, list[Any]]:
        """``x: (B, T, feature_size)``, ``resets: (B, T)`` bool (the state entering step ``t``
        is the initial state where true) -> ``(logits: (B, T, actions), values: (B, T), the
        final state per layer)``."""
        h, finals = self.layers(F.gelu(self.encoder(x)), state, resets=resets, backend=backend)
        return self._heads(h, finals)

    def step(
        self, x_t: Tensor, state: Sequence[Any], *, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, list[Any]]:
        """One step: ``x_t: (B, feature_size)``, ``starts: (B,)`` bool -> ``(logits: (B,
        actions), values: (B,), the state per layer)``; equal to :meth:`forward` on a sequence
        of length 1 with ``resets=starts[:, None]``."""
        h, finals = self.layers.step(F.gelu(self.encoder(x_t)), state, starts)
        return self._heads(h, finals)

    def _heads(self, h: Tensor, finals: list[Any]) -> tuple[Tensor, Tensor, list[Any]]:
        h = self.norm(h)
        logits: Tensor = self.actor(h)
        values: Tensor = self.critic(h).squeeze(-1)
        return logits, values, finals


def _select(states: Sequence[Any], index: Tensor) -> list[Any]:
    """The rows ``index`` of every field of every layer's state."""
    return [type(s)._make(f[index] for f in s) for s in states]


# --- PPO --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOConfig:
    """What :func:`train_ppo` does. ``steps`` counts environment steps over all environments
    (rounded up to whole updates of ``num_envs * rollout``)."""

    env: str = "RepeatPreviousEasy"
    cell: str = "s5"
    hidden_size: int = 64
    state_size: int | None = None
    num_layers: int = 1
    cell_kwargs: dict[str, Any] = field(default_factory=dict)
    resets: bool = True
    steps: int = 200_000
    num_envs: int = 16
    rollout: int = 128
    epochs: int = 4
    minibatches: int = 4
    lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    eval_episodes: int = 200
    seed: int = 0
    backend: str = "auto"
    threads: int | None = 1


@dataclass
class RLResult:
    """What :func:`train_ppo` measured.

    ``final_return``: mean return of the training episodes of the last 10 % of the updates
    (sampled actions); ``mmer``: POPGym's MMER, the largest mean return of one update's
    episodes over training; ``eval_return``: greedy actions (argmax) on ``eval_episodes`` new
    episodes; ``random_return``: uniformly random actions on as many episodes.
    """

    config: dict[str, Any]
    params: int
    env_steps: int
    seconds: float
    final_return: float
    mmer: float
    eval_return: float
    random_return: float
    history: list[dict[str, float]]


def _gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Advantages and returns ``(E, T)`` by GAE; ``last: (E,)`` the value after the rollout,
    ``dones[:, t]`` whether the episode ended at step ``t`` (no bootstrap across it)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last)
    nxt = last
    for t in range(rewards.shape[1] - 1, -1, -1):
        keep = 1.0 - dones[:, t]
        delta = rewards[:, t] + gamma * nxt * keep - values[:, t]
        running = delta + gamma * lam * keep * running
        adv[:, t] = running
        nxt = values[:, t]
    return adv, adv + values


def _run_episodes(
    make: Callable[[], Any],
    episodes: int,
    seed: int,
    model: RecurrentActorCritic | None,
    resets: bool,
) -> float:
    """Mean return of ``episodes`` new episodes (environments seeded apart from training's),
    with greedy actions of ``model`` or, without one, uniformly random actions."""
    count = min(episodes, 32)
    envs = VectorEnv(make, count, seed + 1_000_003)
    rng = np.random.default_rng(seed)
    state = model.initial_state(count) if model is not None else None
    done: list[float] = []
    with torch.no_grad():
        while len(done) < episodes:
            if model is None or state is None:
                actions = rng.integers(0, envs.actions, size=count)
            else:
                x = torch.from_numpy(envs.features.copy())
                starts = torch.from_numpy(envs.starts.copy())
                logits, _, state = model.step(x, state, starts=starts if resets else None)
                actions = logits.argmax(-1).numpy()
            _, _, finished = envs.step(actions)
            done.extend(finished)
    return float(np.mean(done[:episodes]))


def check_env_seed(seed: object) -> None:
    """Refuse a seed outside ``[0, SEED_BOUND)``: gymnasium seeds environments with
    non-negative integers only (a negative one failed at the first reset, after set-up)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_BOUND:
        raise ValueError(f"seed must be an integer in [0, 2**40) for an environment, got {seed!r}")


def train_ppo(
    config: PPOConfig,
    *,
    make: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> RLResult:
    """Train a :class:`RecurrentActorCritic` on ``config.env`` (or on environments from
    ``make``) by PPO; see the module docstring. ``log`` receives one line per update."""
    c = config
    for name in ("steps", "num_envs", "rollout", "epochs", "minibatches", "eval_episodes"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(c, name)}")
    check_env_seed(c.seed)
    if c.minibatches > c.num_envs:
        raise ValueError(
            f"minibatches ({c.minibatches}) cannot exceed num_envs ({c.num_envs}): a minibatch "
            "is a set of whole environment sequences"
        )
    factory: Callable[[], Any] = make if make is not None else (lambda: make_env(c.env))
    with torch_threads(c.threads or None, unset=None):  # 0 or None: torch's own count
        return _train(c, factory, log)


def _train(c: PPOConfig, factory: Callable[[], Any], log: Callable[[str], None] | None) -> RLResult:
    torch.manual_seed(c.seed)
    envs = VectorEnv(factory, c.num_envs, c.seed)
    model = RecurrentActorCritic(
        envs.feature_size,
        envs.actions,
        cell=c.cell,
        hidden_size=c.hidden_size,
        state_size=c.state_size,
        num_layers=c.num_layers,
        **c.cell_kwargs,
    )
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    rng = np.random.default_rng(c.seed)
    E, T = c.num_envs, c.rollout
    updates = math.ceil(c.steps / (E * T))
    state = model.initial_state(E)
    history: list[dict[str, float]] = []
    all_returns: list[tuple[int, float]] = []
    started = time.perf_counter()
    for update in range(updates):
        feats = torch.zeros(E, T, envs.feature_size)
        starts = torch.zeros(E, T, dtype=torch.bool)
        actions = torch.zeros(E, T, dtype=torch.long)
        logps = torch.zeros(E, T)
        values = torch.zeros(E, T)
        rewards = torch.zeros(E, T)
        dones = torch.zeros(E, T)
        state0 = state
        finished: list[float] = []
        model.eval()
        with torch.no_grad():
            for t in range(T):
                x = torch.from_numpy(envs.features.copy())
                s = torch.from_numpy(envs.starts.copy())
                feats[:, t], starts[:, t] = x, s
                logits, value, state = model.step(x, state, starts=s if c.resets else None)
                logp_all = F.log_softmax(logits, -1)
                a = torch.multinomial(F.softmax(logits, -1), 1, True).squeeze(-1)
                actions[:, t], values[:, t] = a, value
                logps[:, t] = logp_all.gather(-1, a[:, None]).squeeze(-1)
                r, d, fin = envs.step(a.numpy())
                rewards[:, t] = torch.from_numpy(r).float()
                dones[:, t] = torch.from_numpy(d).float()
                finished.extend(fin)
            x = torch.from_numpy(envs.features.copy())
            s = torch.from_numpy(envs.starts.copy())
            _, last, _ = model.step(x, state, starts=s if c.resets else None)
        adv, ret = _gae(rewards, values, dones, last, c.gamma, c.gae_lambda)
        model.train()
        resets = starts if c.resets else None
        for _ in range(c.epochs):
            order = torch.from_numpy(rng.permutation(E))
            for idx in order.chunk(c.minibatches):
                logits, v, _ = model(
                    feats[idx],
                    _select(state0, idx),
                    resets=None if resets is None else resets[idx],
                    backend=c.backend,
                )
                logp_all = F.log_softmax(logits, -1)
                logp = logp_all.gather(-1, actions[idx].unsqueeze(-1)).squeeze(-1)
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                a_mb = adv[idx]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                ratio = torch.exp(logp - logps[idx])
                clipped = torch.clamp(ratio, 1 - c.clip, 1 + c.clip)
                policy_loss = -torch.min(ratio * a_mb, clipped * a_mb).mean()
                value_loss = F.mse_loss(v, ret[idx])
                loss = policy_loss + c.value_coef * value_loss - c.entropy * entropy
                opt.zero_grad()
                torch.autograd.backward(loss)
                nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
                opt.step()
        steps_done = (update + 1) * E * T
        all_returns.extend((update, r) for r in finished)
        mean_ret = float(np.mean(finished)) if finished else math.nan
        history.append(
            {
                "env_steps": float(steps_done),
                "mean_return": mean_ret,
                "episodes": float(len(finished)),
                "seconds": time.perf_counter() - started,
            }
        )
        if log is not None:
            log(
                f"update {update + 1}/{updates}  env steps {steps_done}  "
                f"mean return {mean_ret:.3f} ({len(finished)} episodes)"
            )
    seconds = time.perf_counter() - started
    tail_from = updates - max(1, updates // 10)
    tail = [r for u, r in all_returns if u >= tail_from]
    means = [h["mean_return"] for h in history if not math.isnan(h["mean_return"])]
    model.eval()
    greedy = _run_episodes(factory, c.eval_episodes, c.seed, model, c.resets)
    random_ = _run_episodes(factory, c.eval_episodes, c.seed, None, c.resets)
    return RLResult(
        config=asdict(c),
        params=sum(p.numel() for p in model.parameters()),
        env_steps=updates * E * T,
        seconds=seconds,
        final_return=float(np.mean(tail)) if tail else math.nan,
        mmer=max(means) if means else math.nan,
        eval_return=greedy,
        random_return=random_,
        history=history,
    )


# --- rnnkit rl --------------------------------------------------------------------------------


def configure_rl(p: Any) -> None:
    """Arguments of ``rnnkit rl`` (``p``: an ``argparse.ArgumentParser``)."""
    d = PPOConfig()
    p.add_argument("--env", default=d.env, help=f"POPGym environment class ({d.env})")
    add_agent_options(
        p,
        d,
        cell_help="registered cell of the agent",
        state_help="the cell's hidden_size (S5's P); default --hidden-size",
    )
    p.add_argument(
        "--resets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reset the state at episode boundaries (default: yes; --no-resets carries it)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=d.steps,
        help=f"environment steps ({d.steps:,}), rounded up to whole updates of "
        "num-envs x rollout steps",
    )
    p.add_argument("--num-envs", type=int, default=d.num_envs, help="parallel environments (16)")
    p.add_argument("--rollout", type=int, default=d.rollout, help="steps per env per update")
    p.add_argument("--epochs", type=int, default=d.epochs, help="PPO epochs per update (4)")
    p.add_argument("--minibatches", type=int, default=d.minibatches, help="per epoch (4)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (1e-3)")
    p.add_argument("--gamma", type=float, default=d.gamma, help="discount (0.99)")
    p.add_argument("--gae-lambda", type=float, default=d.gae_lambda, help="GAE lambda (0.95)")
    p.add_argument("--entropy", type=float, default=d.entropy, help="entropy bonus (0.01)")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="(200)")
    add_run_options(p, d, writes="rl.json")


def run_rl(args: Any) -> int:
    """``rnnkit rl``: train one agent, print its returns (and write ``--out``/rl.json)."""
    config = PPOConfig(
        env=args.env,
        resets=args.resets,
        steps=args.steps,
        num_envs=args.num_envs,
        rollout=args.rollout,
        epochs=args.epochs,
        minibatches=args.minibatches,
        lr=args.lr,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        entropy=args.entropy,
        eval_episodes=args.eval_episodes,
        **agent_config(args),
    )
    result = train_ppo(config, log=None if args.json else print)
    if not emit_result(args, "rl.json", asdict(result)):
        print(
            f"{config.env}, {config.cell} ({result.params:,} parameters), "
            f"{result.env_steps:,} env steps in {result.seconds:.1f} s: "
            f"final return {result.final_return:.3f}, MMER {result.mmer:.3f}, "
            f"greedy {result.eval_return:.3f}, random policy {result.random_return:.3f}"
        )
    return 0
