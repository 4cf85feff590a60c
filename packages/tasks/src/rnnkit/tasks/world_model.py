"""A Drama-style model-based agent, scaled down (Wang et al., ICLR 2025, arXiv 2410.08893).

Drama trains a world model whose sequence model is Mamba-2 on replayed real experience, and an
actor-critic purely inside that model's imagined rollouts. This module keeps that structure for
small gymnasium environments with vector observations and discrete actions (``CartPole-v1``):

* **World model** (:class:`WorldModel`): the observation is embedded by an MLP, joined with
  the action one-hot, and read by ``num_layers`` residual layers around any registered cell
  (default ``mamba``; the state restarts at episode boundaries through ``resets``). Heads on
  the last layer predict the next observation (as a change from the current one, MSE), the
  reward (MSE) and whether the episode terminates after this step (binary cross-entropy).
* **Behaviour** (:class:`ActorCritic`): imagination starts from replayed states (the world
  model reads ``context - 1`` real steps, then the actor acts from the next real
  observation), runs ``horizon`` steps of the world model under the actor's sampled actions,
  and trains the critic towards lambda-returns and the actor by REINFORCE with the normalised
  advantage and an entropy bonus; a step after a predicted termination carries no weight.

Departures from Drama, on purpose: no image autoencoder and no discrete (32x32 categorical)
latents, KL balance or free bits: the observation is a short vector, so the world model
predicts it directly; the reward is regressed by MSE instead of a symlog two-hot
distribution; replay windows are drawn uniformly instead of by Drama's dynamic frequency-based
sampling; the actor and the critic read the (real or imagined) observation, not the world
model's state, which suffices for a fully observed environment such as CartPole.

``rnnkit world-model --env CartPole-v1 --steps 8192`` trains the agent and, at the same number
of environment steps, the PPO agent of :mod:`rnnkit.tasks.rl`, and reports both returns.
"""

from __future__ import annotations

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
from rnnkit.tasks._util import torch_threads
from rnnkit.tasks.agent import (
    RecurrentStack,
    add_agent_options,
    add_run_options,
    agent_config,
    emit_result,
)
from rnnkit.tasks.rl import (
    PPOConfig,
    action_count,
    check_env_seed,
    encode_observation,
    observation_size,
    train_ppo,
)

__all__ = [
    "WORLD_MODEL_HELP",
    "ActorCritic",
    "DreamerConfig",
    "DreamerResult",
    "GymnasiumUnavailableError",
    "Imagination",
    "ReplayBuffer",
    "WorldModel",
    "configure_world_model",
    "imagine",
    "lambda_returns",
    "make_gym_env",
    "run_world_model",
    "train_dreamer",
    "world_model_loss",
]

WORLD_MODEL_HELP = (
    "model-based RL, Drama-style and scaled down: a world model over any registered cell "
    "(default mamba) trained on replayed experience, an actor-critic trained in its imagined "
    "rollouts, compared with PPO at equal environment steps on a gymnasium environment "
    "(CartPole-v1); writes world_model.json"
)


class GymnasiumUnavailableError(RnnkitError, ImportError):
    """``gymnasium`` is not installed: the message names the ``rl`` extra (``rnnkit
    world-model`` prints it as one line)."""


def make_gym_env(name: str) -> Any:
    """``gymnasium.make(name)``; ``ValueError`` naming ``env`` for an unknown id and
    :class:`GymnasiumUnavailableError` without gymnasium."""
    try:
        gym = importlib.import_module("gymnasium")
    except ImportError as exc:  # the rl extra brings gymnasium
        raise GymnasiumUnavailableError(
            "the world-model agent needs gymnasium: pip install 'rnnkit-tasks[rl]'"
        ) from exc
    try:
        return gym.make(name)
    except gym.error.Error as exc:
        raise ValueError(f"env: unknown gymnasium environment {name!r} ({exc})") from exc


# --- replay -----------------------------------------------------------------------------------


