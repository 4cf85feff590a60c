"""rnnkit-kernels' plugin module: registers every backend of this package."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterKernel, hookimpl


@hookimpl
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    """Register the kernels of rnnkit-kernels (each module guards its own optional imports)."""
    for kernel in _all_kernels():
        register(kernel)


def _all_kernels() -> list:  # type: ignore[type-arg]
    return []
