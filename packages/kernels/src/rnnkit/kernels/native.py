"""Build, cache and load the native (C++) CPU libraries of rnnkit-kernels.

Each native backend keeps its C++ sources next to its Python code and describes them with one
:class:`NativeLibrary`. The sources are compiled with ``torch.utils.cpp_extension.load``
(ninja and the C++ compiler torch uses, ``$CXX`` or ``c++``) the first time a kernel needs them,
or ahead of time with ``rnnkit kernels build``. Nothing is compiled at import time.

A library goes to a cache directory keyed by its sources, the compile flags, the compiler and
the torch and Python versions: ``$RNNKIT_CPP_CACHE/<library>/<key>`` if the variable is set,
else ``$XDG_CACHE_HOME/rnnkit/cpp/<library>/<key>`` (by default under ``~/.cache``). A later
process loads it in milliseconds, without ninja or a compiler. The flags are ``-O3`` without
``-march``: sources that want SIMD choose the variant when the library loads (for example with
GCC's ``target_clones``), so a cached library also runs on another x86-64 CPU.

A failed build is recorded in the cache directory (``FAILED``) so that later processes report
the reason instead of compiling again; ``rnnkit kernels build`` retries. ``RNNKIT_CPP=0`` turns
every native library off; each library may name its own switch as well.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CACHE_ENV",
    "DISABLE_ENV",
    "BuildError",
    "BuildInfo",
    "NativeLibrary",
    "libraries",
]

#: Root directory of the build cache (one sub-directory per library and build key).
CACHE_ENV = "RNNKIT_CPP_CACHE"
#: Set to ``0`` to switch every native library off (backends then report why).
DISABLE_ENV = "RNNKIT_CPP"

_FAILED = "FAILED"
_log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """A native library could not be built or loaded (the message says why)."""


@dataclass(frozen=True)
class BuildInfo:
    """How a library in this process was obtained.

    Attributes:
        path: the shared library.
        seconds: wall time of the compile, or of the load when it was cached.
        compiled: whether this process compiled it (False: loaded from the cache).
    """

    path: Path
    seconds: float
    compiled: bool


def _openmp() -> bool:
    # at::parallel_for is inline code: it runs in parallel only when the extension is compiled
    # with OpenMP, which then shares torch's own libgomp (same soname, already loaded).
    return bool(torch.backends.openmp.is_available()) and sys.platform.startswith("linux")  # type: ignore[no-untyped-call]


def _flags() -> tuple[list[str], list[str]]:
    """Compile and link flags. -fno-trapping-math lets GCC vectorise selects in pointwise loops;
    no -march (see the module docstring)."""
    cflags = ["-O3", "-fno-trapping-math"]
    ldflags: list[str] = []
    if _openmp():
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _ninja_dirs() -> list[str]:
    """Where ninja may be besides ``PATH``: the ``ninja`` wheel and this interpreter's scripts."""
    dirs = [str(Path(sys.executable).parent), sysconfig.get_path("scripts")]
    try:
        import ninja  # type: ignore[import-not-found,unused-ignore]

        dirs.insert(0, str(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    return [d for d in dirs if d]


def _ninja_path() -> str:
    return os.pathsep.join([*_ninja_dirs(), os.environ.get("PATH", "")])


@lru_cache(maxsize=1)
def _toolchain_problem() -> str | None:
    """Why this machine cannot compile native code (checked once per process, no compile)."""
    if platform.system() != "Linux":
        return f"only Linux is supported (this is {platform.system()})"
    if shutil.which(_compiler()) is None:
        return f"no C++ compiler: {_compiler()!r} is not on PATH (set $CXX or install g++)"
    if shutil.which("ninja", path=_ninja_path()) is None:
        return "ninja is not installed (pip install 'rnnkit-kernels[cpp]' or pip install ninja)"
    return None


def _summary(error: BaseException) -> str:
    """The first compiler error line (or the exception's last line) for a one-line reason."""
    text = str(error)
    # A compiler diagnostic (``file.cpp:1:2: error: ...``) first: torch's message starts with
    # "Error building extension" followed by the ninja command line, which also names a .cpp.
    for line in text.splitlines():
        if ": error:" in line or ": fatal error:" in line:
            return line.strip()
    for line in text.splitlines():
        if "error" in line.lower() and (".cpp" in line or ".h" in line or "fatal" in line):
            return line.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


_REGISTRY: dict[str, NativeLibrary] = {}


@dataclass(eq=False)
class NativeLibrary:
    """One JIT-built C++ library that registers torch ops (``TORCH_LIBRARY(<name>, m)``).

    Args:
        name: the library and ``torch.ops`` namespace (``torch.ops.<name>.<op>``).
        csrc: directory of the sources and headers.
        sources: the ``.cpp`` files to compile, relative to ``csrc``.
        headers: headers that take part in the build key, relative to ``csrc``.
        disable_env: an extra environment variable that switches this library off with ``0``.

    Creating one registers it for ``rnnkit kernels build`` (see :func:`libraries`).
    """

    name: str
    csrc: Path
    sources: tuple[str, ...]
    headers: tuple[str, ...] = ()
    disable_env: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ops: Any = field(default=None, repr=False)
    _info: BuildInfo | None = field(default=None, repr=False)
    _failure: str | None = field(default=None, repr=False)
    _key_cached: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _REGISTRY[self.name] = self

    # -- where it lives ----------------------------------------------------------------------

    def _key(self) -> str:
        """Build key: the sources, flags, compiler and the torch and Python versions.

        Computed once per process: ``why_unavailable`` runs on every ``auto`` dispatch, and
        hashing the sources each time cost about 0.6 ms per call.
        """
        if self._key_cached is not None:
            return self._key_cached
        h = hashlib.sha256()
        for name in (*self.sources, *self.headers):
            h.update(name.encode())
            h.update((self.csrc / name).read_bytes())
        cflags, ldflags = _flags()
        for part in (*cflags, *ldflags, _compiler(), torch.__version__, sys.version, sys.platform):
            h.update(part.encode())
        self._key_cached = h.hexdigest()[:16]
        return self._key_cached

    def cache_dir(self) -> Path:
        """The directory of this library's current build key."""
        root = os.environ.get(CACHE_ENV)
        if root:
            base = Path(root)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            base = Path(xdg) / "rnnkit" / "cpp"
        return base / self.name / self._key()

    def _library(self, directory: Path) -> Path:
        return directory / f"{self.name}.so"

    # -- state -------------------------------------------------------------------------------

    def _disabled(self) -> str | None:
        for env in (DISABLE_ENV, self.disable_env):
            if env and os.environ.get(env, "").strip() == "0":
                return f"disabled by {env}=0"
        return None

    def is_built(self) -> bool:
        """Whether the library is loaded in this process or built in the cache."""
        return self._ops is not None or self._library(self.cache_dir()).exists()

    def _recorded_failure(self) -> str | None:
        marker = self.cache_dir() / _FAILED
        if marker.exists():
            first = marker.read_text(errors="replace").strip().splitlines()[:1]
            reason = first[0] if first else "unknown error"
            return f"an earlier build failed ({reason}); retry with `rnnkit kernels build`"
        return None

    def why_unavailable(self) -> str | None:
        """Why the library cannot be used here (``None`` when it can); never compiles.

        Cheap after the first call: the toolchain check is cached, the failure marker is a stat.
        """
        disabled = self._disabled()
        if disabled is not None:
            return disabled
        if self._ops is not None:
            return None
        if self._failure is not None:
            return self._failure
        if self._library(self.cache_dir()).exists():
            return None
        problem = _toolchain_problem()
        if problem is not None:
            return problem
        return self._recorded_failure()

    def last_build(self) -> BuildInfo | None:
        """The :class:`BuildInfo` of this process, or ``None`` before :meth:`build`."""
        return self._info

    # -- building ----------------------------------------------------------------------------

    def _compile(self, directory: Path, verbose: bool) -> None:
        from torch.utils import cpp_extension

        cflags, ldflags = _flags()
        old_path = os.environ.get("PATH", "")
        # torch looks ninja up on PATH; the ninja wheel may be installed where PATH does not
        # look (a venv that is not activated).
        os.environ["PATH"] = _ninja_path()
        try:
            cpp_extension.load(
                name=self.name,
                sources=[str(self.csrc / s) for s in self.sources],
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=[str(self.csrc)],
                build_directory=str(directory),
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            os.environ["PATH"] = old_path

    def build(self, *, force: bool = False, verbose: bool = False) -> BuildInfo:
        """Compile (or load from the cache) the library and register its ops.

        Args:
            force: retry even if an earlier build failed (clears the failure marker).
            verbose: show the compiler commands and output.

        Returns:
            where the library is and how long it took.

        Raises:
            BuildError: disabled, no toolchain, or the compiler or loader failed (the reason
                is recorded in the cache directory).
        """
        with self._lock:
            if self._info is not None:
                return self._info
            disabled = self._disabled()
            if disabled is not None:
                raise BuildError(disabled)
            directory = self.cache_dir()
            library = self._library(directory)
            start = time.perf_counter()
            if library.exists() and not force and self._load_cached(library):
                return self._loaded(BuildInfo(library, time.perf_counter() - start, False))
            problem = _toolchain_problem()
            if problem is not None:
                raise BuildError(problem)
            marker = directory / _FAILED
            if force:
                marker.unlink(missing_ok=True)
                self._failure = None
            elif self._failure is not None or marker.exists():
                raise BuildError(self._failure or self._recorded_failure())
            directory.mkdir(parents=True, exist_ok=True)
            # A compile takes tens of seconds and happens once per machine and version: say so,
            # or a first call looks hung. WARNING reaches stderr without logging set up.
            _log.warning(
                "rnnkit: compiling the native library %s (once; cached in %s)", self.name, directory
            )
            try:
                self._compile(directory, verbose)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                reason = f"building the {self.name} library failed: {_summary(e)}"
                marker.write_text(f"{_summary(e)}\n\n{e}\n")
                self._failure = reason
                raise BuildError(f"{reason} (full log: {marker})") from e
            return self._loaded(BuildInfo(library, time.perf_counter() - start, True))

    @staticmethod
    def _load_cached(library: Path) -> bool:
        """Load a library built earlier; False if it will not load (a build interrupted while
        linking, say), and then it is compiled again."""
        try:
            torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
        except OSError:
            return False
        return True

    def _loaded(self, info: BuildInfo) -> BuildInfo:
        self._ops = getattr(torch.ops, self.name)
        self._info = info
        return info

    def ops(self) -> Any:
        """``torch.ops.<name>``, building or loading the library on first use."""
        if self._ops is None:
            self.build()
        return self._ops

    def status(self) -> dict[str, str]:
        """What ``rnnkit kernels status`` shows: availability, cache and the loaded library."""
        out = {
            "available": self.why_unavailable() or "yes",
            "cache": str(self.cache_dir()),
            "built": "yes" if self.is_built() else "no",
        }
        if self._info is not None:
            out["library"] = str(self._info.path)
        return out


def libraries() -> dict[str, NativeLibrary]:
    """Every native library defined so far, by name (import the backends first)."""
    return dict(_REGISTRY)