class ReplayBuffer:
    """One stream of real steps, episodes one after another.

    Step ``i`` holds the observation the agent acted from, the action, the reward received,
    whether the episode terminated after it, and whether it is an episode's first step (the
    world model's state restarts there). A truncated episode is followed by a first step
    without being marked terminated.
    """

    def __init__(self, obs_size: int) -> None:
        self.obs_size = obs_size
        self._obs: list[np.ndarray] = []
        self._actions: list[int] = []
        self._rewards: list[float] = []
        self._terminated: list[bool] = []
        self._first: list[bool] = []

    def __len__(self) -> int:
        return len(self._actions)

    def add(
        self, obs: np.ndarray, action: int, reward: float, terminated: bool, first: bool
    ) -> None:
        """Append one step (``obs: (obs_size,)``)."""
        self._obs.append(np.asarray(obs, dtype=np.float32).reshape(self.obs_size))
        self._actions.append(int(action))
        self._rewards.append(float(reward))
        self._terminated.append(bool(terminated))
        self._first.append(bool(first))

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """``batch`` windows of ``length`` consecutive steps, starts drawn uniformly:
        ``obs: (B, L, obs_size)``, ``actions: (B, L)`` long, ``rewards``, ``terminated``:
        ``(B, L)`` float, ``first: (B, L)`` bool (the window's first step counts as first, so
        the world model never needs a state from before the window)."""
        if length > len(self):
            raise ValueError(f"length: {length} exceeds the {len(self)} stored steps")
        starts = rng.integers(0, len(self) - length + 1, size=batch)
        idx = starts[:, None] + np.arange(length)[None, :]
        obs = np.stack(self._obs)[idx]
        first = np.asarray(self._first)[idx]
        first[:, 0] = True
        return {
            "obs": torch.from_numpy(obs),
            "actions": torch.from_numpy(np.asarray(self._actions)[idx]).long(),
            "rewards": torch.from_numpy(np.asarray(self._rewards, dtype=np.float32)[idx]),
            "terminated": torch.from_numpy(np.asarray(self._terminated, dtype=np.float32)[idx]),
            "first": torch.from_numpy(first),
        }


