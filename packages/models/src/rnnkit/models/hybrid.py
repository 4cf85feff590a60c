"""Hybrid stacks: layers of recurrent cells and causal softmax attention in one residual stack,
with dense or mixture-of-experts MLPs between them, after Jamba (Lieber et al. 2024, "Jamba: A
Hybrid Transformer-Mamba Language Model").

Every layer is a pre-norm residual block on ``(B, T, width)``:

    x = x + mixer(RMSNorm(x))          mixer: a channel-wise cell (Mamba, ...) or attention
    x = x + mlp(RMSNorm(x))            mlp: SwiGLU, or a top-k mixture of SwiGLU experts

Attention (:class:`CausalSelfAttention`) uses no positional encoding (the recurrent layers
carry the order, as in Jamba) and may share key/value heads between query heads (grouped
queries). The stack generates through the state cache of :mod:`rnnkit.models.cache`: a cell
layer carries its state, an attention layer the keys and values of every position read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.api import create_cell
from rnnkit.core.cell import Cell
from rnnkit.core.validation import check_positive_int
from rnnkit.models.cache import (
    BlockCache,
    KVCache,
    ModelCache,
    check_cell_state,
    check_kv_cache,
)
from rnnkit.models.networks import _check_pooling, _pool

__all__ = [
    "ATTENTION",
    "CausalSelfAttention",
    "HybridBlock",
    "HybridNetwork",
    "MixtureOfExperts",
    "SwiGLU",
    "hybrid_pattern",
    "jamba",
    "jamba_classifier",
    "load_balancing_loss",
    "parse_layers",
]

#: The layer name of causal softmax attention in a hybrid stack's ``layers``.
ATTENTION = "attention"


def hybrid_pattern(
    num_layers: int, *, cell: str = "mamba", attn_every: int = 4, attn_offset: int = 2
) -> list[str]:
    """Jamba's layout: layer ``i`` is attention where ``attn_every > 0`` and
    ``i % attn_every == attn_offset``, else ``cell`` (an attention:cell ratio of
    ``1 : attn_every - 1``; Jamba: ``attn_every=8, attn_offset=4``)."""
    check_positive_int("num_layers", num_layers)
    if attn_every < 0 or (attn_every > 0 and not 0 <= attn_offset < attn_every):
        raise ValueError(
            f"need attn_every >= 0 (0: no attention) and 0 <= attn_offset < attn_every, got "
            f"attn_every={attn_every}, attn_offset={attn_offset}"
        )
    return [
        ATTENTION if attn_every > 0 and i % attn_every == attn_offset else cell
        for i in range(num_layers)
    ]


def parse_layers(layers: str | Sequence[str]) -> list[str]:
    """``"mamba,mamba,attention"`` or a sequence of names -> a non-empty list of names."""
    items = layers.split(",") if isinstance(layers, str) else list(layers)
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        raise ValueError(f"layers needs at least one layer name, got {layers!r}")
    return names


class SwiGLU(nn.Module):
    """``W_down(SiLU(W_gate x) * W_up x)``: ``(..., width) -> (..., width)`` through
    ``hidden`` channels, no biases."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down(F.silu(self.gate(x)) * self.up(x))
        return out


def load_balancing_loss(probs: Tensor, chosen: Tensor) -> Tensor:
    """The Switch Transformer's balance loss ``n * sum_e f_e P_e`` over ``N`` tokens: ``probs:
    (N, n)`` router probabilities, ``chosen: (N, k)`` the experts each token went to; ``f_e``
    the share of the ``N k`` assignments that went to expert ``e``, ``P_e`` the mean
    probability of ``e``. It is 1 when both are uniform and grows as routing concentrates;
    only ``P`` carries gradient."""
    n = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.sum()
    share = F.one_hot(chosen, n).sum((0, 1)).to(probs.dtype) / chosen.numel()
    return n * (share * probs.mean(0)).sum()


