"""The native library of the ``selective_cpp`` backend (built through
:mod:`rnnkit.kernels.native`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnkit.kernels.native import NativeLibrary

__all__ = ["DISABLE_ENV", "LIBRARY", "LIB_NAME", "ops"]

#: The torch.ops namespace and library name (``torch.ops.rnnkit_selective_cpp.forward``).
LIB_NAME = "rnnkit_selective_cpp"
#: Set to ``0`` to switch this backend off (``auto`` then uses ``selective_torch``).
DISABLE_ENV = "RNNKIT_SELECTIVE_CPP"


def _register_fakes() -> None:
    # the fake kernels (torch.compile, torch.export) can only be registered once the ops exist
    from rnnkit.kernels.selective.cpp import _fake

    _fake.register()


LIBRARY = NativeLibrary(
    name=LIB_NAME,
    csrc=Path(__file__).parent / "csrc",
    sources=("selective.cpp",),
    disable_env=DISABLE_ENV,
    on_load=_register_fakes,
)


def ops() -> Any:
    """``torch.ops.rnnkit_selective_cpp``, compiling or loading the library on first use.

    Raises:
        rnnkit.kernels.native.BuildError: disabled, no toolchain, or the build failed.
    """
    return LIBRARY.ops()
