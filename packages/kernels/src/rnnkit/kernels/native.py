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

A library may also be shipped **prebuilt** in the wheel (the CUDA one, by the build hook
``packages/kernels/hatch_build.py`` when the wheel is built where a CUDA torch and nvcc are):
``<prebuilt_dir>/<library>.so`` beside ``<library>.json``, a manifest of what it was built for
(:func:`prebuilt_fields`: the sources' digest, torch, CUDA, Python, the platform and the GPU
architectures). A process loads it in preference to the cache when every field matches the
running one and the device's architecture is in its list; otherwise it is ignored with a reason
(``rnnkit kernels status`` shows it) and the cache is used as without it. ``RNNKIT_PREBUILT=0``
ignores every prebuilt library.

A failed build is recorded in the cache directory (``FAILED``) so that later processes report
the reason instead of compiling again; ``rnnkit kernels build`` retries. An interrupted build
(Ctrl-C, a killed process) records nothing. ``RNNKIT_CPP=0`` turns every native library off;
each library may name its own switch as well.

The cache survives crashes and concurrent first uses:

- a library is compiled in a private temporary directory and moved into the cache with an
  atomic rename, next to a SHA-256 of its bytes; a cached library whose bytes do not match
  (truncated by a full disk, replaced by another file) is set aside and rebuilt, never loaded,
  since loading a damaged or foreign library can kill the process;
- processes that need the same build wait on an advisory file lock (``build.lock``) that the
  operating system releases when its holder exits, so a killed compile leaves no stale lock
  (and the next build removes the private build folder it left);
  waiting gives up after ``$RNNKIT_CPP_LOCK_TIMEOUT`` seconds (default 900) with a message
  naming the holder, and ``rnnkit kernels status`` shows a held lock and its owner;
- a cache directory that cannot be written is a :class:`BuildError` like a failed compile, so
  the backends fall back to their pure-torch loops with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CACHE_ENV",
    "DISABLE_ENV",
    "LOCK_TIMEOUT_ENV",
    "PREBUILT_ENV",
    "PREBUILT_FORMAT",
    "BuildError",
    "BuildInfo",
    "NativeLibrary",
    "arch_covers",
    "libraries",
    "prebuilt_fields",
]

#: Root directory of the build cache (one sub-directory per library and build key).
CACHE_ENV = "RNNKIT_CPP_CACHE"
#: Set to ``0`` to switch every native library off (backends then report why).
DISABLE_ENV = "RNNKIT_CPP"
#: Seconds a process waits for another one's compile of the same library (default 900).
LOCK_TIMEOUT_ENV = "RNNKIT_CPP_LOCK_TIMEOUT"

#: Set to ``0`` to ignore every prebuilt library (use the cache, compiling as needed).
PREBUILT_ENV = "RNNKIT_PREBUILT"
#: Format of a prebuilt library's manifest: bump when its fields change (an older manifest is
#: then ignored, never misread).
PREBUILT_FORMAT = "1"

_FAILED = "FAILED"
_LOCK = "build.lock"
#: Part of the build key: bump when the cache's layout changes.
_CACHE_FORMAT = "2"
_log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """A native library could not be built or loaded (the message says why)."""


@dataclass(frozen=True)
class BuildInfo:
    """How a library in this process was obtained.

    Attributes:
        path: the shared library.
        seconds: wall time of the compile, or of the load when it was cached.
        compiled: whether this process compiled it (False: loaded from the cache or prebuilt).
        prebuilt: whether it is the library shipped prebuilt in the wheel.
    """

    path: Path
    seconds: float
    compiled: bool
    prebuilt: bool = False


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
        # GCC and Clang write ``file:line:col: error:``, nvcc ``file(line): error:``.
        if ": error:" in line or ": fatal error:" in line or "): error" in line:
            return line.strip()
    for line in text.splitlines():
        low = line.lower()
        if "error" in low and (".cpp" in line or ".h" in line or ".cu" in line or "fatal" in low):
            return line.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _since(start: float) -> float:
    return time.perf_counter() - start


