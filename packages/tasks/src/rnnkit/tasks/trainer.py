"""The trainer: seeded, resumable training of a model on a task, with results on disk.

A run directory holds:

- ``checkpoint.safetensors`` (+ ``checkpoint.json``): everything needed to resume: model,
  best model so far, optimiser, RNG states, step, early-stopping state and history;
- ``metrics.jsonl``: one JSON record per evaluation (step, train loss, lr, valid metrics);
- ``final.json``: the configuration and the final valid/test metrics;
- ``curves.png``: learning curves.

Determinism: the batch of step ``s`` is a pure function of ``(seed, s)`` and every RNG state is
checkpointed, so a run stopped at any step and resumed ends with the same parameters and
metrics as an uninterrupted one. Under ``torchrun`` each process takes a shard of every global
batch; losses are summed and divided by the global element count and gradients are summed
across processes, so the update equals the single-process one on the same global batch.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rnnkit.tasks import checkpoint as ckpt
from rnnkit.tasks.base import Budget, Split, Task, TaskData
from rnnkit.tasks.registry import get_task

DEFAULT_TASK = "digits_rows"


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
        out: run directory (default ``runs/<task>-<model>-<time>``).
        resume: continue the run in ``out`` from its checkpoint.
        checkpoint_every: steps between checkpoints (default: at every evaluation).
        progress: progress bar (``None``: only when stderr is a terminal).
        plot: write ``curves.png``.
        verbose: print evaluation lines and the final table.
        stop_after: stop after this step as if interrupted (checkpoint written; for tests).
        threads: torch CPU threads during the run (default 1 on CPU: the small per-step
            matrix products of recurrent models gain nothing from more, and lose a lot when
            other processes load the cores).
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

    @property
    def score(self) -> float:
        """The test value of the task's primary metric."""
        return self.test.get(self.primary, float("nan"))


# --- distributed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (world 1 without one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, nccl on CUDA. Without ``WORLD_SIZE > 1`` nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def _all_reduce_(t: Tensor, d: Dist) -> Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# --- helpers -------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA (this process's ``LOCAL_RANK``) if available, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return dev


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


def forward(model: nn.Module, x: Tensor, backend: str) -> Tensor:
    """``model(x, backend=backend)`` for rnnkit models, ``model(x)`` for others."""
    try:
        out: Tensor = model(x, backend=backend)
    except TypeError as exc:
        if "backend" not in str(exc):
            raise
        out = model(x)
    return out


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
    metrics["loss"] = loss_sum / max(count, 1.0)
    return metrics


