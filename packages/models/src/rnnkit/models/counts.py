"""COUNTS scaled down: time-series tokens for a language model, and GRPO's objective.

After Parker, Chan, Zhang and Ghobadi, "Eliciting Chain-of-Thought Reasoning for Time Series
Analysis using Reinforcement Learning" (arXiv 2510.01116, 2025). The pieces here:

* :func:`scale_exponents` / :class:`RVQVAE`: the tokeniser. A series is cut into
  non-overlapping patches of ``P`` points; each patch ``p`` is divided by ``s = 2^e``, ``e =
  clip(round(log2 max_i |p_i|), e_min, e_max)`` (``e_min`` for an all-zero patch), which
  becomes one discrete *scale token*; the scaled patch ``p / s`` goes through an MLP encoder
  (SwiGLU blocks with residuals and RMSNorm) to ``z: (dim,)``, which residual vector
  quantisation (:class:`ResidualVQ`, ``stages`` codebooks of ``codebook_size``) turns into
  ``stages`` codes. A patch is thus ``1 + stages`` tokens; the decoder (the encoder's mirror)
  maps the quantised ``ẑ`` back to ``p̂ = s · dec(ẑ)``.
* :class:`CountsLM`: a language model whose vocabulary is extended by the time-series tokens.
  With a backbone (a trained ``char_lm``: ``embed`` + recurrent ``rnn``) the backbone's
  weights are frozen; only the new tokens' embedding rows, a small residual adapter on the
  backbone's output and the output rows of the new tokens are trained. Without a backbone it
  is the same forecaster with a fresh, fully trained recurrent stack.
* :func:`grpo_advantages` / :func:`grpo_objective`: group relative policy optimisation (the
  group-normalised advantage, the clipped ratio objective and the ``k3`` KL estimate to a
  reference policy).

The training procedure (RVQ-VAE, supervised fine-tuning, GRPO with a reasoning prefix) is
``rnnkit counts`` in rnnkit-tasks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.recurrent import Recurrent
from rnnkit.models.forecasting import _nonnegative_int, _positive_int

SCALE_RANGE = (-10, 36)
"""The exponents ``e`` a scale token can stand for (the paper's ``[2^-10, 2^36]``)."""


def _check_range(scale_range: object) -> tuple[int, int]:
    parts: list[object] = list(scale_range) if isinstance(scale_range, tuple | list) else []
    ints = [v for v in parts if isinstance(v, int) and not isinstance(v, bool)]
    if len(parts) != 2 or len(ints) != 2 or ints[0] > ints[1]:
        raise ValueError(f"scale_range must be two integers lo <= hi, got {scale_range!r}")
    return ints[0], ints[1]


def scale_exponents(patches: Tensor, scale_range: tuple[int, int] = SCALE_RANGE) -> Tensor:
    """The scale token of every patch: ``patches: (..., P)`` -> exponents ``e: (...)`` int64.

    ``e = clip(round(log2 max|p|), lo, hi)``: the patch's largest magnitude rounded to the
    nearest power of two in log scale (``torch.round``: halves to even), clipped to
    ``scale_range``; an all-zero patch gets ``lo``. The patch is divided by ``2^e``.
    """
    lo, hi = _check_range(scale_range)
    if patches.dim() < 1 or patches.shape[-1] < 1:
        raise ValueError(
            f"patches must have shape (..., P) with P >= 1, got {tuple(patches.shape)}"
        )
    if not torch.isfinite(patches).all():
        raise ValueError("patches must be finite (no NaN or inf)")
    peak = patches.abs().amax(-1).double()
    e = torch.round(torch.log2(peak.clamp_min(2.0 ** (lo - 1))))
    return e.clamp(lo, hi).to(torch.long)


def patchify(series: Tensor, patch_len: int) -> Tensor:
    """Non-overlapping patches: ``series: (N, L)`` with ``L`` a multiple of ``patch_len`` ->
    ``(N, L // patch_len, patch_len)``."""
    _positive_int("patch_len", patch_len)
    if series.dim() != 2 or series.shape[1] % patch_len:
        raise ValueError(
            f"series must have shape (N, L) with L a multiple of patch_len={patch_len}, got "
            f"{tuple(series.shape)}"
        )
    return series.reshape(series.shape[0], -1, patch_len)


class SwiGLUBlock(nn.Module):
    """``x + W_o (SiLU(W_g n) ⊙ W_u n)``, ``n = RMSNorm(x)``: ``(..., dim) -> (..., dim)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.gate = nn.Linear(dim, hidden)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)
        out: Tensor = x + self.down(F.silu(self.gate(n)) * self.up(n))
        return out


def _mlp(n_in: int, n_out: int, dim: int, hidden: int, blocks: int) -> nn.Sequential:
    """``Linear(n_in, dim)`` -> ``blocks`` SwiGLU blocks -> RMSNorm -> ``Linear(dim, n_out)``."""
    layers: list[nn.Module] = [nn.Linear(n_in, dim)]
    layers += [SwiGLUBlock(dim, hidden) for _ in range(blocks)]
    layers += [nn.RMSNorm(dim), nn.Linear(dim, n_out)]
    return nn.Sequential(*layers)


class ResidualVQ(nn.Module):
    """Residual vector quantisation with ``stages`` codebooks ``C_k: (codebook_size, dim)``.

    ``r_0 = z``; stage ``k`` picks ``c_k = argmin_j |r_{k-1} - C_k[j]|²`` (the lowest index
    on ties) and passes on ``r_k = r_{k-1} - C_k[c_k]``; ``ẑ = Σ_k C_k[c_k]``.
    """

    def __init__(self, stages: int, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.stages = _positive_int("stages", stages)
        self.codebook_size = _positive_int("codebook_size", codebook_size)
        self.dim = _positive_int("dim", dim)
        self.codebooks = nn.Parameter(torch.randn(stages, codebook_size, dim) / math.sqrt(dim))

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z: (..., dim)`` -> ``(ẑ (..., dim), codes (..., stages) int64, residuals
        (stages, ..., dim))`` where ``residuals[k]`` is the input of stage ``k``
        (``r_{k}`` in 0-based terms: ``residuals[0] = z``)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")
        r = z
        codes, inputs = [], []
        quant = torch.zeros_like(z)
        for k in range(self.stages):
            book = self.codebooks[k].to(z.dtype)
            d = (r * r).sum(-1, keepdim=True) - 2 * r @ book.T + (book * book).sum(-1)
            c = d.argmin(-1)
            q = book[c]
            inputs.append(r)
            codes.append(c)
            quant = quant + q
            r = r - q
        return quant, torch.stack(codes, -1), torch.stack(inputs, 0)

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes: (..., stages)`` -> ``ẑ = Σ_k C_k[codes[..., k]]: (..., dim)``."""
        if codes.shape[-1] != self.stages:
            raise ValueError(
                f"codes must have shape (..., {self.stages}), got {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        out = torch.zeros(*codes.shape[:-1], self.dim, dtype=self.codebooks.dtype)
        for k in range(self.stages):
            out = out + self.codebooks[k][codes[..., k]]
        return out

    def loss(self, residuals: Tensor, codes: Tensor, beta: float = 0.25) -> Tensor:
        """VQ-VAE's codebook + ``beta`` x commitment loss summed over the stages:
        ``Σ_k |sg(r_k) - C_k[c_k]|² + beta |r_k - sg(C_k[c_k])|²`` (mean over vectors)."""
        total = residuals.new_zeros(())
        for k in range(self.stages):
            r, q = residuals[k], self.codebooks[k][codes[..., k]]
            total = total + F.mse_loss(q, r.detach()) + beta * F.mse_loss(r, q.detach())
        return total * self.dim

    @torch.no_grad()
    def reset_unused(self, z: Tensor, generator: torch.Generator | None = None) -> int:
        """Move every code that no vector of ``z: (N, dim)`` picks onto a random residual of
        its stage (dead-code restart); returns how many codes moved."""
        _, codes, inputs = self.quantize(z.reshape(-1, self.dim))
        moved = 0
        for k in range(self.stages):
            used = torch.bincount(codes[:, k], minlength=self.codebook_size) > 0
            dead = (~used).nonzero()[:, 0]
            if dead.numel():
                pick = torch.randint(inputs.shape[1], (dead.numel(),), generator=generator)
                self.codebooks[k, dead] = inputs[k, pick].to(self.codebooks.dtype)
                moved += dead.numel()
        return moved


class RVQVAE(nn.Module):
    """The COUNTS tokeniser: scale token + residual-VQ codes per patch (module docstring).

    Args:
        patch_len: ``P``, points per patch.
        dim: the embedding ``z``'s width.
        hidden: the SwiGLU blocks' hidden width.
        blocks: SwiGLU blocks in the encoder and in the decoder.
        stages: RVQ stages (codes per patch).
        codebook_size: codes per stage.
        scale_range: ``(lo, hi)`` exponents of the scale tokens.
    """

    def __init__(
        self,
        patch_len: int = 16,
        *,
        dim: int = 32,
        hidden: int = 64,
        blocks: int = 2,
        stages: int = 3,
        codebook_size: int = 32,
        scale_range: tuple[int, int] = SCALE_RANGE,
    ) -> None:
        super().__init__()
        self.patch_len = _positive_int("patch_len", patch_len)
        dim = _positive_int("dim", dim)
        hidden = _positive_int("hidden", hidden)
        blocks = _positive_int("blocks", blocks)
        self.scale_range = _check_range(tuple(scale_range))
        self.encoder = _mlp(patch_len, dim, dim, hidden, blocks)
        self.decoder = _mlp(dim, patch_len, dim, hidden, blocks)
        self.rvq = ResidualVQ(stages, codebook_size, dim)

    @property
    def scales(self) -> int:
        """How many scale tokens there are (``hi - lo + 1``)."""
        return self.scale_range[1] - self.scale_range[0] + 1

    def _check(self, patches: Tensor) -> None:
        if patches.dim() < 1 or patches.shape[-1] != self.patch_len:
            raise ValueError(
                f"patches must have shape (..., {self.patch_len}), got {tuple(patches.shape)}"
            )

    def scaled(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """``patches: (..., P)`` -> ``(exponents e (...), patches / 2^e (..., P))``."""
        self._check(patches)
        e = scale_exponents(patches, self.scale_range)
        return e, patches / torch.exp2(e.to(patches.dtype))[..., None]

    def forward(self, patches: Tensor, beta: float = 0.25) -> tuple[Tensor, Tensor]:
        """Training pass: ``patches: (..., P)`` -> ``(reconstruction (..., P), VQ loss)``;
        the straight-through estimator carries the decoder's gradient to the encoder."""
        e, x = self.scaled(patches)
        z = self.encoder(x)
        q, codes, inputs = self.rvq.quantize(z)
        vq = self.rvq.loss(inputs, codes, beta)
        x_hat = self.decoder(z + (q - z).detach())
        return x_hat * torch.exp2(e.to(x_hat.dtype))[..., None], vq

    @torch.no_grad()
    def encode(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """``patches: (..., P)`` -> ``(scale exponents (...), codes (..., stages))`` int64."""
        e, x = self.scaled(patches.float())
        _, codes, _ = self.rvq.quantize(self.encoder(x))
        return e, codes

    def decode(self, exponents: Tensor, codes: Tensor) -> Tensor:
        """``exponents (...)`` and ``codes (..., stages)`` -> patches ``(..., P)``."""
        lo, hi = self.scale_range
        if exponents.numel() and (int(exponents.min()) < lo or int(exponents.max()) > hi):
            raise ValueError(f"exponents must lie in [{lo}, {hi}]")
        x: Tensor = self.decoder(self.rvq.lookup(codes))
        return x * torch.exp2(exponents.to(x.dtype))[..., None]

    def tokens(self, patches: Tensor) -> Tensor:
        """``patches: (..., P)`` -> tokens ``(..., 1 + stages)``: the scale token (``e - lo``,
        in ``[0, scales)``) then the codes (in ``[0, codebook_size)`` each)."""
        e, codes = self.encode(patches)
        return torch.cat([(e - self.scale_range[0])[..., None], codes], -1)

    def detokenize(self, tokens: Tensor) -> Tensor:
        """Inverse of :meth:`tokens` up to quantisation: ``(..., 1 + stages)`` -> ``(..., P)``."""
        if tokens.shape[-1] != 1 + self.rvq.stages:
            raise ValueError(
                f"tokens must have shape (..., {1 + self.rvq.stages}), got {tuple(tokens.shape)}"
            )
        return self.decode(tokens[..., 0] + self.scale_range[0], tokens[..., 1:])


# --- the language model with an extended vocabulary -----------------------------------------


def _check_backbone(backbone: nn.Module) -> tuple[nn.Embedding, nn.Module]:
    embed = getattr(backbone, "embed", None)
    rnn = getattr(backbone, "rnn", None)
    if not isinstance(embed, nn.Embedding) or not isinstance(rnn, Recurrent):
        raise ValueError(
            "backbone must be a character language model with a token embedding `embed` "
            f"(nn.Embedding) and a recurrent stack `rnn` (a char_lm), got {type(backbone)!r}"
        )
    if rnn.num_directions != 1:
        raise ValueError("backbone must be causal (a unidirectional recurrent stack)")
    return embed, rnn


class CountsLM(nn.Module):
    """A causal LM over ``base + new`` token ids whose outputs are scores of the new tokens.

    Ids ``< base`` are the backbone's own tokens (characters), ids ``base .. base + new - 1``
    the added time-series and reasoning tokens. Per step: ``h_t = rnn(emb(id_t))``, ``a_t =
    h_t + W_2 GELU(W_1 LN(h_t))`` (the adapter, ``adapter`` wide), logits ``W_o a_t + b_o``
    over the ``new`` tokens only (every scored position of COUNTS' sequences has a new
    token as its target, so the backbone's own output layer is not used).

    Args:
        base: ids the backbone knows (its vocabulary size); with a backbone it must equal
            the backbone's embedding rows.
        new: how many tokens are added.
        backbone: a trained ``char_lm`` (``embed``, unidirectional ``rnn``), frozen in place
            (``requires_grad`` off, eval mode); ``None``: a fresh ``cell`` stack of
            ``hidden_size`` with a fresh embedding of all ``base + new`` ids, all trained.
        hidden_size: the fresh stack's width (only without a backbone).
        cell: the fresh stack's cell, a registered name or a cell class (only without a
            backbone).
        adapter: the adapter's hidden width (0: no adapter).
    """

    def __init__(
        self,
        base: int,
        new: int,
        backbone: nn.Module | None = None,
        *,
        hidden_size: int = 64,
        cell: str | type[Cell[Any]] = "lstm",
        adapter: int = 32,
    ) -> None:
        super().__init__()
        self.base = _positive_int("base", base)
        self.new = _positive_int("new", new)
        _nonnegative_int("adapter", adapter)
        self.backbone = backbone
        if backbone is not None:
            embed, _ = _check_backbone(backbone)
            if embed.num_embeddings != base:
                raise ValueError(
                    f"base must equal the backbone's vocabulary size ({embed.num_embeddings}), "
                    f"got {base}"
                )
            for p in backbone.parameters():
                p.requires_grad_(False)
            backbone.eval()
            width = embed.embedding_dim
            self.new_embed = nn.Embedding(new, width)
            nn.init.normal_(self.new_embed.weight, std=float(embed.weight.std()))
            self.embed: nn.Embedding | None = None
            self.rnn: Recurrent | None = None
        else:
            width = _positive_int("hidden_size", hidden_size)
            self.embed = nn.Embedding(base + new, width)
            self.rnn = Recurrent(cell, width, width)
        self.width = width
        self.adapter: nn.Sequential | None = None
        if adapter:
            last = nn.Linear(adapter, width)
            nn.init.zeros_(last.weight)  # the adapter starts as the identity
            nn.init.zeros_(last.bias)
            self.adapter = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, adapter), nn.GELU(), last
            )
        self.out = nn.Linear(width, new)

    def train(self, mode: bool = True) -> CountsLM:
        """Train or eval mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def trainable_parameters(self) -> int:
        """How many parameters train (the backbone's frozen ones excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _stack(self) -> tuple[Tensor, Recurrent]:
        if self.backbone is None:
            assert self.embed is not None and self.rnn is not None
            return self.embed.weight, self.rnn
        embed, rnn = _check_backbone(self.backbone)
        assert isinstance(rnn, Recurrent)
        return torch.cat([embed.weight, self.new_embed.weight], 0), rnn

    def forward(
        self, ids: Tensor, state: Any = None, *, backend: str = "auto"
    ) -> tuple[Tensor, Any]:
        """``ids: (B, T)`` int64 in ``[0, base + new)`` and the stack's ``state`` (``None``:
        initial) -> ``(logits (B, T, new), the final state)``."""
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"ids must be int64 of shape (B, T), got {ids.dtype} {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.base + self.new):
            raise ValueError(f"ids must lie in [0, {self.base + self.new})")
        table, rnn = self._stack()
        h, state = rnn(F.embedding(ids, table), state, backend=backend)
        if self.adapter is not None:
            h = h + self.adapter(h)
        logits: Tensor = self.out(h)
        return logits, state


def matched_hidden_size(
    target: int, base: int, new: int, *, cell: str | type[Cell[Any]] = "lstm", adapter: int = 32
) -> int:
    """The fresh stack's width whose :class:`CountsLM` (no backbone) has the number of
    trainable parameters closest to ``target`` (widths 4 .. 512)."""

    def count(h: int) -> int:
        model = CountsLM(base, new, None, hidden_size=h, cell=cell, adapter=adapter)
        return model.trainable_parameters()

    lo, hi = 4, 512
    while hi - lo > 1:  # the count grows with the width
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if target - count(lo) <= count(hi) - target else hi


# --- GRPO ----------------------------------------------------------------------------------------


def grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages: ``rewards: (B, G)`` (``G`` completions per prompt) ->
    ``(r - mean_g r) / (std_g r + eps)`` with the unbiased standard deviation of the group."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (B, G) with G >= 2, got {tuple(rewards.shape)}")
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, keepdim=True)
    return (rewards - mean) / (std + eps)


def grpo_objective(
    logp: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
    beta: float = 0.04,
) -> Tensor:
    """GRPO's loss (to minimise): minus the clipped objective plus ``beta`` x KL.

    ``logp``, ``logp_old``, ``logp_ref: (B, G, L)`` log-probabilities of the sampled tokens
    under the policy being trained, the policy that sampled them and the reference (the SFT
    model); ``advantages: (B, G)``; ``mask: (B, G, L)`` which tokens were sampled (1) rather
    than forced (0). Per token ``ρ = exp(logp - logp_old)``, ``KL ≈ exp(logp_ref - logp) -
    (logp_ref - logp) - 1``; the loss is ``-mean_{b,g} (1/|o|) Σ_t mask [min(ρ A, clip(ρ, 1-ε,
    1+ε) A) - beta KL]``.
    """
    if not logp.shape == logp_old.shape == logp_ref.shape == mask.shape or logp.dim() != 3:
        raise ValueError(
            "logp, logp_old, logp_ref and mask must share one shape (B, G, L), got "
            f"{tuple(logp.shape)}, {tuple(logp_old.shape)}, {tuple(logp_ref.shape)}, "
            f"{tuple(mask.shape)}"
        )
    if advantages.shape != logp.shape[:2]:
        raise ValueError(
            f"advantages must have shape {tuple(logp.shape[:2])}, got {tuple(advantages.shape)}"
        )
    if not 0.0 < clip < 1.0:
        raise ValueError(f"clip must lie in (0, 1), got {clip}")
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - logp_old.detach())
    a = advantages.detach()[..., None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1.0 - clip, 1.0 + clip) * a)
    d = logp_ref.detach() - logp
    kl = torch.exp(d) - d - 1.0
    per_token = (surrogate - beta * kl) * m
    per_seq = per_token.sum(-1) / m.sum(-1).clamp_min(1.0)
    return -per_seq.mean()
