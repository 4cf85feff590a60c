"""rnnkit-kernels' plugin module: registers every backend of this package.

Each backend module in ``BACKEND_MODULES`` exposes ``kernels() -> list[Kernel]``. Optional
dependencies (triton, CUDA) are guarded inside those modules: a kernel whose dependency is
missing still registers and reports why through ``Kernel.available``.
"""

from __future__ import annotations

import importlib

from rnnkit.core.dispatch import Kernel
from rnnkit.core.hookspecs import RegisterCommand, RegisterKernel, hookimpl

#: Modules (relative to ``rnnkit.kernels``) that define backends.
BACKEND_MODULES: tuple[str, ...] = ("fused", "torch_native", "triton", "scan", "analog", "newton")


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
    """Register ``rnnkit analog`` (the analog crossbar simulator's experiments)."""
    from rnnkit.kernels.analog.cli import configure, run

    register(
        "analog",
        help="analog crossbar simulator experiments (adc-error, cost, kws, charlm)",
        configure=configure,
        run=run,
    )
