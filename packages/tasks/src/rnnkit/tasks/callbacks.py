"""Trainer callbacks: code of your own run at each step, each validation and the end of a run.

Pass them as ``Trainer(config, callbacks=[...])`` or ``train(..., callbacks=[...])``. The
trainer calls, in this order, for every step ``s`` of a run:

1. ``on_step(trainer, s, loss)`` after the optimiser step (``loss``: the mean training loss
   of the global batch of step ``s``, a float);
2. ``on_eval(trainer, s, metrics)`` after a validation (every ``eval_every`` steps and at the
   last one), ``metrics`` being the validation metrics (the task's metrics and ``loss``); the
   full record (``train_loss`` since the last validation, ``lr``, ``seconds``) is
   ``trainer.state.history[-1]``, already written to ``metrics.jsonl``;

and once the run has ended, ``on_end(trainer, result)`` with the
:class:`~rnnkit.tasks.trainer.RunResult` (after ``final.json``, the reusable model and the
report are written; also when the run was interrupted: ``result.interrupted``). Callbacks run
in the order given. An exception raised by a callback is not caught: it ends the run like an
error of the trainer's own (a run that fails before its first checkpoint removes the files the
trainer wrote). Under ``torchrun`` every process calls its callbacks; ``trainer.dist.main`` is
true on the process that writes files (rank 0).

Example: stop a run once the validation accuracy reaches 0.9, and log the training loss::

    from rnnkit.tasks import Callback, train

    class StopAt(Callback):
        def __init__(self, level: float) -> None:
            self.level = level
            self.losses: list[float] = []

        def on_step(self, trainer, step, loss):
            self.losses.append(loss)

        def on_eval(self, trainer, step, metrics):
            if metrics["accuracy"] >= self.level:
                trainer.state.stopped_early = True  # ends the run after this step

    stop = StopAt(0.9)
    result = train(task="digits_rows", steps=300, callbacks=[stop])

:class:`TensorBoardCallback` (``rnnkit train --tensorboard``) is one such callback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rnnkit.tasks.trainer import RunResult, Trainer

__all__ = [
    "TENSORBOARD_EXTRA",
    "Callback",
    "TensorBoardCallback",
    "TrainerCallback",
    "require_tensorboard",
]

#: the extra that installs TensorBoard
TENSORBOARD_EXTRA = "rnnkit-tasks[tensorboard]"


@runtime_checkable
class TrainerCallback(Protocol):
    """What the trainer calls (see the module docstring); :class:`Callback` implements every
    hook as a no-op, so a subclass overrides only those it needs."""

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        """After optimiser step ``step`` (1-based); ``loss``: that batch's mean loss."""

    def on_eval(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        """After the validation at ``step``; ``metrics``: the validation metrics."""

    def on_end(self, trainer: Trainer, result: RunResult) -> None:
        """Once the run has ended (finished, stopped early or interrupted)."""


class Callback:
    """Base class of trainer callbacks: every hook does nothing until overridden."""

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        """After optimiser step ``step`` (1-based); ``loss``: that batch's mean loss."""

    def on_eval(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        """After the validation at ``step``; ``metrics``: the validation metrics."""

    def on_end(self, trainer: Trainer, result: RunResult) -> None:
        """Once the run has ended (finished, stopped early or interrupted)."""


def require_tensorboard() -> None:
    """Check that ``torch.utils.tensorboard`` can be imported, or raise
    :class:`~rnnkit.tasks.series.MissingExtraError` naming the extra to install."""
    from rnnkit.tasks.series import MissingExtraError

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            "TensorBoard logging (--tensorboard, TensorBoardCallback) needs the tensorboard "
            f"package, which is not installed: pip install '{TENSORBOARD_EXTRA}' (or pip "
            f"install tensorboard); import error: {exc}",
            name="tensorboard",
        ) from exc


class TensorBoardCallback(Callback):
    """Write a run's scalars as TensorBoard event files in ``<run dir>/<subdir>``.

    Scalars (the x axis is the optimiser step): ``train/loss`` (each step's batch loss),
    ``train/lr``, ``train/mean_loss`` (mean training loss since the previous validation),
    ``valid/<metric>`` at each validation, and ``test/<metric>`` at the last step when the run
    finished. A resumed run discards what the interrupted one had logged after its checkpoint
    (TensorBoard's ``purge_step``), so every step appears once. Only the process that writes
    files (rank 0) writes events. One instance can serve several runs in turn (``rnnkit
    compare``): each run gets its own folder. View them with ``tensorboard --logdir runs``.

    Raises:
        MissingExtraError: when TensorBoard is not installed (the message names the extra).
    """

    def __init__(self, subdir: str = "tb") -> None:
        require_tensorboard()
        self.subdir = subdir
        self._writer: Any = None
        self._trainer: Trainer | None = None

    def log_dir(self, trainer: Trainer) -> Path:
        """The folder of ``trainer``'s event files."""
        return Path(trainer.out) / self.subdir

    def _writer_for(self, trainer: Trainer) -> Any:
        if self._trainer is not trainer:
            self.close()  # the previous run's writer, if that run failed before on_end
            from torch.utils.tensorboard import SummaryWriter

            resumed = trainer.resumed_at
            self._writer = SummaryWriter(
                log_dir=str(self.log_dir(trainer)),
                purge_step=resumed + 1 if resumed else None,
            )
            self._trainer = trainer
        return self._writer

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        """Log ``train/loss`` and ``train/lr``."""
        if not trainer.dist.main:
            return
        writer = self._writer_for(trainer)
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", trainer.optimizer.param_groups[0]["lr"], step)

    def on_eval(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``valid/<metric>`` and ``train/mean_loss``; flush the events to disk."""
        if not trainer.dist.main:
            return
        writer = self._writer_for(trainer)
        for name, value in metrics.items():
            writer.add_scalar(f"valid/{name}", value, step)
        if trainer.state.history:
            writer.add_scalar("train/mean_loss", trainer.state.history[-1]["train_loss"], step)
        writer.flush()

    def on_end(self, trainer: Trainer, result: RunResult) -> None:
        """Log ``test/<metric>`` (a finished run) and close the event file."""
        if not trainer.dist.main:
            return
        if result.test:
            writer = self._writer_for(trainer)
            for name, value in result.test.items():
                writer.add_scalar(f"test/{name}", value, result.steps)
        self.close()

    def close(self) -> None:
        """Flush and close the current event file (if any)."""
        if self._writer is not None:
            self._writer.close()
        self._writer, self._trainer = None, None
