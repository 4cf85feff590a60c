"""``--config FILE`` and ``--print-config`` of ``rnnkit train`` and ``rnnkit compare``.

A configuration file holds the options of the command line under their names with ``_`` for
``-`` (``batch_size`` for ``--batch-size``), as TOML (read with the standard library's
:mod:`tomllib`) or JSON (a file ending in ``.json``, or whose text starts with ``{``)::

    task = "tomita3"
    cell = "gru"
    steps = 400
    batch_size = 32
    lr = 0.005
    seed = 1
    amp = false                 # --no-amp
    plot = true                 # --plot / --no-plot

    [model_config]              # model keywords: --hidden-size, --layers, --set KEY=VALUE
    hidden_size = 64
    num_layers = 2

The keys are :data:`COMMON_KEYS` plus :data:`TRAIN_KEYS` (``rnnkit train``) or
:data:`COMPARE_KEYS` (``rnnkit compare``); an unknown key, or a value of the wrong type, is an
error naming the key and the file. The command line overrides the file: an option given there
wins, and ``--hidden-size``, ``--layers`` and ``--set`` override single keys of
``model_config``. Paths (``out``) are relative to the current folder, as on the command line.
``--resume`` treats the file's values like options given again: they must agree with the run.

``--print-config`` prints the resolved configuration (the task's defaults filled in: model,
budget, cell and widths) as TOML, or JSON with ``--json``, and exits without training. Given
back as ``--config``, it resolves to the same configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rnnkit.core.errors import closest, unknown_name

__all__ = [
    "COMMON_KEYS",
    "COMPARE_KEYS",
    "TRAIN_KEYS",
    "ConfigFileError",
    "apply_config_file",
    "config_document",
    "format_toml",
    "read_config_file",
]


class ConfigFileError(ValueError):
    """A configuration file that cannot be read or holds an unknown key or a wrong value."""


# key -> (argparse destination, expected type); the type names: int, float, str, bool,
# table (model keywords), names (a list of strings or one comma-separated string), seeds
COMMON_KEYS: dict[str, tuple[str, str]] = {
    "task": ("task", "str"),
    "cell": ("cell", "str"),
    "backend": ("backend", "str"),
    "steps": ("steps", "int"),
    "batch_size": ("batch_size", "int"),
    "lr": ("lr", "float"),
    "weight_decay": ("weight_decay", "float"),
    "clip": ("clip", "float"),
    "eval_every": ("eval_every", "int"),
    "patience": ("patience", "int"),
    "schedule": ("schedule", "str"),
    "seed": ("seed", "int"),
    "deterministic": ("deterministic", "bool"),
    "device": ("device", "str"),
    "threads": ("threads", "int"),
    "amp": ("amp", "bool"),
    "progress": ("progress", "bool"),
    "plot": ("plot", "bool"),
    "tensorboard": ("tensorboard", "bool"),
    "out": ("out", "str"),
    "model_config": ("config_model_config", "table"),
}
#: the keys only ``rnnkit train`` takes
TRAIN_KEYS: dict[str, tuple[str, str]] = {
    "model": ("model", "str"),
    "checkpoint_every": ("checkpoint_every", "int"),
}
#: the keys only ``rnnkit compare`` takes
COMPARE_KEYS: dict[str, tuple[str, str]] = {
    "models": ("models", "names"),
    "seeds": ("seeds", "seeds"),
}


def keys_of(command: str) -> dict[str, tuple[str, str]]:
    """The keys a configuration file of ``rnnkit <command>`` may hold."""
    extra = TRAIN_KEYS if command == "train" else COMPARE_KEYS
    return {**COMMON_KEYS, **extra}


def read_config_file(path: str | Path, command: str) -> dict[str, Any]:
    """The checked content of configuration file ``path`` for ``rnnkit <command>``.

    Values are as in the file, except ``models`` and ``seeds``, which become comma-separated
    strings (their form on the command line). JSON ``null`` means "not set".

    Raises:
        ConfigFileError: unreadable or malformed file, unknown key, value of the wrong type;
            the message names the file and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    as_json = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    try:
        data: Any = json.loads(text) if as_json else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if as_json else "TOML"
        raise ConfigFileError(f"--config {path}: not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a JSON object of options")
    known = keys_of(command)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            near = closest(key, known)
            hint = f"; did you mean {', '.join(repr(k) for k in near)}?" if near else ""
            raise ConfigFileError(
                f"--config {path}: unknown key {key!r} for rnnkit {command}{hint} "
                f"Known keys: {', '.join(known)}"
            )
        if value is None:
            continue
        out[key] = _checked(path, key, value, known[key][1])
    return out


def _checked(path: Path, key: str, value: Any, kind: str) -> Any:
    def wrong(what: str) -> ConfigFileError:
        return ConfigFileError(f"--config {path}: key {key!r} must be {what}, got {value!r}")

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise wrong("a string")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif kind == "table":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong("a table of model keywords")
        value = dict(value)
    elif kind == "names":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        elif not isinstance(value, str):
            raise wrong("a list of model or cell names")
    elif kind == "seeds":
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            value = ",".join(str(v) for v in value)
        elif not isinstance(value, str):
            raise wrong("a list of integers")
    return value


