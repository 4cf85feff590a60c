"""Pointer Networks (Vinyals, Fortunato, Jaitly, NeurIPS 2015).

An encoder RNN reads the input elements ``P_1..P_n`` (states ``e_1..e_n``); a decoder RNN,
started from the encoder's final state, emits one output per step, and its output
distribution *is* an attention over the inputs:

    u_j^i = v^T tanh(W_1 e_j + W_2 d_i),   p(C_i = j | C_<i, P) = softmax_j(u^i).

The decoder's input at step ``i`` is the element pointed at step ``i - 1`` (a learned start
vector at step 0): the target's element in training (teacher forcing, when the trainer passes
``targets``), the model's own greedy choice otherwise. Invalid choices are masked out of
``u`` (set to the dtype's lowest value): padding rows, elements already chosen (no revisits),
and, after the end pointer, everything but the end pointer.

Greedy decoding emits one pointer per input row (``T_out = n``), the shape of a ``tag``
task. With ``end_token=True`` an extra learned key ``e_END`` is appended after the ``n`` rows,
so the logits have ``n + 1`` columns (column ``n`` = END); a task that may need ``k`` elements
and END then gives at least ``k + 1`` rows, the spare ones padding (convex hull: 10 points in
11 rows). Without it the logits have ``n`` columns (TSP: a permutation).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core import Recurrent

__all__ = ["PointerNet", "pointer_net"]


class PointerNet(nn.Module):
    """Pointer network: points ``(B, n, input_size)`` -> pointer logits ``(B, n, n[+1])``.

    Args:
        input_size: features per input element (coordinates, plus a validity flag).
        hidden_size: width of encoder and decoder (paper: 256 or 512).
        num_layers: layers of each RNN stack (paper: 1).
        cell: any registered cell for both stacks (paper: ``"lstm"``).
        end_token: add the END pointer (see the module docstring).
        mask_feature: index of the feature that flags real elements (1) against padding rows
            (0); padding must come after the real rows. ``None``: every row is real.
        init_scale: parameters are drawn from ``U(-init_scale, init_scale)`` (paper: 0.08);
            ``0`` keeps PyTorch's initialisation.
        output_size: accepted for the task contract (``io``); when given it must be ``n`` or
            ``n + 1`` of the inputs, checked in :meth:`forward`.
        embed: map every element (and the start and END inputs) through a linear layer of
            width ``hidden_size`` before both RNNs. The paper feeds the raw coordinates; with
            them, small budgets learn only a positional bias (pointing in input order), so
            this is on by default (``embed=False`` is the paper's model).
    """

    def __init__(
        self,
        input_size: int,
        *,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: str = "lstm",
        end_token: bool = True,
        mask_feature: int | None = None,
        init_scale: float = 0.08,
        output_size: int | None = None,
        embed: bool = True,
    ) -> None:
        super().__init__()
        checked: tuple[tuple[str, object], ...] = (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        )
        for name, value in checked:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if mask_feature is not None and not 0 <= mask_feature < input_size:
            raise ValueError(
                f"mask_feature must be None or a feature index in [0, {input_size}), "
                f"got {mask_feature!r}"
            )
        if not init_scale >= 0.0:
            raise ValueError(f"init_scale must be >= 0, got {init_scale!r}")
        if output_size is not None and output_size <= 0:
            raise ValueError(f"output_size must be positive, got {output_size!r}")
        self.end_token = end_token
        self.mask_feature = mask_feature
        self.output_size = output_size
        width = hidden_size if embed else input_size
        self.encoder = Recurrent(cell, width, hidden_size, num_layers)
        self.decoder = Recurrent(cell, width, hidden_size, num_layers)
        self.w1 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.w2 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v = nn.Linear(hidden_size, 1, bias=False)
        self.start = nn.Parameter(torch.zeros(input_size))
        self.end_input = nn.Parameter(torch.zeros(input_size))
        self.end_key = nn.Parameter(torch.zeros(hidden_size))
        if init_scale > 0:
            for p in self.parameters():
                nn.init.uniform_(p, -init_scale, init_scale)
        # created after the uniform initialisation: keeps PyTorch's scale for the embedding
        self.embed: nn.Module = nn.Linear(input_size, hidden_size) if embed else nn.Identity()

    def forward(self, x: Tensor, *, backend: str = "auto", targets: Tensor | None = None) -> Tensor:
        """Pointer logits, masked.

        Args:
            x: ``(B, n, input_size)`` elements (padding rows last, see ``mask_feature``).
            backend: passed to the encoder (and the teacher-forced decoder).
            targets: ``(B, T_out)`` int64 pointers (``-100`` ignored) to teacher-force the
                decoder with; ``None`` decodes greedily.

        Returns:
            ``(B, T_out, n + 1)`` logits with ``end_token``, else ``(B, T_out, n)``;
            ``T_out`` is ``targets.shape[1]`` when teacher-forced, else ``n``.
        """
        batch, n, _ = x.shape
        width = n + 1 if self.end_token else n
        if self.output_size is not None and self.output_size != width:
            raise ValueError(
                f"output_size {self.output_size} does not match the inputs: {n} elements "
                f"give {width} pointer columns (end_token={self.end_token})"
            )
        if self.mask_feature is not None:
            valid = x[..., self.mask_feature] > 0.5
        else:
            valid = torch.ones(batch, n, dtype=torch.bool, device=x.device)
        lengths = valid.sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("every example needs at least one valid element")
        enc, state = self.encoder(self.embed(x), backend=backend, lengths=lengths)
        keys = self.w1(enc)  # (B, n, H)
        if self.end_token:
            keys = torch.cat([keys, self.w1(self.end_key).expand(batch, 1, -1)], 1)
        # choices never allowed: padding rows (END, when present, always allowed)
        blocked = torch.cat([~valid, valid.new_zeros(batch, 1)], 1) if self.end_token else ~valid
        if targets is not None:
            return self._teacher_forced(x, targets, keys, state, blocked, backend)
        return self._greedy(x, keys, state, blocked, n)

    def _scores(self, keys: Tensor, d: Tensor) -> Tensor:
        """``u = v^T tanh(W1 e_j + W2 d_i)``: keys ``(B, m, H)``, ``d (B, S, H)`` ->
        ``(B, S, m)``."""
        u: Tensor = self.v(torch.tanh(keys.unsqueeze(1) + self.w2(d).unsqueeze(2)))
        return u.squeeze(-1)

    def _lookup(self, x: Tensor, pointer: Tensor) -> Tensor:
        """The decoder input for pointers ``(B, S)``: the element, or the END input vector for
        END and ignored (negative) pointers. Returns ``(B, S, input_size)``."""
        n = x.shape[1]
        is_elem = (pointer >= 0) & (pointer < n)
        idx = pointer.clamp(0, n - 1)
        picked = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return torch.where(is_elem.unsqueeze(-1), picked, self.end_input.to(x.dtype))

    def _teacher_forced(
        self, x: Tensor, targets: Tensor, keys: Tensor, state: Any, blocked: Tensor, backend: str
    ) -> Tensor:
        batch, steps = targets.shape
        m = keys.shape[1]
        prev = torch.cat([targets.new_full((batch, 1), -1), targets[:, :-1]], 1)
        inputs = self._lookup(x, prev)
        inputs[:, 0] = self.start.to(x.dtype)
        d, _ = self.decoder(self.embed(inputs), state, backend=backend)
        u = self._scores(keys, d)  # (B, S, m)
        # the mask at step i: blocked, plus every target chosen before i, plus (after END)
        # everything but END
        onehot = torch.zeros(batch, steps, m, dtype=torch.bool, device=x.device)
        ok = (targets >= 0) & (targets < m)
        onehot.scatter_(2, targets.clamp(0, m - 1).unsqueeze(-1), ok.unsqueeze(-1))
        chosen = torch.cumsum(onehot.to(torch.int32), 1) > 0
        chosen = torch.cat([chosen.new_zeros(batch, 1, m), chosen[:, :-1]], 1)
        mask = blocked.unsqueeze(1) | chosen
        if self.end_token:
            ended = chosen[..., m - 1]  # END already chosen
            mask = mask | ended.unsqueeze(-1)
            mask[..., m - 1] = False
        return _masked(u, mask)

    def _greedy(self, x: Tensor, keys: Tensor, state: Any, blocked: Tensor, steps: int) -> Tensor:
        batch = x.shape[0]
        m = keys.shape[1]
        mask = blocked.clone()
        inp = self.start.to(x.dtype).expand(batch, -1)
        ended = torch.zeros(batch, dtype=torch.bool, device=x.device)
        out = []
        for _ in range(steps):
            d, state = self.decoder.step(self.embed(inp), state)
            step_mask = mask.clone()
            if self.end_token:
                step_mask = step_mask | ended.unsqueeze(-1)
                step_mask[:, m - 1] = False
            logits = _masked(self._scores(keys, d.unsqueeze(1)).squeeze(1), step_mask)
            out.append(logits)
            choice = logits.argmax(-1)
            mask = mask.scatter(1, choice.unsqueeze(-1), True)
            if self.end_token:
                ended = ended | (choice == m - 1)
            inp = self._lookup(x, choice.unsqueeze(1)).squeeze(1)
        return torch.stack(out, 1)


def _masked(u: Tensor, mask: Tensor) -> Tensor:
    """``u`` with masked entries set to the dtype's lowest value (never the argmax; the pointer
    tasks' loss clamps logits so that a masked target costs a large finite loss, not inf)."""
    return u.masked_fill(mask, torch.finfo(u.dtype).min)


def pointer_net(
    *,
    input_size: int,
    output_size: int | None = None,
    hidden_size: int = 128,
    num_layers: int = 1,
    cell: str = "lstm",
    end_token: bool = True,
    mask_feature: int | None = None,
    init_scale: float = 0.08,
    embed: bool = True,
) -> PointerNet:
    """Pointer network (LSTM encoder-decoder): (B, n, F) -> pointer logits (B, n, n[+1])."""
    return PointerNet(
        input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        cell=cell,
        end_token=end_token,
        mask_feature=mask_feature,
        init_scale=init_scale,
        output_size=output_size,
        embed=embed,
    )
