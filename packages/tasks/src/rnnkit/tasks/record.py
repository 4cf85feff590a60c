"""The run record: what ran, where, with which software, written into ``final.json``.

A result is only worth keeping if it can be traced back to what produced it. The trainer adds
to ``final.json`` (and ``rnnkit compare`` to ``compare.json``) a ``record`` holding:

- ``argv``: the command line (``None`` for a run started from Python without one);
- ``started`` / ``ended``: ISO 8601 UTC times of this invocation (a resumed run: of the
  resumption);
- ``versions``: every installed ``rnnkit*`` distribution and torch (:func:`versions`);
- ``git``: the commit (and whether the work tree had changes) of the rnnkit checkout the code
  was imported from, ``None`` for an installed wheel or without git (:func:`git_commit`);
- ``python``, ``platform``, ``device``, ``threads`` and ``world_size``.

It also resolves what a configuration leaves implicit: :func:`resolved_model_config` fills in
the defaults the model builder applied (the cell, every width), and :func:`probe_kernels` asks
dispatch which kernel runs each cell of a model for a given input, with and without gradients
(training and evaluation can differ), so that ``final.json`` names ``"fused"`` where the
command line said ``"auto"``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "command_line",
    "environment",
    "git_commit",
    "iso_now",
    "jsonable",
    "probe_kernels",
    "resolved_model_config",
    "stored_arguments",
    "versions",
]


def iso_now() -> str:
    """The current time in ISO 8601, UTC, to the second (``2025-01-31T23:59:59Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def jsonable(value: Any) -> Any:
    """``value`` made JSON-serialisable (tuples to lists, anything unknown to its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def versions() -> dict[str, str]:
    """The version of every installed distribution whose name starts with ``rnnkit``, and of
    torch, by distribution name (sorted)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if not name:
            continue
        key = name.lower().replace("_", "-")
        if key.startswith("rnnkit"):
            found[key] = dist.version
    found["torch"] = torch.__version__
    return dict(sorted(found.items()))


def git_commit(path: Path | None = None) -> dict[str, Any] | None:
    """The rnnkit checkout ``path`` (default: this module's folder) belongs to, or ``None``.

    Returns ``{"commit": <40 hex digits>, "dirty": <uncommitted changes>}`` when ``path`` is
    inside a git work tree that holds rnnkit's ``packages/tasks`` (an editable install from a
    checkout); ``None`` when it is not (an installed wheel, which may sit inside some other
    repository's virtual environment), when git is missing, or when git fails.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(where), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):  # no git, or it hung
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or not (Path(top) / "packages" / "tasks").is_dir():
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment(*, device: torch.device | str, world_size: int = 1) -> dict[str, Any]:
    """The software and machine a run used: versions, git, Python, platform, device, threads."""
    return {
        "versions": versions(),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "world_size": world_size,
    }


def resolved_model_config(
    builder: Callable[..., Any], given: Mapping[str, Any], model: nn.Module
) -> dict[str, Any]:
    """The keywords a model was built with, the defaults it fell back to filled in.

    ``given`` are the keywords the builder was called with (the task's ``io`` and model
    configuration, and the user's overrides). A keyword the builder did not get takes, in this
    order: the attribute of the same name the built model keeps (a builder may have set it, as
    ``sequence_classifier`` sets ``pooling``), else the default of the builder's signature,
    else that of the model class's constructor (builders that pass ``**cfg`` through). Only
    JSON scalars (and lists of them) are filled in; the result is JSON-serialisable.
    """
    out: dict[str, Any] = dict(given)
    signatures = []
    for fn in (builder, type(model).__init__):
        try:
            signatures.append(inspect.signature(fn))
        except (TypeError, ValueError):  # builtins and C extensions may have none
            continue
    for sig in signatures:
        for name, p in sig.parameters.items():
            if name in out or name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            kept = getattr(model, name, inspect.Parameter.empty)
            value = kept if _scalar(kept) else p.default
            if value is not inspect.Parameter.empty and _scalar(value):
                out[name] = value
    return dict(sorted(jsonable(out).items()))


def _scalar(v: Any) -> bool:
    if v is None or isinstance(v, bool | int | float | str):
        return True
    return isinstance(v, list | tuple) and all(_scalar(x) for x in v)


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Restore torch's (CPU and CUDA) and Python's RNG states afterwards: a probe must not
    shift the random numbers of the run (an analog cell draws read noise at every forward)."""
    py_state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)


def probe_kernels(
    model: nn.Module,
    run_forward: Callable[[], object],
    *,
    backend: str,
    grad_modes: Sequence[tuple[str, bool]] = (("train", True), ("eval", False)),
) -> list[dict[str, Any]]:
    """Which kernel dispatch picks for every cell of ``model``, per gradient mode.

    ``run_forward()`` runs the model once on a representative input (the trainer: a training
    batch, with its autocast); it is called once per entry of ``grad_modes`` (``(label,
    gradients wanted)``) with the model in eval mode (no dropout; it is put back as it was) and
    every RNG state restored afterwards. A forward pre-hook on each
    :class:`~rnnkit.core.cell.Cell` asks :func:`rnnkit.core.dispatch.select` for the call the
    cell receives, so an unknown or unusable ``backend`` raises here, before a run writes
    anything.

    Returns one record per cell module, in module order: ``module`` (its name in the model),
    ``cell`` (its ``kind``), ``class``, ``input_size``, ``hidden_size``, ``output_size`` and,
    per label, the backend name that ran (``{"train": "fused", "eval": "fused"}``).
    Models without rnnkit cells give ``[]``.
    """
    from rnnkit.core.cell import Cell

    cells = [(n, m) for n, m in model.named_modules() if isinstance(m, Cell)]
    records: dict[str, dict[str, Any]] = {
        name: {
            "module": name,
            "cell": cell.kind or type(cell).__name__,
            "class": type(cell).__name__,
            "input_size": int(cell.input_size),
            "hidden_size": int(cell.hidden_size),
            "output_size": int(cell.output_size),
        }
        for name, cell in cells
    }
    if not cells:
        return []
    label = ""

    def hook(name: str) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not args or label in records[name]:
                return  # the first call of this mode counts
            records[name][label] = _selected(module, args, kwargs, backend)

        return pre

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in cells]
    was_training = model.training
    try:
        model.eval()
        for label, grad in grad_modes:  # noqa: B007 (read by the hooks)
            with _rng_untouched(), torch.set_grad_enabled(grad):
                run_forward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(records.values())