def apply_config_file(args: argparse.Namespace, command: str) -> None:
    """Fill the options left out on the command line from ``args.config`` (if given).

    An option given on the command line keeps its value; ``model_config`` goes to
    ``args.config_model_config``, under the model keywords of the command line. For ``rnnkit
    compare``, ``seed`` and ``seeds`` from the file count only when neither was given.
    """
    args.config_model_config = {}
    path = getattr(args, "config", None)
    if not path:
        return
    data = read_config_file(path, command)
    if command == "compare" and "seed" in data and "seeds" in data:
        raise ConfigFileError(f"--config {path}: give 'seed' or 'seeds', not both")
    seeds_given = args.seed is not None or getattr(args, "seeds", None) is not None
    known = keys_of(command)
    for key, value in data.items():
        dest = known[key][0]
        if key == "model_config":
            args.config_model_config = value
        elif key in ("seed", "seeds") and command == "compare":
            if not seeds_given:
                setattr(args, dest, value)
        elif getattr(args, dest, None) is None:
            setattr(args, dest, value)


# --- --print-config --------------------------------------------------------------------------

#: the order of the printed keys
ORDER = (
    "task",
    "model",
    "models",
    "cell",
    "backend",
    "seed",
    "seeds",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "clip",
    "eval_every",
    "patience",
    "schedule",
    "checkpoint_every",
    "deterministic",
    "device",
    "threads",
    "amp",
    "progress",
    "plot",
    "tensorboard",
    "out",
)

#: the model keywords resolved from the task when not given (the ones the CLI has options for)
WIDTHS = ("hidden_size", "num_layers")


def config_document(
    command: str,
    settings: Mapping[str, Any],
    model_config: Mapping[str, Any],
) -> dict[str, Any]:
    """The resolved configuration ``--print-config`` prints.

    ``settings``: the options (``None``: not given), ``model_config``: the model keywords
    given. The task's defaults are filled in (task, model for ``train``, every budget field,
    the cell and widths the model would be built with); an option without a fixed default
    (``out``, ``threads``, ``checkpoint_every``, ``progress``) appears only when given. Bad
    names and out-of-range options raise here, as they would before training.
    """
    from rnnkit.core.plugins import get_host
    from rnnkit.tasks.registry import get_task
    from rnnkit.tasks.trainer import DEFAULT_TASK, TrainConfig, resolve_budget

    s = dict(settings)
    task_name = s.get("task") or DEFAULT_TASK

    task = get_task(task_name)
    given = dict(model_config)
    cell = s.get("cell") or given.pop("cell", None)
    doc: dict[str, Any] = {"task": task.name}
    budget_fields = ("steps", "batch_size", "lr", "weight_decay", "clip", "eval_every")
    checked: dict[str, Any] = {
        k: s.get(k) for k in (*budget_fields, "patience", "schedule", "threads")
    }
    probe = TrainConfig(task=task.name, checkpoint_every=s.get("checkpoint_every"), **checked)
    budget = resolve_budget(task, probe)
    host = get_host()
    if cell and cell not in host.cells:
        raise unknown_name("cell", cell, host.cells.names())
    if command == "train":
        model = s.get("model") or task.model
        if model not in host.models:
            raise unknown_name("model", model, host.models.names())
        doc["model"] = model
        kwargs = task.model_kwargs(model, **given, **({"cell": cell} if cell else {}))
        cell = cell or kwargs.get("cell")
    else:
        doc["models"] = [m.strip() for m in str(s.get("models") or "").split(",") if m.strip()]
        # the entries differ in model: only the widths, which every model of the task takes
        # from the task's configuration, are resolved; the cell only when given
        kwargs = task.model_kwargs(task.model, **given)
    if cell:
        doc["cell"] = cell
    doc["backend"] = s.get("backend") or "auto"
    if command == "compare":
        seeds = s.get("seeds")
        doc["seeds"] = (
            [int(t) for t in str(seeds).split(",") if t.strip()]
            if seeds
            else [s.get("seed") if s.get("seed") is not None else 0]
        )
    else:
        doc["seed"] = s.get("seed") if s.get("seed") is not None else 0
    doc.update(
        steps=budget.steps,
        batch_size=budget.batch_size,
        lr=budget.lr,
        weight_decay=budget.weight_decay,
        clip=budget.clip,
        eval_every=budget.eval_every,
        patience=budget.patience,
        schedule=budget.schedule,
    )
    for key, default in (
        ("checkpoint_every", None),
        ("deterministic", False),
        ("device", "auto"),
        ("threads", None),
        ("amp", True),
        ("progress", None),
        ("plot", True),
        ("tensorboard", False),
        ("out", None),
    ):
        if command == "compare" and key == "checkpoint_every":
            continue
        value = s.get(key)
        value = default if value is None else value
        if value is not None:
            doc[key] = value
    resolved = {k: kwargs[k] for k in WIDTHS if k in kwargs}
    doc["model_config"] = {**resolved, **given}
    ordered = {k: doc[k] for k in ORDER if k in doc}
    ordered["model_config"] = doc["model_config"]
    return ordered


# --- TOML output (the standard library reads TOML but does not write it) ----------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        # TOML floats need a fraction or an exponent: 5.0, not 5
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are valid in TOML basic strings
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_key(str(k))} = {_toml_value(v, where)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise ValueError(
        f"{where}: {value!r} cannot be written as TOML (it has no null); use --print-config --json"
    )


def format_toml(document: Mapping[str, Any], *, header: str = "") -> str:
    """``document`` as TOML: its scalars and lists as ``key = value`` lines, then each
    table (a ``dict`` value) as a ``[name]`` section. ``None`` values are left out at the top
    level (TOML has no null) and refused inside lists and tables."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = {k: v for k, v in document.items() if isinstance(v, dict)}
    for key, value in document.items():
        if key in tables or value is None:
            continue
        lines.append(f"{_toml_key(key)} = {_toml_value(value, key)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{_toml_key(name)}]")
        for key, value in table.items():
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value, f'{name}.{key}')}")
    return "\n".join(lines) + "\n"
