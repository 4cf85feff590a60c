"""The ``rnnkit`` command line: ``list``, ``plugins``, ``info`` and plugin subcommands."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
from collections.abc import Sequence

from rnnkit.core.errors import RnnkitError
from rnnkit.core.listing import format_table, matches
from rnnkit.core.plugins import PluginHost, get_host

LISTABLE = ("cells", "models", "tasks", "backends", "commands")


def _cmd_list(args: argparse.Namespace, host: PluginHost) -> int:
    pattern = args.pattern
    if args.what == "backends":
        from rnnkit.core.dispatch import Kernel

        rows = []
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
        print(format_table(rows, ["backend", "target", "available", "plugin", "description"]))
        return 0
    registry = getattr(host, args.what)
    rows = [
        [e.name, e.origin.plugin, e.origin.distribution or "-", e.description]
        for e in registry
        if matches(e.name, pattern)
    ]
    print(format_table(rows, [args.what[:-1], "plugin", "distribution", "description"]))
    return 0


def _cmd_plugins(args: argparse.Namespace, host: PluginHost) -> int:
    rows = []
    for name, info in sorted(host.plugins.items()):
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registered.items()))
        status = info.status if not info.error else f"{info.status}: {info.error}"
        rows.append(
            [name, info.origin.distribution or "-", info.origin.version or "-", status, what or "-"]
        )
    print(format_table(rows, ["plugin", "distribution", "version", "status", "registered"]))
    return 0


def _cmd_info(args: argparse.Namespace, host: PluginHost) -> int:
    import torch

    print("rnnkit")
    for dist in ("rnnkit-core", "rnnkit-kernels", "rnnkit-models", "rnnkit-tasks", "rnnkit"):
        try:
            print(f"  {dist:<16} {md.version(dist)}")
        except md.PackageNotFoundError:
            print(f"  {dist:<16} not installed")
    print("environment")
    print(f"  python           {platform.python_version()} ({sys.executable})")
    print(f"  torch            {torch.__version__}")
    try:
        print(f"  triton           {md.version('triton')}")
    except md.PackageNotFoundError:
        print("  triton           not installed")
    print(f"  platform         {platform.platform()}")
    print("devices")
    print(f"  cpu              {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            memory = f"{p.total_memory / 2**30:.0f} GiB"
            print(f"  cuda:{i}           {p.name}, {memory}, sm_{p.major}{p.minor}")
    else:
        print("  cuda             not available")
    print("backends")
    for entry in host.kernels:
        reason = entry.obj.available()
        state = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {entry.obj.backend + '/' + entry.obj.target:<22} {state}")
    broken = [f"{n}: {i.error}" for n, i in host.plugins.items() if i.status == "broken"]
    if broken:
        print("broken plugins")
        for line in broken:
            print(f"  {line}")
    return 0


BUILTIN = {
    "list": "list registered cells, models, tasks, backends or commands",
    "plugins": "list plugins with their distribution, version and registrations",
    "info": "versions, devices and the availability of every backend",
}


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    """The argument parser, with every subcommand registered by plugins."""
    from rnnkit.core import __version__

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
    sub.add_parser("plugins", help=BUILTIN["plugins"], description=BUILTIN["plugins"])
    sub.add_parser("info", help=BUILTIN["info"], description=BUILTIN["info"])
    for entry in host.commands:
        if entry.name in BUILTIN:
            continue
        cp = sub.add_parser(entry.name, help=entry.obj.help, description=entry.obj.help)
        entry.obj.configure(cp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnnkit`` command; returns the exit status."""
    try:
        host = get_host()
    except RnnkitError as exc:
        print(f"rnnkit: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(host)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