class MixtureOfExperts(nn.Module):
    """A top-``k`` mixture of :class:`SwiGLU` experts: ``(..., width) -> (..., width)``.

    A linear router (no bias) scores the ``num_experts`` experts per token; the token goes to
    the ``top_k`` likeliest (softmax over all experts), whose outputs are summed weighted by
    their probabilities renormalised over the chosen ``top_k``. Each token is computed alone,
    so a token's output does not depend on the other tokens of the batch.
    """

    def __init__(self, width: int, hidden: int, num_experts: int, top_k: int = 2) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"need 1 <= top_k <= num_experts, got {top_k} of {num_experts}")
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(width, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(width, hidden) for _ in range(num_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x: (..., width)`` -> ``(y: (..., width), balance loss: ())`` (see
        :func:`load_balancing_loss`)."""
        flat = x.reshape(-1, x.shape[-1])
        probs = torch.softmax(self.router(flat), -1)  # (N, n)
        weight, chosen = probs.topk(self.top_k, -1)  # (N, k)
        weight = weight / weight.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token.numel() == 0:
                continue
            y = expert(flat[token]) * weight[token, slot].unsqueeze(-1)
            out = out.index_add(0, token, y)
        return out.reshape(x.shape), load_balancing_loss(probs, chosen)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"


class CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention with grouped key/value heads and no positional
    encoding: ``(B, T, width) -> (B, T, width)``.

    ``heads`` query heads of ``width // heads`` channels share ``kv_heads`` key/value heads
    (``heads % kv_heads == 0``; ``kv_heads = heads`` is plain multi-head attention). Computed by
    ``torch.nn.functional.scaled_dot_product_attention``.
    """

    def __init__(self, width: int, heads: int = 4, kv_heads: int | None = None) -> None:
        super().__init__()
        check_positive_int("heads", heads)
        kv_heads = heads if kv_heads is None else kv_heads
        check_positive_int("kv_heads", kv_heads)
        if width % heads or heads % kv_heads:
            raise ValueError(
                f"need width % heads == 0 and heads % kv_heads == 0, got width={width}, "
                f"heads={heads}, kv_heads={kv_heads}"
            )
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def empty_cache(
        self, batch: int, *, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> KVCache:
        """No position read yet: keys and values ``(batch, kv_heads, 0, head_dim)``."""
        p = self.q_proj.weight
        shape = (batch, self.kv_heads, 0, self.head_dim)
        empty = torch.empty(shape, device=device or p.device, dtype=dtype or p.dtype)
        return KVCache(empty, empty.clone())

    def forward(self, x: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """``x: (B, T, width)`` after the ``L`` positions of ``cache`` (``None``: none) ->
        ``(y: (B, T, width), the cache of all L + T positions)``. Position ``t`` attends to the
        cached positions and to ``x``'s positions up to ``t``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if cache is None:  # the full forward: nothing is kept for a next step
            past, kv = 0, KVCache(k, v, None)
        else:
            past, kv = cache.keys.shape[2], cache.appended(k, v)
            k, v = kv.keys, kv.values
        gqa = self.kv_heads != self.heads
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif t == 1:  # one new position sees every cached one: no mask
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        else:  # is_causal aligns the mask to the top left; after a cache it must be shifted
            rows = torch.arange(t, device=x.device).unsqueeze(1) + past
            mask = torch.arange(past + t, device=x.device).unsqueeze(0) <= rows
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out: Tensor = self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        return out, kv

    def extra_repr(self) -> str:
        return f"heads={self.heads}, kv_heads={self.kv_heads}, head_dim={self.head_dim}"


class HybridBlock(nn.Module):
    """One layer of a hybrid stack (see the module docstring): ``(B, T, width) ->
    (B, T, width)``.

    Args:
        kind: ``"attention"`` or a registered cell that keeps the width
            (``output_size == width``: mamba, s4d, lru, lstm with ``hidden_size = width``, ...).
        width: the model width.
        heads, kv_heads: of the attention.
        state_size: the cell's ``hidden_size`` (Mamba: its inner channels).
        mlp_hidden: the MLP's (each expert's) hidden channels; 0: no MLP.
        num_experts: 0 or 1: a dense SwiGLU MLP; more: a :class:`MixtureOfExperts`.
        top_k: experts per token.
        dropout: on the mixer's and the MLP's outputs.
        **cell_kwargs: passed to the cell.
    """

    def __init__(
        self,
        kind: str,
        width: int,
        *,
        heads: int,
        kv_heads: int | None,
        state_size: int,
        mlp_hidden: int,
        num_experts: int,
        top_k: int,
        dropout: float,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.RMSNorm(width)
        self.mixer: nn.Module
        if kind == ATTENTION:
            self.mixer = CausalSelfAttention(width, heads, kv_heads)
        else:
            cell = create_cell(kind, input_size=width, hidden_size=state_size, **cell_kwargs)
            if cell.output_size != width:
                raise ValueError(
                    f"cell {kind!r} maps {width} channels to {cell.output_size}: a hybrid layer "
                    "needs a cell whose output width is its input width (mamba, s4d, lru, ...)"
                )
            self.mixer = cell
        self.mlp: nn.Module | None = None
        self.mlp_norm: nn.Module | None = None
        if mlp_hidden > 0:
            self.mlp_norm = nn.RMSNorm(width)
            self.mlp = (
                MixtureOfExperts(width, mlp_hidden, num_experts, top_k)
                if num_experts > 1
                else SwiGLU(width, mlp_hidden)
            )
        self.drop = nn.Dropout(dropout)

    @property
    def is_attention(self) -> bool:
        """Whether the mixer is causal attention (its state a :class:`KVCache`)."""
        return self.kind == ATTENTION

    def _cell(self) -> Cell[Any]:
        """The mixer of a cell layer."""
        return cast(Cell[Any], self.mixer)

    def init_state(
        self, batch: int, *, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> Any:
        """The mixer's state before any input."""
        if isinstance(self.mixer, CausalSelfAttention):
            return self.mixer.empty_cache(batch, device=device, dtype=dtype)
        return self._cell().init_state(batch, device=device, dtype=dtype)

    def check_state(
        self, state: object, *, batch: int, length: int, like: Tensor, where: str
    ) -> Any:
        """``state`` checked against the mixer (a :class:`CacheMismatchError` if it does not
        fit)."""
        if isinstance(self.mixer, CausalSelfAttention):
            a = self.mixer
            return check_kv_cache(
                state,
                batch=batch,
                heads=a.kv_heads,
                head_dim=a.head_dim,
                length=length,
                like=like,
                where=where,
            )
        return check_cell_state(self._cell(), state, batch=batch, like=like, where=where)

    def _mlp(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.mlp is None or self.mlp_norm is None:
            return x, None
        h = self.mlp_norm(x)
        if isinstance(self.mlp, MixtureOfExperts):
            y, aux = self.mlp(h)
            return x + self.drop(y), aux
        return x + self.drop(self.mlp(h)), None

    def run(self, x: Tensor, state: Any, *, backend: str = "auto") -> tuple[Tensor, Any, Any]:
        """``x: (B, T, width)`` from ``state`` (``None``: the start) -> ``(out, state after
        the last step, the MoE balance loss or None)``."""
        h = self.norm(x)
        if isinstance(self.mixer, CausalSelfAttention):
            y, new = self.mixer(h, state)
        else:
            y, new = self.mixer(h, state, backend=backend)
        out, aux = self._mlp(x + self.drop(y))
        return out, new, aux

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One position, ``(B, width) -> (B, width)``, and the state after it."""
        h = self.norm(x_t)
        if isinstance(self.mixer, CausalSelfAttention):
            y, new = self.mixer(h.unsqueeze(1), state)
            y = y.squeeze(1)
        else:
            y, new = self._cell().step(h, state)
        out, _ = self._mlp(x_t + self.drop(y))
        return out, new

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class HybridNetwork(BlockCache, nn.Module):
    """Encoder -> hybrid layers (:class:`HybridBlock`) -> RMSNorm -> pooling -> linear head.

    The layers are ``layers`` if given (names: ``"attention"`` or registered cells, a list or
    a comma-separated string), else ``num_layers`` layers of ``cell`` with attention at
    ``i % attn_every == attn_offset`` (:func:`hybrid_pattern`). Layer ``i``'s MLP is a mixture
    of experts where ``num_experts > 1``, ``moe_every > 0`` and ``i % moe_every ==
    moe_offset``, else dense.

    After every forward, :attr:`aux_loss` is ``aux_loss_weight`` times the
    sum of the MoE layers' balance losses (:func:`load_balancing_loss`; zero without MoE
    layers), also returned by :meth:`regularization`: add it to the task loss (rnnkit's
    trainer does, through ``regularization``) to keep the experts in use.

    Args:
        input_size: width of the input features (ignored when ``vocab_size`` is given).
        output_size: width of the head's output.
        layers: the layer names, or ``None`` for the pattern below.
        num_layers: layers of the pattern (default 4); must equal ``len(layers)`` if both.
        cell: the recurrent layers of the pattern.
        attn_every, attn_offset: where the pattern puts attention (``attn_every=0``: nowhere).
        hidden_size: the model width.
        heads, kv_heads: query and key/value heads of every attention layer.
        state_size: every cell's ``hidden_size`` (default ``2 * hidden_size`` for Mamba, its
            inner channels at expand 2; ``hidden_size`` for other cells).
        mlp_ratio: MLP (and expert) hidden channels per model channel; 0: no MLPs.
        num_experts, top_k: experts per MoE layer and experts per token.
        moe_every, moe_offset: which layers' MLPs are mixtures of experts.
        aux_loss_weight: the weight of the balance loss in :attr:`aux_loss`.
        dropout: on every mixer's and MLP's output.
        vocab_size: if given, inputs are token ids ``(B, T)`` embedded to ``hidden_size``.
        pooling: ``"none"`` (``(B, T, output_size)``), ``"last"`` or ``"mean"``
            (``(B, output_size)``).
        **cell_kwargs: passed to every cell (``d_state=8``, ...).
    """

    aux_loss: Tensor

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        layers: str | Sequence[str] | None = None,
        num_layers: int | None = None,
        cell: str = "mamba",
        attn_every: int = 4,
        attn_offset: int = 2,
        hidden_size: int = 64,
        heads: int = 4,
        kv_heads: int | None = 2,
        state_size: int | None = None,
        mlp_ratio: float = 2.0,
        num_experts: int = 4,
        top_k: int = 2,
        moe_every: int = 2,
        moe_offset: int = 1,
        aux_loss_weight: float = 0.01,
        dropout: float = 0.0,
        vocab_size: int | None = None,
        pooling: str = "none",
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        if layers is not None:
            names = parse_layers(layers)
            if num_layers is not None and num_layers != len(names):
                raise ValueError(
                    f"num_layers={num_layers} but layers names {len(names)}: {names} "
                    "(give one of them)"
                )
        else:
            names = hybrid_pattern(
                4 if num_layers is None else num_layers,
                cell=cell,
                attn_every=attn_every,
                attn_offset=attn_offset,
            )
        if moe_every < 0 or (moe_every > 0 and not 0 <= moe_offset < moe_every):
            raise ValueError(
                f"need moe_every >= 0 and 0 <= moe_offset < moe_every, got moe_every="
                f"{moe_every}, moe_offset={moe_offset}"
            )
        if mlp_ratio < 0 or num_experts < 0:
            raise ValueError(
                f"need mlp_ratio >= 0, num_experts >= 0, got {mlp_ratio}, {num_experts}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        # kept under the constructor's names so that a run's record shows the resolved layout
        self.layers: list[str] = names
        self.num_layers = len(names)
        self.aux_loss_weight = aux_loss_weight
        mlp_hidden = round(mlp_ratio * hidden_size)
        self.encoder: nn.Module = (
            nn.Embedding(vocab_size, hidden_size)
            if vocab_size
            else nn.Linear(input_size, hidden_size)
        )
        blocks = []
        for i, kind in enumerate(names):
            moe = num_experts > 1 and moe_every > 0 and i % moe_every == moe_offset
            size = state_size or (2 * hidden_size if kind == "mamba" else hidden_size)
            blocks.append(
                HybridBlock(
                    kind,
                    hidden_size,
                    heads=heads,
                    kv_heads=kv_heads,
                    state_size=size,
                    mlp_hidden=mlp_hidden,
                    num_experts=num_experts if moe else 0,
                    top_k=top_k,
                    dropout=dropout,
                    **({} if kind == ATTENTION else cell_kwargs),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, output_size)
        self.aux_loss = torch.zeros(())

    def _blocks(self) -> list[HybridBlock]:
        return [cast(HybridBlock, b) for b in self.blocks]

    def _trunk(
        self, x: Tensor, cache: ModelCache | None, backend: str
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """The layers over ``x`` from ``cache``: ``(features (B, T, width), final states)``;
        sets :attr:`aux_loss`."""
        y = self.encoder(x)
        blocks = self._blocks()
        states = [None] * len(blocks) if cache is None else self._states(cache, y)
        finals = []
        aux = torch.zeros((), device=y.device, dtype=y.dtype)
        for block, s in zip(blocks, states, strict=True):
            y, s, a = block.run(y, s, backend=backend)
            finals.append(s)
            if a is not None:
                aux = aux + a
        self.aux_loss = self.aux_loss_weight * aux
        return y, tuple(finals)

    def regularization(self, progress: float) -> Tensor:
        """The balance loss of the last forward (:attr:`aux_loss`, a scalar; 0 without MoE or
        before any forward): the rnnkit trainer adds it to the training loss. ``progress`` is
        unused: the weight is constant."""
        return self.aux_loss

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        """``x: (B, T, input_size)`` or token ids ``(B, T)`` -> outputs (see ``pooling``)."""
        y, _ = self._trunk(x, None, backend)
        out: Tensor = self.head(_pool(self.norm(y), self.pooling))
        return out

    # -- the state cache (rnnkit.models.cache.BlockCache) ----------------------------------------

    def _cache_where(self, i: int) -> str:
        return f"layer {i} ({self._blocks()[i].kind})"


#: Jamba's layout scaled down (the paper: 32 layers of width 4096, attention at i % 8 == 4,
#: 16 experts every other layer; see docs/models.md).
JAMBA_DEFAULTS: dict[str, Any] = {
    "cell": "mamba",
    "hidden_size": 64,
    "num_layers": 4,
    "attn_every": 4,
    "attn_offset": 2,
    "heads": 4,
    "kv_heads": 2,
    "mlp_ratio": 2.0,
    "num_experts": 4,
    "top_k": 2,
    "moe_every": 2,
    "moe_offset": 1,
}


def _jamba_config(cfg: dict[str, Any]) -> dict[str, Any]:
    for key, value in JAMBA_DEFAULTS.items():
        if key == "num_layers" and cfg.get("layers") is not None:
            continue  # the explicit layers fix the depth
        cfg.setdefault(key, value)
    return cfg


def jamba(
    vocab_size: int = 128, *, input_size: int = 0, output_size: int | None = None, **cfg: Any
) -> HybridNetwork:
    """Jamba-style LM: Mamba and causal attention layers (1:3), MoE every other layer"""
    # input_size: the task contract passes it (0 for token ids); the ids are embedded
    del input_size
    out = vocab_size if output_size is None else output_size
    cfg = _jamba_config(cfg)
    return HybridNetwork(0, out, vocab_size=vocab_size, pooling="none", **cfg)


def jamba_classifier(**cfg: Any) -> HybridNetwork:
    """Jamba-style stack, one output per sequence (mean over time)"""
    cfg.setdefault("pooling", "mean")
    return HybridNetwork(**_jamba_config(cfg))