# --- the world model --------------------------------------------------------------------------


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class WorldModel(nn.Module):
    """Observation embedding and action -> recurrent layers (:class:`RecurrentStack`) -> next
    observation, reward and termination.

    Args:
        obs_size: width of the observation vector.
        actions: number of discrete actions.
        cell: a registered cell name (``"mamba"``, ``"gru"``, ...).
        hidden_size: the layers' width (Mamba's ``d_model``).
        state_size: the cell's ``hidden_size`` (Mamba's inner channels); default
            ``hidden_size``.
        num_layers: recurrent layers.
        **cell_kwargs: passed to every cell.
    """

    def __init__(
        self,
        obs_size: int,
        actions: int,
        *,
        cell: str = "mamba",
        hidden_size: int = 64,
        state_size: int | None = None,
        num_layers: int = 1,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (
            ("obs_size", obs_size),
            ("actions", actions),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.obs_size, self.actions = obs_size, actions
        self.embed = nn.Sequential(nn.Linear(obs_size, hidden_size), nn.GELU())
        self.inp = nn.Linear(hidden_size + actions, hidden_size)
        self.layers = RecurrentStack(
            cell, hidden_size, state_size or hidden_size, num_layers, **cell_kwargs
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.obs_head = _mlp(hidden_size, hidden_size, obs_size)
        self.reward_head = _mlp(hidden_size, hidden_size, 1)
        self.term_head = _mlp(hidden_size, hidden_size, 1)

    def _input(self, obs: Tensor, actions: Tensor) -> Tensor:
        x: Tensor = self.inp(torch.cat([self.embed(obs), F.one_hot(actions, self.actions)], -1))
        return x

    def _heads(self, obs: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.norm(h)
        nxt = obs + self.obs_head(h)
        return nxt, self.reward_head(h).squeeze(-1), self.term_head(h).squeeze(-1)

    def forward(
        self,
        obs: Tensor,
        actions: Tensor,
        *,
        resets: Tensor | None = None,
        state: Sequence[Any] | None = None,
        backend: str = "auto",
    ) -> tuple[Tensor, Tensor, Tensor, list[Any]]:
        """``obs: (B, T, obs_size)``, ``actions: (B, T)`` long, ``resets: (B, T)`` bool ->
        ``(next_obs: (B, T, obs_size), reward: (B, T), termination logits: (B, T), the final
        state per layer)``; step ``t``'s predictions follow taking ``actions[:, t]``."""
        h, finals = self.layers(self._input(obs, actions), state, resets=resets, backend=backend)
        return (*self._heads(obs, h), finals)

    def step(
        self, obs: Tensor, actions: Tensor, state: Sequence[Any], starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, list[Any]]:
        """One step: ``obs: (B, obs_size)``, ``actions: (B,)``, ``starts: (B,)`` bool (rows
        whose state restarts) -> ``(next_obs: (B, obs_size), reward: (B,), termination logits:
        (B,), the state per layer)``."""
        h, finals = self.layers.step(self._input(obs, actions), state, starts)
        return (*self._heads(obs, h), finals)

    def initial_state(self, batch: int) -> list[Any]:
        """One initial cell state per layer, each field ``(batch, ...)``."""
        return self.layers.initial_state(batch)


def world_model_loss(
    model: WorldModel, batch: dict[str, Tensor], backend: str = "auto"
) -> tuple[Tensor, dict[str, float]]:
    """The world model's loss on a :meth:`ReplayBuffer.sample` batch: next-observation MSE
    (only where the next step belongs to the same episode), reward MSE and termination BCE;
    returns the sum and its three parts."""
    obs, first = batch["obs"], batch["first"]
    nxt, reward, term, _ = model(obs, batch["actions"], resets=first, backend=backend)
    same = (~first[:, 1:]).float()
    err = (nxt[:, :-1] - obs[:, 1:]).pow(2).mean(-1)
    obs_loss = (err * same).sum() / same.sum().clamp(min=1.0)
    reward_loss = F.mse_loss(reward, batch["rewards"])
    term_loss = F.binary_cross_entropy_with_logits(term, batch["terminated"])
    total = obs_loss + reward_loss + term_loss
    parts = {"obs": obs_loss.item(), "reward": reward_loss.item(), "term": term_loss.item()}
    return total, parts


# --- behaviour in imagination -----------------------------------------------------------------


class ActorCritic(nn.Module):
    """Two MLPs on the observation: ``actor(obs: (..., obs_size)) -> logits (..., actions)``,
    ``critic(obs) -> value (...)``."""

    def __init__(self, obs_size: int, actions: int, hidden_size: int = 64) -> None:
        super().__init__()
        self.actor = _mlp(obs_size, hidden_size, actions)
        self.critic = _mlp(obs_size, hidden_size, 1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits: (..., actions), values: (...))``."""
        logits: Tensor = self.actor(obs)
        return logits, self.critic(obs).squeeze(-1)


@dataclass
class Imagination:
    """One batch of imagined rollouts of ``H`` steps.

    ``obs: (B, H + 1, obs_size)`` (index 0 a real observation), ``actions: (B, H)`` long,
    ``rewards``, ``dones``, ``alive``: ``(B, H)`` float; ``dones[:, k]`` is 1 where the world
    model predicts the episode ends after step ``k``; ``alive[:, k]`` is 0 once an earlier
    step ended it (those steps carry no weight).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    alive: Tensor


@torch.no_grad()
def imagine(
    model: WorldModel,
    agent: ActorCritic,
    batch: dict[str, Tensor],
    horizon: int,
    backend: str = "auto",
) -> Imagination:
    """Roll the world model ``horizon`` steps under ``agent``'s sampled actions, from the
    last step of each replayed window in ``batch`` (``obs: (B, C, obs_size)``): the model
    first reads the window's ``C - 1`` earlier real steps, so its state holds their history."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    obs, actions, first = batch["obs"], batch["actions"], batch["first"]
    B, C = obs.shape[:2]
    if C > 1:
        *_, state = model(obs[:, :-1], actions[:, :-1], resets=first[:, :-1], backend=backend)
    else:
        state = model.initial_state(B)
    o = obs[:, -1]
    starts: Tensor | None = first[:, -1]
    seen = [o]
    acts, rews, dones = [], [], []
    for _ in range(horizon):
        logits, _ = agent(o)
        a = torch.multinomial(F.softmax(logits, -1), 1).squeeze(-1)
        o, r, term, state = model.step(o, a, state, starts)
        starts = None
        seen.append(o)
        acts.append(a)
        rews.append(r)
        dones.append((term > 0.0).float())
    done = torch.stack(dones, 1)
    alive = torch.cumprod(torch.cat([torch.ones(B, 1), 1.0 - done[:, :-1]], 1), 1)
    return Imagination(
        torch.stack(seen, 1), torch.stack(acts, 1), torch.stack(rews, 1), done, alive
    )


def lambda_returns(
    rewards: Tensor, values: Tensor, dones: Tensor, gamma: float, lam: float
) -> Tensor:
    """``R_k = r_k + gamma (1 - d_k) ((1 - lam) v_{k+1} + lam R_{k+1})``, ``R_H = v_H``:
    ``rewards``, ``dones: (B, H)``, ``values: (B, H + 1)`` -> ``(B, H)``."""
    if values.shape[1] != rewards.shape[1] + 1:
        raise ValueError(
            f"values: need {rewards.shape[1] + 1} steps (one past the rewards), "
            f"got {values.shape[1]}"
        )
    out = torch.zeros_like(rewards)
    nxt = values[:, -1]
    for k in range(rewards.shape[1] - 1, -1, -1):
        nxt = rewards[:, k] + gamma * (1.0 - dones[:, k]) * (
            (1.0 - lam) * values[:, k + 1] + lam * nxt
        )
        out[:, k] = nxt
    return out


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DreamerConfig:
    """What :func:`train_dreamer` does; ``steps`` counts real environment steps."""

    env: str = "CartPole-v1"
    cell: str = "mamba"
    hidden_size: int = 64
    state_size: int | None = None
    num_layers: int = 1
    cell_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 8192
    prefill: int = 512
    train_every: int = 16
    wm_batch: int = 16
    wm_length: int = 32
    img_batch: int = 128
    context: int = 8
    horizon: int = 15
    wm_lr: float = 1e-3
    ac_lr: float = 1e-3
    gamma: float = 0.985
    lam: float = 0.95
    entropy: float = 3e-3
    max_grad_norm: float = 100.0
    eval_episodes: int = 20
    seed: int = 0
    backend: str = "auto"
    threads: int | None = 1


@dataclass
class DreamerResult:
    """What :func:`train_dreamer` measured: ``eval_return``, the mean return of greedy
    actions on ``eval_episodes`` new episodes; ``final_return``, the mean return of the
    training episodes of the last 10 % of the steps; ``wm_loss_first`` and ``wm_loss_last``,
    the world model's loss at its first update and its mean over the last 10 updates."""

    config: dict[str, Any]
    params: int
    env_steps: int
    seconds: float
    final_return: float
    eval_return: float
    wm_loss_first: float
    wm_loss_last: float
    history: list[dict[str, float]]


def _check(c: DreamerConfig) -> None:
    for name in (
        "steps",
        "train_every",
        "wm_batch",
        "img_batch",
        "context",
        "horizon",
        "eval_episodes",
    ):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(c, name)}")
    if c.wm_length < 2:
        raise ValueError(f"wm_length must be at least 2, got {c.wm_length}")
    check_env_seed(c.seed)
    if c.prefill < max(c.wm_length, c.context):
        raise ValueError(
            f"prefill ({c.prefill}) must cover wm_length ({c.wm_length}, the world model's "
            f"training window) and context ({c.context}): raise --prefill"
        )
    if c.prefill > c.steps:
        raise ValueError(
            f"prefill ({c.prefill}) cannot exceed steps ({c.steps}): raise --steps or lower "
            "--prefill"
        )
    if not (0.0 < c.gamma <= 1.0 and 0.0 <= c.lam <= 1.0):
        raise ValueError(f"gamma must be in (0, 1] and lam in [0, 1], got {c.gamma}, {c.lam}")


def _greedy_return(
    factory: Callable[[], Any], agent: ActorCritic | None, episodes: int, seed: int
) -> float:
    """Mean return of ``episodes`` new episodes under ``agent``'s greedy actions (uniformly
    random actions without one)."""
    env = factory()
    rng = np.random.default_rng(seed)
    total = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 1_000_003 + i)
        ret, done = 0.0, False
        while not done:
            if agent is None:
                a = int(rng.integers(0, action_count(env.action_space)))
            else:
                x = torch.from_numpy(encode_observation(env.observation_space, obs))
                with torch.no_grad():
                    a = int(agent(x)[0].argmax())
            obs, r, terminated, truncated, _ = env.step(a)
            ret += float(r)
            done = bool(terminated or truncated)
        total.append(ret)
    return float(np.mean(total))


def train_dreamer(
    config: DreamerConfig,
    *,
    make: Callable[[], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> DreamerResult:
    """Train the world model and the actor-critic (see the module docstring) on ``config.env``
    (or on environments from ``make``); ``log`` receives a line every 1024 steps."""
    c = config
    _check(c)
    factory: Callable[[], Any] = make if make is not None else (lambda: make_gym_env(c.env))
    with torch_threads(c.threads or None, unset=None):  # 0 or None: torch's own count
        return _train(c, factory, log)


def _train(
    c: DreamerConfig, factory: Callable[[], Any], log: Callable[[str], None] | None
) -> DreamerResult:
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    env = factory()
    space = env.observation_space
    obs_size, actions = observation_size(space), action_count(env.action_space)
    model = WorldModel(
        obs_size,
        actions,
        cell=c.cell,
        hidden_size=c.hidden_size,
        state_size=c.state_size,
        num_layers=c.num_layers,
        **c.cell_kwargs,
    )
    agent = ActorCritic(obs_size, actions, c.hidden_size)
    wm_opt = torch.optim.Adam(model.parameters(), lr=c.wm_lr)
    actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=c.ac_lr)
    critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=c.ac_lr)
    buffer = ReplayBuffer(obs_size)
    raw, _ = env.reset(seed=c.seed)
    obs = encode_observation(space, raw)
    first, ret = True, 0.0
    episodes: list[tuple[int, float]] = []
    wm_losses: list[float] = []
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(c.steps):
        if step < c.prefill:
            a = int(rng.integers(0, actions))
        else:
            with torch.no_grad():
                logits = agent.actor(torch.from_numpy(obs))
            a = int(torch.multinomial(F.softmax(logits, -1), 1))
        raw, r, terminated, truncated, _ = env.step(a)
        buffer.add(obs, a, float(r), bool(terminated), first)
        ret += float(r)
        first = bool(terminated or truncated)
        if first:
            episodes.append((step, ret))
            ret = 0.0
            raw, _ = env.reset()
        obs = encode_observation(space, raw)
        if step + 1 >= c.prefill and (step + 1) % c.train_every == 0:
            model.train()
            loss, _ = world_model_loss(
                model, buffer.sample(c.wm_batch, c.wm_length, rng), c.backend
            )
            wm_opt.zero_grad()
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
            wm_opt.step()
            wm_losses.append(loss.item())
            model.eval()
            _behaviour_update(c, model, agent, buffer, rng, actor_opt, critic_opt)
        if (step + 1) % 1024 == 0 or step + 1 == c.steps:
            recent = [r for s, r in episodes if s > step - 1024]
            mean_ret = float(np.mean(recent)) if recent else math.nan
            history.append(
                {
                    "env_steps": float(step + 1),
                    "mean_return": mean_ret,
                    "wm_loss": float(np.mean(wm_losses[-10:])) if wm_losses else math.nan,
                    "seconds": time.perf_counter() - started,
                }
            )
            if log is not None:
                log(
                    f"env steps {step + 1}/{c.steps}  mean return {mean_ret:.1f}  "
                    f"world-model loss {history[-1]['wm_loss']:.4f}"
                )
    seconds = time.perf_counter() - started
    tail = [r for s, r in episodes if s >= c.steps - max(1, c.steps // 10)]
    params = sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in agent.parameters())
    return DreamerResult(
        config=asdict(c),
        params=params,
        env_steps=c.steps,
        seconds=seconds,
        final_return=float(np.mean(tail)) if tail else math.nan,
        eval_return=_greedy_return(factory, agent, c.eval_episodes, c.seed),
        wm_loss_first=wm_losses[0] if wm_losses else math.nan,
        wm_loss_last=float(np.mean(wm_losses[-10:])) if wm_losses else math.nan,
        history=history,
    )


def _behaviour_update(
    c: DreamerConfig,
    model: WorldModel,
    agent: ActorCritic,
    buffer: ReplayBuffer,
    rng: np.random.Generator,
    actor_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
) -> None:
    """One actor and one critic step on a fresh batch of imagined rollouts."""
    img = imagine(model, agent, buffer.sample(c.img_batch, c.context, rng), c.horizon, c.backend)
    logits, values = agent(img.obs)
    returns = lambda_returns(img.rewards, values.detach(), img.dones, c.gamma, c.lam)
    weight = img.alive / img.alive.sum()
    critic_loss = ((values[:, :-1] - returns).pow(2) * weight).sum()
    adv = returns - values[:, :-1].detach()
    adv = (adv - (adv * weight).sum()) / (adv.std() + 1e-6)
    logp_all = F.log_softmax(logits[:, :-1], -1)
    logp = logp_all.gather(-1, img.actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    actor_loss = -((logp * adv + c.entropy * entropy) * weight).sum()
    for opt, loss, params in (
        (actor_opt, actor_loss, agent.actor.parameters()),
        (critic_opt, critic_loss, agent.critic.parameters()),
    ):
        opt.zero_grad()
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(params, c.max_grad_norm)
        opt.step()


# --- rnnkit world-model -----------------------------------------------------------------------


def configure_world_model(p: Any) -> None:
    """Arguments of ``rnnkit world-model`` (``p``: an ``argparse.ArgumentParser``)."""
    d = DreamerConfig()
    p.add_argument("--env", default=d.env, help=f"gymnasium environment id ({d.env})")
    add_agent_options(p, d, cell_help="the world model's registered cell")
    p.add_argument("--steps", type=int, default=d.steps, help=f"environment steps ({d.steps})")
    p.add_argument("--prefill", type=int, default=d.prefill, help="random steps first (512)")
    p.add_argument("--train-every", type=int, default=d.train_every, help="env steps per update")
    p.add_argument("--horizon", type=int, default=d.horizon, help="imagined steps (15)")
    p.add_argument("--context", type=int, default=d.context, help="replayed steps (8)")
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes, help="(20)")
    p.add_argument(
        "--baseline",
        choices=("ppo", "none"),
        default="ppo",
        help="also train rnnkit rl's PPO agent (a GRU) at the same environment steps (ppo)",
    )
    add_run_options(p, d, writes="world_model.json")


def run_world_model(args: Any) -> int:
    """``rnnkit world-model``: train the agent (and the PPO baseline), print the returns."""
    config = DreamerConfig(
        env=args.env,
        steps=args.steps,
        prefill=args.prefill,
        train_every=args.train_every,
        horizon=args.horizon,
        context=args.context,
        eval_episodes=args.eval_episodes,
        **agent_config(args),
    )
    result = train_dreamer(config, log=None if args.json else print)
    data: dict[str, Any] = {"dreamer": asdict(result)}
    if args.baseline == "ppo":
        ppo = train_ppo(_ppo_config(config), make=lambda: make_gym_env(config.env))
        data["ppo"] = asdict(ppo)
        data["random_return"] = ppo.random_return
    if emit_result(args, "world_model.json", data):
        return 0
    print(
        f"{config.env}, world model on {config.cell}: {result.env_steps:,} env steps in "
        f"{result.seconds:.1f} s: greedy return {result.eval_return:.1f}, last-10% training "
        f"return {result.final_return:.1f}, world-model loss {result.wm_loss_first:.3f} -> "
        f"{result.wm_loss_last:.3f}"
    )
    if "ppo" in data:
        p = data["ppo"]
        print(
            f"PPO (gru) at {p['env_steps']:,} env steps in {p['seconds']:.1f} s: greedy return "
            f"{p['eval_return']:.1f}, last-10% training return {p['final_return']:.1f}; random "
            f"policy {p['random_return']:.1f}"
        )
    return 0


def _ppo_config(c: DreamerConfig) -> PPOConfig:
    """The model-free baseline at ``c.steps`` environment steps: PPO over a GRU actor-critic,
    4 environments x 64-step rollouts (the count rounds up to a multiple of 256)."""
    return PPOConfig(
        env=c.env,
        cell="gru",
        hidden_size=c.hidden_size,
        steps=c.steps,
        num_envs=4,
        rollout=64,
        epochs=4,
        minibatches=2,
        lr=1e-3,
        eval_episodes=c.eval_episodes,
        seed=c.seed,
        backend=c.backend,
        threads=c.threads,
    )
