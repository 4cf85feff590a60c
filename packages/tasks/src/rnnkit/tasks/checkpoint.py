"""Checkpoints: one safetensors file of tensors with the JSON metadata inside it.

Writing is atomic: the file is written to a temporary name in the same directory, flushed to
disk and moved over the old one with :func:`os.replace`, so a crash leaves either the old or
the new checkpoint, never half of one. Files are created with mode ``0o666`` less the umask,
like any other file (not the ``0o600`` of :func:`tempfile.mkstemp`). A readable copy of the
metadata is written beside it (``checkpoint.json``), also atomically; the copy inside the
tensor file is the one that counts.

Integrity: the metadata holds a SHA-256 checksum of every tensor (its dtype, shape and bytes)
and one of the rest of the metadata; :func:`load_checkpoint` verifies them, so flipped bytes
or an edited field are refused with the checkpoint and the tensor or field named. Checkpoints
of format ``rnnkit-checkpoint/1`` (written before the checksums) are still read, unverified.

A training run's checkpoint (:func:`save_run`, :func:`load_run_checkpoint`) holds the model,
the best model so far, the optimiser, every RNG state (torch CPU and CUDA, Python's
``random``), the run's :class:`RunState` and the signature of the settings it was written with:
restoring all of it makes a resumed run continue bit for bit as if it had never stopped. (The
best model for inference alone is the run's ``model.safetensors``, read by
:func:`rnnkit.tasks.load_run`.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core.errors import RnnkitError

FORMAT = "rnnkit-checkpoint/2"
#: the format before checksums: still read (without verification), never written
FORMAT_V1 = "rnnkit-checkpoint/1"
CHECKPOINT = "checkpoint.safetensors"
META_KEY = "rnnkit"


class CheckpointError(RnnkitError, ValueError):
    """A checkpoint that cannot be read or does not belong to the run being resumed."""


def _temporary(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path``, exclusively, mode 0o666 less the umask.

    Not :func:`tempfile.mkstemp`: its files are ``0o600`` whatever the umask, and
    :func:`os.replace` would carry that mode over to the run's outputs.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write_bytes` left for ``names`` in ``directory``.

    A process killed while writing (``SIGKILL``, power loss) leaves its ``.<name>.*.tmp``
    behind; call this only where no other process writes (a run directory this process has
    locked). Returns the files removed.
    """
    pattern = re.compile(r"\.(" + "|".join(re.escape(n) for n in names) + r")\.[A-Za-z0-9_]+\.tmp")
    removed = []
    for p in sorted(directory.glob(".*.tmp")):
        if pattern.fullmatch(p.name) and p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def tensor_digest(t: Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and bytes (any dtype, on any device)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(flat.numpy().tobytes())
    return h.hexdigest()


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the metadata without its ``checksums`` entry, keys sorted."""
    rest = {k: v for k, v in meta.items() if k != "checksums"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Save ``tensors`` and JSON-serialisable ``meta`` to ``path`` atomically, with checksums."""
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": FORMAT, **meta}
    meta["checksums"] = {
        "tensors": {k: tensor_digest(v) for k, v in flat.items()},
        "meta": _meta_digest(meta),
    }
    blob = save(flat, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(path, blob)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and metadata without verifying them (see :func:`verify`).

    Raises :class:`CheckpointError` when the file is missing, is not a safetensors file or
    is not an rnnkit checkpoint.
    """
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
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(f"{path} is not an rnnkit checkpoint (format {FORMAT!r} expected)")
    return tensors, meta


def verify(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """Check the checksums :func:`save_checkpoint` stored; ``CheckpointError`` naming a mismatch.

    Checkpoints of format ``rnnkit-checkpoint/1`` have none and pass unverified.
    """
    if meta.get("format") == FORMAT_V1:
        return
    sums = meta.get("checksums")
    if not (
        isinstance(sums, dict)
        and isinstance(sums.get("tensors"), dict)
        and isinstance(sums.get("meta"), str)
    ):
        raise CheckpointError(
            f"checkpoint {path}: field 'checksums' is missing or malformed; the file was edited "
            "or damaged: resume from a copy, or delete it to start over"
        )
    damage = "the file was damaged or edited: resume from a copy, or delete it to start over"
    listed = sums["tensors"]
    if set(listed) != set(tensors):
        odd = sorted(set(listed) ^ set(tensors))
        raise CheckpointError(
            f"checkpoint {path}: tensors {', '.join(odd[:5])} are missing or extra "
            f"(checksums list {len(listed)}, the file holds {len(tensors)}); {damage}"
        )
    for name, t in tensors.items():
        if tensor_digest(t) != listed[name]:
            raise CheckpointError(
                f"checkpoint {path}: tensor {name!r} does not match its checksum; {damage}"
            )
    if _meta_digest(meta) != sums["meta"]:
        raise CheckpointError(
            f"checkpoint {path}: the metadata does not match its checksum; {damage}"
        )


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` if it is unreadable or fails its checksums.
    """
    tensors, meta = read_checkpoint(path)
    verify(path, tensors, meta)
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
    """Restore what :func:`python_random_state` saved (check it first: :func:`check_run_meta`)."""
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
    def from_meta(cls, meta: Mapping[str, Any], max_step: int | None = None) -> RunState:
        """Read back the fields :func:`save_run` wrote, checking each one.

        ``max_step`` bounds ``step`` (the run's total steps). Raises :class:`FieldError`
        naming the first missing or bad field.
        """
        step = _integer(meta, "step", 0, max_step)
        best_score = _get(meta, "best_score")
        if best_score is not None and not _finite(best_score):
            raise FieldError("best_score", best_score, "a finite number or null")
        history = _history(_get(meta, "history"), step)
        return cls(
            step=step,
            best_score=None if best_score is None else float(best_score),
            best_step=_integer(meta, "best_step", 0, step),
            bad_evals=_integer(meta, "bad_evals", 0, None),
            stopped_early=_boolean(meta, "stopped_early"),
            loss_sum=_number(meta, "loss_sum", None),
            loss_count=_number(meta, "loss_count", 0.0),
            elapsed=_number(meta, "elapsed", 0.0),
            history=history,
        )


class FieldError(ValueError):
    """A checkpoint metadata field that is missing or out of range."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        shown = "missing" if value is _MISSING else f"{_short(value)}"
        super().__init__(f"field {field!r} is {shown}; expected {expected}")
        self.field = field


_MISSING = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(meta: Mapping[str, Any], name: str) -> Any:
    if name not in meta:
        raise FieldError(name, _MISSING, "a value")
    return meta[name]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(meta: Mapping[str, Any], name: str, low: int, high: int | None) -> int:
    v = _get(meta, name)
    if not _is_int(v) or v < low or (high is not None and v > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise FieldError(name, v, f"an integer {span}")
    return int(v)


def _number(meta: Mapping[str, Any], name: str, low: float | None) -> float:
    v = _get(meta, name)
    if not _finite(v) or (low is not None and v < low):
        raise FieldError(name, v, "a finite number" + (f" >= {low:g}" if low is not None else ""))
    return float(v)


def _boolean(meta: Mapping[str, Any], name: str) -> bool:
    v = _get(meta, name)
    if not isinstance(v, bool):
        raise FieldError(name, v, "true or false")
    return v


def _history(value: Any, step: int) -> list[dict[str, Any]]:
    """The evaluation records: dicts with increasing steps up to ``step``, numeric metrics."""
    expected = (
        f"a list of records {{step, train_loss, lr, seconds, valid}} with increasing steps "
        f"from 1 to {step}"
    )
    if not isinstance(value, list):
        raise FieldError("history", value, expected)
    last = 0
    for i, r in enumerate(value):
        ok = (
            isinstance(r, dict)
            and _is_int(r.get("step"))
            and last < r["step"] <= step
            and all(isinstance(r.get(k), int | float) for k in ("train_loss", "lr", "seconds"))
            and isinstance(r.get("valid"), dict)
            and all(
                isinstance(k, str) and isinstance(v, int | float) for k, v in r["valid"].items()
            )
        )
        if not ok:
            raise FieldError(f"history[{i}]", r, expected)
        last = r["step"]
    return [dict(r) for r in value]


def _python_random(value: Any) -> None:
    expected = "Python's random state [version, 625 integers, gauss]"
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[1], list)):
        raise FieldError("python_random", value, expected)
    try:  # on a scratch generator: the global one changes only once everything is checked
        random.Random().setstate((value[0], tuple(value[1]), value[2]))
    except (TypeError, ValueError, OverflowError):
        raise FieldError("python_random", value, expected) from None


def _check_rng(tensors: Mapping[str, Tensor]) -> None:
    for name, t in tensors.items():
        if not name.startswith("rng."):
            continue
        try:
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise ValueError
            if name == "rng.cpu":  # on a scratch generator, as above
                torch.Generator().set_state(t)
        except (RuntimeError, ValueError):
            raise FieldError(
                name, f"a {t.dtype} tensor of shape {tuple(t.shape)}", "a torch RNG state"
            ) from None
    if "rng.cpu" not in tensors:
        raise FieldError("rng.cpu", _MISSING, "the torch CPU RNG state")


def _check_optimizer(
    meta: Any, tensors: Mapping[str, Tensor], optimizer: torch.optim.Optimizer, step: int
) -> None:
    """The optimiser's settings and state fit ``optimizer`` (built with the same settings)."""
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("param_groups"), list)
        and isinstance(meta.get("scalars"), dict)
        and all(isinstance(v, dict) for v in meta["scalars"].values())
    ):
        raise FieldError("optimizer", meta, "{param_groups: [...], scalars: {...}}")
    # the same settings built this optimiser; only "lr" moves during a run (the schedule)
    fresh = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
    groups = meta["param_groups"]
    if len(groups) != len(fresh):
        raise FieldError("optimizer.param_groups", groups, f"{len(fresh)} parameter group(s)")
    for i, (have, want) in enumerate(zip(groups, fresh, strict=True)):
        if not isinstance(have, dict):
            raise FieldError(f"optimizer.param_groups[{i}]", have, "a parameter group")
        for key in sorted(set(have) & set(want) - {"lr"}):
            if have[key] != want[key]:
                raise FieldError(f"optimizer.param_groups[{i}].{key}", have[key], repr(want[key]))
        if "params" not in have:
            raise FieldError(f"optimizer.param_groups[{i}].params", _MISSING, "a list")
        if not _finite(have.get("lr", _MISSING)) or have["lr"] < 0:
            raise FieldError(f"optimizer.param_groups[{i}].lr", have.get("lr"), "a number >= 0")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for name, t in tensors.items():
        if not name.startswith("optim."):
            continue
        _, pid, what = name.split(".", 2)
        if not pid.isdigit() or int(pid) >= len(params):
            raise FieldError(name, "a tensor", f"a parameter index below {len(params)}")
        shape = tuple(params[int(pid)].shape)
        if t.dim() > 0 and tuple(t.shape) != shape:
            raise FieldError(name, f"a tensor of shape {tuple(t.shape)}", f"shape {shape}")
        if what == "step" and (t.numel() != 1 or not 0 <= float(t) <= step):
            raise FieldError(name, t.tolist(), f"a count from 0 to {step} (the run's step)")