class _Progress:
    """tqdm when wanted and available, else nothing; ``write`` always prints."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            try:
                tqdm = importlib.import_module("tqdm.auto").tqdm
                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    unit="step",
                    dynamic_ncols=True,
                    file=sys.stderr,
                    leave=False,
                )
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(metrics: Mapping[str, float], keys: list[str] | None = None) -> str:
    keys = keys or list(metrics)
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


# --- the run -------------------------------------------------------------------------------------


class Trainer:
    """One training run; :meth:`run` trains and returns a :class:`RunResult`.

    ``data`` replaces the task's own splits (smaller data in tests, or your own data);
    ``model`` replaces the task's model (to fine-tune one you built or converted yourself, e.g.
    a crossbar-mapped copy; it is moved to the run's device and trained in place).
    Construction resolves the configuration, builds data and model and, with ``resume``,
    loads and checks the checkpoint: every error (unknown names, a corrupt or mismatched
    checkpoint) is raised before anything in the run directory is changed.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        data: TaskData | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.task = get_task(config.task)
        budget = self.task.budget
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
        self.budget: Budget = replace(budget, **overrides)
        b = self.budget
        if b.steps < 1 or b.batch_size < 1 or b.eval_every < 1:
            raise ValueError("steps, batch size and eval_every must be positive")
        lr_factor(b.schedule, 1, 1)  # validates the name
        self.config = config
        self.model_name = config.model or self.task.model
        self.model_config = dict(config.model_config)
        if config.cell:
            self.model_config["cell"] = config.cell
        self.device = resolve_device(config.device)
        threads = config.threads or (1 if self.device.type == "cpu" else None)
        if threads:
            torch.set_num_threads(threads)
        self.dist = init_distributed(self.device)
        set_determinism(config.seed, config.deterministic)
        self.data: TaskData = data if data is not None else self.task.data(config.seed)
        if model is None:
            model = self.task.build_model(self.model_name, **self.model_config)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=b.lr, weight_decay=b.weight_decay
        )
        self.use_amp = bool(
            config.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.out = Path(config.out) if config.out else self._default_out()
        # training state (checkpointed)
        self.step = 0
        self.best_score: float | None = None
        self.best_step = 0
        self.bad_evals = 0
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.history: list[dict[str, Any]] = []
        self.loss_sum = 0.0
        self.loss_count = 0.0
        self.elapsed = 0.0
        self.stopped_early = False
        self._perm_cache: dict[int, Tensor] = {}
        path = self.out / ckpt.CHECKPOINT
        if config.resume:
            if config.out is None:
                raise ValueError("--resume needs --out DIR (the run directory to continue)")
            self._load(path)
        elif path.exists():
            raise ValueError(
                f"{self.out} already holds a run (checkpoint.safetensors); "
                "pass --resume to continue it or choose another --out"
            )

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

    def _default_out(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
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
        tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        opt_t, opt_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors.update(opt_t)
        tensors.update(ckpt.rng_tensors())
        meta = {
            "signature": self.signature(),
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_early": self.stopped_early,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "elapsed": self.elapsed,
            "history": self.history,
            "optimizer": opt_meta,
            "python_random": _jsonable_random_state(),
        }
        ckpt.save_checkpoint(self.out / ckpt.CHECKPOINT, tensors, meta)

    def _load(self, path: Path) -> None:
        tensors, meta = ckpt.load_checkpoint(path)
        want, have = self.signature(), meta.get("signature", {})
        if want != have:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            details = "; ".join(
                f"{k}: checkpoint {have.get(k)!r}, now {want.get(k)!r}" for k in diff
            )
            raise ckpt.CheckpointError(
                f"checkpoint {path} belongs to a different run ({details}); "
                "resume with the same arguments or choose another --out"
            )
        try:
            model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
            best_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            self.model.load_state_dict(model_sd, strict=True)
            probe = copy.deepcopy(self.model)
            probe.load_state_dict(best_sd, strict=True)
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))
            self.step = int(meta["step"])
            self.best_score = meta["best_score"]
            self.best_step = int(meta["best_step"])
            self.bad_evals = int(meta["bad_evals"])
            self.stopped_early = bool(meta["stopped_early"])
            self.loss_sum = float(meta["loss_sum"])
            self.loss_count = float(meta["loss_count"])
            self.elapsed = float(meta["elapsed"])
            self.history = list(meta["history"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not fit this model: {exc}"
            ) from None
        self.best_state = {k: v.to(self.device) for k, v in best_sd.items()}
        ckpt.restore_rng(tensors)
        _restore_random_state(meta.get("python_random"))

    # -- training ---------------------------------------------------------------------------------

    def _train_step(self) -> float:
        b, d = self.budget, self.dist
        self.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = b.lr * lr_factor(b.schedule, self.step, b.steps)
        idx = batch_indices(
            len(self.data.train), b.batch_size, self.step, self.config.seed, self._perm_cache
        )
        shard = idx.tensor_split(d.world)[d.rank]
        x = self.data.train.inputs[shard].to(self.device)
        y = self.data.train.targets[shard].to(self.device)
        self.model.train()
        with self._autocast():
            out = forward(self.model, x, self.config.backend)
        loss_sum, count = self.task.loss(out, y)
        total = _all_reduce_(count.detach().clone(), d).clamp_min(1.0)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss_sum / total)
        if d.world > 1:
            for p in self.model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _all_reduce_(p.grad, d)
        if b.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), b.clip)
        self.optimizer.step()
        summed = _all_reduce_(torch.stack([loss_sum.detach().float(), count.float()]), d)
        self.loss_sum += float(summed[0])
        self.loss_count += float(summed[1])
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

    def _eval_point(self, bar: _Progress) -> None:
        valid = self._evaluate("valid")
        score = valid[self.task.primary]
        better = self.best_score is None or (
            score > self.best_score if self.task.higher_is_better else score < self.best_score
        )
        if better and not math.isnan(score):
            self.best_score, self.best_step, self.bad_evals = score, self.step, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_evals += 1
        record = {
            "step": self.step,
            "train_loss": self.loss_sum / max(self.loss_count, 1.0),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(self.elapsed, 3),
            "valid": valid,
        }
        self.loss_sum = self.loss_count = 0.0
        self.history.append(record)
        if self.dist.main:
            with (self.out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.verbose and self.dist.main:
            bar.write(
                f"step {self.step:>6}/{self.budget.steps}  "
                f"train loss {record['train_loss']:.4f}  valid {_fmt(valid)}"
            )
        if self.budget.patience and self.bad_evals >= self.budget.patience:
            self.stopped_early = True

    def _prepare_dir(self) -> None:
        """Create the run directory; on resume, rewrite metrics.jsonl up to the checkpoint."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        ckpt.atomic_write_text(self.out / "metrics.jsonl", lines)

    def iter_steps(self) -> Iterator[int]:
        """Steps still to run."""
        while self.step < self.budget.steps and not self.stopped_early:
            yield self.step + 1

    def run(self) -> RunResult:
        """Train (or continue), evaluate on valid and test, write the results."""
        cfg, b = self.config, self.budget
        self._prepare_dir()
        every = cfg.checkpoint_every or b.eval_every
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        bar = _Progress(b.steps, self.step, bool(show and cfg.verbose and self.dist.main))
        if cfg.verbose and self.dist.main:
            what = self.model_name + (
                f" ({self.model_config['cell']})" if "cell" in self.model_config else ""
            )
            bar.write(
                f"rnnkit train: task {self.task.name}, model {what}, "
                f"{count_parameters(self.model):,} parameters, {b.steps} steps of "
                f"batch {b.batch_size}, device {self.device}"
                + (f", {self.dist.world} processes" if self.dist.world > 1 else "")
                + (f", resuming at step {self.step}" if self.step else "")
            )
        interrupted = False
        t0 = time.perf_counter()
        base = self.elapsed
        with _StopOnSignal() as stop:
            for _ in self.iter_steps():
                loss = self._train_step()
                self.elapsed = base + time.perf_counter() - t0
                bar.update(loss=f"{loss:.4f}")
                if self.step % b.eval_every == 0 or self.step == b.steps:
                    self._eval_point(bar)
                if self.step % every == 0 or self.step == b.steps or self.stopped_early:
                    self._save()
                asked = cfg.stop_after is not None and self.step >= cfg.stop_after
                if asked or stop.requested:
                    interrupted = self.step < b.steps and not self.stopped_early
                    if interrupted:
                        self._save()
                    break
        bar.close()
        return self._finish(interrupted)

    def _finish(self, interrupted: bool) -> RunResult:
        if not interrupted and self.history:
            self.model.load_state_dict(self.best_state)
        valid = self._evaluate("valid") if not interrupted else {}
        test = self._evaluate("test") if not interrupted else {}
        score = test.get(self.task.primary, float("nan"))
        result = RunResult(
            task=self.task.name,
            model=self.model_name,
            out=str(self.out),
            params=count_parameters(self.model),
            steps=self.step,
            seconds=round(self.elapsed, 2),
            primary=self.task.primary,
            valid=valid,
            test=test,
            target=self.task.target,
            reached=None if interrupted else self.task.reached(score),
            stopped_early=self.stopped_early,
            interrupted=interrupted,
            best_step=self.best_step,
            config={
                **self.signature(),
                "backend": self.config.backend,
                "device": str(self.device),
                "world_size": self.dist.world,
            },
        )
        if self.dist.main and not interrupted:
            ckpt.atomic_write_text(
                self.out / "final.json", json.dumps(asdict(result), indent=1) + "\n"
            )
            if self.config.plot and self.history:
                from rnnkit.tasks.plots import plot_curves

                plot_curves(
                    self.history,
                    self.task.primary,
                    self.out / "curves.png",
                    title=f"{self.task.name} / {self.model_name}",
                )
        return result


class _StopOnSignal:
    """Turn the first Ctrl-C into a request to stop after the current step.

    The run then saves a checkpoint at a step boundary and can be resumed; a second Ctrl-C
    interrupts at once. Only installed in the main thread.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(config: TrainConfig | None = None, **kwargs: Any) -> RunResult:
    """Train with ``config`` (or :class:`TrainConfig` keywords) and return the result."""
    config = replace(config, **kwargs) if config is not None else TrainConfig(**kwargs)
    return Trainer(config).run()


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_random_state(state: Any) -> None:
    if isinstance(state, list) and len(state) == 3:
        random.setstate((state[0], tuple(state[1]), state[2]))
