"""A recurrent hypernetwork for continual learning (after Chandra, Varshney, Srijith, Gupta,
arXiv 2209.07712, on von Oswald et al.'s task-conditioned hypernetworks, ICLR 2020).

A small target network (an MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers)
has no parameters of its own: its ``P`` weights are generated per task. The hypernetwork
runs a recurrent stack (any registered cell) over ``K = ceil(P / chunk_size)`` steps; step
``k`` reads the task's embedding ``e_t`` and a learned chunk embedding ``c_k`` and emits
chunk ``k`` of the weights:

    h_k = RNN([e_t, c_k], h_{k-1}),   theta_t[k] = W h_k + b   (chunk_size numbers)
    theta_t = concat_k theta_t[k][:P]

so the recurrent state carries dependencies across chunks (layers) that a chunked MLP
hypernetwork would drop. Continual learning regularises the generated weights (outputs), not
the hypernetwork's parameters: while learning task ``T``,

    L = L_task(theta_T) + (beta / (T - 1)) sum_{t < T} || f_h(e_t) - theta_t* ||^2

with ``theta_t*`` the weights generated for task ``t`` before task ``T`` started
(:meth:`RecurrentHypernetwork.remember`); :meth:`RecurrentHypernetwork.regularization` is that
penalty (the rnnkit extra-loss hook), 0 before the second task. The look-ahead of von Oswald
et al. and the paper's network growth are not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core import Recurrent
from rnnkit.core.validation import check_positive_int

__all__ = ["RecurrentHypernetwork", "rnn_hypernet"]


class RecurrentHypernetwork(nn.Module):
    """Generates a target MLP's weights per task with a recurrent stack over weight chunks.

    Args:
        sizes: the target MLP's layer widths, input first (``(64, 32, 2)``).
        tasks: number of task embeddings.
        embedding_size: width of each task embedding ``e_t``.
        chunk_embedding_size: width of each chunk embedding ``c_k``.
        chunk_size: weights emitted per recurrent step.
        hidden_size, num_layers, cell: the recurrent stack (any registered cell).
        beta: weight of the output regulariser.
        **cell_kwargs: passed to every cell.
    """

    memory: Tensor  # (T, P): the weights generated for the earlier tasks (a buffer)

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        tasks: int = 5,
        embedding_size: int = 16,
        chunk_embedding_size: int = 16,
        chunk_size: int = 128,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        beta: float = 0.01,
        **cell_kwargs: Any,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(
                f"sizes must list at least an input and an output width, got {sizes!r}"
            )
        for s in sizes:
            check_positive_int("sizes", s)
        self.sizes = tuple(int(s) for s in sizes)
        self.tasks = check_positive_int("tasks", tasks)
        check_positive_int("embedding_size", embedding_size)
        check_positive_int("chunk_embedding_size", chunk_embedding_size)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        if not (math.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)
        self.shapes = [(o, i) for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True)]
        self.num_weights = sum(o * i + o for o, i in self.shapes)
        self.chunks = math.ceil(self.num_weights / chunk_size)
        self.task_embedding = nn.Parameter(torch.randn(tasks, embedding_size))
        self.chunk_embedding = nn.Parameter(torch.randn(self.chunks, chunk_embedding_size))
        self.rnn = Recurrent(
            cell, embedding_size + chunk_embedding_size, hidden_size, num_layers, **cell_kwargs
        )
        self.head = nn.Linear(self.rnn.output_size, chunk_size)
        self.register_buffer("memory", torch.zeros(0, self.num_weights))
        self.current_task = 0

    def generate(self, tasks: Tensor | int) -> Tensor:
        """Flat target weights: an int task id -> ``(P,)``; int64 ids ``(n,)`` -> ``(n, P)``."""
        single = isinstance(tasks, int)
        ids = torch.as_tensor([tasks] if single else tasks, device=self.task_embedding.device)
        if ids.dim() != 1 or ids.dtype != torch.long:
            raise ValueError(f"tasks must be an int or (n,) int64 ids, got {tasks!r}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.tasks):
            raise ValueError(f"tasks must be ids in [0, {self.tasks}), got {ids.tolist()}")
        n = ids.shape[0]
        # only the current task's embedding learns: the others are fixed (von Oswald et al.)
        own = (ids == self.current_task)[:, None]
        rows = self.task_embedding[ids]
        e = torch.where(own, rows, rows.detach())[:, None].expand(n, self.chunks, -1)
        c = self.chunk_embedding[None].expand(n, -1, -1)
        h, _ = self.rnn(torch.cat([e, c], -1))
        flat: Tensor = self.head(h).reshape(n, -1)[:, : self.num_weights]
        return flat[0] if single else flat

    def target(self, x: Tensor, weights: Tensor) -> Tensor:
        """The target MLP with flat ``weights (P,)``: ``x (B, sizes[0])`` -> ``(B, sizes[-1])``."""
        if weights.shape != (self.num_weights,):
            raise ValueError(f"weights must be ({self.num_weights},), got {tuple(weights.shape)}")
        if x.dim() != 2 or x.shape[-1] != self.sizes[0]:
            raise ValueError(f"x must be (B, {self.sizes[0]}), got shape {tuple(x.shape)}")
        at = 0
        for k, (o, i) in enumerate(self.shapes):
            w = weights[at : at + o * i].reshape(o, i)
            b = weights[at + o * i : at + o * i + o]
            at += o * i + o
            x = F.linear(x, w, b)
            if k < len(self.shapes) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: Tensor, *, task: int | None = None, backend: str = "auto") -> Tensor:
        """Logits of the target network generated for ``task`` (default
        :attr:`current_task`): ``x (B, sizes[0])`` -> ``(B, sizes[-1])``."""
        t = self.current_task if task is None else task
        return self.target(x, self.generate(t))

    @torch.no_grad()
    def remember(self, task: int) -> None:
        """Start learning ``task``: store the weights now generated for tasks ``0..task-1``
        (the regulariser's targets ``theta_t*``) and make ``task`` the current one (the only
        task embedding that learns)."""
        if not 0 <= task < self.tasks:
            raise ValueError(f"task must be in [0, {self.tasks}), got {task!r}")
        ids = torch.arange(task, device=self.task_embedding.device)
        self.memory = self.generate(ids).detach() if task else self.memory[:0]
        self.current_task = task

    def regularization(self, progress: float = 0.0) -> Tensor:
        """``beta / (T - 1) sum_{t < T} ||f_h(e_t) - theta_t*||^2`` for the current task
        ``T`` (0-based: the mean over the remembered tasks); 0 for the first task."""
        if self.memory.shape[0] == 0:
            return self.task_embedding.new_zeros(())
        ids = torch.arange(self.memory.shape[0], device=self.memory.device)
        diff = self.generate(ids) - self.memory
        return self.beta * diff.square().sum(-1).mean()


def rnn_hypernet(
    *,
    input_size: int,
    output_size: int,
    hidden_sizes: Sequence[int] = (32,),
    tasks: int = 5,
    **cfg: Any,
) -> RecurrentHypernetwork:
    """Recurrent hypernetwork generating an MLP input_size -> hidden_sizes -> output_size per
    task (continual learning with output regularisation): (B, input) -> (B, output)."""
    return RecurrentHypernetwork((input_size, *hidden_sizes, output_size), tasks=tasks, **cfg)
