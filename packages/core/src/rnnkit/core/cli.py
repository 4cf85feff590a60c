"""The ``rnnkit`` command line: ``list``, ``plugins``, ``info`` and plugin subcommands."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from rnnkit.core import __version__
from rnnkit.core.errors import RnnkitError
from rnnkit.core.kernel import Kernel, Priority
from rnnkit.core.listing import format_table, matches
from rnnkit.core.output import (
    add_output_options,
    configure_logging,
    is_quiet,
    print_json,
    wants_json,
)
from rnnkit.core.plugins import PluginHost, PluginWarning, get_host
from rnnkit.core.ranking import DTYPES, probe_call, rank_backends

LISTABLE = ("cells", "models", "tasks", "backends", "commands")
#: options of ``rnnkit list backends --cell NAME`` that describe the call
CALL_OPTIONS = ("cell", "heads", "batch", "time", "dtype", "device", "inference", "resets")


def _emit_table(args: argparse.Namespace, rows: list[list[object]], header: list[str]) -> None:
    """Print ``rows`` as a table, as JSON (a list of objects keyed by ``header``) with
    ``--json``, or nothing with ``--quiet``."""
    if wants_json(args):
        print_json([dict(zip(header, row, strict=True)) for row in rows])
    elif not is_quiet(args):
        print(format_table(rows, header))


def _cmd_list(args: argparse.Namespace, host: PluginHost) -> int:
    pattern = args.pattern
    if args.what == "backends" and args.cell is not None:
        return _list_backends_for_call(args)
    given = [f"--{o}" for o in CALL_OPTIONS if getattr(args, o) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: only with `rnnkit list backends --cell NAME`")
    if args.what == "backends":
        rows: list[list[object]] = []
        for entry in host.kernels:
            k: Kernel = entry.obj
            if not matches(k.backend, pattern):
                continue
            reason = k.available()
            rows.append(
                [
                    k.backend,
                    k.target,
                    "yes" if reason is None else f"no: {reason}",
                    entry.origin.plugin,
                    k.description,
                ]
            )
        _emit_table(args, rows, ["backend", "target", "available", "plugin", "description"])
        return 0
    registry = getattr(host, args.what)
    rows = [
        [e.name, e.origin.plugin, e.origin.distribution or "-", e.description]
        for e in registry
        if matches(e.name, pattern)
    ]
    _emit_table(args, rows, [args.what[:-1], "plugin", "distribution", "description"])
    return 0


def _tier(priority: int) -> str:
    """The :class:`Priority` tier's name of ``priority``, ``-`` for a value off the scale."""
    try:
        return Priority(priority).name
    except ValueError:
        return "-"


def _list_backends_for_call(args: argparse.Namespace) -> int:
    """``rnnkit list backends --cell NAME``: the ranking ``backend="auto"`` applies to a call."""
    sizes = {
        k: getattr(args, k)
        for k in ("batch", "time", "heads", "dtype", "device")
        if getattr(args, k) is not None
    }
    call = probe_call(args.cell, inference=args.inference, resets=args.resets, **sizes)
    ranking = rank_backends(call)
    heads = f", heads {args.heads}" if args.heads is not None else ""
    x = call.x
    dtype = str(x.dtype).removeprefix("torch.")
    rows: list[list[object]] = [
        [
            r.kernel.backend,
            r.kernel.target,
            r.priority,
            _tier(r.priority),
            "picked" if r.chosen else "",
            "yes" if r.reason is None else f"no: {r.reason}",
        ]
        for r in ranking.kernels
        if matches(r.kernel.backend, args.pattern)
    ]
    header = ["backend", "target", "priority", "tier", "auto", "can run this call"]
    if wants_json(args):
        print_json(
            {
                "call": {
                    "cell": args.cell,
                    "input_size": call.cell.input_size,
                    "hidden_size": call.cell.hidden_size,
                    "heads": args.heads,
                    "x_shape": list(x.shape),
                    "dtype": dtype,
                    "device": str(x.device),
                    "inference": bool(args.inference),
                    "resets": bool(args.resets),
                },
                "backends": [dict(zip(header, row, strict=True)) for row in rows],
                "picked": ranking.chosen.backend if ranking.chosen is not None else None,
                "forced": ranking.forced,
                "error": None if ranking.chosen is not None else str(ranking.error),
            }
        )
        return 0
    if is_quiet(args):
        return 0
    print(
        f"cell {args.cell} (input {call.cell.input_size}, hidden {call.cell.hidden_size}{heads}); "
        f"x {tuple(x.shape)} {dtype} on {x.device}; "
        + ("inference" if args.inference else "training (gradients needed)")
        + ("; with resets" if args.resets else "")
    )
    print(format_table(rows, header))
    forced = f" (forced by RNNKIT_BACKEND={ranking.forced})" if ranking.forced else ""
    if ranking.chosen is not None:
        print(f'backend="auto" picks {ranking.chosen.backend}{forced}')
    else:
        print(f'backend="auto" picks nothing{forced}: {ranking.error}')
    return 0


