"""Time-LLM scaled down: a frozen character language model reprogrammed to forecast.

After Jin et al., "Time-LLM: Time Series Forecasting by Reprogramming Large Language Models"
(ICLR 2024, arXiv 2310.01728), with rnnkit's own recurrent ``char_lm`` as the frozen
backbone instead of LLaMA. Every channel of the series is forecast on its own (channel
independence, as in the paper); per channel and step ``t``:

1. **Patch**: ``p_t = (x_t, x_{t-1}, ..., x_{t-P+1})`` (zeros before the start), embedded
   ``e_t = W_p p_t + b_p`` (``hidden_size`` = ``d_model`` wide).
2. **Reprogramming**: ``K`` text prototypes ``E' = W_m E`` mix the backbone's frozen token
   embeddings ``E: (V, H)`` (``W_m: (K, V)`` learned); multi-head cross-attention from the
   patch embedding to the prototypes, ``z_t = W_o [softmax(q_i k_i^T / √d_h) v_i]_i`` with
   ``q = W_q e_t``, ``k = W_k E'``, ``v = W_v E'``, mapped to the backbone's width ``H``.
3. **Prompt prefix**: the characters of ``"<description> min .. max .. median .. trend .."``
   (statistics of the channel's first ``stats_steps`` steps), embedded by the frozen
   embedding, are read by the backbone before ``z_1 .. z_T``.
4. **Frozen backbone**: the char_lm's recurrent stack reads ``[prompt; z_1..z_T]``; its
   outputs at the patch positions ``o_t: (H,)`` are
5. **projected** to the forecast: ``ŷ_t = W_h o_t + b_h`` (``Q`` values per channel).

The backbone's parameters never get gradients (``requires_grad`` off) and it stays in eval
mode; gradients flow through it to the reprogramming layer and the patch embedding, as in
the paper. Without a backbone (``backbone=None``) the model is the ablation ``patch
embedding -> GELU -> projection`` (steps 1 and 5 only).

Causality: output ``t`` depends on ``x[:, :t + 1]`` for ``t >= stats_steps - 1``; earlier
outputs also see the first ``stats_steps`` inputs through the prompt's statistics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models.forecasting import _positive_int, lagged


def _check_backbone(backbone: nn.Module) -> tuple[nn.Embedding, nn.Module]:
    embed = getattr(backbone, "embed", None)
    rnn = getattr(backbone, "rnn", None)
    if not isinstance(embed, nn.Embedding) or not isinstance(rnn, nn.Module):
        raise ValueError(
            "backbone must be a character language model with a token embedding `embed` "
            f"(nn.Embedding) and a recurrent stack `rnn` (a char_lm), got {type(backbone)!r}"
        )
    if getattr(rnn, "num_directions", 1) != 1:
        raise ValueError("backbone must be causal (a unidirectional recurrent stack)")
    return embed, rnn


def prompt_text(description: str, stats: Tensor) -> list[str]:
    """Time-LLM's prompt, one per row: the description and the statistics ``stats: (N, 4)``
    (min, max, median, trend) in fixed-width form (so that every row has the same length)."""
    out = []
    for mn, mx, med, tr in stats.tolist():
        trend = "up" if tr > 0 else "down"
        out.append(
            f"{description} min {mn:+.2f} max {mx:+.2f} median {med:+.2f} trend {trend:>4}. "
        )
    return out


class TimeLLM(nn.Module):
    """Time-LLM with a frozen recurrent character LM (see the module docstring).

    Args:
        input_size: channels ``C`` of the series.
        output_size: ``C * Q`` (output ``c * Q + q`` is value ``q`` of channel ``c``).
        backbone: a trained ``char_lm`` (``SequenceModel`` with ``embed`` and ``rnn``); it
            is frozen in place. ``None``: the ablation without a backbone.
        patch_len: ``P``, steps per patch.
        hidden_size: ``d_model``, the width of the patch embedding (the name every rnnkit
            model takes for its width, so a task's ``hidden_size`` carries over).
        prototypes: ``K``, the number of text prototypes.
        heads: attention heads of the reprogramming layer (divides ``d_model``).
        description: the dataset description at the start of the prompt.
        stats_steps: steps whose statistics the prompt states.
        vocab: the backbone's characters in id order (a char_lm run's ``info["vocab"]``);
            ``None``: character ``c`` has id ``ord(c)``. Prompt characters outside it read as
            a space (or id 0 without one); the description's must all be in it.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        backbone: nn.Module | None = None,
        *,
        patch_len: int = 8,
        hidden_size: int = 32,
        prototypes: int = 16,
        heads: int = 4,
        description: str = "series",
        stats_steps: int = 8,
        vocab: str | None = None,
    ) -> None:
        super().__init__()
        self.input_size = _positive_int("input_size", input_size)
        self.output_size = _positive_int("output_size", output_size)
        if output_size % input_size:
            raise ValueError(
                f"output_size must be a multiple of input_size (Q values per channel), "
                f"got {output_size} and {input_size}"
            )
        self.quantiles = output_size // input_size
        self.patch_len = _positive_int("patch_len", patch_len)
        self.d_model = d_model = _positive_int("hidden_size", hidden_size)
        self.heads = _positive_int("heads", heads)
        if d_model % heads:
            raise ValueError(
                f"heads must divide hidden_size, got heads={heads}, hidden_size={hidden_size}"
            )
        self.stats_steps = _positive_int("stats_steps", stats_steps)
        if not isinstance(description, str):
            raise ValueError(f"description must be a string, got {description!r}")
        self.description = description
        self.patch_embed = nn.Linear(self.patch_len, d_model)
        self.backbone = backbone
        if backbone is None:
            self.head = nn.Linear(d_model, self.quantiles)
            return
        embed, _ = _check_backbone(backbone)
        n_vocab, width = embed.weight.shape
        if vocab is None:
            table = {chr(i): i for i in range(min(n_vocab, 128))}
        elif len(vocab) == n_vocab:
            table = {c: i for i, c in enumerate(vocab)}
        else:
            raise ValueError(
                f"vocab must be a string of the backbone's {n_vocab} characters, got {vocab!r}"
            )
        missing = sorted(set(description) - set(table))
        if missing:
            raise ValueError(f"description has characters outside the vocab: {missing!r}")
        self._ids = table
        self._unknown = table.get(" ", 0)
        for p in backbone.parameters():
            p.requires_grad_(False)
        backbone.eval()
        self.width = width
        k = _positive_int("prototypes", prototypes)
        # W_m: each prototype starts as a random mixture of the whole vocabulary's embeddings
        self.mapping = nn.Parameter(torch.randn(k, n_vocab) / math.sqrt(n_vocab))
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(width, d_model)
        self.value = nn.Linear(width, d_model)
        self.out = nn.Linear(d_model, width)
        self.head = nn.Linear(width, self.quantiles)

    def train(self, mode: bool = True) -> TimeLLM:
        """Train or eval mode; the frozen backbone stays in eval mode (no dropout)."""
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def statistics(self, x: Tensor) -> Tensor:
        """``x: (N, T)`` -> ``(N, 4)``: min, max, median and trend (last minus first) of
        each row's first ``stats_steps`` steps."""
        w = x[:, : self.stats_steps]
        return torch.stack([w.amin(1), w.amax(1), w.median(1).values, w[:, -1] - w[:, 0]], 1)

    def prompt_ids(self, x: Tensor) -> Tensor:
        """The prompt's character ids ``(N, L)`` for the rows of ``x: (N, T)``."""
        texts = prompt_text(self.description, self.statistics(x.detach().float()))
        codes = [[self._ids.get(ch, self._unknown) for ch in s] for s in texts]
        return torch.tensor(codes, dtype=torch.long, device=x.device)

    def _parts(self) -> tuple[nn.Embedding, nn.Module]:
        if self.backbone is None:
            raise ValueError("this model has no backbone (backbone=None: the ablation)")
        return _check_backbone(self.backbone)

    def reprogram(self, e: Tensor) -> Tensor:
        """Cross-attention from patch embeddings ``e: (N, T, d_model)`` to the text
        prototypes -> ``(N, T, H)`` (the backbone's width)."""
        embed, _ = self._parts()
        table = embed.weight  # (V, H), frozen
        protos = self.mapping.to(table.dtype) @ table  # (K, H)
        N, T, _ = e.shape
        h, dh = self.heads, self.d_model // self.heads
        q = self.query(e).view(N, T, h, dh).transpose(1, 2)  # (N, h, T, dh)
        k = self.key(protos).view(-1, h, dh).transpose(0, 1)  # (h, K, dh)
        v = self.value(protos).view(-1, h, dh).transpose(0, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)  # (N, h, T, K)
        z = (att @ v).transpose(1, 2).reshape(N, T, self.d_model)
        out: Tensor = self.out(z)
        return out

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` -> ``(B, T, output_size)`` one-step forecasts."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        B, T, C = x.shape
        series = x.float().transpose(1, 2).reshape(B * C, T)  # channel independence
        patches = lagged(series[..., None], self.patch_len)[..., 0]  # (B C, T, P)
        e = self.patch_embed(patches)
        if self.backbone is None:
            y = self.head(F.gelu(e))
        else:
            embed, rnn = self._parts()
            prefix = embed(self.prompt_ids(series))  # (B C, L, H)
            seq = torch.cat([prefix, self.reprogram(e)], 1)
            o, _ = rnn(seq, backend=backend)
            y = self.head(o[:, prefix.shape[1] :])
        out: Tensor = y.reshape(B, C, T, self.quantiles).permute(0, 2, 1, 3)
        return out.reshape(B, T, self.output_size).to(x.dtype)


def patch_forecaster(**cfg: Any) -> TimeLLM:
    """Time-LLM's ablation without the LM: patch embedding -> GELU -> projection"""
    return TimeLLM(backbone=None, **cfg)
