"""Universal Transformer with Adaptive Computation Time (Dehghani et al., ICLR 2019).

One transformer block (self-attention, then a position-wise transition) is applied
recurrently over *depth*, with the same weights at every step; each step re-adds a
coordinate embedding made of the position ``i`` and the step ``t``. With ACT (Graves 2016)
every position decides for itself how many steps it takes: after step ``t`` it emits a
halting probability ``p_i^t = sigmoid(w . h_i^t + b)``; it halts at the first step ``N_i``
where the running sum reaches ``1 - eps`` (or at ``max_steps``), its output is the
halting-weighted mean of its states

    y_i = sum_{t < N_i} p_i^t h_i^t + R_i h_i^{N_i},   R_i = 1 - sum_{t < N_i} p_i^t,

and a halted position's state is copied forward unchanged (still visible to the attention of
the positions that keep going). The ponder cost ``rho_i = N_i + R_i`` (mean over positions)
times ``tau`` is the model's :meth:`UniversalTransformer.regularization`, which the rnnkit
trainer adds to the task's loss; only ``R_i`` carries a gradient (``N_i`` is an integer), and
it pushes the halting probabilities up, i.e. towards fewer steps.

This is an encoder: every position attends to every (non-padding) position, and a linear
head maps each position's output to ``output_size`` logits, so it fits ``tag`` tasks
(``(B, T) -> (B, T, C)``); ``pool="mean"`` or ``"last"`` gives ``(B, C)`` for ``classify``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["UniversalTransformer", "coordinate_embedding", "universal_transformer"]


def coordinate_embedding(positions: Tensor, step: int, d_model: int) -> Tensor:
    """The paper's coordinate embedding ``P^t``: sinusoids of the position plus of the step.

    ``P^t[i, 2j] = sin(i / 10000^(2j/d)) + sin(t / 10000^(2j/d))`` and the same with ``cos``
    in the odd dimensions.

    Args:
        positions: ``(B, T)`` float or integer positions (may be offset per example).
        step: the recurrence step ``t`` (1-based).
        d_model: the model width ``d``.

    Returns:
        ``(B, T, d_model)`` float32.
    """
    half = (d_model + 1) // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device) * 2.0 / d_model
    )
    pos = positions.float()[..., None] * freq  # (B, T, half)
    stp = float(step) * freq  # (half,)
    emb = torch.empty(*positions.shape, d_model, device=positions.device)
    emb[..., 0::2] = torch.sin(pos) + torch.sin(stp)
    emb[..., 1::2] = (torch.cos(pos) + torch.cos(stp))[..., : d_model // 2]
    return emb


class UniversalTransformer(nn.Module):
    """A Universal Transformer encoder with per-position ACT halting.

    Args:
        output_size: logits per position (``tag``) or per sequence (``pool != "none"``).
        vocab_size: embed int64 token ids ``(B, T)``; or
        input_size: project float features ``(B, T, input_size)`` (exactly one of the two).
        hidden_size: model width ``d`` (divisible by ``heads``).
        heads: attention heads.
        filter_size: width of the transition's hidden layer (default ``4 * hidden_size``).
        max_steps: the most recurrent steps (ACT) or the fixed number of steps (no ACT).
        act: adaptive computation time; ``False`` runs exactly ``max_steps`` steps.
        tau: weight of the ponder cost in :meth:`regularization` (paper: 0.01).
        act_epsilon: a position halts when its summed halting probability reaches
            ``1 - act_epsilon`` (paper: 0.01).
        halting_bias: initial bias ``b`` of the halting unit (tensor2tensor: 1.0, so
            ``p`` starts near 0.73 and most positions halt after two steps).
        dropout: dropout after attention and transition (training only).
        pad_id: with ``vocab_size``, token id whose positions are masked out of attention
            (and of the ponder cost); ``None`` masks nothing.
        position_offset: in training, every sequence's positions start at a random offset in
            ``0..position_offset`` (the paper's trick on the algorithmic tasks so that longer
            test sequences meet trained positions); ``0`` disables it. Never used in eval.
        pool: ``"none"`` (per-position logits), ``"mean"`` or ``"last"``.
        num_layers: accepted for the trainer's width/depth keywords; must be 1 (depth is
            recurrence here: use ``max_steps``).
    """

    def __init__(
        self,
        output_size: int,
        *,
        vocab_size: int | None = None,
        input_size: int | None = None,
        hidden_size: int = 64,
        heads: int = 4,
        filter_size: int | None = None,
        max_steps: int = 8,
        act: bool = True,
        tau: float = 0.01,
        act_epsilon: float = 0.01,
        halting_bias: float = 1.0,
        dropout: float = 0.1,
        pad_id: int | None = None,
        position_offset: int = 0,
        pool: Literal["none", "mean", "last"] = "none",
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        if vocab_size is not None and vocab_size <= 0:
            vocab_size = None  # tasks with token inputs pass input_size=0 beside vocab_size
        if input_size is not None and input_size <= 0:
            input_size = None
        if (vocab_size is None) == (input_size is None):
            raise ValueError(
                "exactly one of vocab_size (token ids) and input_size (features) must be "
                f"positive, got vocab_size={vocab_size!r}, input_size={input_size!r}"
            )
        _positive("output_size", output_size)
        _positive("hidden_size", hidden_size)
        _positive("heads", heads)
        if hidden_size % heads:
            raise ValueError(
                f"hidden_size must be divisible by heads, got hidden_size={hidden_size}, "
                f"heads={heads}"
            )
        filter_size = 4 * hidden_size if filter_size is None else filter_size
        _positive("filter_size", filter_size)
        _positive("max_steps", max_steps)
        if not (tau >= 0.0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
        if not 0.0 < act_epsilon < 1.0:
            raise ValueError(f"act_epsilon must be in (0, 1), got {act_epsilon!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, got {position_offset!r}")
        if pool not in ("none", "mean", "last"):
            raise ValueError(f"pool must be 'none', 'mean' or 'last', got {pool!r}")
        if num_layers != 1:
            raise ValueError(
                f"num_layers must be 1 (the Universal Transformer shares one block over depth; "
                f"set max_steps for more steps), got {num_layers!r}"
            )
        if pad_id is not None and vocab_size is not None and not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be in [0, vocab_size), got {pad_id!r}")
        self.d_model = hidden_size
        self.max_steps = max_steps
        self.act = act
        self.tau = float(tau)
        self.act_epsilon = act_epsilon
        self.pad_id = pad_id if vocab_size is not None else None
        self.position_offset = position_offset
        self.pool = pool
        self.embed: nn.Module = (
            nn.Embedding(vocab_size, hidden_size)
            if vocab_size is not None
            else nn.Linear(int(input_size or 0), hidden_size)
        )
        self.attn = nn.MultiheadAttention(hidden_size, heads, dropout=dropout, batch_first=True)
        self.norm_attn = nn.LayerNorm(hidden_size)
        self.transition = nn.Sequential(
            nn.Linear(hidden_size, filter_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(filter_size, hidden_size),
        )
        self.norm_transition = nn.LayerNorm(hidden_size)
        self.drop = nn.Dropout(dropout)
        self.halting = nn.Linear(hidden_size, 1)
        nn.init.constant_(self.halting.bias, halting_bias)
        self.head = nn.Linear(hidden_size, output_size)
        self._aux: Tensor | None = None
        #: ``N_i + R_i`` per position of the last forward call, ``(B, T)``, detached
        #: (``max_steps`` everywhere without ACT; NaN at padding).
        self.last_ponder: Tensor | None = None

    def _block(self, h: Tensor, step: int, positions: Tensor, pad: Tensor | None) -> Tensor:
        """One application of the shared block: ``(B, T, d) -> (B, T, d)``."""
        z = h + coordinate_embedding(positions, step, self.d_model).to(h.dtype)
        a, _ = self.attn(z, z, z, key_padding_mask=pad, need_weights=False)
        a = self.norm_attn(z + self.drop(a))
        out: Tensor = self.norm_transition(a + self.drop(self.transition(a)))
        return out

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """Run the recurrence.

        Args:
            x: ``(B, T)`` int64 token ids (``vocab_size``) or ``(B, T, input_size)`` floats.
            backend: accepted for the trainer's contract; the model has no recurrent cells.

        Returns:
            ``(B, T, output_size)`` logits, or ``(B, output_size)`` with ``pool``.
        """
        del backend
        pad = (x == self.pad_id) if self.pad_id is not None else None
        h = self.embed(x)
        batch, time = h.shape[:2]
        positions = torch.arange(time, device=h.device).expand(batch, time)
        if self.training and self.position_offset:
            offset = torch.randint(0, self.position_offset + 1, (batch, 1), device=h.device)
            positions = positions + offset
        if pad is not None and bool(pad.all(1).any()):
            raise ValueError("every sequence needs at least one token that is not pad_id")
        if not self.act:
            for step in range(1, self.max_steps + 1):
                h = self._block(h, step, positions, pad)
            ponder = torch.full((batch, time), float(self.max_steps), device=h.device)
            out, self._aux = h, None
        else:
            out, ponder = self._act(h, positions, pad)
        self.last_ponder = (
            ponder.detach().masked_fill(pad, float("nan")) if pad is not None else (ponder.detach())
        )
        logits: Tensor = self.head(out)
        if self.pool == "mean":
            if pad is None:
                return logits.mean(1)
            keep = (~pad).unsqueeze(-1).to(logits.dtype)
            return (logits * keep).sum(1) / keep.sum(1)
        if self.pool == "last":
            return logits[:, -1]
        return logits

    def _act(self, h: Tensor, positions: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
        """ACT over depth: the halting-weighted output ``(B, T, d)`` and ``N + R`` ``(B, T)``."""
        batch, time = h.shape[:2]
        cum = h.new_zeros(batch, time)  # sum of p over the steps before halting
        running = torch.ones(batch, time, dtype=torch.bool, device=h.device)
        steps = h.new_zeros(batch, time)  # N_i
        remainder = h.new_zeros(batch, time)  # R_i
        out = torch.zeros_like(h)
        threshold = 1.0 - self.act_epsilon
        for step in range(1, self.max_steps + 1):
            new = self._block(h, step, positions, pad)
            # halted positions keep their state (still attended to by the running ones)
            h = torch.where(running.unsqueeze(-1), new, h)
            p = torch.sigmoid(self.halting(h)).squeeze(-1)
            last = step == self.max_steps
            halt_now = running & ((cum + p >= threshold) | last)
            go_on = running & ~halt_now
            r = 1.0 - cum
            weight = torch.where(halt_now, r, torch.where(go_on, p, torch.zeros_like(p)))
            out = out + weight.unsqueeze(-1) * h
            remainder = torch.where(halt_now, r, remainder)
            steps = steps + running.to(steps.dtype)
            cum = cum + torch.where(go_on, p, torch.zeros_like(p))
            running = go_on
            if not bool(running.any()):
                break
        ponder = steps + remainder
        keep = torch.ones_like(ponder) if pad is None else (~pad).to(ponder.dtype)
        self._aux = self.tau * (ponder * keep).sum() / keep.sum().clamp_min(1.0)
        return out, ponder

    def regularization(self, progress: float) -> Tensor:
        """``tau`` times the mean ponder cost ``N + R`` of the last forward call (over
        non-padding positions), a scalar with gradient; 0 without ACT or before any call.
        The rnnkit trainer adds it to the training loss (``progress`` is unused: the weight
        is constant)."""
        if self._aux is None:
            return self.norm_attn.weight.new_zeros(())
        return self._aux

    def mean_ponder_time(self) -> float:
        """Mean ``N + R`` over the non-padding positions of the last forward call."""
        if self.last_ponder is None:
            raise RuntimeError("call the model first")
        return float(torch.nanmean(self.last_ponder))


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def universal_transformer(
    *,
    output_size: int,
    vocab_size: int | None = None,
    input_size: int | None = None,
    hidden_size: int = 64,
    heads: int = 4,
    filter_size: int | None = None,
    max_steps: int = 8,
    act: bool = True,
    tau: float = 0.01,
    act_epsilon: float = 0.01,
    halting_bias: float = 1.0,
    dropout: float = 0.1,
    pad_id: int | None = None,
    position_offset: int = 0,
    pool: Literal["none", "mean", "last"] = "none",
    num_layers: int = 1,
) -> UniversalTransformer:
    """Universal Transformer encoder with ACT halting: (B, T) -> (B, T, output_size)."""
    return UniversalTransformer(
        output_size,
        vocab_size=vocab_size,
        input_size=input_size,
        hidden_size=hidden_size,
        heads=heads,
        filter_size=filter_size,
        max_steps=max_steps,
        act=act,
        tau=tau,
        act_epsilon=act_epsilon,
        halting_bias=halting_bias,
        dropout=dropout,
        pad_id=pad_id,
        position_offset=position_offset,
        pool=pool,
        num_layers=num_layers,
    )
