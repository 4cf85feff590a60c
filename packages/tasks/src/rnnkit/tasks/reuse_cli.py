"""``rnnkit eval``, ``rnnkit predict`` and ``rnnkit generate``: using a finished run.

Each reads the run's ``model.safetensors`` and ``config.json`` (:func:`rnnkit.tasks.load_run`).

``predict`` input files (``--input FILE``), by the run's task kind:

- forecasting/regression (kind ``regress``): one series, ``(T, D)`` with ``D`` the task's
  input width, in the units of the task's data (z-scored for the built-in forecasting tasks).
  Text: one time step per line, ``D`` numbers separated by commas or spaces (for ``D = 1``
  the numbers may also stand on one line); or ``.npy``: ``(T,)`` or ``(T, D)``. Prints the
  forecast of the next ``--horizon`` steps (each fed back as the next input).
- classification (kind ``classify``): one example per line. Text: the ``T * F`` numbers of
  an example (``T`` steps of ``F`` features, step by step) or, for token tasks, its ``T`` token
  ids; or ``.npy``: ``(T, F)``/``(N, T, F)`` (features), ``(T,)``/``(N, T)`` (token ids).
  Features are in the units of the task's data (the digits tasks: pixels scaled to [0, 1]).
  Prints the predicted class of each example with its probability.

Text files may hold ``#`` comments and blank lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from torch import Tensor

from rnnkit.core.hookspecs import RegisterCommand
from rnnkit.core.listing import format_table
from rnnkit.tasks.reuse import LoadedRun, RunLoadError, load_run, require_use

EVAL_HELP = "evaluate a finished run's best model on its task's valid or test split"
PREDICT_HELP = "forecast a series or classify examples from a file with a finished run's model"
GENERATE_HELP = "sample text from a finished language-model run (charlm, charlm_shakespeare)"


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="DIR", help="a finished run's directory")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--backend", help="kernel backend (default: the one the run trained with)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def configure_eval(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit eval``."""
    _add_run(p)
    p.add_argument("--split", choices=("valid", "test"), default="valid", help="default: valid")
    p.add_argument("--batch-size", type=int, default=256, help="examples per forward (256)")


