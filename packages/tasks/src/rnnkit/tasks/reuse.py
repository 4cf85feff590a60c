"""A finished run for inference: ``model.safetensors`` + ``config.json``, and :func:`load_run`.

Every finished ``rnnkit train`` run (and :class:`~rnnkit.tasks.Trainer` run) writes, beside its
checkpoint:

- ``model.safetensors``: the best model's state dict under the model's own parameter names
  (``rnn.cells.0.weight_ih``, ...), loadable with ``safetensors.torch.load_file`` and
  ``model.load_state_dict``;
- ``config.json``: everything needed to rebuild and use that model without the training
  code: the task, its kind and primary metric, the registered model name and the exact
  keywords it was built with (``model_kwargs``: ``create_model(model, **model_kwargs)``
  rebuilds it), the cell and widths that ran (``architecture``), the backend, the seed, the
  best step and score, the task's data facts (``task_info``: a language model's vocabulary,
  a classifier's label names, a series' scaling), a SHA-256 of ``model.safetensors`` and
  the plugin and distribution each of the task, model and cell came from (``plugins``).

Both are written atomically (temporary file and rename, as the checkpoint). :func:`load_run`
reads them back: the model rebuilt, its weights checked against the file's checksum, the
parameter names and shapes, in eval mode. Errors name the file and what is wrong
(:class:`RunLoadError`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError, UnknownNameError
from rnnkit.core.validation import check_device
from rnnkit.tasks.base import Task
from rnnkit.tasks.checkpoint import atomic_write_bytes, atomic_write_text

#: the weights file of a run
WEIGHTS = "model.safetensors"
#: the configuration file of a run
CONFIG = "config.json"
#: ``config.json``'s ``format``
FORMAT = "rnnkit-run/1"


class RunLoadError(RnnkitError, ValueError):
    """A run directory whose ``config.json`` or ``model.safetensors`` cannot be used; the
    message names the file and what is wrong."""


def _jsonable(value: Any) -> Any:
    """``value`` as JSON data (tuples become lists), or raise ``TypeError``/``ValueError``."""
    return json.loads(json.dumps(value, allow_nan=True))


def _task_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a task's ``info`` that JSON can hold (the rest are left out)."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        try:
            out[str(key)] = _jsonable(value)
        except (TypeError, ValueError):
            continue
    return out


def cell_name(model: nn.Module) -> str | None:
    """The registered name of the first cell in ``model`` (its class name if unregistered),
    ``None`` when it holds no :class:`~rnnkit.core.cell.Cell`."""
    from rnnkit.core.cell import Cell
    from rnnkit.core.plugins import get_host

    for m in model.modules():
        if isinstance(m, Cell):
            for entry in get_host().cells:
                if getattr(entry.obj, "cls", None) is type(m):
                    return entry.name
            return type(m).__name__
    return None


def architecture(model: nn.Module) -> dict[str, Any]:
    """What was built, read off the model: class, cell, widths, depth, parameter count."""
    from rnnkit.core.cell import Cell
    from rnnkit.core.recurrent import Recurrent

    arch: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    cell = cell_name(model)
    if cell is not None:
        arch["cell"] = cell
    stack = next((m for m in model.modules() if isinstance(m, Recurrent)), None)
    if stack is not None:
        arch.update(
            hidden_size=stack.hidden_size,
            num_layers=stack.num_layers,
            bidirectional=stack.num_directions == 2,
            dropout=stack.dropout,
        )
    else:
        cells = [m for m in model.modules() if isinstance(m, Cell)]
        if cells:
            arch.update(hidden_size=cells[0].hidden_size, num_cells=len(cells))
    arch["parameters"] = sum(p.numel() for p in model.parameters())
    return arch


#: config.json's ``plugins``: which registry holds each recorded name.
_REGISTRIES = (("task", "tasks"), ("model", "models"), ("cell", "cells"))


def _origins(names: Mapping[str, str | None]) -> dict[str, dict[str, str | None]]:
    """Where the run's task, model and cell were registered from (plugin, distribution,
    version), so that a machine without that plugin can be told which one to install."""
    from rnnkit.core.plugins import get_host

    host = get_host()
    out: dict[str, dict[str, str | None]] = {}
    for what, attr in _REGISTRIES:
        name = names.get(what)
        registry = getattr(host, attr)
        if name is None or name not in registry:
            continue
        origin = registry.get(name).origin
        out[what] = {
            "name": name,
            "plugin": origin.plugin,
            "distribution": origin.distribution,
            "version": origin.version,
        }
    return out


def _install_hint(config: Mapping[str, Any]) -> str:
    """``" The run's cell 'x' came from rnnkit-x 0.1.0 (pip install rnnkit-x)."`` for the names
    recorded in ``plugins`` that nothing registers here; ``""`` when there is none."""
    from rnnkit.core.plugins import get_host

    recorded = config.get("plugins")
    if not isinstance(recorded, Mapping):
        return ""  # a run written before config.json recorded its plugins
    host = get_host()
    notes, dists = [], []
    for what, attr in _REGISTRIES:
        rec = recorded.get(what)
        if not isinstance(rec, Mapping) or not rec.get("distribution"):
            continue
        if rec.get("name") in getattr(host, attr):
            continue
        dist = str(rec["distribution"])
        notes.append(f"{what} {rec.get('name')!r} came from {dist} {rec.get('version') or '?'}")
        if dist not in dists:
            dists.append(dist)
    if not notes:
        return ""
    return f" The run's {', '.join(notes)} (pip install {' '.join(dists)})."


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"torch": str(torch.__version__)}
    for dist in ("rnnkit-core", "rnnkit-models", "rnnkit-tasks"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def save_reusable(
    out: Path,
    *,
    model: nn.Module,
    state: Mapping[str, Tensor],
    task: Task,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None,
    backend: str,
    seed: int,
    info: Mapping[str, Any],
    best_step: int,
    best_score: float | None,
    custom_data: bool = False,
) -> None:
    """Write ``out/model.safetensors`` (``state``) and ``out/config.json``, atomically.

    Args:
        out: the run directory.
        model: the model ``state`` belongs to (its cell and widths go to ``architecture``).
        state: the weights to save (the best model's state dict).
        task: the run's task.
        model_name: registered model name.
        model_kwargs: the keywords it was built with (``None``: a model passed in by the
            caller, which ``config.json`` cannot rebuild).
        backend: the backend the run used (``"auto"``, ``"reference"``, ...).
        seed: the run's seed (it fixes the data splits).
        info: the task data's ``info`` (vocabulary, labels, scaling).
        best_step, best_score: when the saved weights were best, and their valid score.
        custom_data: the run trained on data passed in by the caller, not the task's.
    """
    from safetensors.torch import save

    # clone: tied or shared tensors cannot be saved as views of one another
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    blob = save(flat, metadata={"format": "pt"})
    kwargs: dict[str, Any] | None = None
    if model_kwargs is not None:
        try:
            kwargs = _jsonable(dict(model_kwargs))
        except (TypeError, ValueError):
            kwargs = None  # not JSON: the model cannot be rebuilt from config.json
    score = None if best_score is None or not math.isfinite(best_score) else float(best_score)
    cell = cell_name(model)
    config: dict[str, Any] = {
        "format": FORMAT,
        "task": task.name,
        "kind": task.kind,
        "primary": task.primary,
        "higher_is_better": task.higher_is_better,
        "model": model_name,
        "model_kwargs": kwargs,
        "cell": cell,
        "plugins": _origins({"task": task.name, "model": model_name, "cell": cell}),
        "architecture": architecture(model),
        "backend": backend,
        "seed": seed,
        "best_step": best_step,
        "best_valid": score,
        "custom_data": custom_data,
        "io": _task_info(task.io),
        "task_info": _task_info(info),
        "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(blob).hexdigest()},
        "versions": _versions(),
    }
    # the weights first: a crash between the two leaves a config.json whose checksum refuses
    # the new weights, never a config.json that describes weights not yet written
    atomic_write_bytes(out / WEIGHTS, blob)
    atomic_write_text(out / CONFIG, json.dumps(config, indent=1) + "\n")


@dataclass(frozen=True)
class LoadedRun:
    """A run loaded for inference (:func:`load_run`).

    Attributes:
        model: the best model, in eval mode, on the device asked for.
        config: the run's ``config.json`` (see the module docstring).
        task: the registered task the run trained on.
        path: the run directory.
    """

    model: nn.Module
    config: dict[str, Any]
    task: Task
    path: Path

    @property
    def info(self) -> dict[str, Any]:
        """The task data's facts the run recorded (``config["task_info"]``)."""
        info: dict[str, Any] = self.config.get("task_info") or {}
        return info

    @property
    def backend(self) -> str:
        """The backend the run trained with (``config["backend"]``)."""
        return str(self.config.get("backend") or "auto")

    @property
    def seed(self) -> int:
        """The run's seed (it fixes the task's data splits)."""
        return int(self.config.get("seed") or 0)


#: what each kind of run is for: (its description, the CLI commands that fit it)
USES: dict[str, tuple[str, tuple[str, ...]]] = {
    "language_model": ("a language model", ("eval", "generate")),
    "classify": ("a classification task (kind classify)", ("eval", "predict")),
    "regress": ("a forecasting/regression task (kind regress)", ("eval", "predict")),
    "tag": ("a tagging task (kind tag)", ("eval",)),
    "multilabel": ("a multi-label tagging task (kind multilabel)", ("eval",)),
}


def run_use(config: Mapping[str, Any]) -> str:
    """The key of :data:`USES` for a run: ``"language_model"`` for a ``tag`` task whose
    inputs and outputs are the same vocabulary (``task_info["vocab"]``, a string of its
    symbols), else the task's kind."""
    kind = str(config.get("kind", ""))
    info = config.get("task_info") or {}
    io = config.get("io") or {}
    vocab = info.get("vocab") if isinstance(info, dict) else None
    if (
        kind == "tag"
        and isinstance(vocab, str)
        and io.get("vocab_size") == io.get("output_size") == len(vocab)
    ):
        return "language_model"
    return kind


def require_use(config: Mapping[str, Any], command: str) -> str:
    """:func:`run_use` if ``rnnkit command`` fits the run, else a one-line ``RunLoadError``
    naming the task, its kind and the commands that fit."""
    use = run_use(config)
    what, commands = USES.get(use, (f"a task of kind {config.get('kind')!r}", ("eval",)))
    if command not in commands:
        fits = " or ".join(f"rnnkit {c}" for c in commands)
        raise RunLoadError(
            f"rnnkit {command} does not apply to task {config.get('task')!r}: it is {what}; "
            f"use {fits}"
        )
    return use


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of ``run_dir``, checked for the fields :func:`load_run` needs."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunLoadError(f"no run directory at {run_dir}")
    if not path.is_file():
        if (Path(run_dir) / "compare.json").is_file():
            # `rnnkit compare --out DIR` keeps one run per model and seed below DIR
            runs = sorted(str(p.parent) for p in Path(run_dir).glob(f"*/seed-*/{CONFIG}"))
            which = (
                f"its finished runs: {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''}"
                if runs
                else "none of them has finished"
            )
            raise RunLoadError(
                f"{path} is missing: {run_dir} is a comparison (rnnkit compare), not a run; "
                f"pass one of its runs, DIR/<model>/seed-<seed> ({which})"
            )
        raise RunLoadError(
            f"{path} is missing: a run writes it when it finishes (an interrupted run has "
            "none yet: finish it with rnnkit train --resume --out DIR)"
        )
    try:
        config = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunLoadError(f"{path} is damaged: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise RunLoadError(f"{path} is damaged: a JSON object expected")
    if config.get("format") != FORMAT:
        raise RunLoadError(
            f"{path}: format {config.get('format')!r} is not {FORMAT!r} (not an rnnkit run "
            "configuration, or one from a newer rnnkit)"
        )
    for key in ("task", "model", "backend"):
        if not isinstance(config.get(key), str):
            raise RunLoadError(f"{path}: field {key!r} is {config.get(key)!r}; a name expected")
    kwargs = config.get("model_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise RunLoadError(f"{path}: field 'model_kwargs' is {kwargs!r}; an object expected")
    if not isinstance(config.get("task_info", {}), dict):
        raise RunLoadError(f"{path}: field 'task_info' must be an object")
    return config


def _read_weights(path: Path, expected_sha256: object) -> dict[str, Tensor]:
    from safetensors.torch import load

    if not path.is_file():
        raise RunLoadError(f"{path} is missing: the run's weights are not there")
    blob = path.read_bytes()
    if isinstance(expected_sha256, str) and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise RunLoadError(
            f"{path} does not match the checksum in {CONFIG}: the file was damaged or replaced "
            f"(if you replaced it on purpose, delete the 'weights' field of {CONFIG})"
        )
    try:
        tensors: dict[str, Tensor] = load(blob)
    except Exception as exc:  # safetensors raises several types on damaged files
        raise RunLoadError(f"{path} is damaged or not a safetensors file ({exc})") from None
    return tensors


def _check_fits(path: Path, model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Same names and shapes as ``model.state_dict()``, or an error naming them."""
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if extra:
            parts.append(f"unexpected {', '.join(extra[:5])}" + (" ..." if len(extra) > 5 else ""))
        raise RunLoadError(
            f"{path} does not fit the model {CONFIG} describes: tensors {'; '.join(parts)}"
        )
    # in the model's order: the file's order is the writer's business
    wrong = [n for n, w in want.items() if tuple(tensors[n].shape) != tuple(w.shape)]
    if wrong:
        name = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise RunLoadError(
            f"{path} does not fit the model {CONFIG} describes: tensor {name!r} has shape "
            f"{tuple(tensors[name].shape)}, the model's has {tuple(want[name].shape)}{more}"
        )


def load_run(
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
) -> LoadedRun:
    """The best model of the finished run in ``run_dir``, ready for inference.

    Reads ``config.json``, rebuilds the model (``create_model(config["model"],
    **config["model_kwargs"])``), checks ``model.safetensors`` against its checksum and the
    model's parameter names and shapes, loads it and puts the model in eval mode on
    ``device``. Example::

        run = load_run("runs/charlm-char_lm-lstm-20250131-120000")
        logits = run.model(ids)          # ids: (B, T) int64 -> (B, T, vocab)

    Args:
        run_dir: a run directory written by ``rnnkit train`` (or :class:`~rnnkit.tasks.Trainer`).
        device: where the model goes (``"cpu"``, ``"cuda"``, ...).
        model: load the weights into this module instead of building one (for runs that
            trained a model passed to ``Trainer(model=...)``, which ``config.json`` cannot
            rebuild).

    Returns:
        a :class:`LoadedRun` (``model``, ``config``, ``task``, ``path``).

    Raises:
        RunLoadError: naming the file, when a file is missing or damaged, the task or model
            is not registered here (the plugin providing it is not installed), or the
            weights do not fit the model.
        ValueError: ``device`` is not a device this machine has (``"gpu"``, ``"cuda"``
            without CUDA, ...).
    """
    from rnnkit.models import create_model
    from rnnkit.tasks.registry import get_task

    target = check_device(device)  # before reading or building anything
    root = Path(run_dir)
    config = read_config(root)
    cfg_path = root / CONFIG
    try:
        task = get_task(config["task"])
    except UnknownNameError as exc:
        raise RunLoadError(
            f"{cfg_path}: the run's task is not registered here; is the plugin that provides "
            f"it installed?{_install_hint(config)} ({exc})"
        ) from None
    if model is None:
        kwargs = config.get("model_kwargs")
        if kwargs is None:
            raise RunLoadError(
                f"{cfg_path}: the run trained a model passed to Trainer(model=...), which "
                "config.json cannot rebuild; build it yourself and pass it: "
                "load_run(dir, model=...)"
            )
        try:
            model = create_model(config["model"], **kwargs)
        except UnknownNameError as exc:
            raise RunLoadError(
                f"{cfg_path}: the run's model is not registered here; is the plugin that "
                f"provides it (or its cell) installed?{_install_hint(config)} ({exc})"
            ) from None
        except (TypeError, ValueError) as exc:
            raise RunLoadError(
                f"{cfg_path}: building model {config['model']!r} with its model_kwargs "
                f"failed: {exc}"
            ) from None
    weights = root / WEIGHTS
    recorded = config.get("weights")
    tensors = _read_weights(weights, recorded.get("sha256") if isinstance(recorded, dict) else None)
    _check_fits(weights, model, tensors)
    model.load_state_dict(tensors, strict=True)
    model.to(target)
    model.eval()
    return LoadedRun(model=model, config=config, task=task, path=root)


__all__ = [
    "CONFIG",
    "FORMAT",
    "USES",
    "WEIGHTS",
    "LoadedRun",
    "RunLoadError",
    "architecture",
    "cell_name",
    "load_run",
    "read_config",
    "require_use",
    "run_use",
    "save_reusable",
]