def _cmd_plugins(args: argparse.Namespace, host: PluginHost) -> int:
    rows = []
    for name, info in sorted(host.plugins.items()):
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registered.items()))
        problems = "; ".join([info.error] if info.error else info.warnings)
        status = f"{info.status}: {problems}" if problems else info.status
        rows.append(
            [name, info.origin.distribution or "-", info.origin.version or "-", status, what or "-"]
        )
    if wants_json(args):
        print_json(
            [
                {
                    "plugin": name,
                    "distribution": info.origin.distribution,
                    "version": info.origin.version,
                    "status": info.status,
                    "error": info.error or None,
                    "warnings": list(info.warnings),
                    "registered": {k: list(v) for k, v in sorted(info.registered.items())},
                }
                for name, info in sorted(host.plugins.items())
            ]
        )
    elif not is_quiet(args):
        print(format_table(rows, ["plugin", "distribution", "version", "status", "registered"]))
    return 0


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def info_document(host: PluginHost) -> dict[str, Any]:
    """What ``rnnkit info`` reports, as JSON-ready data (``rnnkit info --json`` prints it):
    ``versions`` (``None``: not installed), ``environment``, ``devices``, ``backends`` (per
    ``backend/target``: ``None`` when available, else the reason), ``broken_plugins`` and
    ``plugin_warnings``."""
    import torch

    devices: list[dict[str, Any]] = [
        {
            "device": "cpu",
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "device": f"cuda:{i}",
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"sm_{p.major}{p.minor}",
                }
            )
    dists = ("rnnkit-core", "rnnkit-kernels", "rnnkit-models", "rnnkit-tasks", "rnnkit")
    return {
        "versions": {d: _version(d) for d in dists},
        "environment": {
            "python": platform.python_version(),
            "executable": sys.executable,
            "torch": torch.__version__,
            "triton": _version("triton"),
            "platform": platform.platform(),
            "cuda_available": torch.cuda.is_available(),
        },
        "devices": devices,
        "backends": {f"{e.obj.backend}/{e.obj.target}": e.obj.available() for e in host.kernels},
        "broken_plugins": {n: i.error for n, i in host.plugins.items() if i.status == "broken"},
        "plugin_warnings": {n: list(i.warnings) for n, i in host.plugins.items() if i.warnings},
    }


def _cmd_info(args: argparse.Namespace, host: PluginHost) -> int:
    doc = info_document(host)
    if wants_json(args):
        print_json(doc)
        return 0
    if is_quiet(args):
        return 0
    print("rnnkit")
    for dist, version in doc["versions"].items():
        print(f"  {dist:<16} {version or 'not installed'}")
    env = doc["environment"]
    print("environment")
    print(f"  python           {env['python']} ({env['executable']})")
    print(f"  torch            {env['torch']}")
    print(f"  triton           {env['triton'] or 'not installed'}")
    print(f"  platform         {env['platform']}")
    print("devices")
    for d in doc["devices"]:
        if d["device"] == "cpu":
            print(f"  cpu              {d['cores']} cores, torch threads {d['torch_threads']}")
        else:
            memory = f"{d['memory_gib']:.0f} GiB"
            print(f"  {d['device']:<16} {d['name']}, {memory}, {d['capability']}")
    if not env["cuda_available"]:
        print("  cuda             not available")
    print("backends")
    for name, reason in doc["backends"].items():
        state = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {name:<22} {state}")
    if doc["broken_plugins"]:
        print("broken plugins")
        for n, error in doc["broken_plugins"].items():
            print(f"  {n}: {error}")
    if doc["plugin_warnings"]:
        print("plugin warnings")
        for n, warnings in doc["plugin_warnings"].items():
            for w in warnings:
                print(f"  {n}: {w}")
    return 0