def _check_finite(tensors: Mapping[str, Tensor], model: nn.Module) -> None:
    """Weights and optimiser state hold no NaN or infinity (buffers may, e.g. masks)."""
    weights = {f"{kind}.{n}" for n, _ in model.named_parameters() for kind in ("model", "best")}
    for name, t in tensors.items():
        checked = name in weights or name.startswith("optim.")
        if checked and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FieldError(
                name,
                "a tensor with NaN or infinite values",
                "finite values (the run diverged before this checkpoint, or the file was "
                "edited; start over, e.g. with a lower --lr)",
            )


def check_run_meta(
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    max_step: int | None,
) -> RunState:
    """Check every field of a run checkpoint before anything is restored; the run's state.

    Raises :class:`FieldError` naming the first bad field or tensor.
    """
    state = RunState.from_meta(meta, max_step)
    _python_random(_get(meta, "python_random"))
    _check_rng(tensors)
    _check_optimizer(_get(meta, "optimizer"), tensors, optimizer, state.step)
    _check_finite(tensors, model)
    return state


def save_run(
    path: Path,
    *,
    model: nn.Module,
    best_state: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    state: RunState,
    signature: Mapping[str, Any],
    arguments: Mapping[str, Any] | None = None,
) -> None:
    """Checkpoint a training run at ``path`` (see the module docstring for what it holds).

    ``arguments`` (JSON) are the settings the run was asked for, kept so that ``rnnkit train
    --resume --out DIR`` alone can continue it; unlike ``signature`` they are not compared
    when resuming."""
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_t, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_t)
    tensors.update(rng_tensors())
    meta = {
        "signature": dict(signature),
        **({"arguments": dict(arguments)} if arguments is not None else {}),
        **asdict(state),
        "optimizer": opt_meta,
        "python_random": python_random_state(),
    }
    save_checkpoint(path, tensors, meta)


