"""``rnnkit counts``: COUNTS-style chain of thought for forecasting, scaled down.

After Parker, Chan, Zhang and Ghobadi (arXiv 2510.01116, 2025); the model pieces are in
:mod:`rnnkit.models.counts`. The procedure, on one series of a registered forecasting task
(``ar`` or one of the real series, ``sunspots``, ``co2``, ``elnino``), z-scored as the task
does it and split 70/15/15 % in time:

1. **Tokeniser**: an :class:`~rnnkit.models.counts.RVQVAE` is trained to reconstruct every
   stride-1 patch of ``P`` points of the training stretch (scale token + ``stages`` codes).
2. **Examples**: at every origin ``t`` the prompt is the characters of ``prompt`` followed by
   the tokens of the ``context`` patches before ``t``; the answer is the tokens of the patch
   ``x[t : t + P]``. With chain of thought (CoT) the completion is ``<think> level trend
   <answer> scale code_1 .. code_S``: the reasoning tokens are a coarse summary of the next
   patch (``level``: its mean in ``levels`` quantile bins of the training patches; ``trend``:
   its second half's mean minus its first half's in tertile bins) written before the answer.
   Without CoT the completion is ``<answer> scale code_1 .. code_S``.
3. **SFT**: cross-entropy on the completion's tokens (``<think>``/``<answer>`` are forced,
   not scored); each position's softmax is over the tokens its slot allows (constrained
   decoding, so every completion is well formed: the paper rewards the format instead).
4. **GRPO** (CoT only): ``group`` completions sampled per prompt, reward ``-min(MSE,
   reward_cap)`` of the decoded forecast against the true patch (verifiable; the cap keeps a
   sampled huge scale token from swamping the group), group-normalised advantages, the clipped
   ratio objective with ``epochs`` updates per batch and ``beta`` x KL to the SFT model.

Forecasts are decoded greedily. The same procedure runs with the frozen backbone (a
``char_lm`` trained by ``rnnkit train --task charlm``) and without it (a fresh recurrent stack
of the width whose trainable parameter count is closest). Reported: MSE and MASE of the
``P``-step forecasts on the test stretch for each, next to persistence (the last value
repeated), the mean (0) and the RVQ round trip of the true patch (the tokeniser's floor).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.recurrent import Recurrent
from rnnkit.models.counts import (
    RVQVAE,
    CountsLM,
    _check_backbone,
    grpo_advantages,
    grpo_objective,
    matched_hidden_size,
)
from rnnkit.tasks._util import generator, torch_threads

COUNTS_HELP = (
    "COUNTS-style chain-of-thought forecasting, scaled down: an RVQ-VAE tokeniser, a frozen "
    "char_lm (--backbone-run DIR) with new token rows, SFT then GRPO with a reasoning prefix, "
    "against the same forecaster without the backbone; writes counts.json"
)

SERIES_TASKS = ("ar", "sunspots", "co2", "elnino")


@dataclass
class CountsConfig:
    """Settings of :func:`run_counts` (defaults: ``rnnkit counts``'s).

    ``max_train``: keep only the last this many training origins; ``max_test``: score only
    the first this many test origins (both for short runs; ``None``: all).
    """

    task: str = "ar"
    seed: int = 0
    patch_len: int = 16
    context: int = 4
    dim: int = 32
    codebook_size: int = 32
    stages: int = 3
    levels: int = 5
    prompt: str = "forecast: "
    vae_steps: int = 1500
    sft_steps: int = 600
    grpo_steps: int = 100
    batch_size: int = 64
    prompts_per_step: int = 16
    group: int = 8
    epochs: int = 2
    clip: float = 0.2
    beta: float = 0.04
    lr: float = 3e-3
    grpo_lr: float = 1e-3
    reward_cap: float = 10.0
    adapter: int = 32
    max_train: int | None = None
    max_test: int | None = None
    threads: int | None = 1
    backend: str = "auto"

    def check(self) -> None:
        """``ValueError`` naming the first bad setting."""
        if self.task not in SERIES_TASKS:
            raise ValueError(f"task must be one of {SERIES_TASKS}, got {self.task!r}")
        for name in (
            "patch_len",
            "context",
            "dim",
            "codebook_size",
            "stages",
            "batch_size",
            "prompts_per_step",
            "epochs",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.patch_len < 2:
            raise ValueError(f"patch_len must be at least 2, got {self.patch_len}")
        for name in ("levels", "group"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
        for name in ("vae_steps", "sft_steps", "grpo_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if not 0.0 < self.clip < 1.0:
            raise ValueError(f"clip must lie in (0, 1), got {self.clip}")
        if self.beta < 0 or self.lr <= 0 or self.grpo_lr <= 0 or self.reward_cap <= 0:
            raise ValueError("beta must be >= 0 and lr, grpo_lr, reward_cap > 0")


# --- the series ------------------------------------------------------------------------------


@dataclass
class SeriesSplit:
    """A z-scored series ``values: (n,)`` float64, split at ``points`` (train, valid, test
    lengths), and the MASE scale (the training stretch's in-sample naive MAE, same units)."""

    values: Tensor
    points: tuple[int, int, int]
    mase_scale: float


def task_series(task: str, seed: int) -> SeriesSplit:
    """The series of the forecasting ``task`` as the task scales and splits it."""
    from rnnkit.tasks import get_task

    if task == "ar":
        from rnnkit.tasks.forecasting import AR_COEFFS, ar_series

        length = 20000  # ar_data's defaults: the same series as the ``ar`` task's
        s = ar_series(torch.tensor(AR_COEFFS, dtype=torch.float64), length, 0.1, generator(seed))
        n_tr, n_va = int(0.7 * length), int(0.15 * length)
        z = (s - s[:n_tr].mean()) / s[:n_tr].std()
        scale = float((z[1:n_tr] - z[: n_tr - 1]).abs().mean())
        return SeriesSplit(z, (n_tr, n_va, length - n_tr - n_va), scale)
    if task not in SERIES_TASKS:
        raise ValueError(f"task must be one of {SERIES_TASKS}, got {task!r}")
    from rnnkit.tasks.series import load_series

    info = get_task(task).data(seed).info
    levels = load_series(task).values
    x = levels[1:] - levels[:-1] if info["difference"] else levels
    z = (x - float(info["mean"])) / float(info["std"])
    points = tuple(int(p) for p in info["points"])
    return SeriesSplit(z, (points[0], points[1], points[2]), float(info["mase_scale"]))


# --- the token layout ------------------------------------------------------------------------


@dataclass
class Layout:
    """Where the added tokens sit after the backbone's ``base`` ids (see :func:`encode`)."""

    base: int
    scales: int
    stages: int
    codebook_size: int
    levels: int
    trends: int = 3

    @property
    def scale0(self) -> int:
        return self.base

    def code0(self, k: int) -> int:
        return self.base + self.scales + k * self.codebook_size

    @property
    def level0(self) -> int:
        return self.code0(self.stages)

    @property
    def trend0(self) -> int:
        return self.level0 + self.levels

    @property
    def think(self) -> int:
        return self.trend0 + self.trends

    @property
    def answer(self) -> int:
        return self.think + 1

    @property
    def new(self) -> int:
        return self.answer + 1 - self.base

    def slots(self, cot: bool) -> list[tuple[int, int]]:
        """The completion's slots as id ranges ``[lo, hi)``; a forced token has ``hi = lo + 1``."""
        answer = [(self.answer, self.answer + 1), (self.scale0, self.scale0 + self.scales)]
        answer += [(self.code0(k), self.code0(k) + self.codebook_size) for k in range(self.stages)]
        if not cot:
            return answer
        thought = [
            (self.think, self.think + 1),
            (self.level0, self.level0 + self.levels),
            (self.trend0, self.trend0 + self.trends),
        ]
        return thought + answer

    def patch_ids(self, tokens: Tensor) -> Tensor:
        """Tokeniser tokens ``(..., 1 + stages)`` -> ids."""
        off = torch.tensor([self.scale0] + [self.code0(k) for k in range(self.stages)])
        return tokens + off

    def patch_tokens(self, ids: Tensor) -> Tensor:
        """Inverse of :meth:`patch_ids`."""
        off = torch.tensor([self.scale0] + [self.code0(k) for k in range(self.stages)])
        return ids - off


@dataclass
class Examples:
    """Prompts ``(N, Lp)``, CoT and direct completions ``(N, Lc)``, true patches ``(N, P)``
    and the last context value ``(N,)`` (persistence)."""

    prompts: Tensor
    cot: Tensor
    direct: Tensor
    future: Tensor
    last: Tensor


def summary_edges(future: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Bin edges of the reasoning tokens from training patches ``future: (N, P)``: the
    ``levels - 1`` inner quantiles of the patch means and the 2 tertiles of the trends."""
    half = future.shape[1] // 2
    mean = future.mean(1)
    trend = future[:, half:].mean(1) - future[:, :half].mean(1)
    q = torch.arange(1, levels, dtype=torch.float64) / levels
    t = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    return torch.quantile(mean.double(), q), torch.quantile(trend.double(), t)


def summary_tokens(future: Tensor, edges: tuple[Tensor, Tensor]) -> Tensor:
    """The reasoning tokens of patches ``future: (N, P)``: ``(N, 2)`` (level bin, trend bin)."""
    half = future.shape[1] // 2
    mean = future.mean(1).double()
    trend = (future[:, half:].mean(1) - future[:, :half].mean(1)).double()
    return torch.stack(
        [torch.bucketize(mean, edges[0]), torch.bucketize(trend, edges[1])], 1
    ).long()


def encode(
    series: Tensor,
    origins: Tensor,
    tok: RVQVAE,
    layout: Layout,
    prompt_ids: Tensor,
    context: int,
    edges: tuple[Tensor, Tensor],
) -> Examples:
    """The examples at ``origins (N,)`` of ``series (n,)``: context ``series[t - C P : t]``,
    answer ``series[t : t + P]``."""
    P = tok.patch_len
    idx = origins[:, None] + torch.arange(-context * P, P)[None, :]
    win = series[idx].float()
    ctx = win[:, : context * P].reshape(-1, context, P)
    future = win[:, context * P :]
    ids = layout.patch_ids(tok.tokens(ctx)).reshape(len(origins), -1)
    answer = layout.patch_ids(tok.tokens(future))
    n = len(origins)
    prompts = torch.cat([prompt_ids.expand(n, -1), ids], 1)
    a = torch.full((n, 1), layout.answer)
    direct = torch.cat([a, answer], 1)
    s = summary_tokens(future, edges)
    thought = torch.stack(
        [torch.full((n,), layout.think), layout.level0 + s[:, 0], layout.trend0 + s[:, 1]], 1
    )
    return Examples(prompts, torch.cat([thought, direct], 1), direct, future, ctx[:, -1, -1])


def _origins(lo: int, hi: int) -> Tensor:
    return torch.arange(lo, hi + 1) if hi >= lo else torch.zeros(0, dtype=torch.long)


# --- training and decoding -------------------------------------------------------------------


def train_tokenizer(
    cfg: CountsConfig, train: Tensor, log: Callable[[str], None] | None = None
) -> tuple[RVQVAE, float]:
    """Train the RVQ-VAE on every stride-1 patch of ``train (n,)``; returns it and the
    final training reconstruction MSE."""
    g = generator(cfg.seed, 1)
    torch.manual_seed(cfg.seed)
    tok = RVQVAE(cfg.patch_len, dim=cfg.dim, stages=cfg.stages, codebook_size=cfg.codebook_size)
    patches = train.float().unfold(0, cfg.patch_len, 1).contiguous()
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    mse = float("nan")
    for step in range(cfg.vae_steps):
        batch = patches[torch.randint(len(patches), (256,), generator=g)]
        if step % 100 == 0 and step < 0.7 * cfg.vae_steps:
            _, x = tok.scaled(batch)
            with torch.no_grad():
                tok.rvq.reset_unused(tok.encoder(x), g)
        recon, vq = tok(batch)
        loss = F.mse_loss(recon, batch) + 0.1 * vq
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        mse = float(F.mse_loss(recon.detach(), batch))
        if log and (step + 1) % 500 == 0:
            log(f"  tokeniser step {step + 1}: reconstruction MSE {mse:.4f}")
    tok.eval()
    return tok, mse


def _masks(layout: Layout, slots: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """``allowed: (Lc, new)`` bool per slot and ``sampled: (Lc,)`` bool (not forced)."""
    allowed = torch.zeros(len(slots), layout.new, dtype=torch.bool)
    for j, (lo, hi) in enumerate(slots):
        allowed[j, lo - layout.base : hi - layout.base] = True
    sampled = torch.tensor([hi - lo > 1 for lo, hi in slots])
    return allowed, sampled


def completion_logp(
    model: CountsLM, prompts: Tensor, completion: Tensor, allowed: Tensor, backend: str
) -> Tensor:
    """Log-probabilities ``(N, Lc)`` of ``completion`` after ``prompts`` under ``model``,
    each over its slot's allowed tokens (forced slots give 0)."""
    seq = torch.cat([prompts, completion], 1)
    logits, _ = model(seq[:, :-1], backend=backend)
    lc = completion.shape[1]
    logits = logits[:, -lc:].masked_fill(~allowed, float("-inf"))
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, (completion - model.base)[..., None])[..., 0]


@torch.no_grad()
def generate(
    model: CountsLM,
    prompts: Tensor,
    layout: Layout,
    cot: bool,
    *,
    greedy: bool,
    backend: str,
    g: torch.Generator | None = None,
) -> Tensor:
    """Completions ``(N, Lc)`` of ``prompts (N, Lp)``, slot by slot (greedy or sampled)."""
    allowed, sampled = _masks(layout, layout.slots(cot))
    logits, state = model(prompts, backend=backend)
    last = logits[:, -1]
    out = []
    for j in range(allowed.shape[0]):
        if not sampled[j]:
            lo = layout.slots(cot)[j][0]
            ids = torch.full((prompts.shape[0],), lo, dtype=torch.long)
        else:
            masked = last.masked_fill(~allowed[j], float("-inf"))
            if greedy:
                choice = masked.argmax(-1)
            else:
                choice = torch.multinomial(torch.softmax(masked, -1), 1, generator=g)[:, 0]
            ids = choice + model.base
        out.append(ids)
        step, state = model(ids[:, None], state, backend=backend)
        last = step[:, -1]
    return torch.stack(out, 1)


def decode_forecast(completion: Tensor, tok: RVQVAE, layout: Layout) -> Tensor:
    """The forecast patch ``(N, P)`` of completions ``(N, Lc)`` (their last ``1 + stages``)."""
    with torch.no_grad():
        return tok.detokenize(layout.patch_tokens(completion[:, -(1 + layout.stages) :]))


def sft(
    model: CountsLM,
    ex: Examples,
    layout: Layout,
    cot: bool,
    cfg: CountsConfig,
    log: Callable[[str], None] | None = None,
) -> float:
    """Supervised fine-tuning on the completions; returns the last loss."""
    g = generator(cfg.seed, 2)
    allowed, sampled = _masks(layout, layout.slots(cot))
    comp = ex.cot if cot else ex.direct
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    loss_v = float("nan")
    for step in range(cfg.sft_steps):
        b = torch.randint(len(comp), (cfg.batch_size,), generator=g)
        logp = completion_logp(model, ex.prompts[b], comp[b], allowed, cfg.backend)
        loss: Tensor = -logp[:, sampled].sum(1).mean()
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()
        loss_v = float(loss.detach())
        if log and (step + 1) % 200 == 0:
            log(f"  SFT step {step + 1}: completion NLL {loss_v:.3f}")
    model.eval()
    return loss_v


def grpo(
    model: CountsLM,
    ex: Examples,
    tok: RVQVAE,
    layout: Layout,
    cfg: CountsConfig,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """GRPO with the CoT completion; returns the mean reward (−MSE) of every step's samples."""
    g = generator(cfg.seed, 3)
    ref = copy.deepcopy(model).eval()
    allowed, sampled = _masks(layout, layout.slots(True))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.grpo_lr)
    G, B = cfg.group, cfg.prompts_per_step
    rewards_log = []
    for step in range(cfg.grpo_steps):
        b = torch.randint(len(ex.prompts), (B,), generator=g)
        prompts = ex.prompts[b].repeat_interleave(G, 0)
        model.eval()
        comp = generate(model, prompts, layout, True, greedy=False, backend=cfg.backend, g=g)
        fc = decode_forecast(comp, tok, layout)
        truth = ex.future[b].repeat_interleave(G, 0)
        # a sampled scale token can stand for up to 2^36: the cap keeps the rewards finite
        mse = ((fc.double() - truth.double()) ** 2).mean(1).nan_to_num(cfg.reward_cap)
        r = -mse.clamp(max=cfg.reward_cap).view(B, G)
        adv = grpo_advantages(r).float()
        mask = sampled.expand(B, G, -1)
        with torch.no_grad():
            old = completion_logp(model, prompts, comp, allowed, cfg.backend).view(B, G, -1)
            lref = completion_logp(ref, prompts, comp, allowed, cfg.backend).view(B, G, -1)
        model.train()
        for _ in range(cfg.epochs):
            cur = completion_logp(model, prompts, comp, allowed, cfg.backend).view(B, G, -1)
            # forced slots have log-probability 0 in all three; the mask drops them
            cur, o, rf = (t.masked_fill(~mask, 0.0) for t in (cur, old, lref))
            loss: Tensor = grpo_objective(cur, o, rf, adv, mask, clip=cfg.clip, beta=cfg.beta)
            opt.zero_grad()
            torch.autograd.backward(loss)
            opt.step()
        rewards_log.append(float(r.mean()))
        if log and (step + 1) % 25 == 0:
            recent = rewards_log[-25:]
            log(f"  GRPO step {step + 1}: mean reward {sum(recent) / len(recent):.4f}")
    model.eval()
    return rewards_log


def forecast_metrics(pred: Tensor, truth: Tensor, mase_scale: float) -> dict[str, float]:
    """``mse`` and ``mase`` (MAE / the in-sample naive MAE) of ``pred`` against ``truth``."""
    err = pred.double() - truth.double()
    return {"mse": float((err**2).mean()), "mase": float(err.abs().mean()) / mase_scale}


def evaluate(
    model: CountsLM,
    ex: Examples,
    tok: RVQVAE,
    layout: Layout,
    cot: bool,
    cfg: CountsConfig,
    mase_scale: float,
) -> dict[str, float]:
    """Greedy forecasts' metrics (and, with CoT, how often the written level and trend
    tokens match the true patch's)."""
    comp = generate(model, ex.prompts, layout, cot, greedy=True, backend=cfg.backend)
    out = forecast_metrics(decode_forecast(comp, tok, layout), ex.future, mase_scale)
    if cot:
        out["level_accuracy"] = float((comp[:, 1] == ex.cot[:, 1]).double().mean())
        out["trend_accuracy"] = float((comp[:, 2] == ex.cot[:, 2]).double().mean())
    return out


# --- the whole study -------------------------------------------------------------------------


@dataclass
class CountsResult:
    """What :func:`run_counts` measured (``results``: name -> metrics on the test stretch)."""

    config: dict[str, Any]
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    grpo_rewards: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def prompt_ids(prompt: str, vocab: str | None, base: int) -> Tensor:
    """``prompt``'s characters as backbone ids ``(1, L)``: positions in ``vocab`` (a char_lm
    run's vocabulary) or, without one, ``ord(c)`` (which must be below ``base``)."""
    table = {c: i for i, c in enumerate(vocab)} if vocab is not None else None
    ids = []
    for c in prompt:
        i = table.get(c) if table is not None else ord(c)
        if i is None or i >= base:
            raise ValueError(f"prompt has a character outside the backbone's vocabulary: {c!r}")
        ids.append(i)
    return torch.tensor([ids], dtype=torch.long)


def run_counts(
    cfg: CountsConfig,
    backbone: nn.Module | None,
    *,
    vocab: str | None = None,
    ablation: bool = True,
    log: Callable[[str], None] | None = None,
) -> CountsResult:
    """The study of the module docstring. ``backbone``: a trained char_lm (frozen in place;
    ``None``: only the forecaster without it, of the trainable size it would have with
    ``base = 128``); ``vocab``: its characters in id order; ``ablation``: also run the
    forecaster without the backbone."""
    cfg.check()
    t0 = time.perf_counter()
    with torch_threads(cfg.threads or None, unset=None):  # 0 or None: torch's own count
        return _run(cfg, backbone, vocab, ablation, log, t0)


def _run(
    cfg: CountsConfig,
    backbone: nn.Module | None,
    vocab: str | None,
    ablation: bool,
    log: Callable[[str], None] | None,
    t0: float,
) -> CountsResult:
    data = task_series(cfg.task, cfg.seed)
    z = data.values
    n_tr, n_va, _ = data.points
    P, C = cfg.patch_len, cfg.context
    res = CountsResult(config=asdict(cfg))
    tok, vae_mse = train_tokenizer(cfg, z[:n_tr], log)
    base = _check_backbone(backbone)[0].num_embeddings if backbone is not None else 128
    layout = Layout(base, tok.scales, cfg.stages, cfg.codebook_size, cfg.levels)
    pids = prompt_ids(cfg.prompt, vocab, base)
    train_o = _origins(C * P, n_tr - P)
    if cfg.max_train is not None and len(train_o) > cfg.max_train:
        train_o = train_o[-cfg.max_train :]
    test_o = _origins(max(n_tr + n_va, C * P), len(z) - P)
    if cfg.max_test is not None:
        test_o = test_o[: cfg.max_test]
    if len(train_o) == 0 or len(test_o) == 0:
        raise ValueError(
            f"the series of {cfg.task!r} is too short for context={C} patches of {P} points"
        )
    fut_tr = z[train_o[:, None] + torch.arange(P)[None, :]].float()
    edges = summary_edges(fut_tr, cfg.levels)
    train = encode(z, train_o, tok, layout, pids, C, edges)
    test = encode(z, test_o, tok, layout, pids, C, edges)
    s = data.mase_scale
    res.results["persistence"] = forecast_metrics(
        test.last[:, None].expand_as(test.future), test.future, s
    )
    res.results["mean (0)"] = forecast_metrics(torch.zeros_like(test.future), test.future, s)
    floor = decode_forecast(test.direct, tok, layout)
    res.results["rvq round trip (floor)"] = forecast_metrics(floor, test.future, s)
    res.results["rvq round trip (floor)"]["train_mse"] = vae_mse
    if log:
        log(
            f"{cfg.task}: {len(train_o)} training and {len(test_o)} test origins; tokeniser "
            f"floor MSE {res.results['rvq round trip (floor)']['mse']:.4f}"
        )

    variants: list[tuple[str, nn.Module | None]] = []
    if backbone is not None:
        variants.append(("backbone", backbone))
    if ablation or backbone is None:
        variants.append(("no backbone", None))
    target = None
    for name, bb in variants:
        for cot in (False, True):
            model = _build(bb, _cell_of(backbone), target, base, layout.new, cfg)
            if bb is not None:
                target = model.trainable_parameters()
            res.parameters[name] = model.trainable_parameters()
            tag = f"{name}, SFT" + (" + CoT" if cot else "")
            if log:
                log(f"{tag} ({model.trainable_parameters():,} trainable parameters)")
            sft(model, train, layout, cot, cfg, log)
            res.results[tag] = evaluate(model, test, tok, layout, cot, cfg, s)
            if log:
                log(f"  test {res.results[tag]}")
            if cot and cfg.grpo_steps:
                tag = f"{name}, SFT + CoT + GRPO"
                res.grpo_rewards[name] = grpo(model, train, tok, layout, cfg, log)
                res.results[tag] = evaluate(model, test, tok, layout, True, cfg, s)
                if log:
                    log(f"  {tag}: test {res.results[tag]}")
    res.seconds = time.perf_counter() - t0
    return res


def _build(
    bb: nn.Module | None,
    cell: str | type[Cell[Any]],
    target: int | None,
    base: int,
    new: int,
    cfg: CountsConfig,
) -> CountsLM:
    """A fresh forecaster: on a copy of the frozen backbone ``bb``, or without one at the
    width whose trainable size is closest to ``target`` (64 wide without a target)."""
    torch.manual_seed(cfg.seed)
    if bb is not None:
        return CountsLM(base, new, copy.deepcopy(bb), adapter=cfg.adapter)
    width = (
        64
        if target is None
        else matched_hidden_size(target, base, new, cell=cell, adapter=cfg.adapter)
    )
    return CountsLM(base, new, None, hidden_size=width, cell=cell, adapter=cfg.adapter)


def _cell_of(backbone: nn.Module | None) -> str | type[Cell[Any]]:
    """The backbone's cell class (the ablation uses the same kind), ``lstm`` without one."""
    rnn = getattr(backbone, "rnn", None)
    return type(rnn.cell(0)) if isinstance(rnn, Recurrent) else "lstm"


# --- the command -----------------------------------------------------------------------------


def configure_counts(p: Any) -> None:
    """Arguments of ``rnnkit counts`` (``p``: an ``argparse.ArgumentParser``)."""
    d = CountsConfig()
    p.add_argument("--task", default=d.task, choices=SERIES_TASKS, help=f"series ({d.task})")
    p.add_argument(
        "--backbone-run",
        required=True,
        help="directory of a finished char_lm run (rnnkit train --task charlm --out DIR)",
    )
    p.add_argument("--no-ablation", action="store_true", help="skip the model without backbone")
    for name, kind in (
        ("patch_len", int),
        ("context", int),
        ("dim", int),
        ("codebook_size", int),
        ("stages", int),
        ("levels", int),
        ("vae_steps", int),
        ("sft_steps", int),
        ("grpo_steps", int),
        ("batch_size", int),
        ("prompts_per_step", int),
        ("group", int),
        ("epochs", int),
        ("clip", float),
        ("beta", float),
        ("lr", float),
        ("grpo_lr", float),
        ("reward_cap", float),
        ("adapter", int),
        ("seed", int),
        ("threads", int),
    ):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, default=getattr(d, name), help=f"({getattr(d, name)})")
    p.add_argument("--prompt", default=d.prompt, help=f"the prompt's text ({d.prompt!r})")
    p.add_argument("--backend", default=d.backend, help="kernel backend (auto)")
    p.add_argument("--out", default=None, help="directory for counts.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def load_backbone(run_dir: str) -> tuple[nn.Module, str | None]:
    """The char_lm of a finished run and its vocabulary (``ValueError`` naming
    ``backbone_run`` when the run trained another model)."""
    from rnnkit.tasks.reuse import load_run

    run = load_run(run_dir)
    if run.config.get("model") != "char_lm":
        raise ValueError(
            f"backbone_run {run_dir!r} trained model {run.config.get('model')!r}, not a char_lm"
        )
    vocab = run.task.data(0).info.get("vocab")
    return run.model, vocab if isinstance(vocab, str) else None


def run_counts_command(args: Any) -> int:
    """``rnnkit counts``: run the study and print its table."""
    names = [f.name for f in CountsConfig.__dataclass_fields__.values()]
    cfg = CountsConfig(**{k: getattr(args, k) for k in names if hasattr(args, k)})
    backbone, vocab = load_backbone(args.backbone_run)
    quiet = bool(args.json)
    res = run_counts(
        cfg, backbone, vocab=vocab, ablation=not args.no_ablation, log=None if quiet else print
    )
    data = asdict(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "counts.json").write_text(json.dumps(data, indent=1) + "\n")
    if quiet:
        print(json.dumps(data))
        return 0
    print(
        f"\n{cfg.task}: {cfg.patch_len}-step forecasts from {cfg.context} patches, test stretch "
        f"({res.seconds:.0f} s)"
    )
    for name, m in res.results.items():
        extra = "".join(f", {k} {v:.3f}" for k, v in m.items() if k.endswith("accuracy"))
        print(f"  {name:32s} MSE {m['mse']:.4f}  MASE {m['mase']:.3f}{extra}")
    print(f"  trainable parameters: {res.parameters}")
    return 0
