"""What a task is: data splits, a loss, metrics, a default model and a training budget.

A :class:`Task` is a frozen description; :meth:`Task.data` builds its seeded train, valid and
test splits (:class:`TaskData`), each a pair of tensors ``(inputs, targets)`` whose first
dimension indexes examples. The task's ``kind`` fixes the loss and what the model must output:

============== ===================================== ======================================
kind           model output                          targets
============== ===================================== ======================================
``classify``   ``(B, C)`` logits                     ``(B,)`` int64 class ids
``tag``        ``(B, T, C)`` logits                  ``(B, T)`` int64, ``-100`` = ignored
``multilabel`` ``(B, T, K)`` logits                  ``(B, T, K)`` float 0/1, ``-1`` = ignored
``regress``    ``(B, T, D)`` values                  ``(B, T, D)`` float, NaN = ignored
============== ===================================== ======================================

Inputs are either float features ``(B, T, input_size)`` or int64 token ids ``(B, T)`` (then
``vocab_size`` is set and the model embeds them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["classify", "tag", "multilabel", "regress"]
KINDS: tuple[str, ...] = ("classify", "tag", "multilabel", "regress")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Split:
    """One split: ``inputs`` and ``targets`` with the same first dimension ``N``."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of examples, got "
                f"{self.inputs.shape[0]} and {self.targets.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, index: Tensor) -> Split:
        """The examples at ``index`` (int64 ``(n,)``)."""
        return Split(self.inputs[index], self.targets[index])


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task, plus facts the metrics may need (``info``)."""

    train: Split
    valid: Split
    test: Split
    info: Mapping[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        """``"train"``, ``"valid"`` or ``"test"``."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {name!r}")
        s: Split = getattr(self, name)
        return s