def load_run_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    signature: Mapping[str, Any],
    device: torch.device,
    max_step: int | None = None,
) -> tuple[RunState, dict[str, Tensor]]:
    """Resume the run checkpointed at ``path`` into ``model`` and ``optimizer``.

    Restores every RNG state and returns the run's state and the best model's state dict (on
    ``device``). Raises :class:`CheckpointError`, naming the checkpoint and what is wrong,
    before changing the model, the optimiser or the RNG states, when the file is unreadable,
    fails its checksums, was written with another ``signature`` (the settings that must match
    to resume), has a bad field (``max_step`` bounds ``step``) or does not fit ``model``.
    """
    tensors, meta = read_checkpoint(path)
    want, have = dict(signature), meta.get("signature")
    if not isinstance(have, dict):
        raise CheckpointError(
            f"checkpoint {path}: field 'signature' is {_short(have)}; expected the settings of "
            "the run; the file was edited or damaged: resume from a copy, or delete it"
        )
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        details = "; ".join(f"{k}: checkpoint {have.get(k)!r}, now {want.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run ({details}); "
            "resume with the same arguments or choose another --out"
        )
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best_sd = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    try:  # the structure first, on a copy: the caller's model changes only once all is checked
        probe = copy.deepcopy(model)
        probe.load_state_dict(model_sd, strict=True)
        probe.load_state_dict(best_sd, strict=True)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    # the fields before the checksums, so that an edited field is named; then the checksums
    # catch what the field checks cannot (flipped bytes, a plausible edit)
    try:
        state = check_run_meta(tensors, meta, model=model, optimizer=optimizer, max_step=max_step)
    except FieldError as exc:
        raise CheckpointError(
            f"checkpoint {path}: {exc}; the file was edited or damaged: resume from a copy, "
            "or delete it to start over"
        ) from None
    verify(path, tensors, meta)
    try:
        model.load_state_dict(model_sd, strict=True)
        optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from None
    best_state = {k: v.to(device) for k, v in best_sd.items()}
    restore_rng(tensors)
    restore_python_random(meta["python_random"])
    return state, best_state
