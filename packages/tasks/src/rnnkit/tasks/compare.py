"""``rnnkit compare``: several models over several seeds on one task, as a research tool.

Every (model, seed) pair is one trainer run in ``<out>/<model>/seed-<seed>``. A run already
there is reused, not retrained, when it finished with the same arguments (its ``final.json``
says which); a stopped one (a checkpoint, no ``final.json``) is resumed; one that finished with
other arguments is reported as failed, naming the arguments that differ. A model whose run
fails (it cannot be built, its backend cannot run it, training raises) is reported in the
table with the error's first line and the other runs go on. ``compare.json`` and ``report.md``
are rewritten after every run, so the table of the runs that finished survives a failure, a
Ctrl-C or a killed process. Progress messages (which run starts, which is reused, which failed)
are logged to the ``rnnkit.tasks`` logger; the table is the command's output.

Per model the table gives the mean and sample standard deviation (``n - 1``) of the validation
and test values of the task's primary metric over the seeds whose run finished, and
``compare.png`` their learning curves as mean lines with bands of mean ± std.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from rnnkit.core.errors import unknown_name
from rnnkit.core.listing import format_table
from rnnkit.core.output import print_json, shows_text, wants_json
from rnnkit.tasks._util import parse_set
from rnnkit.tasks.base import Task
from rnnkit.tasks.callbacks import TrainerCallback
from rnnkit.tasks.checkpoint import CHECKPOINT, atomic_write_text
from rnnkit.tasks.plots import mean_std
from rnnkit.tasks.record import command_line, environment, iso_now
from rnnkit.tasks.trainer import (
    DEFAULT_TASK,
    RunResult,
    TrainConfig,
    check_seed,
    make_run_dir,
    resolve_budget,
    run_arguments,
    timestamp,
    train,
)

__all__ = ["compare", "compare_command", "entry_options", "parse_seeds"]

_log = logging.getLogger("rnnkit.tasks")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; refuses an empty list, non-integers and repeats."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        seeds = [int(t) for t in items]
    except ValueError:
        raise ValueError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: {text!r}")
    for seed in seeds:
        check_seed("--seeds", seed)
    return seeds


def entry_options(entry: str) -> tuple[str, dict[str, Any]]:
    """A ``--models`` item ``NAME[:KEY=VALUE[:KEY=VALUE...]]`` -> ``(NAME, keywords)``: the
    keywords (VALUE parsed as JSON when it can be, as ``--set``) are this entry's own model
    keywords, over the shared ``--set`` ones (``hybrid_rnn:update=additive:attention=8``)."""
    name, *items = entry.split(":")
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--models: {entry!r}: options must be KEY=VALUE, got {item!r}")
    return name.strip(), parse_set(items)


def _resolve_entry(entry: str) -> tuple[str | None, str | None]:
    """A ``--models`` item -> ``(model, cell)``: a registered model, else a cell name."""
    from rnnkit.core.plugins import get_host

    name, _ = entry_options(entry)
    host = get_host()
    if name in host.models:
        return name, None
    if name in host.cells:
        return None, name
    raise unknown_name("model or cell", name, [*host.models.names(), *host.cells.names()])


def _check_backend(name: str) -> None:
    """An unknown backend name fails before anything is created (which cells a known one can
    run is each run's concern: a failure there is that model's row)."""
    from rnnkit.core.dispatch import backend_names

    if name != "auto" and name not in backend_names():
        raise unknown_name("backend", name, backend_names())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _load_result(path: Path) -> RunResult:
    data = json.loads(path.read_text())
    known = {f.name for f in fields(RunResult)}
    return RunResult(**{k: v for k, v in data.items() if k in known})


def _run_one(
    config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()
) -> tuple[RunResult, bool]:
    """Train ``config`` or reuse its finished run; ``(result, reused)``."""
    out = Path(str(config.out))
    final = out / "final.json"
    if final.is_file():
        result = _load_result(final)
        have = result.config.get("arguments")
        want = run_arguments(config)
        if have != want:
            keys = sorted(k for k in want if not isinstance(have, dict) or have.get(k) != want[k])
            raise ValueError(
                f"{out} holds a finished run with other arguments ({', '.join(keys)}); "
                "choose another --out"
            )
        return result, True
    resume = (out / CHECKPOINT).is_file()
    return train(replace(config, resume=resume), callbacks=callbacks), False


def _row_summary(
    entry: str, model: str | None, cell: str | None, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == "ok"]
    valid = mean_std([r["valid_score"] for r in ok])
    test = mean_std([r["score"] for r in ok])
    failed = [r for r in runs if r["status"] not in ("ok", "not run")]
    if not failed and len(ok) == len(runs):
        status = "ok"
    elif failed:
        first = failed[0]["status"]
        status = first if len(failed) == len(runs) else f"{len(failed)} of {len(runs)}: {first}"
    else:
        status = "not run" if not ok else f"{len(ok)} of {len(runs)} run"
    reached = [r["reached"] for r in ok if r["reached"] is not None]
    return {
        "entry": entry,
        "model": model,
        "cell": cell,
        "status": status,
        "seeds_ok": len(ok),
        "params": ok[0]["params"] if ok else None,
        "steps_mean": mean_std([r["steps"] for r in ok])[0] if ok else None,
        "seconds_mean": mean_std([r["seconds"] for r in ok])[0] if ok else None,
        "valid_mean": _finite(valid[0]),
        "valid_std": _finite(valid[1]),
        "test_mean": _finite(test[0]),
        "test_std": _finite(test[1]),
        "reached": sum(reached) if reached else None,
        "runs": runs,
    }


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if n > 1 and std is not None else "")


def _extra(row: dict[str, Any], name: str) -> str:
    """Mean ± std over the finished seeds of the test value of metric ``name``."""
    values = [r["test"][name] for r in row["runs"] if r["status"] == "ok" and name in r["test"]]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return _pm(_finite(mean), _finite(std), len(values))


def _table(
    rows: list[dict[str, Any]], task: Task, metrics: Sequence[str] = ()
) -> tuple[list[list[str]], list[str]]:
    body = []
    for r in rows:
        n = r["seeds_ok"]
        body.append(
            [
                r["entry"],
                f"{n}/{len(r['runs'])}",
                f"{r['params']:,}" if r["params"] is not None else "-",
                f"{r['steps_mean']:g}" if r["steps_mean"] is not None else "-",
                f"{r['seconds_mean']:.1f}" if r["seconds_mean"] is not None else "-",
                _pm(r["valid_mean"], r["valid_std"], n),
                _pm(r["test_mean"], r["test_std"], n),
                *(_extra(r, m) for m in metrics),
                f"{r['reached']}/{n} (target {task.target:g})"
                if task.target is not None and r["reached"] is not None
                else "-",
                r["status"],
            ]
        )
    headers = [
        "model",
        "seeds",
        "params",
        "steps",
        "seconds",
        f"valid {task.primary}",
        f"test {task.primary}",
        *(f"test {m}" for m in metrics),
        "target reached",
        "status",
    ]
    return body, headers


def compare(
    base: TrainConfig,
    entries: list[str],
    seeds: list[int],
    *,
    out: Path | None = None,
    plot: bool = True,
    argv: list[str] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    metrics: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) every (entry, seed) and write ``compare.json``, ``report.md`` and
    ``compare.png`` into ``out`` (default: a new ``runs/compare-<task>-<time>``).

    ``base`` holds the arguments shared by the runs; each entry is a registered model or a
    cell name (the task's model with that cell), optionally with its own model keywords
    (:func:`entry_options`); ``metrics`` are test metrics shown beside the primary one.
    Argument errors (unknown names, bad options, an unknown backend) raise before any folder
    is created. Returns the folder and the content of ``compare.json``; a run's status is
    ``"ok"``, ``"failed: <error>"``, ``"interrupted at step N"`` (Ctrl-C: the remaining
    runs are skipped, ``"not run"``). ``callbacks`` are passed to every run trained (not to the
    runs reused).
    """
    from rnnkit.tasks.registry import get_task

    if not entries:
        raise ValueError("--models needs at least one name")
    task = get_task(base.task)
    resolved = [_resolve_entry(e) for e in entries]
    resolve_budget(task, base)  # bad options: refused before anything is created
    _check_backend(base.backend)
    created: list[Path] = []
    if out is not None:
        root = Path(out)
    else:  # exclusive, like a run's default directory: two compares never share one
        root, created = make_run_dir(Path("runs") / f"compare-{task.name}-{timestamp()}")
    started = iso_now()
    runs: dict[str, list[dict[str, Any]]] = {
        e: [
            {"seed": s, "out": str(root / _folder(e) / f"seed-{s}"), "status": "not run"}
            for s in seeds
        ]
        for e in entries
    }
    results: dict[tuple[str, int], RunResult] = {}
    stop = False

    def summary() -> dict[str, Any]:
        rows = [_row_summary(e, m, c, runs[e]) for e, (m, c) in zip(entries, resolved, strict=True)]
        device = next((r.config.get("device") for r in results.values()), base.device)
        return {
            "task": task.name,
            "primary": task.primary,
            "higher_is_better": task.higher_is_better,
            "target": task.target,
            "chance": task.chance_level(),
            "seeds": seeds,
            "arguments": {
                k: v for k, v in run_arguments(base).items() if k not in ("seed", "model", "cell")
            },
            "record": {
                "argv": argv,
                "started": started,
                "ended": iso_now(),
                **environment(device=str(device)),
            },
            "rows": rows,
        }

    def write(with_plot: bool) -> dict[str, Any]:
        from rnnkit.tasks.report import write_compare_report

        data = summary()
        if not results and created:
            return data  # nothing finished in a folder of our own: nothing to keep
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "compare.json", json.dumps(data, indent=1) + "\n")
        png = root / "compare.png"
        if with_plot and results:
            from rnnkit.tasks.plots import plot_compare

            histories = {
                e: [_history(Path(r.out)) for (e2, _), r in results.items() if e2 == e]
                for e in entries
            }
            plot_compare(
                {e: h for e, h in histories.items() if h},
                task.primary,
                png,
                title=f"{task.name}: {len(seeds)} seed{'s' if len(seeds) > 1 else ''} per model",
                target=task.target,
                chance=task.chance_level(),
            )
        write_compare_report(root, data, _table(data["rows"], task, metrics), png if plot else None)
        return data

    try:
        for entry, (model, cell) in zip(entries, resolved, strict=True):
            for run in runs[entry]:
                if stop:
                    break
                cfg = replace(base, model=model, seed=run["seed"], out=run["out"])
                own = entry_options(entry)[1]
                if own:
                    cfg = replace(cfg, model_config={**base.model_config, **own})
                if cell is not None:
                    cfg = replace(cfg, cell=cell)
                _log.info("== %s, seed %s ==", entry, run["seed"])
                try:
                    result, reused = _run_one(cfg, callbacks)
                except Exception as exc:  # reported in the table; the other runs go on
                    run["status"] = f"failed: {_first_line(exc)}"
                    _log.error("rnnkit compare: %s, seed %s: %s", entry, run["seed"], run["status"])
                    write(with_plot=False)
                    continue
                if result.interrupted:
                    run["status"] = f"interrupted at step {result.steps}"
                    stop = True
                    continue
                if reused:
                    _log.info("reused the finished run in %s", result.out)
                results[(entry, run["seed"])] = result
                run.update(
                    status="ok",
                    reused=reused,
                    params=result.params,
                    steps=result.steps,
                    seconds=result.seconds,
                    backend=result.config.get("backend"),
                    valid_score=result.valid.get(task.primary, math.nan),
                    score=result.score,
                    reached=result.reached,
                    valid=result.valid,
                    test=result.test,
                )
                write(with_plot=False)
    finally:  # the table of the runs that finished is written whatever happened
        data = write(with_plot=plot)
        for d in reversed(created):  # nothing to show for it: no empty directory left
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    return root, data


