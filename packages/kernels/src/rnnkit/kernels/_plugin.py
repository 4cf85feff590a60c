"""rnnkit-kernels' plugin module: registers every backend of this package.

Each backend module in ``BACKEND_MODULES`` exposes ``kernels() -> list[Kernel]``. Optional
dependencies (triton, CUDA) are guarded inside those modules: a kernel whose dependency is
missing still registers and reports why through ``Kernel.available``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rnnkit.core.dispatch import Kernel
from rnnkit.core.hookspecs import RegisterCommand, RegisterKernel, hookimpl

#: Modules (relative to ``rnnkit.kernels``) that define backends.
BACKEND_MODULES: tuple[str, ...] = (
    "gated.fused",
    "gated.fused_cpp",
    "gated.torch_native",
    "gated.triton",
    "gated.cuda",
    "linear.scan",
    "matrix_state",
    "selective",
    "analog",
    "newton",
)


def all_kernels() -> list[Kernel]:
    """Every kernel of this package, in ``BACKEND_MODULES`` order."""
    out: list[Kernel] = []
    for name in BACKEND_MODULES:
        module = importlib.import_module(f"rnnkit.kernels.{name}")
        out.extend(module.kernels())
    return out


@hookimpl
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    """Register the kernels of rnnkit-kernels."""
    for kernel in all_kernels():
        register(kernel)


@hookimpl
def rnnkit_register_commands(register: RegisterCommand) -> None:
    """Register ``rnnkit analog`` (the analog crossbar simulator's experiments; rnnkit-tasks adds
    ``kws`` and ``charlm`` to it) and ``rnnkit kernels`` (build and inspect the native C++
    libraries)."""
    from rnnkit.kernels.analog.cli import configure, run

    register(
        "analog",
        help="analog crossbar simulator experiments (adc-error, cost; kws, charlm: rnnkit-tasks)",
        configure=configure,
        run=run,
    )
    register(
        "kernels",
        help="build the native (C++) kernel libraries ahead of time, or show their status",
        configure=configure_kernels_command,
        run=run_kernels_command,
    )


# --- rnnkit kernels ----------------------------------------------------------------------------


def configure_kernels_command(parser: argparse.ArgumentParser) -> None:
    """Add ``build [--force] [--verbose] [NAME ...]`` and ``status [NAME ...]``."""
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION")
    b = sub.add_parser("build", help="compile every native library (or load it from the cache)")
    b.add_argument("--force", action="store_true", help="rebuild, even after a failed build")
    b.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    b.add_argument("names", nargs="*", metavar="NAME", help="libraries to build (default: all)")
    s = sub.add_parser("status", help="availability, cache directory and build of each library")
    s.add_argument("names", nargs="*", metavar="NAME", help="libraries to show (default: all)")


def _native_libraries(names: list[str]) -> dict[str, object]:
    # The libraries are defined by the backend modules: import them all first.
    for module in BACKEND_MODULES:
        importlib.import_module(f"rnnkit.kernels.{module}")
    from rnnkit.kernels import native

    libs = native.libraries()
    unknown = [n for n in names if n not in libs]
    if unknown:
        raise KeyError(
            f"unknown native library {', '.join(unknown)} (known: {', '.join(sorted(libs))})"
        )
    return {n: libs[n] for n in (names or sorted(libs))}


def run_kernels_command(args: argparse.Namespace) -> int:
    """Run ``rnnkit kernels build`` or ``status``; returns the exit status (1 if a build failed)."""
    from rnnkit.kernels.native import BuildError, NativeLibrary

    action = getattr(args, "kernels_command", None)
    if action not in ("build", "status"):
        print("usage: rnnkit kernels {build,status} [options]", file=sys.stderr)
        return 2
    try:
        libs = _native_libraries(list(args.names))
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    failed = 0
    for name, obj in libs.items():
        assert isinstance(obj, NativeLibrary)
        if action == "status":
            print(name)
            for key, value in obj.status().items():
                print(f"  {key:<10} {value}")
            continue
        missing = obj.cannot_build()
        if missing is not None and not args.names:
            # A library for hardware this machine lacks (a CUDA one on a CPU-only machine), or
            # one that needs a compiler it lacks (nvcc) with nothing prebuilt or cached, is not
            # a failure of `build`; naming it asks for it and reports the reason.
            print(f"{name}: skipped ({missing})")
            continue
        print(f"{name}: building (or loading from the cache) ...", flush=True)
        try:
            info = obj.build(force=bool(args.force), verbose=bool(args.verbose))
        except BuildError as e:
            failed += 1
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            continue
        how = "compiled" if info.compiled else "loaded from the cache"
        if info.prebuilt:
            how = "loaded the prebuilt library"
        print(f"{name}: {how} in {info.seconds:.1f} s: {info.path}")
        ops = obj.ops()
        if hasattr(ops, "info"):
            # What the library chose on this CPU (fused_cpp: tile kernels, BLAS, SIMD).
            print(f"  {ops.info()}")
    return 1 if failed else 0
