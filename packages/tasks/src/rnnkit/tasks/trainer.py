"""The trainer: seeded, resumable training of a model on a task, with results on disk.

A run directory holds:

- ``checkpoint.safetensors`` (+ ``checkpoint.json``): everything needed to resume: model,
  best model so far, optimiser, RNG states, step, early-stopping state and history;
- ``metrics.jsonl``: one JSON record per evaluation (step, train loss, lr, valid metrics);
- ``final.json``: the configuration (resolved: the model's every keyword, the kernel that ran
  each cell), the final valid/test metrics and the run record (:mod:`rnnkit.tasks.record`:
  versions, git commit, command line, times, threads, device);
- ``model.safetensors`` + ``config.json``: the best model for inference, with everything
  needed to rebuild it (:mod:`rnnkit.tasks.reuse`, :func:`rnnkit.tasks.load_run`);
- ``curves.png``: learning curves; ``report.md``: the results, plot and configuration in
  Markdown (:mod:`rnnkit.tasks.report`).

Determinism: the batch of step ``s`` is a pure function of ``(seed, s)`` and every RNG state is
checkpointed (:mod:`rnnkit.tasks.checkpoint`), so a run stopped at any step and resumed ends
with the same parameters and metrics as an uninterrupted one. Under ``torchrun`` each process
takes a shard of every global batch (:mod:`rnnkit.tasks.distributed`), so the update equals the
single-process one on the same global batch. :mod:`rnnkit.tasks.progress` shows the progress.

Messages (the start line, one line per validation, warnings) are logged to the
``rnnkit.tasks`` logger at ``INFO`` (warnings at ``WARNING``), not printed: the ``rnnkit``
command line sends them to stderr; from Python, ``logging.basicConfig(level=logging.INFO)``
shows them. Callbacks (:mod:`rnnkit.tasks.callbacks`) see every step, every validation and the
end of the run.

Run directories: the default one (``runs/<task>-<model>-<time>``) is created exclusively, with
``-2``, ``-3``, ... appended when a run started in the same second has it; a run holds an
advisory lock on its directory (``flock``, released when the process ends, however it ends),
so a second run into the same ``--out`` is refused while the first runs. A run that fails
before its first checkpoint removes what it wrote (and the directory, if it created it).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError, UnknownKeywordError
from rnnkit.tasks import checkpoint as ckpt
from rnnkit.tasks._util import SEED_BOUND
from rnnkit.tasks.base import Budget, Split, Task, TaskData
from rnnkit.tasks.callbacks import TrainerCallback
from rnnkit.tasks.distributed import (
    all_reduce_sum_,
    any_process,
    data_parallel,
    init_distributed,
    resolve_device,
    shard,
    share_from_main,
)
from rnnkit.tasks.progress import Progress, format_metrics, wanted
from rnnkit.tasks.record import (
    command_line,
    environment,
    iso_now,
    jsonable,
    probe_kernels,
    resolved_model_config,
)
from rnnkit.tasks.registry import get_task

DEFAULT_TASK = "digits_rows"

#: the trainer's messages (start line, validations, warnings); the CLI shows them on stderr
_log = logging.getLogger("rnnkit.tasks")


@dataclass
class TrainConfig:
    """What to train and how. ``None`` fields take the task's defaults.

    Args:
        task: registered task name.
        model: registered model name (default: the task's).
        cell: cell name for the model's recurrent stack (``model_config["cell"]``).
        model_config: extra model keywords (``{"hidden_size": 128}``).
        backend: backend passed to the model's forward (``"auto"``, ``"reference"``, ...).
        steps, batch_size, lr, weight_decay, clip, eval_every, patience, schedule: see
            :class:`~rnnkit.tasks.base.Budget`; ``batch_size`` is the global batch.
        seed: seeds data, initialisation and training.
        deterministic: ``torch.use_deterministic_algorithms(True)`` and no cuDNN autotuning.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        out: run directory (default ``runs/<task>-<model>-<time>``, created exclusively when
            the run starts, with ``-2``, ``-3``, ... appended if taken; :attr:`Trainer.out`
            then names the one used).
        resume: continue the run in ``out`` from its checkpoint.
        checkpoint_every: steps between checkpoints (default: at every evaluation).
        progress: progress bar (``None``: only when stderr is a terminal).
        plot: write ``curves.png``.
        verbose: log the start line and one line per validation (logger ``rnnkit.tasks``,
            level ``INFO``); ``False``: no messages, and no progress bar.
        stop_after: stop after this step as if interrupted (checkpoint written; for tests).
        threads: torch CPU threads during the run (default 1 on CPU: the small per-step
            matrix products of recurrent models gain nothing from more, and lose a lot when
            other processes load the cores).

    Out-of-range values (``threads=0``, ``patience=-1``, a NaN ``lr``, ...) are refused by
    :class:`Trainer` with the command-line option named; a ``batch_size`` above the training
    set is clamped to it and recorded in the results.
    """

    task: str = DEFAULT_TASK
    model: str | None = None
    cell: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    clip: float | None = None
    eval_every: int | None = None
    patience: int | None = None
    schedule: str | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    out: str | None = None
    resume: bool = False
    checkpoint_every: int | None = None
    progress: bool | None = None
    plot: bool = True
    verbose: bool = True
    stop_after: int | None = None
    threads: int | None = None


@dataclass
class RunResult:
    """What a run produced (also written to ``final.json``)."""

    task: str
    model: str
    out: str
    params: int
    steps: int
    seconds: float
    primary: str
    valid: dict[str, float]
    test: dict[str, float]
    target: float | None
    reached: bool | None
    stopped_early: bool = False
    interrupted: bool = False
    best_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The test value of the task's primary metric."""
        return self.test.get(self.primary, float("nan"))


class RunInterrupted(KeyboardInterrupt):
    """A training run inside a larger command (``rnnkit passkey``, ``rnnkit analog kws``, a
    sweep) was stopped by Ctrl-C or SIGTERM: raised by :meth:`Trainer.run_to_end` so that the
    command stops too, instead of going on with a model trained for fewer steps than asked.
    A ``KeyboardInterrupt``, so that code which lets a Ctrl-C through lets this through;
    ``result`` is the interrupted run's (its checkpoint stays in ``result.out``)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        super().__init__(f"training stopped at step {result.steps} (run folder {result.out})")


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python and torch; in deterministic mode forbid nondeterministic kernels."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def batch_indices(n: int, batch: int, step: int, seed: int, cache: dict[int, Tensor]) -> Tensor:
    """The example indices of global batch ``step`` (1-based): a pure function of its args.

    Each epoch is a fresh seeded permutation; the incomplete last batch of an epoch is dropped.
    """
    batch = min(batch, n)
    per_epoch = n // batch
    epoch, i = divmod(step - 1, per_epoch)
    if epoch not in cache:
        cache.clear()
        g = torch.Generator().manual_seed(seed * 1_000_003 + 104_729 * (epoch + 1))
        cache[epoch] = torch.randperm(n, generator=g)
    return cache[epoch][i * batch : (i + 1) * batch]


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier at ``step`` (1-based): ``constant`` or ``cosine`` (to 5 %)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(max(step - 1, 0) / max(total, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def takes_targets(model: nn.Module) -> bool:
    """Whether ``model.forward`` has a ``targets`` parameter (teacher forcing)."""
    fn = getattr(model, "forward", None)
    try:
        return fn is not None and "targets" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and C extensions without a signature
        return False


def forward(model: nn.Module, x: Tensor, backend: str, targets: Tensor | None = None) -> Tensor:
    """``model(x, backend=backend)`` for rnnkit models, ``model(x)`` for others.

    ``targets`` (training only) reach models whose ``forward`` takes a ``targets`` keyword,
    for teacher forcing (the pointer network's decoder reads the target's previous element);
    evaluation never passes them, so metrics always score the model's own decoding.
    """
    # DistributedDataParallel's forward takes anything: ask the module it wraps
    if targets is not None and takes_targets(getattr(model, "module", model)):
        out_tf: Tensor = model(x, backend=backend, targets=targets)
        return out_tf
    try:
        out: Tensor = model(x, backend=backend)
    except TypeError as exc:
        if "backend" not in str(exc):
            raise
        out = model(x)
    return out


class ModelTaskMismatchError(RnnkitError, ValueError):
    """A model that does not fit a task: it takes none of the keywords the task gives its
    models, cannot read the task's inputs, or returns outputs the task's loss cannot score.
    The message names both, the task's kind and its own model (``rnnkit train`` prints it as
    one line)."""


def _mismatch(task: Task, model_name: str, why: str) -> ModelTaskMismatchError:
    return ModelTaskMismatchError(
        f"model {model_name!r} does not fit task {task.name!r} (kind {task.kind}): {why}; "
        f"leave out --model for the task's own model, {task.model!r} (rnnkit list tasks "
        f"{task.name} shows the task)"
    )


def build_task_model(task: Task, model_name: str, config: Mapping[str, Any]) -> nn.Module:
    """``task.build_model(model_name, **config)``; a keyword the task passes (its ``io``)
    that the model does not take raises :class:`ModelTaskMismatchError`, one of ``config``
    (``--set``) the :class:`~rnnkit.core.errors.UnknownKeywordError` naming it."""
    try:
        return task.build_model(model_name, **config)
    except UnknownKeywordError as exc:
        if exc.keyword in config or exc.keyword not in task.io:
            raise
        given = ", ".join(sorted(task.io))
        raise _mismatch(task, model_name, f"the task gives its models {given} and {exc}") from exc


def check_model_fits(
    task: Task, model: nn.Module, model_name: str, split: Split, backend: str, device: torch.device
) -> None:
    """Run the model on two examples of ``split`` (evaluation mode, no gradients) and score
    them with the task's loss, so that a model chosen for a task it does not fit stops here
    with :class:`ModelTaskMismatchError` (inputs and targets shapes, and the error) rather
    than with a shape error inside the first training step."""
    x = split.inputs[:2].to(device)
    y = split.targets[:2].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            task.loss(forward(model, x, backend), y)
    except RnnkitError:
        raise  # rnnkit's own errors (a backend that cannot run a cell, ...) name their cause
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        why = (
            f"on inputs {tuple(x.shape)} ({x.dtype}) with targets {tuple(y.shape)} it raised "
            f"{type(exc).__name__}: {first}"
        )
        raise _mismatch(task, model_name, why) from exc
    finally:
        model.train(was_training)


def regularization(model: nn.Module, progress: float) -> Tensor | None:
    """The model's training penalty at ``progress`` (step / steps, in ``[0, 1]``), if it has
    one: ``model.regularization(progress)``, a scalar added to the mean training loss (e.g.
    AR-Net's sparsity regulariser, ES-RNN's level variability penalty, a mixture of experts'
    balance loss, the Universal Transformer's ponder cost: all through this one method).
    ``None`` for models without that method. Evaluation losses never include it."""
    fn = getattr(model, "regularization", None)
    if not callable(fn):
        return None
    pen = fn(progress)
    if not isinstance(pen, Tensor) or pen.dim() != 0:
        raise TypeError(
            f"{type(model).__name__}.regularization(progress) must return a scalar tensor, "
            f"got {pen!r}"
        )
    return pen


def extra_loss(model: nn.Module, step: int, steps: int) -> Tensor | float:
    """What a model adds to its training loss at ``step`` of ``steps``: its
    ``regularization(progress)`` (:func:`regularization`); 0 for a model without one."""
    pen = regularization(model, min(step / max(steps, 1), 1.0))
    return 0.0 if pen is None else pen


@torch.no_grad()
def evaluate(
    task: Task,
    model: nn.Module,
    split: Split,
    info: Mapping[str, Any],
    *,
    device: torch.device,
    backend: str = "auto",
    batch_size: int = 256,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, float]:
    """The task's metrics (and ``loss``, the mean training loss) over a whole split."""
    was_training = model.training
    model.eval()
    outs = []
    loss_sum, count = 0.0, 0.0
    for start in range(0, len(split), batch_size):
        x = split.inputs[start : start + batch_size].to(device)
        y = split.targets[start : start + batch_size].to(device)
        with autocast():
            out = forward(model, x, backend)
        s, c = task.loss(out, y)
        loss_sum, count = loss_sum + float(s), count + float(c)
        outs.append(out.float().cpu())
    model.train(was_training)
    outputs = torch.cat(outs) if outs else torch.empty(0)
    metrics = task.metrics(outputs, split.targets, split.inputs, info)
    if task.model_metric_fn is not None:
        model.eval()
        on_device = Split(split.inputs.to(device), split.targets.to(device))
        metrics.update(task.model_metric_fn(model, on_device, info, backend))
        model.train(was_training)
    metrics["loss"] = loss_sum / max(count, 1.0)
    return metrics


# --- options and run directories -----------------------------------------------------------------

#: the files a run writes atomically (their stale temporaries are removed)
RUN_FILES = (
    ckpt.CHECKPOINT,
    "checkpoint.json",
    "metrics.jsonl",
    "final.json",
    "report.md",
    "model.safetensors",
    "config.json",
)

#: The :class:`TrainConfig` fields that define a run (what it trains and how, not how it is
#: shown): its checkpoint keeps them (``arguments``), so that ``rnnkit train --resume --out
#: DIR`` alone continues it, and ``rnnkit compare`` reuses a finished run only when they match.
RUN_ARGUMENTS: tuple[str, ...] = (
    "task",
    "model",
    "cell",
    "model_config",
    "backend",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "clip",
    "eval_every",
    "patience",
    "schedule",
    "seed",
    "deterministic",
    "device",
    "amp",
    "checkpoint_every",
    "threads",
)


def run_arguments(config: TrainConfig) -> dict[str, Any]:
    """The :data:`RUN_ARGUMENTS` of ``config`` as JSON (``None``: the task's default)."""
    out: dict[str, Any] = jsonable({k: getattr(config, k) for k in RUN_ARGUMENTS})
    return out


def resolve_budget(task: Task, config: TrainConfig) -> Budget:
    """The task's budget with ``config``'s settings applied, checked (:func:`check_options`)."""
    overrides = {
        k: getattr(config, k)
        for k in (
            "steps",
            "batch_size",
            "lr",
            "weight_decay",
            "clip",
            "eval_every",
            "patience",
            "schedule",
        )
        if getattr(config, k) is not None
    }
    budget = replace(task.budget, **overrides)
    check_options(budget, config)
    return budget


def check_seed(flag: str, seed: object) -> None:
    """Refuse a seed that is not an integer below :data:`~rnnkit.tasks._util.SEED_BOUND` in
    absolute value."""
    if isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= SEED_BOUND:
        raise ValueError(f"{flag} must be an integer of absolute value below 2**40, got {seed!r}")


def check_options(b: Budget, config: TrainConfig) -> None:
    """Refuse out-of-range settings, naming the command-line option of each.

    Values are checked at run time whatever their annotations say: the Python API passes
    them through unchecked (``TrainConfig(threads=0)``, ``lr=float("nan")``).
    """

    def integer(v: object, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def number(v: object) -> bool:
        return isinstance(v, int | float) and math.isfinite(v) and v >= 0

    ints: tuple[tuple[str, object, int, str], ...] = (
        ("--steps", b.steps, 1, "a positive integer"),
        ("--batch-size", b.batch_size, 1, "a positive integer"),
        ("--eval-every", b.eval_every, 1, "a positive integer"),
        ("--checkpoint-every", config.checkpoint_every, 1, "a positive integer"),
        ("--threads", config.threads, 1, "a positive integer"),
        ("--patience", b.patience, 0, "an integer >= 0 (0: never stop early)"),
    )
    for flag, v, low, what in ints:
        if v is not None and not integer(v, low):
            raise ValueError(f"{flag} must be {what}, got {v!r}")
    floats: tuple[tuple[str, object, str], ...] = (
        ("--lr", b.lr, ""),
        ("--weight-decay", b.weight_decay, ""),
        ("--clip", b.clip, " (0: no clipping)"),
    )
    for flag, x, note in floats:
        if not number(x):
            raise ValueError(f"{flag} must be a finite number >= 0{note}, got {x!r}")
    check_seed("--seed", config.seed)
    if b.schedule not in ("constant", "cosine"):
        raise ValueError(f"--schedule must be 'constant' or 'cosine', got {b.schedule!r}")


def timestamp() -> str:
    """Local time to the second, as in default run directory names (``20250131-235959``)."""
    return time.strftime("%Y%m%d-%H%M%S")


def _mkdirs(path: Path) -> list[Path]:
    """``mkdir -p path``; the directories it created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def make_run_dir(base: Path) -> tuple[Path, list[Path]]:
    """Create ``base``, or ``base-2``, ``base-3``, ... if taken, exclusively.

    Two processes started in the same second compute the same ``base``; ``mkdir`` fails for
    all but one of them, so each gets a directory of its own. Returns the directory and the
    directories created (outermost first).
    """
    created = _mkdirs(base.parent)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path, [*created, path]
    raise FileExistsError(f"{base} and 9998 numbered variants exist; choose --out")


def lock_dir(path: Path) -> int | None:
    """Take an exclusive advisory lock on directory ``path``; the open descriptor (close it
    to release). Refuses (``ValueError``) a directory another run holds. The kernel drops
    the lock when the process ends, however it ends, so a killed run leaves no stale lock.
    ``None`` where ``flock`` does not exist (Windows): no lock there."""
    if sys.platform == "win32":
        return None
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(
            f"{path} is in use by another rnnkit train process; wait for it or choose another --out"
        ) from None
    return fd


# --- the run -------------------------------------------------------------------------------------


class Trainer:
    """One training run; :meth:`run` trains and returns a :class:`RunResult`.

    ``data`` replaces the task's own splits (smaller data in tests, or your own data);
    ``model`` replaces the task's model (to fine-tune one you built or converted yourself, e.g.
    a crossbar-mapped copy; it is moved to the run's device and trained in place).
    Construction resolves the configuration, builds data and model, asks dispatch which kernel
    runs each cell on a training batch (:func:`~rnnkit.tasks.record.probe_kernels`: an unknown
    or unusable ``backend`` fails here) and, with ``resume``, loads and checks the checkpoint:
    every error (unknown names, bad options, a corrupt or mismatched checkpoint) is raised
    before the run directory is created or anything in it is changed. ``argv`` is the command
    line recorded in ``final.json`` (default: ``sys.argv`` when the process is ``rnnkit``).
    ``state`` (:class:`~rnnkit.tasks.checkpoint.RunState`) holds the run's step, early-stopping
    state and history; ``best_state`` the best model's state dict so far. ``callbacks``
    (:mod:`rnnkit.tasks.callbacks`) are called at every step, every validation and the end.
    """

    #: the module the training forward pass runs through: the model, wrapped for gradient
    #: summation in a multi-process job (:func:`~rnnkit.tasks.distributed.data_parallel`),
    #: made at the first step
    _parallel: nn.Module | None = None

    def __init__(
        self,
        config: TrainConfig,
        *,
        data: TaskData | None = None,
        model: nn.Module | None = None,
        argv: Sequence[str] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        self.started = iso_now()
        #: called at each step, validation and the end of the run, in this order
        self.callbacks: list[TrainerCallback] = list(callbacks)
        self.argv = command_line(argv)
        self.task = get_task(config.task)
        self.budget: Budget = resolve_budget(self.task, config)
        b = self.budget
        self.config = config
        self.model_name = config.model or self.task.model
        self.model_config = dict(config.model_config)
        if config.cell:
            self.model_config["cell"] = config.cell
        self.device = resolve_device(config.device)
        threads = config.threads or (1 if self.device.type == "cpu" else None)
        #: the caller's thread count, given back when :meth:`run` ends
        self.caller_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        self.dist = init_distributed(self.device)
        set_determinism(config.seed, config.deterministic)
        self.data: TaskData = data if data is not None else self.task.data(config.seed)
        n_train = len(self.data.train)
        if n_train < 1:
            raise ValueError(f"task {self.task.name}: the training split is empty")
        #: the batch size asked for, when it was above the training set and clamped to it
        self.batch_size_asked: int | None = None
        if b.batch_size > n_train:
            # batch_indices never draws more than the set: say so and record what is used
            self.batch_size_asked = b.batch_size
            self.budget = b = replace(b, batch_size=n_train)
        #: the keywords the model was built with, every default filled in (``final.json``)
        self.resolved_model_config: dict[str, Any]
        #: the keywords the model was built with (``config.json``); ``None`` for a model
        #: passed in, which the run cannot rebuild
        self.model_kwargs: dict[str, Any] | None = None
        self.custom_data = data is not None
        if model is None:
            from rnnkit.models.registry import get_model_builder

            kwargs = self.task.model_kwargs(self.model_name, **self.model_config)
            self.model_kwargs = kwargs
            model = build_task_model(self.task, self.model_name, self.model_config)
            self.resolved_model_config = resolved_model_config(
                get_model_builder(self.model_name), kwargs, model
            )
            if self.model_name != self.task.model:
                # the task's own model is tested with it; another one may not fit it
                check_model_fits(
                    self.task,
                    model.to(self.device),
                    self.model_name,
                    self.data.train,
                    config.backend,
                    self.device,
                )
        else:  # a model built by the caller: only what was said about it is known
            self.resolved_model_config = jsonable(self.model_config)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=b.lr, weight_decay=b.weight_decay
        )
        self.use_amp = bool(
            config.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        #: per cell: which kernel runs it in training and in evaluation (``final.json``)
        self.kernels = self._probe_kernels()
        # the default directory gets a unique suffix when it is created (:meth:`_prepare_dir`)
        self.out = Path(config.out) if config.out else self._default_out()
        self._lock: int | None = None
        self._locked = False  # _prepare_dir got as far as the lock
        self._created: list[Path] = []  # directories this run created (removed on failure)
        # training state (checkpointed)
        self.state = ckpt.RunState()
        self.best_state = copy.deepcopy(self.model.state_dict())
        self._perm_cache: dict[int, Tensor] = {}
        path = self.out / ckpt.CHECKPOINT
        if config.resume:
            if config.out is None:
                raise ValueError("--resume needs --out DIR (the run directory to continue)")
            self._load(path)
        elif config.out is not None:  # the default directory is made unique instead
            self._refuse_taken()
        #: the step this invocation started from (``None``: a fresh run)
        self.resumed_at: int | None = self.state.step if config.resume else None

    def _refuse_taken(self) -> None:
        if (self.out / ckpt.CHECKPOINT).exists():
            raise ValueError(
                f"{self.out} already holds a run (checkpoint.safetensors); "
                "pass --resume to continue it or choose another --out"
            )

    @property
    def step(self) -> int:
        """Optimiser steps done so far (``state.step``)."""
        return self.state.step

    # -- identity of a run: what must match to resume ----------------------------------------

    def signature(self) -> dict[str, Any]:
        """The settings a checkpoint must have been written with to be resumed here."""
        return {
            "task": self.task.name,
            "model": self.model_name,
            "model_config": json.loads(json.dumps(self.model_config, default=str)),
            "seed": self.config.seed,
            "budget": asdict(self.budget),
        }

    def _probe_kernels(self) -> list[dict[str, Any]]:
        """Dispatch's choice for each cell on this process's share of the first batch."""
        b = self.budget
        idx = batch_indices(len(self.data.train), b.batch_size, 1, self.config.seed, {})
        x = self.data.train.inputs[shard(idx, self.dist)].to(self.device)

        def run_forward() -> None:
            with self._autocast():
                forward(self.model, x, self.config.backend)

        return probe_kernels(self.model, run_forward, backend=self.config.backend)

    def backend_used(self) -> str:
        """The backend(s) that ran the cells in training (comma-separated when the cells
        differ); the requested ``backend`` for a model without rnnkit cells."""
        names = dict.fromkeys(str(k.get("train", "")) for k in self.kernels)
        return ",".join(n for n in names if n) or self.config.backend

    def _default_out(self) -> Path:
        stamp = timestamp()
        cell = f"-{self.model_config['cell']}" if "cell" in self.model_config else ""
        return Path("runs") / f"{self.task.name}-{self.model_name}{cell}-{stamp}"

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # -- checkpoints ------------------------------------------------------------------------------

    def _save(self) -> None:
        if not self.dist.main:
            return
        ckpt.save_run(
            self.out / ckpt.CHECKPOINT,
            model=self.model,
            best_state=self.best_state,
            optimizer=self.optimizer,
            state=self.state,
            signature=self.signature(),
            arguments=run_arguments(self.config),
        )

    def _load(self, path: Path) -> None:
        self.state, self.best_state = ckpt.load_run_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            signature=self.signature(),
            device=self.device,
            max_step=self.budget.steps,
        )

    # -- training ---------------------------------------------------------------------------------

    def _train_step(self) -> float:
        b, d = self.budget, self.dist
        st = self.state
        st.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = b.lr * lr_factor(b.schedule, st.step, b.steps)
        idx = batch_indices(
            len(self.data.train), b.batch_size, st.step, self.config.seed, self._perm_cache
        )
        mine = shard(idx, d)
        x = self.data.train.inputs[mine].to(self.device)
        y = self.data.train.targets[mine].to(self.device)
        if self._parallel is None:  # every process of a job reaches its first step together
            self._parallel = data_parallel(self.model, d, self.device)
        self.model.train()
        with self._autocast():
            out = forward(self._parallel, x, self.config.backend, targets=y)
        loss_sum, count = self.task.loss(out, y)
        total = all_reduce_sum_(count.detach().clone(), d).clamp_min(1.0)
        self.optimizer.zero_grad(set_to_none=True)
        # the model's extra losses are means over each process's shard: the gradients
        # DistributedDataParallel sums over the processes then average them
        objective = loss_sum / total + extra_loss(self.model, st.step, b.steps) / d.world
        torch.autograd.backward(objective)
        if b.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), b.clip)
        self.optimizer.step()
        summed = all_reduce_sum_(torch.stack([loss_sum.detach().float(), count.float()]), d)
        st.loss_sum += float(summed[0])
        st.loss_count += float(summed[1])
        return float(summed[0]) / max(float(summed[1]), 1.0)

    def _evaluate(self, split: str) -> dict[str, float]:
        return evaluate(
            self.task,
            self.model,
            self.data.split(split),
            self.data.info,
            device=self.device,
            backend=self.config.backend,
            autocast=self._autocast,
        )

    def _eval_point(self) -> None:
        st = self.state
        valid = self._evaluate("valid")
        score = valid[self.task.primary]
        better = st.best_score is None or (
            score > st.best_score if self.task.higher_is_better else score < st.best_score
        )
        if better and not math.isnan(score):
            st.best_score, st.best_step, st.bad_evals = score, st.step, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            st.bad_evals += 1
        record = {
            "step": st.step,
            "train_loss": st.loss_sum / max(st.loss_count, 1.0),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(st.elapsed, 3),
            "valid": valid,
        }
        st.loss_sum = st.loss_count = 0.0
        st.history.append(record)
        if self.dist.main:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.verbose and self.dist.main:
            _log.info(
                "step %6d/%d  train loss %.4f  valid %s",
                st.step,
                self.budget.steps,
                record["train_loss"],
                format_metrics(valid),
            )
        if self.budget.patience and st.bad_evals >= self.budget.patience:
            st.stopped_early = True
        for callback in self.callbacks:
            callback.on_eval(self, st.step, valid)

    def _prepare_dir(self) -> None:
        """Create and lock the run directory; on resume, rewrite metrics.jsonl to the checkpoint.

        The default directory is created exclusively (a unique suffix if taken); the lock
        refuses a second run into the same directory while this one runs. Temporary files a
        killed run left are removed. Only rank 0 touches the disk; the other processes take
        the directory's name from it (or its error, rather than wait for it forever).
        """
        if not self.dist.main:
            self.out = Path(share_from_main(None, None, self.dist))
            return
        try:
            self._make_dir()
        except BaseException as exc:
            if self.dist.world > 1:
                share_from_main(None, f"{type(exc).__name__}: {exc}", self.dist)
            raise
        if self.dist.world > 1:
            share_from_main(str(self.out), None, self.dist)

    def _make_dir(self) -> None:
        if self.config.out is None:
            self.out, created = make_run_dir(self.out)
        else:
            created = _mkdirs(self.out)
        self._created = created
        self._lock = lock_dir(self.out)
        self._locked = True
        if not self.config.resume:
            self._refuse_taken()  # a run that finished meanwhile, into the same --out
        ckpt.remove_stale_temporaries(self.out, RUN_FILES)
        lines = "".join(json.dumps(r) + "\n" for r in self.state.history)
        ckpt.atomic_write_text(self.out / "metrics.jsonl", lines)

    def _release(self, failed: bool) -> None:
        """Unlock the run directory; after a failure before the first checkpoint, remove the
        files this run wrote and the directories it created."""
        if not self._locked:
            return
        try:
            if failed and not self.config.resume and not (self.out / ckpt.CHECKPOINT).exists():
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
                ckpt.remove_stale_temporaries(self.out, RUN_FILES)
                for d in reversed(self._created):
                    if d.is_dir() and not any(d.iterdir()):
                        d.rmdir()
        finally:
            if self._lock is not None:
                os.close(self._lock)
            self._lock, self._locked = None, False

    def iter_steps(self) -> Iterator[int]:
        """Steps still to run."""
        while self.state.step < self.budget.steps and not self.state.stopped_early:
            yield self.state.step + 1

    def run(self) -> RunResult:
        """Train (or continue), evaluate on valid and test, write the results."""
        failed = True
        try:
            self._prepare_dir()
            result = self._run()
            for callback in self.callbacks:
                callback.on_end(self, result)
            failed = False
        finally:
            # the DistributedDataParallel wrapper holds the process group and buffers its
            # communication threads touch: let it go with the run, not at interpreter exit
            self._parallel = None
            self._release(failed)
            torch.set_num_threads(self.caller_threads)
        return result

    def run_to_end(self) -> RunResult:
        """:meth:`run` for code that goes on to use the trained model: an interrupted run
        raises :class:`RunInterrupted` rather than returning a model trained for fewer steps
        than asked, which the caller would otherwise score as if it were complete."""
        result = self.run()
        if result.interrupted:
            raise RunInterrupted(result)
        return result

    def _run(self) -> RunResult:
        st = self.state
        cfg, b = self.config, self.budget
        every = cfg.checkpoint_every or b.eval_every
        show = wanted(cfg.progress) and cfg.verbose and self.dist.main
        bar = Progress(b.steps, st.step, show)
        if cfg.verbose and self.dist.main:
            what = self.model_name + (
                f" ({self.model_config['cell']})" if "cell" in self.model_config else ""
            )
            _log.info(
                "rnnkit train: task %s, model %s, %s parameters, %d steps of batch %d, "
                "device %s%s%s",
                self.task.name,
                what,
                f"{count_parameters(self.model):,}",
                b.steps,
                b.batch_size,
                self.device,
                f", {self.dist.world} processes" if self.dist.world > 1 else "",
                f", resuming at step {st.step}" if st.step else "",
            )
            if self.batch_size_asked is not None:
                _log.warning(
                    "rnnkit train: batch size %d is above the %d training examples: using %d",
                    self.batch_size_asked,
                    b.batch_size,
                    b.batch_size,
                )
        interrupted = False
        t0 = time.perf_counter()
        base = st.elapsed
        with _StopOnSignal(announce=self.dist.main) as stop, bar.logging_through():
            for _ in self.iter_steps():
                loss = self._train_step()
                st.elapsed = base + time.perf_counter() - t0
                bar.update(loss=f"{loss:.4f}")
                for callback in self.callbacks:
                    callback.on_step(self, st.step, loss)
                if st.step % b.eval_every == 0 or st.step == b.steps:
                    self._eval_point()
                if st.step % every == 0 or st.step == b.steps or st.stopped_early:
                    self._save()
                asked = cfg.stop_after is not None and st.step >= cfg.stop_after
                # the processes of a job stop together, after the same step
                if any_process(asked or stop.requested, self.dist, self.device):
                    interrupted = st.step < b.steps and not st.stopped_early
                    if interrupted:
                        self._save()
                    break
        bar.close()
        return self._finish(interrupted)

    def _finish(self, interrupted: bool) -> RunResult:
        st = self.state
        if not interrupted and st.history:
            self.model.load_state_dict(self.best_state)
        valid = self._evaluate("valid") if not interrupted else {}
        test = self._evaluate("test") if not interrupted else {}
        score = test.get(self.task.primary, float("nan"))
        result = RunResult(
            task=self.task.name,
            model=self.model_name,
            out=str(self.out),
            params=count_parameters(self.model),
            steps=st.step,
            seconds=round(st.elapsed, 2),
            primary=self.task.primary,
            valid=valid,
            test=test,
            target=self.task.target,
            reached=None if interrupted else self.task.reached(score),
            stopped_early=st.stopped_early,
            interrupted=interrupted,
            best_step=st.best_step,
            config={
                **self.signature(),
                "model_config": self.resolved_model_config,
                "model_overrides": self.signature()["model_config"],
                "backend": self.backend_used(),
                "backend_requested": self.config.backend,
                "kernels": self.kernels,
                "arguments": run_arguments(self.config),
                "device": str(self.device),
                "world_size": self.dist.world,
                "threads": torch.get_num_threads(),
                **(
                    {"batch_size_asked": self.batch_size_asked}
                    if self.batch_size_asked is not None
                    else {}
                ),
            },
            record={
                "argv": self.argv,
                "started": self.started,
                "ended": iso_now(),
                "resumed_at_step": self.resumed_at,
                **environment(device=self.device, world_size=self.dist.world),
            },
        )
        if self.dist.main and not interrupted:
            from rnnkit.tasks.report import run_title, write_run_report

            ckpt.atomic_write_text(
                self.out / "final.json", json.dumps(asdict(result), indent=1) + "\n"
            )
            self._save_reusable()
            if self.config.plot and st.history:
                from rnnkit.tasks.plots import plot_curves

                plot_curves(
                    st.history,
                    self.task.primary,
                    self.out / "curves.png",
                    title=run_title(result),
                    target=self.task.target,
                    chance=self.task.chance_level(),
                    best_step=st.best_step or None,
                )
            write_run_report(self.out, result)
        return result

    def _save_reusable(self) -> None:
        """The best model for inference: ``model.safetensors`` and ``config.json``
        (:mod:`rnnkit.tasks.reuse`)."""
        from rnnkit.tasks.reuse import save_reusable

        save_reusable(
            self.out,
            model=self.model,
            state=self.best_state,
            task=self.task,
            model_name=self.model_name,
            model_kwargs=self.model_kwargs,
            backend=self.config.backend,
            seed=self.config.seed,
            info=self.data.info,
            best_step=self.state.best_step,
            best_score=self.state.best_score,
            custom_data=self.custom_data,
        )


class _StopOnSignal:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a request to stop after the current step.

    The run then saves a checkpoint at a step boundary and can be resumed; a second signal
    interrupts at once. SIGTERM is what ``kill``, batch schedulers (before their SIGKILL) and
    container runtimes send: without this handler it ended the process mid-step, losing the
    steps since the last checkpoint. Only installed in the main thread, and never over a signal
    the process inherited as ignored (``SIG_IGN``: ``cmd &`` in a script, ``nohup``), which
    stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.announce = announce  # only rank 0 of a multi-process job prints
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            _log.warning(
                "%s: stopping after this step and saving a checkpoint (%s again to abort)...",
                name,
                name,
            )

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def train(
    config: TrainConfig | None = None,
    *,
    argv: Sequence[str] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    **kwargs: Any,
) -> RunResult:
    """Train with ``config`` (or :class:`TrainConfig` keywords) and return the result;
    ``argv``: the command line to record in ``final.json``, ``callbacks``: see
    :mod:`rnnkit.tasks.callbacks` (both: :class:`Trainer`)."""
    config = replace(config, **kwargs) if config is not None else TrainConfig(**kwargs)
    threads = torch.get_num_threads()
    try:
        return Trainer(config, argv=argv, callbacks=callbacks).run()
    finally:  # also when the trainer fails while it is set up
        torch.set_num_threads(threads)