def _interrupted(error: BaseException) -> bool:
    """Whether a failed compile was stopped by a signal (Ctrl-C reaches ninja as well as
    Python, and ninja may fail first) rather than by the sources."""
    text = str(error)
    return "interrupted by user" in text or "received signal" in text or "SIGINT" in text


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prebuilt_fields(name: str, sources: str) -> dict[str, str]:
    """The manifest fields a prebuilt library ``name`` must hold, each equal, to load in this
    process: the manifest format, the library, the digest of its sources and flags
    (``sources``), torch, torch's CUDA version (``None`` for a CPU torch), Python (major.minor)
    and the platform. The GPU architectures are compared apart, by :func:`arch_covers`."""
    return {
        "format": PREBUILT_FORMAT,
        "library": name,
        "sources": sources,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def _arch_parts(text: str) -> tuple[int, int, str] | None:
    """``"9.0a"`` -> ``(9, 0, "a")``; ``None`` for what is not ``major.minor[a|f]``."""
    major, dot, rest = text.strip().partition(".")
    minor = rest.rstrip("af")
    if not dot or not major.isdigit() or not minor.isdigit() or len(rest) - len(minor) > 1:
        return None
    return int(major), int(minor), rest[len(minor) :]


def arch_covers(arch_list: str, arch: str) -> bool:
    """Whether code built for ``arch_list`` (``TORCH_CUDA_ARCH_LIST``'s syntax, numbers only:
    ``"8.0;9.0+PTX"``) runs on a device of compute capability ``arch`` (``"8.6"``).

    Machine code runs on the same major version at an equal or higher minor (``8.0`` on ``8.6``),
    except the architecture-specific variants (``9.0a``, ``10.0f``: that exact device only);
    ``+PTX`` entries also run, compiled by the driver, on any later device.
    """
    device = _arch_parts(arch)
    if device is None or device[2]:
        return False
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        ptx = entry.endswith("+PTX")
        code = _arch_parts(entry.removesuffix("+PTX"))
        if code is None:
            continue
        if code[2]:  # 9.0a: only that architecture
            if code[:2] == device[:2]:
                return True
            continue
        if code[0] == device[0] and code[1] <= device[1]:
            return True
        if ptx and code[:2] <= device[:2]:
            return True
    return False


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _lock_timeout() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return 900.0
    try:
        value = float(raw)
    except ValueError:
        raise BuildError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise BuildError(f"{LOCK_TIMEOUT_ENV}={raw!r} must be >= 0")
    return value


def _owner_text(lock: Path) -> str:
    """Who holds ``lock``, as its holder wrote it (pid, host, since when)."""
    try:
        owner = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    if not isinstance(owner, dict):
        return "an unknown process"
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')} since {when}"


@contextmanager
def _build_lock(directory: Path, name: str) -> Iterator[None]:
    """Hold ``directory/build.lock`` exclusively; the OS drops it if this process dies."""
    path = directory / _LOCK
    timeout = _lock_timeout()
    with path.open("a+") as f:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            waited = time.monotonic() - start
            if waited >= timeout:
                raise BuildError(
                    f"timed out after {waited:.0f} s waiting for {_owner_text(path)} to finish "
                    f"building {name} (lock {path}; set {LOCK_TIMEOUT_ENV} to wait longer)"
                )
            if not announced:
                announced = True
                _log.warning(
                    "rnnkit: waiting for %s to finish building %s", _owner_text(path), name
                )
            time.sleep(0.2)
        try:
            owner = {"pid": os.getpid(), "host": platform.node(), "since": time.time()}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(owner))
            f.flush()
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_holder(directory: Path) -> str | None:
    """Who holds the build lock of ``directory`` (``None`` when nobody does)."""
    path = directory / _LOCK
    if not path.exists():
        return None
    try:
        with path.open("r") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _owner_text(path)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        return None
    return None


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
        on_load: called once the library is loaded in this process (to register the ops' fake
            kernels, say).
        cuda_cflags: extra ``nvcc`` flags for the ``.cu`` sources (a library with ``.cu``
            sources is built as a CUDA extension).
        requires: ``() -> reason or None``: what this machine lacks to build or run the library
            at all (a CUDA device, ``nvcc``), checked before the toolchain; ``rnnkit kernels
            build`` without names skips a library that reports a reason.
        key_parts: ``() -> strings`` that also take part in the build key (CUDA version, GPU
            architecture).
        build_env: ``() -> {variable: value}`` set while compiling (and part of the build
            key), e.g. ``TORCH_CUDA_ARCH_LIST``.
        build_requires: ``() -> reason or None``: what compiling needs besides the C++ toolchain
            (``nvcc``); not needed to load a prebuilt or cached library.
        toolkit_flags: ``() -> (include folders, linker flags)`` added to the compile (the CUDA
            toolkit's, where torch's guess of it lacks the headers); not part of the build key.
        prebuilt_dir: where a wheel may ship the library prebuilt (``<name>.so`` and its
            manifest ``<name>.json``; see the module docstring).
        device_arch: ``() -> "major.minor"``: the running device's architecture, which a
            prebuilt library's ``arch_list`` must cover (:func:`arch_covers`).

    Under ``torch.compile`` or ``torch.export`` (:func:`torch.compiler.is_compiling`),
    :meth:`ops` and :meth:`why_unavailable` build, load and inspect the cache outside the traced
    code (see :func:`_untraced`), so a first call made while tracing neither breaks the graph
    nor traces the hashing and file access.

    Creating one registers it for ``rnnkit kernels build`` (see :func:`libraries`).
    """

    name: str
    csrc: Path
    sources: tuple[str, ...]
    headers: tuple[str, ...] = ()
    disable_env: str | None = None
    on_load: Callable[[], None] | None = None
    cuda_cflags: tuple[str, ...] = ()
    requires: Callable[[], str | None] | None = None
    key_parts: Callable[[], tuple[str, ...]] | None = None
    build_env: Callable[[], dict[str, str]] | None = None
    build_requires: Callable[[], str | None] | None = None
    toolkit_flags: Callable[[], tuple[list[str], list[str]]] | None = None
    prebuilt_dir: Path | None = None
    device_arch: Callable[[], str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _ops: Any = field(default=None, repr=False)
    _info: BuildInfo | None = field(default=None, repr=False)
    _failure: str | None = field(default=None, repr=False)
    _key_cached: str | None = field(default=None, repr=False)
    _sources_cached: str | None = field(default=None, repr=False)
    # (library to load or None, what ``status`` says of the prebuilt), once per process
    _prebuilt: tuple[Path | None, str] | None = field(default=None, repr=False)
    # the SHA-256 its manifest records, kept from the one read of the manifest
    _prebuilt_sha256: str | None = field(default=None, repr=False)

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
        parts = (*cflags, *ldflags, _compiler(), torch.__version__, sys.version, sys.platform)
        extra = (*self.cuda_cflags, *(self.key_parts() if self.key_parts else ()))
        env = sorted(self.build_env().items()) if self.build_env else []
        for part in (*parts, *extra, *(f"{k}={v}" for k, v in env), _CACHE_FORMAT):
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

    def _digest_file(self, directory: Path) -> Path:
        return directory / f"{self.name}.so.sha256"

    # -- prebuilt (shipped in the wheel) -----------------------------------------------------

    def sources_digest(self) -> str:
        """Digest of the sources, headers and CUDA flags: the ``sources`` field of a prebuilt
        library's manifest (an edited source makes a prebuilt library stale)."""
        if self._sources_cached is None:
            h = hashlib.sha256()
            for name in (*self.sources, *self.headers):
                h.update(name.encode())
                h.update((self.csrc / name).read_bytes())
            for flag in self.cuda_cflags:
                h.update(flag.encode())
            self._sources_cached = h.hexdigest()[:16]
        return self._sources_cached

    def write_prebuilt(
        self, library: Path, directory: Path, arch_list: str, info: dict[str, str] | None = None
    ) -> list[Path]:
        """Copy a compiled ``library`` to ``directory`` as this library's prebuilt one, with
        its manifest: :func:`prebuilt_fields` of this process, ``arch_list`` (what it was
        compiled for), the SHA-256 of its bytes and ``info`` (shown, never compared).

        Returns:
            the two files written (``<name>.so``, ``<name>.json``).
        """
        directory.mkdir(parents=True, exist_ok=True)
        so = directory / f"{self.name}.so"
        shutil.copyfile(library, so)
        manifest = {
            **(info or {}),
            **prebuilt_fields(self.name, self.sources_digest()),
            "arch_list": arch_list,
            "sha256": _sha256(so),
        }
        path = directory / f"{self.name}.json"
        _write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return [so, path]

    def _prebuilt_mismatch(self, manifest: dict[str, Any]) -> str | None:
        """Why a prebuilt library with ``manifest`` cannot load here (``None``: it can)."""
        labels = {"cuda": "CUDA", "python": "Python", "torch": "torch"}
        for key, want in prebuilt_fields(self.name, self.sources_digest()).items():
            have = str(manifest.get(key))
            if have == want:
                continue
            if key == "sources":
                return "built from other sources (not those installed beside it)"
            label = labels.get(key, key)
            return f"built for {label} {have}, this is {label} {want}"
        arch_list = str(manifest.get("arch_list", ""))
        if self.device_arch is not None:
            arch = self.device_arch()
            if not arch_covers(arch_list, arch):
                here = "there is no GPU here" if arch == "none" else f"this device is {arch}"
                return f"built for GPU architectures {arch_list or 'none'}, {here}"
        return None

    def _prebuilt_state(self) -> tuple[Path | None, str]:
        """``(library or None, description)`` of the prebuilt library, checked once per process
        (the digest of its bytes is checked when it is loaded, against the one its manifest
        recorded when it was read here: the manifest is read once)."""
        if self._prebuilt is not None:
            return self._prebuilt
        state: tuple[Path | None, str] = (None, "none shipped")
        if os.environ.get(PREBUILT_ENV, "").strip() == "0":
            state = (None, f"ignored ({PREBUILT_ENV}=0)")
        elif self.prebuilt_dir is not None:
            path = self.prebuilt_dir / f"{self.name}.json"
            library = self.prebuilt_dir / f"{self.name}.so"
            if path.exists():
                try:
                    manifest = json.loads(path.read_text())
                    if not isinstance(manifest, dict):
                        raise ValueError("not a JSON object")
                except (OSError, ValueError) as e:
                    state = (None, f"ignored: unreadable manifest {path} ({e})")
                else:
                    why = self._prebuilt_mismatch(manifest)
                    if why is None and not library.exists():
                        why = f"{library} is missing"
                    if why is None:
                        self._prebuilt_sha256 = str(manifest.get("sha256"))
                        arch = manifest.get("arch_list", "")
                        state = (library, f"{library} (torch {torch.__version__}, arch {arch})")
                    else:
                        state = (None, f"ignored: {why}")
        self._prebuilt = state
        return state

    def _load_prebuilt(self, library: Path) -> bool:
        """Load the matching prebuilt ``library`` if its bytes are those its manifest records
        (as :meth:`_prebuilt_state` read it); otherwise note why it was ignored (``status``
        shows it) and return False."""
        try:
            intact = self._prebuilt_sha256 == _sha256(library)
        except OSError:
            intact = False
        if not intact:
            self._prebuilt = (None, f"ignored: {library} does not match its recorded digest")
            return False
        try:
            torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
        except OSError as e:
            self._prebuilt = (None, f"ignored: it does not load ({_summary(e)})")
            return False
        return True

    def build_problem(self) -> str | None:
        """What this machine lacks to compile the library (toolchain, ``build_requires``)."""
        problem = _toolchain_problem()
        if problem is None and self.build_requires is not None:
            problem = self.build_requires()
        return problem

    def cannot_build(self) -> str | None:
        """Why ``rnnkit kernels build`` cannot get the library here: what running it needs
        (``requires``), or, with no matching prebuilt and nothing cached, what compiling needs
        besides the C++ toolchain (``build_requires``); ``None`` when it can try."""
        missing = self.requirement()
        if missing is not None or self._prebuilt_state()[0] is not None or self.is_built():
            return missing
        return self.build_requires() if self.build_requires is not None else None

    # -- state -------------------------------------------------------------------------------

    def _disabled(self) -> str | None:
        for env in (DISABLE_ENV, self.disable_env):
            if env and os.environ.get(env, "").strip() == "0":
                return f"disabled by {env}=0"
        return None

    def is_built(self) -> bool:
        """Whether the library is loaded in this process or built in the cache (not yet
        verified: a damaged cached library is found, set aside and rebuilt by :meth:`build`)."""
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
        if torch.compiler.is_compiling():
            return _untraced("why_unavailable", self.name)
        return self._why_unavailable()

    def _why_unavailable(self) -> str | None:
        disabled = self._disabled()
        if disabled is not None:
            return disabled
        if self._ops is not None:
            return None
        if self._failure is not None:
            return self._failure
        missing = self.requirement()
        if missing is not None:
            return missing
        if self._prebuilt_state()[0] is not None or self._library(self.cache_dir()).exists():
            return None
        problem = self.build_problem()
        if problem is not None:
            return problem
        return self._recorded_failure()

    def requirement(self) -> str | None:
        """What this machine lacks for the library at all (see ``requires``), or ``None``."""
        return self.requires() if self.requires is not None else None

    def last_build(self) -> BuildInfo | None:
        """The :class:`BuildInfo` of this process, or ``None`` before :meth:`build`."""
        return self._info

    # -- building ----------------------------------------------------------------------------

    def compile_into(
        self, directory: Path, *, env: dict[str, str] | None = None, verbose: bool = False
    ) -> Path:
        """Compile the library into ``directory`` (no cache, no lock, no failure record) and
        return it; ``env`` overrides ``build_env`` (the wheel's build hook sets
        ``TORCH_CUDA_ARCH_LIST`` to the architectures asked for). The library is loaded into
        this process, as every compile by ``torch.utils.cpp_extension`` is.

        Raises:
            BuildError: what compiling needs is missing (:meth:`build_problem`).
            RuntimeError, OSError, subprocess.SubprocessError: the compiler failed.
        """
        problem = self.build_problem()
        if problem is not None:
            raise BuildError(problem)
        directory.mkdir(parents=True, exist_ok=True)
        self._compile(directory, verbose, env)
        return self._library(directory)

    def _compile(
        self, directory: Path, verbose: bool, env_override: dict[str, str] | None = None
    ) -> None:
        from torch.utils import cpp_extension

        cflags, ldflags = _flags()
        includes, toolkit_ldflags = self.toolkit_flags() if self.toolkit_flags else ([], [])
        env = {
            "PATH": _ninja_path(),
            **(self.build_env() if self.build_env else {}),
            **(env_override or {}),
        }
        old = {k: os.environ.get(k) for k in env}
        # torch looks ninja up on PATH; the ninja wheel may be installed where PATH does not
        # look (a venv that is not activated).
        os.environ.update(env)
        try:
            cpp_extension.load(
                name=self.name,
                sources=[str(self.csrc / s) for s in self.sources],
                extra_cflags=cflags,
                extra_cuda_cflags=list(self.cuda_cflags) or None,
                extra_ldflags=ldflags + toolkit_ldflags,
                extra_include_paths=[str(self.csrc), *includes],
                build_directory=str(directory),
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def build(self, *, force: bool = False, verbose: bool = False) -> BuildInfo:
        """Compile (or load from the cache) the library and register its ops.

        Args:
            force: rebuild from nothing: clears the cached library and a recorded failure.
            verbose: show the compiler commands and output.

        Returns:
            where the library is and how long it took.

        Raises:
            BuildError: disabled, no toolchain, the cache directory cannot be written, another
                process's build did not finish in time, or the compiler or loader failed (a
                compiler failure is recorded in the cache directory).
            KeyboardInterrupt: the compile was interrupted (nothing is recorded).
        """
        with self._lock:
            if self._info is not None:
                return self._info
            disabled = self._disabled()
            if disabled is not None:
                raise BuildError(disabled)
            directory = self.cache_dir()
            start = time.perf_counter()
            missing = self.requirement()
            if missing is not None:
                raise BuildError(missing)
            # A matching prebuilt library first (--force asks for a compile into the cache).
            prebuilt = self._prebuilt_state()[0]
            if not force and prebuilt is not None and self._load_prebuilt(prebuilt):
                return self._loaded(BuildInfo(prebuilt, _since(start), False, prebuilt=True))
            if not force and self._load_verified(directory):
                return self._loaded(BuildInfo(self._library(directory), _since(start), False))
            problem = self.build_problem()
            if problem is not None:
                raise BuildError(problem)
            if not force and self._failure is not None:
                raise BuildError(self._failure)
            try:
                directory.mkdir(parents=True, exist_ok=True)
                with _build_lock(directory, self.name):
                    return self._build_locked(directory, force, verbose, start)
            except OSError as e:
                # An unwritable or full cache: the same fallback as a failed compile.
                self._failure = (
                    f"the native library cache {directory} cannot be written "
                    f"({e.strerror or e}); set {CACHE_ENV} to a writable directory"
                )
                raise BuildError(self._failure) from e

    def _build_locked(self, directory: Path, force: bool, verbose: bool, start: float) -> BuildInfo:
        """The part of :meth:`build` that runs holding the build lock."""
        library = self._library(directory)
        marker = directory / _FAILED
        # Every compile runs holding this lock, so a build folder found now belongs to a
        # builder that was killed before its cleanup (SIGKILL): half-done object files.
        for stale in directory.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if force:
            for stale in (library, self._digest_file(directory), marker):
                stale.unlink(missing_ok=True)
            self._failure = None
        else:
            # Another process may have built it (or failed) while this one waited.
            if self._load_verified(directory):
                return self._loaded(BuildInfo(library, _since(start), False))
            failure = self._recorded_failure()
            if failure is not None:
                raise BuildError(failure)
        # A compile takes tens of seconds and happens once per machine and version: say so,
        # or a first call looks hung. WARNING reaches stderr without logging set up.
        _log.warning(
            "rnnkit: compiling the native library %s (once; cached in %s)", self.name, directory
        )
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
        try:
            try:
                self._compile(work, verbose)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                if _interrupted(e):
                    raise KeyboardInterrupt(f"building {self.name} was interrupted") from e
                reason = f"building the {self.name} library failed: {_summary(e)}"
                _write_atomic(marker, f"{_summary(e)}\n\n{e}\n")
                self._failure = reason
                raise BuildError(f"{reason} (full log: {marker})") from e
            built = self._library(work)
            # The digest first, the library last: a library in the cache always has one.
            _write_atomic(self._digest_file(directory), _sha256(built) + "\n")
            os.replace(built, library)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self._loaded(BuildInfo(library, _since(start), True))

    def _verified(self, directory: Path) -> bool:
        """Whether the cached library exists with the bytes its build recorded. One that does
        not match is moved aside (kept for inspection, never loaded)."""
        library = self._library(directory)
        if not library.exists():
            return False
        try:
            expected = self._digest_file(directory).read_text().strip()
            actual = _sha256(library)
        except OSError:
            expected, actual = "", "unreadable"
        if expected and expected == actual:
            return True
        aside = library.with_name(f"{library.name}.bad-{os.getpid()}")
        _log.warning(
            "rnnkit: the cached %s does not match its recorded digest (truncated or replaced); "
            "moved to %s and rebuilding",
            library,
            aside.name,
        )
        try:
            os.replace(library, aside)
        except OSError:
            library.unlink(missing_ok=True)
        return False

    def _load_verified(self, directory: Path) -> bool:
        """Load the cached library if it is there and verified; False if it must be built."""
        if not self._verified(directory):
            return False
        return self._load_cached(self._library(directory))

    @staticmethod
    def _load_cached(library: Path) -> bool:
        """Load a verified library; False if it still will not load (then it is rebuilt)."""
        try:
            torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
        except OSError:
            return False
        return True

    def _loaded(self, info: BuildInfo) -> BuildInfo:
        if self.on_load is not None:
            self.on_load()
        self._ops = getattr(torch.ops, self.name)
        self._info = info
        return info

    def ops(self) -> Any:
        """``torch.ops.<name>``, building or loading the library on first use.

        Raises:
            BuildError: see :meth:`build`.
        """
        if torch.compiler.is_compiling():
            # the build first: the tracer keeps the first value it reads of self._ops
            failure = _untraced("build", self.name)
            if failure is not None:
                raise BuildError(failure)
        elif self._ops is None:
            self.build()
        return self._ops

    def status(self) -> dict[str, str]:
        """What ``rnnkit kernels status`` shows: availability, cache and the loaded library."""
        why = self.why_unavailable()
        out = {"available": why or "yes"}
        prebuilt, prebuilt_text = self._prebuilt_state()
        if self.prebuilt_dir is not None:
            out["prebuilt"] = prebuilt_text
        out["cache"] = str(self.cache_dir())
        # which library a process gets: the one loaded here, else the one it would load
        if self._info is not None:
            out["built"] = "prebuilt" if self._info.prebuilt else "cached JIT"
        elif why is not None and why.startswith("disabled"):
            out["built"] = f"not built ({why})"
        elif prebuilt is not None:
            out["built"] = "prebuilt"
        elif self._library(self.cache_dir()).exists():
            out["built"] = "cached JIT"
        else:
            out["built"] = f"not built ({why or 'compiled on first use'})"
        if self._info is not None:
            out["library"] = str(self._info.path)
        holder = lock_holder(self.cache_dir())
        if holder is not None:
            out["lock"] = f"held by {holder} (a build in progress)"
        return out


def _untraced(what: str, name: str) -> str | None:
    """``build`` (``None``, or why it failed) or ``why_unavailable`` of library ``name``, for
    a call made while torch.compile or torch.export traces.

    Dynamo calls this function as it is, outside the graph, and uses its result as a constant
    (the mark set below is what ``torch.compiler.assume_constant_result`` sets; it is set here
    directly because that function imports ``torch._dynamo``, seconds an eager process need not
    spend). Building and loading happen once per process, so the constant holds.
    """
    library = _REGISTRY[name]
    if what == "why_unavailable":
        return library._why_unavailable()
    try:
        library.build()
    except BuildError as e:
        return str(e)
    return None


_untraced._dynamo_marked_constant = True  # type: ignore[attr-defined]


def libraries() -> dict[str, NativeLibrary]:
    """Every native library defined so far, by name (import the backends first)."""
    return dict(_REGISTRY)