def _folder(entry: str) -> str:
    """An entry's run folder: ``hybrid_rnn:update=gated`` -> ``hybrid_rnn-update=gated``."""
    return entry.replace(":", "-")


def _history(out: Path) -> list[dict[str, Any]]:
    with (out / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def compare_command(args: argparse.Namespace) -> int:
    """``rnnkit compare``: print the table (``--json``: the content of ``compare.json``;
    ``--quiet``: nothing); exit status 0 when every run finished, 1 when a run failed, 130
    when interrupted (the finished runs are reused by the next call)."""
    from rnnkit.tasks.cli import _config, callbacks_of, print_config
    from rnnkit.tasks.registry import get_task
    from rnnkit.tasks.runconfig import apply_config_file

    apply_config_file(args, "compare")
    if not args.models:
        raise ValueError("--models is required (or models = [...] in the --config file)")
    entries = [e.strip() for e in args.models.split(",") if e.strip()]
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed if args.seed is not None else 0]
    if not args.seeds:
        check_seed("--seed", seeds[0])  # before any run, not once in each
    metrics = [m.strip() for m in (getattr(args, "metrics", None) or "").split(",") if m.strip()]
    base = _config(args)
    base = replace(base, task=base.task or DEFAULT_TASK)
    if args.print_config:
        for entry in entries:
            _resolve_entry(entry)
        _check_backend(base.backend)
        print_config(args, "compare", replace(base, out=args.out))
        return 0
    root, data = compare(
        base,
        entries,
        seeds,
        out=Path(args.out) if args.out else None,
        plot=args.plot is not False,
        argv=command_line(None),
        callbacks=callbacks_of(args),
        metrics=metrics,
    )
    task = get_task(base.task)
    if wants_json(args):
        print_json(data)
    elif shows_text(args):
        body, headers = _table(data["rows"], task, metrics)
        print()
        print(format_table(body, headers))
        files = [root / "compare.json", root / "report.md"]
        if args.plot is not False and (root / "compare.png").is_file():
            files.append(root / "compare.png")
        print("\nfiles: " + ", ".join(str(f) for f in files if f.is_file()))
    statuses = [r["status"] for row in data["rows"] for r in row["runs"]]
    if any(s.startswith("interrupted") for s in statuses):
        return 130
    return 0 if all(s == "ok" for s in statuses) else 1
