"""``report.md``: a run's or a comparison's results as Markdown that reads well on GitHub.

A report holds the results table, the plot (a relative image link, so the folder can be moved,
committed or attached as it is), the configuration and the software it ran with. The run
report is written by the trainer beside ``final.json``; the comparison report by ``rnnkit
compare`` beside ``compare.json``, with a link to each run's own report.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnkit.tasks.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from rnnkit.tasks.trainer import RunResult

__all__ = ["markdown_table", "run_title", "write_compare_report", "write_run_report"]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else _fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_title(result: RunResult) -> str:
    """``task / model (cell, hidden N, L layers)``: what was trained, for titles."""
    mc = result.config.get("model_config", {})
    kernels = result.config.get("kernels") or []
    cell = mc.get("cell") or (kernels[0]["cell"] if kernels else None)
    parts = [str(cell)] if cell else []
    if "hidden_size" in mc:
        parts.append(f"hidden {mc['hidden_size']}")
    if isinstance(mc.get("num_layers"), int) and mc["num_layers"] > 1:
        parts.append(f"{mc['num_layers']} layers")
    return f"{result.task} / {result.model}" + (f" ({', '.join(parts)})" if parts else "")


def _software(record: Mapping[str, Any]) -> str:
    rows: list[list[Any]] = [[name, v] for name, v in record.get("versions", {}).items()]
    git = record.get("git")
    if git:
        rows.append(
            ["git commit", git["commit"] + (" (with local changes)" if git["dirty"] else "")]
        )
    for key in ("python", "platform", "device", "threads", "world_size", "started", "ended"):
        if key in record:
            rows.append([key.replace("_", " "), record[key]])
    argv = record.get("argv")
    if argv:
        rows.append(["command", "`" + " ".join(argv).replace("`", "'") + "`"])
    return markdown_table(rows, ["", "value"])


def write_run_report(out: Path, result: RunResult) -> Path:
    """Write ``out/report.md`` for a finished run; its path."""
    keys = list(dict.fromkeys([result.primary, *result.test]))
    metrics = markdown_table(
        [[k, result.valid.get(k, math.nan), result.test.get(k, math.nan)] for k in keys],
        ["metric", "valid", "test"],
    )
    facts = [
        f"{result.params:,} parameters, {result.steps} steps in {result.seconds:.1f} s"
        + (" (stopped early)" if result.stopped_early else "")
        + f"; the model of step {result.best_step} (best validation {result.primary}) "
        "was tested.",
    ]
    if result.target is not None:
        word = "reached" if result.reached else "**not reached**"
        facts.append(f"Target: test {result.primary} {result.target:g}, {word}.")
    cfg = result.config
    budget = cfg.get("budget", {})
    setting_rows: list[list[Any]] = [
        ["task", cfg.get("task")],
        ["model", cfg.get("model")],
        *[[f"model: {k}", v] for k, v in cfg.get("model_config", {}).items()],
        ["backend", f"{cfg.get('backend')} (asked: {cfg.get('backend_requested')})"],
        ["seed", cfg.get("seed")],
        *[[k.replace("_", " "), v] for k, v in budget.items()],
    ]
    parts = [
        f"# {run_title(result)}",
        "",
        " ".join(facts),
        "",
        metrics,
        "",
    ]
    if (out / "curves.png").is_file():
        parts += ["![learning curves](curves.png)", ""]
    parts += ["## Configuration", "", markdown_table(setting_rows, ["setting", "value"]), ""]
    kernels = cfg.get("kernels") or []
    if kernels:
        krows = [
            [
                k["module"],
                k["cell"],
                f"{k['input_size']} -> {k['hidden_size']} -> {k['output_size']}",
                k.get("train"),
                k.get("eval"),
            ]
            for k in kernels
        ]
        table = markdown_table(krows, ["module", "cell", "widths", "training", "evaluation"])
        parts += ["## Kernels", "", table, ""]
    parts += ["## Software and machine", "", _software(result.record), ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def write_compare_report(
    root: Path,
    summary: Mapping[str, Any],
    table: tuple[Sequence[Sequence[Any]], Sequence[str]],
    plot: Path | None,
) -> Path:
    """Write ``root/report.md`` for a comparison: the table, the plot, a link to every run's
    report, the common arguments and the software; its path.

    ``summary`` is the content of ``compare.json``; ``table`` its rows and headers.
    """
    seeds = ", ".join(str(s) for s in summary["seeds"])
    parts = [
        f"# {summary['task']}: {', '.join(r['entry'] for r in summary['rows'])}",
        "",
        f"Test and validation {summary['primary']}: mean ± sample standard deviation over "
        f"seeds {seeds} (the runs that finished).",
        "",
        markdown_table(*table),
        "",
    ]
    if plot is not None and plot.is_file():
        parts += [f"![learning curves]({os.path.relpath(plot, root)})", ""]
    links = []
    for row in summary["rows"]:
        for r in row["runs"]:
            report = Path(r["out"]) / "report.md"
            name = f"{row['entry']}, seed {r['seed']}"
            if r["status"] == "ok" and report.is_file():
                rel = Path(os.path.relpath(report, root)).as_posix()
                links.append(f"- [{name}]({rel})")
            else:
                links.append(f"- {name}: {r['status']}")
    parts += ["## Runs", "", *links, ""]
    args = [[k, v] for k, v in summary.get("arguments", {}).items() if v is not None]
    parts += ["## Arguments", "", markdown_table(args, ["argument", "value"]), ""]
    parts += ["## Software and machine", "", _software(summary.get("record", {})), ""]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