def configure_predict(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit predict``."""
    _add_run(p)
    p.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="a series (forecasting) or examples (classification): text/CSV numbers or .npy",
    )
    p.add_argument(
        "--horizon", type=int, default=1, help="forecasting: steps to forecast (default 1)"
    )


def configure_generate(p: argparse.ArgumentParser) -> None:
    """Arguments of ``rnnkit generate``."""
    _add_run(p)
    p.add_argument("--prompt", required=True, help="text to continue (at least one character)")
    p.add_argument("--length", type=int, default=200, help="characters to generate (200)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (1.0)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="sample among the K likeliest characters only (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (0)")


def _load(args: argparse.Namespace, command: str) -> tuple[LoadedRun, str]:
    from rnnkit.tasks.reuse import read_config

    use = require_use(read_config(args.run), command)  # before building anything
    return load_run(args.run, device=args.device), use


# --- eval ------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    """Run ``rnnkit eval``: the task's metrics of the run's best model on one split."""
    from rnnkit.tasks.trainer import evaluate

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    run, _ = _load(args, "eval")
    if run.config.get("custom_data"):
        raise RunLoadError(
            f"{run.path}: the run trained on data passed to Trainer(data=...), not the task's; "
            "evaluate it on those data with rnnkit.tasks.evaluate"
        )
    data = run.task.data(run.seed)
    split = data.split(args.split)
    metrics = evaluate(
        run.task,
        run.model,
        split,
        data.info,
        device=next(run.model.parameters()).device,
        backend=args.backend or run.backend,
        batch_size=args.batch_size,
    )
    if args.json:
        record = {"run": str(run.path), "task": run.task.name, "split": args.split}
        print(json.dumps({**record, "examples": len(split), "metrics": metrics}, indent=1))
        return 0
    primary = run.task.primary
    keys = list(dict.fromkeys([primary, *metrics]))
    print(format_table([[k, f"{metrics[k]:.4f}"] for k in keys], ["metric", args.split]))
    cell = run.config.get("cell")
    print(
        f"\ntask {run.task.name}, model {run.config['model']}"
        + (f" ({cell})" if cell else "")
        + f", {args.split} split of {len(split)} examples, {primary} {metrics[primary]:.4f}"
    )
    return 0


# --- predict -----------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[,;\s]+")


def read_rows(path: Path) -> list[list[float]]:
    """The numbers of a text file, one list per non-blank line (``#`` starts a comment)."""
    rows = []
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            rows.append([float(v) for v in _SEPARATORS.split(line) if v])
        except ValueError as exc:
            raise ValueError(f"{path}, line {i}: {exc}") from None
    if not rows:
        raise ValueError(f"{path} holds no numbers")
    return rows


def _read_npy(path: Path) -> Tensor:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as .npy: {exc}") from None
    return torch.from_numpy(np.ascontiguousarray(array))


def read_series(path: Path, width: int) -> Tensor:
    """A forecasting input ``(T, width)`` float32 (see the module docstring)."""
    if path.suffix == ".npy":
        x = _read_npy(path).float()
        if x.dim() == 1 and width == 1:
            x = x[:, None]
    else:
        rows = read_rows(path)
        if width == 1:
            x = torch.tensor([v for r in rows for v in r], dtype=torch.float32)[:, None]
        else:
            bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
            if bad is not None:
                raise ValueError(
                    f"{path}: time step {bad + 1} has {len(rows[bad])} numbers; the model "
                    f"reads {width} per step (one step per line)"
                )
            x = torch.tensor(rows, dtype=torch.float32)
    if x.dim() != 2 or x.shape[1] != width or x.shape[0] < 1:
        raise ValueError(f"{path}: a series of shape (T, {width}) expected, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: the series holds NaN or infinite values")
    return x


def read_examples(path: Path, width: int | None, vocab_size: int | None) -> list[Tensor]:
    """Classification inputs: ``(T, width)`` float32 each, or ``(T,)`` int64 token ids when
    ``vocab_size`` is set (see the module docstring)."""
    if path.suffix == ".npy":
        x = _read_npy(path)
        single = x.dim() == (1 if vocab_size else 2)
        items = [x] if single else list(x)
    else:
        items = [torch.tensor(r) for r in read_rows(path)]
    out = []
    for i, item in enumerate(items):
        where = f"{path}, example {i + 1}"
        if vocab_size:
            if item.dim() != 1 or item.numel() < 1:
                raise ValueError(f"{where}: token ids expected, shape {tuple(item.shape)}")
            if item.is_floating_point() and not bool((item == item.round()).all()):
                raise ValueError(f"{where}: token ids must be integers")
            ids = item.long()
            if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
                raise ValueError(f"{where}: token ids must lie in [0, {vocab_size})")
            out.append(ids)
        else:
            assert width is not None
            flat = item.reshape(-1).float()
            if flat.numel() < 1 or flat.numel() % width:
                raise ValueError(
                    f"{where}: {flat.numel()} numbers is not a whole number of steps of "
                    f"{width} features"
                )
            out.append(flat.reshape(-1, width))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


def _forecast(run: LoadedRun, args: argparse.Namespace) -> int:
    from rnnkit.tasks.generate import rollout

    width = int(run.config["io"]["input_size"])
    series = read_series(Path(args.input), width)
    forecast = rollout(run.model, series, args.horizon, backend=args.backend or run.backend)
    if args.json:
        print(json.dumps({"steps": series.shape[0], "forecast": forecast.tolist()}, indent=1))
        return 0
    print(f"forecast after {series.shape[0]} steps (task {run.task.name}, the data's units):")
    for k, row in enumerate(forecast.tolist(), 1):
        print(f"t+{k}\t" + "\t".join(f"{v:.6g}" for v in row))
    return 0


@torch.no_grad()
def _classify(run: LoadedRun, args: argparse.Namespace) -> int:
    from rnnkit.tasks.trainer import forward

    io = run.config["io"]
    vocab = io.get("vocab_size")
    examples = read_examples(Path(args.input), io.get("input_size"), vocab)
    labels = run.info.get("labels")
    device = next(run.model.parameters()).device
    results = []
    for x in examples:
        logits = forward(run.model, x[None].to(device), args.backend or run.backend)
        probs = torch.softmax(logits.float()[0], -1).cpu()
        k = int(probs.argmax())
        name = labels[k] if isinstance(labels, list) and k < len(labels) else None
        results.append({"class": k, "label": name, "probability": float(probs[k])})
        results[-1]["probs"] = probs.tolist()
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    rows = []
    for i, r in enumerate(results, 1):
        shown = str(r["class"]) + (f" ({r['label']})" if r["label"] else "")
        rows.append([str(i), shown, f"{r['probability']:.4f}"])
    print(format_table(rows, ["example", "class", "probability"]))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Run ``rnnkit predict``: forecast (``regress`` tasks) or classify (``classify`` tasks)."""
    if args.horizon < 1:
        raise ValueError(f"--horizon must be a positive integer, got {args.horizon}")
    run, use = _load(args, "predict")
    if use == "regress":
        return _forecast(run, args)
    if args.horizon != 1:
        raise ValueError("--horizon applies to forecasting tasks only")
    return _classify(run, args)


# --- generate ----------------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    """Run ``rnnkit generate``: the prompt and ``--length`` sampled characters."""
    from rnnkit.tasks.generate import generate_text

    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be a positive integer, got {args.top_k}")
    if not args.prompt:
        raise ValueError("--prompt needs at least one character (the model starts from it)")
    run, _ = _load(args, "generate")
    text = generate_text(
        run,
        args.prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        backend=args.backend,
    )
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "seed": args.seed}, indent=1))
    else:
        print(args.prompt + text)
    return 0


def register_commands(register: RegisterCommand) -> None:
    """Register ``eval``, ``predict`` and ``generate`` (``register`` as in the hook)."""
    register("eval", help=EVAL_HELP, configure=configure_eval, run=run_eval)
    register("predict", help=PREDICT_HELP, configure=configure_predict, run=run_predict)
    register("generate", help=GENERATE_HELP, configure=configure_generate, run=run_generate)


__all__ = [
    "EVAL_HELP",
    "GENERATE_HELP",
    "PREDICT_HELP",
    "configure_eval",
    "configure_generate",
    "configure_predict",
    "read_examples",
    "read_rows",
    "read_series",
    "register_commands",
    "run_eval",
    "run_generate",
    "run_predict",
]
