"""RNN methods beyond plain training: online learning (:mod:`.online`), pruning
(:mod:`.pruning`), training-free architecture scores (:mod:`.nas`) and analysis of trained
dynamics (:mod:`.analysis`: fixed and slow points, recoding). Each has a command:
``rnnkit online``, ``rnnkit prune``, ``rnnkit nas`` and ``rnnkit analyse``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the trainer is imported only when a method trains (commands start fast)
    from rnnkit.tasks.trainer import TrainConfig


def quiet_config(task: str, out: str, **fields: Any) -> TrainConfig:
    """A :class:`TrainConfig` for a run made inside a method (a model to prune, a cell to
    rank): on the CPU, into ``out`` (a scratch directory), without plots, messages or a
    progress bar; ``fields`` set the rest."""
    from rnnkit.tasks.trainer import TrainConfig

    return TrainConfig(
        task=task, out=out, device="cpu", plot=False, verbose=False, progress=False, **fields
    )