BUILTIN = {
    "list": "list registered cells, models, tasks, backends or commands",
    "plugins": "list plugins with their distribution, version and registrations",
    "info": "versions, devices and the availability of every backend",
}


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    """The argument parser, with every subcommand registered by plugins."""
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="rnnkit: recurrent sequence models in PyTorch"
    )
    parser.add_argument("--version", action="version", version=f"rnnkit-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("list", help=BUILTIN["list"], description=BUILTIN["list"])
    p.add_argument("what", choices=LISTABLE)
    p.add_argument(
        "pattern",
        nargs="?",
        help="keep the names containing PATTERN, or matching it as a glob when it has * ? [ "
        "(case-insensitive)",
    )
    call = p.add_argument_group(
        "list backends --cell NAME",
        "the ranking backend='auto' applies to one call of cell NAME built with small sizes",
    )
    call.add_argument("--cell", metavar="NAME", help="registered cell the call runs")
    call.add_argument("--heads", type=int, help="the cell's heads (cells that take heads)")
    call.add_argument("--batch", type=int, metavar="B", help="batch size (default 4)")
    call.add_argument("--time", type=int, metavar="T", help="sequence length (default 16)")
    call.add_argument("--dtype", choices=list(DTYPES), help="default float32")
    call.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    call.add_argument(
        "--inference", action="store_true", help="no gradients needed (default: training)"
    )
    call.add_argument("--resets", action="store_true", help="the call passes a resets mask")
    add_output_options(p)
    p = sub.add_parser("plugins", help=BUILTIN["plugins"], description=BUILTIN["plugins"])
    add_output_options(p)
    p = sub.add_parser("info", help=BUILTIN["info"], description=BUILTIN["info"])
    add_output_options(p)
    # The host refuses plugin commands named like these (plugins.BUILTIN_COMMANDS): a conflict.
    for entry in host.commands:
        cp = sub.add_parser(entry.name, help=entry.obj.help, description=entry.obj.help)
        entry.obj.configure(cp)
    return parser


#: exit status when the reader of stdout went away (``rnnkit list cells | head -1``): 128 +
#: SIGPIPE, what a shell reports for ``cat`` and other tools that SIGPIPE ends
EXIT_BROKEN_PIPE = 141
#: exit status of a command stopped by Ctrl-C: 128 + SIGINT, as a shell reports it (and as
#: ``rnnkit train`` returns for a run it stopped with its checkpoint written)
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnnkit`` command; returns the exit status.

    When stdout is a pipe whose reader has gone (``rnnkit list cells | head -1``), the
    command stops quietly with status :data:`EXIT_BROKEN_PIPE` instead of a traceback; a
    command stopped by Ctrl-C says so in one line and returns :data:`EXIT_INTERRUPTED`.
    """
    try:
        try:
            return _main(argv)
        finally:
            # buffered output reaches the pipe here, not at interpreter exit where a broken
            # pipe could only print "Exception ignored ..."
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at the null device: the interpreter flushes it once more at exit."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file descriptor (a test's capture): no flush at exit can fail
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _load_host() -> PluginHost:
    """The plugin host, each plugin problem printed as one ``rnnkit: warning:`` line on
    stderr (Python's format would add a line of rnnkit's own source, which says nothing to the
    user); other warnings go on as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        host = get_host()
    for w in caught:
        if issubclass(w.category, PluginWarning):
            text = str(w.message).removeprefix("rnnkit ")
            print(f"rnnkit: warning: {text} (`rnnkit plugins` lists them all)", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return host


def _main(argv: Sequence[str] | None) -> int:
    try:
        host = _load_host()
    except RnnkitError as exc:
        print(f"rnnkit: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(host)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # messages (the trainer's progress lines, warnings) go to stderr through logging; the
    # results stay on stdout (rnnkit.core.output)
    configure_logging(quiet=is_quiet(args))
    try:
        if args.command == "list":
            return _cmd_list(args, host)
        if args.command == "plugins":
            return _cmd_plugins(args, host)
        if args.command == "info":
            return _cmd_info(args, host)
        return host.commands.get(args.command).obj.run(args)
    except (RnnkitError, ValueError, TypeError) as exc:
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Ctrl-C (or a training run that a command started, stopped by it or by SIGTERM):
        # one line and the shell's status for SIGINT, not a traceback of wherever it landed
        why = f" ({exc})" if str(exc) else ""
        print(f"\nrnnkit {args.command}: interrupted{why}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
