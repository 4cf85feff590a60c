"""Checkpoints: one safetensors file of tensors with the JSON metadata inside it.

Writing is atomic: the file is written to a temporary name in the same directory, flushed to
disk and moved over the old one with :func:`os.replace`, so a crash leaves either the old or
the new checkpoint, never half of one. A readable copy of the metadata is written beside it
(``checkpoint.json``), also atomically; the copy inside the tensor file is the one that counts.

A training run's checkpoint (:func:`save_run`, :func:`load_run`) holds the model, the best
model so far, the optimiser, every RNG state (torch CPU and CUDA, Python's ``random``), the
run's :class:`RunState` and the signature of the settings it was written with: restoring all
of it makes a resumed run continue bit for bit as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import os
import random
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError

FORMAT = "rnnkit-checkpoint/1"
CHECKPOINT = "checkpoint.safetensors"
META_KEY = "rnnkit"


class CheckpointError(RnnkitError, ValueError):
    """A checkpoint that cannot be read or does not belong to the run being resumed."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` to ``path`` atomically."""
    from safetensors.torch import save

    meta = {"format": FORMAT, **meta}
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(flat, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`; ``CheckpointError`` if unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types on damaged files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a safetensors file ({exc}); "
            "delete it to start over, or resume from a copy"
        ) from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnnkit checkpoint (format {FORMAT!r} expected)")
    return tensors, meta


# --- optimiser state <-> flat tensors + JSON ---------------------------------------------------


def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<name>``) and JSON."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, Tensor]:
    """The torch RNG states (CPU and every CUDA device) as tensors."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, Tensor]) -> None:
    """Restore what :func:`rng_tensors` saved."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    cuda = [tensors[k] for k in keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def python_random_state() -> list[Any]:
    """Python's ``random`` state as JSON (lists instead of tuples)."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_python_random(state: Any) -> None:
    """Restore what :func:`python_random_state` saved (anything else is ignored)."""
    if isinstance(state, list) and len(state) == 3:
        random.setstate((state[0], tuple(state[1]), state[2]))


# --- a training run ------------------------------------------------------------------------------


@dataclass
class RunState:
    """What a training run has done so far, besides its tensors.

    Attributes:
        step: optimiser steps done.
        best_score: best valid score of the primary metric so far (``None`` before the first
            evaluation); ``best_step``: the step it was reached at.
        bad_evals: evaluations since the last improvement (early stopping).
        stopped_early: whether early stopping ended the run.
        loss_sum, loss_count: training loss summed since the last evaluation, and its count.
        elapsed: training seconds so far (over every resumption).
        history: one record per evaluation (as in ``metrics.jsonl``).
    """

    step: int = 0
    best_score: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0
    loss_count: float = 0.0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunState:
        """Read back the fields :func:`save_run` wrote; a missing or bad one raises."""
        return cls(
            step=int(meta["step"]),
            best_score=meta["best_score"],
            best_step=int(meta["best_step"]),
            bad_evals=int(meta["bad_evals"]),
            stopped_early=bool(meta["stopped_early"]),
            loss_sum=float(meta["loss_sum"]),
            loss_count=float(meta["loss_count"]),
            elapsed=float(meta["elapsed"]),
            history=list(meta["history"]),
        )


def save_run(
    path: Path,
    *,
    model: nn.Module,
    best_state: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    state: RunState,
    signature: Mapping[str, Any],
) -> None:
    """Checkpoint a training run at ``path`` (see the module docstring for what it holds)."""
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_t, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_t)
    tensors.update(rng_tensors())
    meta = {
        "signature": dict(signature),
        **asdict(state),
        "optimizer": opt_meta,
        "python_random": python_random_state(),
    }
    save_checkpoint(path, tensors, meta)


def load_run(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    signature: Mapping[str, Any],
    device: torch.device,
) -> tuple[RunState, dict[str, Tensor]]:
    """Resume the run checkpointed at ``path`` into ``model`` and ``optimizer``.

    Restores every RNG state and returns the run's state and the best model's state dict (on
    ``device``). Raises :class:`CheckpointError`, before changing the RNG states, when the
    file is unreadable, was written with another ``signature`` (the settings that must match
    to resume), or does not fit ``model``.
    """
    tensors, meta = load_checkpoint(path)
    want, have = dict(signature), meta.get("signature", {})
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        details = "; ".join(f"{k}: checkpoint {have.get(k)!r}, now {want.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({details}); "
            "resume with the same arguments or choose another --out"
        )
    try:
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        best_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        model.load_state_dict(model_sd, strict=True)
        probe = copy.deepcopy(model)
        probe.load_state_dict(best_sd, strict=True)
        optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        state = RunState.from_meta(meta)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    best_state = {k: v.to(device) for k, v in best_sd.items()}
    restore_rng(tensors)
    restore_python_random(meta.get("python_random"))
    return state, best_state