def _selected(cell: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], backend: str) -> str:
    """The backend name dispatch selects for ``cell(*args, **kwargs)``."""
    from rnnkit.core.dispatch import select
    from rnnkit.core.kernel import KernelCall

    x: Tensor = args[0]
    state = args[1] if len(args) > 1 else kwargs.get("state")
    resets = kwargs.get("resets")
    chosen = kwargs.get("backend", backend)
    params = list(cell.parameters())
    if (
        x.is_floating_point()
        and torch.amp.is_autocast_available(x.device.type)
        and torch.is_autocast_enabled(x.device.type)
        and params
        and params[0].dtype == torch.float32
    ):
        # under autocast the cell runs in float32 with autocast off (Cell.forward)
        x = x.float()
        state = None if state is None else type(state)(*(s.float() for s in state))
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or any(p.requires_grad for p in params)
        or (state is not None and any(s.requires_grad for s in state))
    )
    call = KernelCall(cell, x, None if state is None else tuple(state), resets, needs_grad)
    return select(call, chosen).backend


def command_line(argv: Sequence[str] | None) -> list[str] | None:
    """``argv`` as a list, or this process's ``sys.argv`` when ``None`` and it names rnnkit."""
    if argv is not None:
        return [str(a) for a in argv]
    if sys.argv and Path(sys.argv[0]).name in ("rnnkit", "rnnkit.exe"):
        return list(sys.argv)
    return None


def stored_arguments(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arguments the run in ``run_dir`` was started with, from its checkpoint.

    Returns ``(asked, resolved)``: the run-defining :class:`~rnnkit.tasks.trainer.TrainConfig`
    fields as they were given (``None``: the task's default), and the values they resolved to
    (``task``, ``model``, ``seed``, ``model_config`` and the budget's fields, from the
    checkpoint's signature). A checkpoint written before the arguments were stored gives the
    resolved values for both.

    Raises:
        CheckpointError: no readable rnnkit checkpoint in ``run_dir``, or no signature in it.
    """
    from rnnkit.tasks.checkpoint import CHECKPOINT, CheckpointError, read_checkpoint

    path = Path(run_dir) / CHECKPOINT
    _, meta = read_checkpoint(path)
    sig = meta.get("signature")
    if not isinstance(sig, dict):
        raise CheckpointError(
            f"checkpoint {path}: field 'signature' is missing; the file was edited or damaged"
        )
    budget: dict[str, Any] = sig["budget"] if isinstance(sig.get("budget"), dict) else {}
    resolved: dict[str, Any] = {
        "task": sig.get("task"),
        "model": sig.get("model"),
        "seed": sig.get("seed"),
        "model_config": dict(sig.get("model_config") or {}),
        **budget,
    }
    asked = meta.get("arguments")
    if not isinstance(asked, dict):
        asked = dict(resolved)
    return dict(asked), resolved
