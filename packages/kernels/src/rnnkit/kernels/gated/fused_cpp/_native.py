"""The native library of the ``fused_cpp`` backend (built through :mod:`rnnkit.kernels.native`).

Kept in its own module so that :mod:`._cells` and the package ``__init__`` share one
:class:`~rnnkit.kernels.native.NativeLibrary` without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnkit.kernels.native import NativeLibrary

__all__ = ["DISABLE_ENV", "LIBRARY", "LIB_NAME", "ops"]

#: The torch.ops namespace and library name (``torch.ops.rnnkit_fused_cpp.lstm_forward``).
LIB_NAME = "rnnkit_fused_cpp"
#: Set to ``0`` to switch this backend off (``auto`` then uses the pure-torch ``fused`` loop).
DISABLE_ENV = "RNNKIT_FUSED_CPP"


def _register_fakes() -> None:
    # the fake kernels (torch.compile, torch.export) can only be registered once the ops exist
    from rnnkit.kernels.gated.fused_cpp import _fake

    _fake.register()


#: The C++ time loops, no torch headers: the cells as policies of the loop drivers
#: (``gated_cells.cpp``, ``gated_loops.h``), their row kernels (``gated_rows.cpp``), the thread
#: team of the float loops (``gated_team.cpp``) and its tile kernels (``gated_tiles_*.cpp``);
#: and their torch glue (``gated_ops.cpp``: argument checks, BLAS, ``TORCH_LIBRARY``). Every
#: header is listed so that it takes part in the build key.
LIBRARY = NativeLibrary(
    name=LIB_NAME,
    csrc=Path(__file__).parent / "csrc",
    sources=(
        "gated_cells.cpp",
        "gated_rows.cpp",
        "gated_team.cpp",
        "gated_ops.cpp",
        "gated_tiles_avx512.cpp",
        "gated_tiles_avx2.cpp",
        "gated_tiles_generic.cpp",
        "buffer_pool.cpp",
    ),
    headers=(
        "gated_cells.h",
        "gated_loops.h",
        "gated_rows.h",
        "gated_team.h",
        "gated_math.h",
        "gated_tiles.h",
        "gated_tiles_impl.h",
        "buffer_pool.h",
    ),
    disable_env=DISABLE_ENV,
    on_load=_register_fakes,
)


def ops() -> Any:
    """``torch.ops.rnnkit_fused_cpp``, compiling or loading the library on first use.

    Raises:
        rnnkit.kernels.native.BuildError: disabled, no toolchain, or the build failed.
    """
    return LIBRARY.ops()