@dataclass(frozen=True)
class Budget:
    """Default training budget and optimiser settings of a task."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    clip: float = 1.0
    eval_every: int = 100
    patience: int = 0  # evaluations without improvement before stopping; 0 = never
    schedule: str = "cosine"  # "constant" or "cosine"


Metrics = dict[str, float]
MetricFn = Callable[[Tensor, Tensor, Tensor, Mapping[str, Any]], Metrics]
LossFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
ModelMetricFn = Callable[[nn.Module, Split, Mapping[str, Any], str], Metrics]


@dataclass(frozen=True)
class Task:
    """A registered experiment.

    Args:
        name: registry name (``"parity"``).
        description: one line for listings.
        kind: see the module docstring.
        make_data: ``make_data(seed) -> TaskData``; deterministic in ``seed``.
        metric_fn: ``metric_fn(outputs, targets, inputs, info) -> {name: value}`` over a whole
            split (``outputs`` are the model's outputs for every example of the split).
        primary: the metric early stopping and "reached" use; ``higher_is_better`` orders it.
        io: the data's shape facts passed to every model (``input_size``, ``output_size``,
            ``vocab_size``).
        model: default registered model name; ``model_config`` its keywords.
        budget: default :class:`Budget`.
        target: the score the default model and budget should reach (on test), or ``None``.
        reference: what the literature reports, with its source, or ``""``.
        details: longer description (data sizes, lengths, deviations from the paper).
        loss_fn: ``loss_fn(outputs, targets) -> (sum, count)`` replacing the ``kind``'s loss
            (e.g. a quantile loss for prediction intervals); ``None`` keeps the default.
        model_metric_fn: ``model_metric_fn(model, split, info, backend) -> {name: value}``,
            metrics that need the model itself (e.g. a free-running forecast), added to
            :attr:`metric_fn`'s in every evaluation; ``None``: none.
    """

    name: str
    description: str
    kind: Kind
    make_data: Callable[[int], TaskData]
    metric_fn: MetricFn
    primary: str
    io: Mapping[str, int]
    model: str = "sequence_classifier"
    model_config: Mapping[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    higher_is_better: bool = True
    target: float | None = None
    reference: str = ""
    details: str = ""
    loss_fn: LossFn | None = None
    model_metric_fn: ModelMetricFn | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")

    def data(self, seed: int = 0) -> TaskData:
        """The seeded splits (the same ``seed`` always gives the same tensors)."""
        return self.make_data(seed)

    def loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum of per-element losses, number of elements)`` for a batch.

        Returned as a sum and a count so that shards of one batch (several processes) add up
        to exactly the loss of the whole batch: ``mean = sum / count``.
        """
        if self.loss_fn is not None:
            return self.loss_fn(outputs, targets)
        return batch_loss(self.kind, outputs, targets)

    def metrics(
        self, outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
    ) -> Metrics:
        """The task's metrics over a whole split."""
        return self.metric_fn(outputs, targets, inputs, info)

    def reached(self, score: float) -> bool | None:
        """Whether ``score`` (of :attr:`primary`) meets :attr:`target`; ``None`` without one."""
        if self.target is None or math.isnan(score):
            return None if self.target is None else False
        return score >= self.target if self.higher_is_better else score <= self.target

    def chance_level(self) -> float | None:
        """The primary metric of guessing uniformly at random, drawn as a reference line.

        ``1 / C`` for the accuracy of a ``classify`` task with ``C >= 2`` classes
        (``io["output_size"]``), ``log2(V)`` for the bits per character of a language model
        over a vocabulary of ``V`` symbols (``io["vocab_size"]``); ``None`` for every other
        metric (no single chance value applies).
        """
        if self.kind == "classify" and self.primary == "accuracy":
            c = int(self.io.get("output_size", 0))
            return 1.0 / c if c >= 2 else None
        if self.primary == "bpc" and int(self.io.get("vocab_size", 0)) >= 2:
            return math.log2(int(self.io["vocab_size"]))
        return None

    def model_kwargs(self, name: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The keywords :meth:`build_model` passes to the builder of ``name`` (see there):
        what a run records (``config.json``) so that the model can be rebuilt without the task
        (:func:`rnnkit.tasks.load_run`)."""
        name = name or self.model
        cfg: dict[str, Any] = dict(self.io)
        if name == "char_lm":
            cfg = {"vocab_size": self.io["vocab_size"]} if "vocab_size" in self.io else {}
        if name == self.model:
            cfg.update(self.model_config)
        else:
            # keep the width/depth of the default model so that comparisons are fair
            for key in ("hidden_size", "num_layers"):
                if key in self.model_config:
                    cfg[key] = self.model_config[key]
        cfg.update(overrides)
        return cfg

    def build_model(self, name: str | None = None, **overrides: Any) -> nn.Module:
        """Build ``name`` (default :attr:`model`) for this task's data.

        ``io`` keywords are passed first, then :attr:`model_config` (only when ``name`` is the
        default model) and ``overrides``. ``char_lm`` takes only ``vocab_size`` from ``io``.
        """
        from rnnkit.models import create_model

        name = name or self.model
        return create_model(name, **self.model_kwargs(name, **overrides))


def batch_loss(kind: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed loss and element count for ``kind`` (see the module docstring for shapes)."""
    if kind == "classify":
        loss = F.cross_entropy(outputs.float(), targets, reduction="sum")
        count = torch.tensor(float(targets.numel()), device=outputs.device)
    elif kind == "tag":
        flat_t = targets.reshape(-1)
        loss = F.cross_entropy(
            outputs.float().reshape(flat_t.shape[0], -1),
            flat_t,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        count = (flat_t != IGNORE_INDEX).sum().float()
    elif kind == "multilabel":
        mask = targets >= 0
        loss = F.binary_cross_entropy_with_logits(
            outputs.float()[mask], targets[mask].float(), reduction="sum"
        )
        count = mask.sum().float()
    elif kind == "regress":
        mask = ~torch.isnan(targets)
        diff = outputs.float()[mask] - targets[mask].float()
        loss = diff.square().sum()
        count = mask.sum().float()
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return loss, count
