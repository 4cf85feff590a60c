"""The CUDA library of the ``cuda`` backend (built through :mod:`rnnkit.kernels.native`, or
shipped prebuilt in the wheel by ``packages/kernels/hatch_build.py``), and a compile check of
its kernels with plain ``nvcc`` that needs no GPU.

The kernels (``csrc/gated_cuda.cu``) include no torch header, so :func:`compile_check` compiles
them with ``nvcc`` alone in a few seconds (the CI test); the torch glue (``gated_cuda_ops.cpp``,
``gated_cuda_stream.cpp``) is compiled with them when a CUDA torch builds the library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from rnnkit.kernels.native import NativeLibrary

__all__ = [
    "CSRC",
    "DISABLE_ENV",
    "HEADERS",
    "KERNEL_SOURCES",
    "LIBRARY",
    "LIB_NAME",
    "PREBUILT_DIR",
    "CompileCheckError",
    "build_requirement",
    "compile_check",
    "nvcc",
    "ops",
    "requirement",
    "toolkit_root",
]

#: The torch.ops namespace and library name (``torch.ops.rnnkit_gated_cuda.forward``).
LIB_NAME = "rnnkit_gated_cuda"
#: Set to ``0`` to switch this backend off.
DISABLE_ENV = "RNNKIT_GATED_CUDA"
#: Directory of the sources.
CSRC = Path(__file__).parent / "csrc"
#: The CUDA translation units without torch headers (what :func:`compile_check` compiles).
KERNEL_SOURCES = ("gated_cuda.cu",)
#: Headers the kernel sources include (part of the build key and the compile check's cache key).
HEADERS = ("gated_cuda.h", "gated_cell.h")


def nvcc() -> str | None:
    """Path of ``nvcc``, looked up as torch's extension builder does: ``$CUDA_HOME`` (or
    ``$CUDA_PATH``), then ``PATH``, then ``/usr/local/cuda``; ``None`` when there is none."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(env)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def _toolkit_env() -> tuple[str, str] | None:
    """``(variable, root)`` of the toolkit that ``$CUDA_HOME`` (else ``$CUDA_PATH``) names, if
    either is set (the variable's name goes into messages, so the user knows which to fix)."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(env)
        if root:
            return env, root
    return None


def _has_headers(root: Path) -> bool:
    return (root / "include" / "cuda_runtime.h").is_file()


def _dryrun_top(path: str) -> Path | None:
    """The toolkit root that ``nvcc`` itself reports (``#$ TOP=...`` of ``nvcc --dryrun``): the
    one way to find it behind a wrapper script or a link farm."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "empty.cu"
        source.write_text("")
        try:
            done = subprocess.run(
                [path, "--dryrun", "-c", str(source), "-o", str(Path(tmp) / "empty.o")],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return Path(line[len("#$ TOP=") :].strip().strip('"')).resolve()
    return None


@lru_cache(maxsize=1)
def toolkit_root() -> Path | None:
    """The CUDA toolkit whose headers the torch glue compiles against (``include/cuda_runtime.h``
    below it); ``None`` when there is no ``nvcc`` or no headers beside it.

    ``$CUDA_HOME`` (or ``$CUDA_PATH``) where set; else the folder above the ``bin/`` holding
    :func:`nvcc` (what torch's extension builder assumes); where that has no headers (``nvcc``
    is a wrapper script in ``/usr/local/bin``, say), the root that ``nvcc --dryrun`` reports.
    """
    named = _toolkit_env()
    if named is not None:
        root = Path(named[1])
        return root if _has_headers(root) else None
    path = nvcc()
    if path is None:
        return None
    guess = Path(path).parent.parent
    if _has_headers(guess):
        return guess
    top = _dryrun_top(path)
    return top if top is not None and _has_headers(top) else None


def _toolkit_flags() -> tuple[list[str], list[str]]:
    """Include folders and linker flags that point torch's extension builder at
    :func:`toolkit_root` where its own guess of the toolkit (made once, when
    ``torch.utils.cpp_extension`` is imported) has no headers; none where it has."""
    from torch.utils import cpp_extension

    guessed = cpp_extension.CUDA_HOME
    root = toolkit_root()
    if root is None or (guessed is not None and _has_headers(Path(guessed))):
        return [], []
    lib = root / "lib64" if (root / "lib64").is_dir() else root / "lib"
    return [str(root / "include")], [f"-L{lib}"]


@lru_cache(maxsize=1)
def _nvcc_version() -> str:
    path = nvcc()
    if path is None:
        return "none"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown"


def requirement() -> str | None:
    """What this machine lacks to run the CUDA kernels at all (``None`` when nothing); compiling
    them also needs :func:`build_requirement`."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def build_requirement() -> str | None:
    """What this machine lacks to compile the CUDA kernels besides the C++ toolchain: nvcc (not
    needed where a matching prebuilt or cached library is there)."""
    path = nvcc()
    if path is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH) to compile the CUDA kernels"
    if toolkit_root() is None:
        named = _toolkit_env()
        beside = f"${named[0]} ({named[1]})" if named else f"nvcc ({path})"
        fix = named[0] if named else "CUDA_HOME"
        return (
            f"no CUDA headers (include/cuda_runtime.h) in the toolkit of {beside}: set {fix} "
            "to the toolkit's root to compile the CUDA kernels"
        )
    return None


def _arch() -> str:
    """``major.minor`` of the current device (``none`` without one): the build targets it."""
    if not torch.cuda.is_available():
        return "none"
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _key_parts() -> tuple[str, ...]:
    return (f"cuda={torch.version.cuda}", f"nvcc={_nvcc_version()}", f"arch={_arch()}")


def _build_env() -> dict[str, str]:
    # One architecture, the device's: torch would otherwise compile for every visible device
    # or a long default list (minutes).
    return {"TORCH_CUDA_ARCH_LIST": _arch()}


#: Where a wheel built by ``packages/kernels/hatch_build.py`` ships the library prebuilt.
PREBUILT_DIR = Path(__file__).parent / "_prebuilt"

#: The CUDA kernels and their torch glue. The build key holds the sources, torch, the CUDA
#: version, nvcc and the GPU architecture; nothing in it depends on a call's shapes (the tiling
#: is a runtime argument), so there is one compile per machine and version. A prebuilt library
#: in ``PREBUILT_DIR`` whose manifest matches torch, CUDA, the sources and the device's
#: architecture is loaded instead (see :mod:`rnnkit.kernels.native`).
LIBRARY = NativeLibrary(
    name=LIB_NAME,
    csrc=CSRC,
    sources=("gated_cuda.cu", "gated_cuda_ops.cpp", "gated_cuda_stream.cpp"),
    headers=HEADERS,
    disable_env=DISABLE_ENV,
    cuda_cflags=("-O3", "-std=c++17", "-lineinfo"),
    requires=requirement,
    key_parts=_key_parts,
    build_env=_build_env,
    build_requires=build_requirement,
    toolkit_flags=_toolkit_flags,
    prebuilt_dir=PREBUILT_DIR,
    device_arch=_arch,
)


def ops() -> Any:
    """``torch.ops.rnnkit_gated_cuda``, compiling or loading the library on first use.

    Raises:
        rnnkit.kernels.native.BuildError: disabled, no CUDA device or nvcc, or the build failed.
    """
    return LIBRARY.ops()


class CompileCheckError(RuntimeError):
    """``nvcc`` rejected a kernel source (the message holds its diagnostics)."""


def compile_check(
    arch: str = "sm_90", cache_dir: Path | None = None, sources: tuple[str, ...] = KERNEL_SOURCES
) -> list[Path]:
    """Compile each kernel source with ``nvcc -arch=<arch> -c`` (no GPU needed); return the
    object files.

    An object is cached in ``cache_dir`` (default ``<tmp>/rnnkit-nvcc-check``) under a name
    holding the hash of the sources, headers, nvcc version, architecture and flags, so an
    unchanged source is not compiled again.

    Raises:
        FileNotFoundError: there is no ``nvcc`` (see :func:`nvcc`).
        CompileCheckError: a source does not compile; the message holds nvcc's output.
    """
    path = nvcc()
    if path is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    out_dir = cache_dir or Path(tempfile.gettempdir()) / "rnnkit-nvcc-check"
    out_dir.mkdir(parents=True, exist_ok=True)
    # torch's own nvcc flags too (no implicit half / bfloat16 conversions), as the real build
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    flags = [f"-arch={arch}", "-O3", "-std=c++17", "-Werror", "all-warnings", "-I", str(CSRC)]
    flags += COMMON_NVCC_FLAGS
    objects: list[Path] = []
    for source in sources:
        h = hashlib.sha256()
        for name in (source, *HEADERS):
            h.update((CSRC / name).read_bytes())
        for part in (*flags, _nvcc_version()):
            h.update(part.encode())
        obj = out_dir / f"{Path(source).stem}-{arch}-{h.hexdigest()[:16]}.o"
        if not obj.exists():
            tmp = obj.with_name(f".{obj.name}.{os.getpid()}.tmp")
            cmd = [path, *flags, "-c", str(CSRC / source), "-o", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise CompileCheckError(
                    f"nvcc failed on {source} ({' '.join(cmd)}):\n{done.stdout}{done.stderr}"
                )
            os.replace(tmp, obj)
        objects.append(obj)
    return objects
