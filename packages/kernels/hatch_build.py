"""Build hook of the rnnkit-kernels wheel: compiles the gated ``cuda`` backend's library ahead of
time and ships it prebuilt, when the build environment can.

It builds only where the environment that builds the wheel has a CUDA torch, nvcc and ninja,
which with pip means building without isolation (an isolated build installs hatchling alone, so
torch is not importable there; this hook never asks for torch)::

    pip install hatchling ninja       # in the environment that has the CUDA torch
    pip install -v --no-build-isolation ./packages/kernels

The architectures are ``$TORCH_CUDA_ARCH_LIST`` (numbers, ``"8.0;9.0"``), else those of the
visible GPUs. ``RNNKIT_BUILD_CUDA=0`` skips the compile; ``RNNKIT_BUILD_CUDA=1`` asks for it, so
that a skip or a failure is a warning rather than a note (it still never fails the build);
unset, the hook builds where it can. Editable installs never build (the source tree compiles
on first use).

The library and its manifest go to ``rnnkit/kernels/gated/cuda/_prebuilt/`` in the wheel, which
is then tagged for this Python and platform. At run time the library is loaded only where the
manifest matches the running torch, CUDA, Python, sources and GPU architecture, else the JIT
cache is used (``rnnkit kernels status`` says which, and why). Where the hook does not build
it says why in one line of the build output (``pip install -v`` shows it); where the compile
fails it warns with the compiler's first error and the path of the full log, and the wheel is
built without the library (compiled on first use instead).

The decision functions take their inputs as arguments (the tests call them with a CPU torch, no
nvcc, the variable off); nothing here imports torch unless the build environment has it, and
the library's own definition is executed from the source tree (it needs torch only).
"""

# No ``from __future__ import annotations``: hatchling executes this file without entering it
# in ``sys.modules``, where dataclasses cannot resolve string annotations.
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import (  # type: ignore[import-not-found,unused-ignore]
        BuildHookInterface,
    )
except ImportError:  # the tests import this file for its functions, without hatchling
    BuildHookInterface = object  # type: ignore[assignment,misc,unused-ignore]

#: ``0`` skips the ahead-of-time compile, ``1`` asks for it (skips and failures then warn).
ENV = "RNNKIT_BUILD_CUDA"
#: Architectures to compile for (torch's variable); without it, those of the visible GPUs.
ARCH_ENV = "TORCH_CUDA_ARCH_LIST"
#: Where the wheel holds the prebuilt library (``gated/cuda/_native.py``'s ``PREBUILT_DIR``).
WHEEL_DIR = "rnnkit/kernels/gated/cuda/_prebuilt"
#: The modules that define the library, executed from the source tree in this order (each
#: imports only the standard library, torch and the ones before it).
MODULES = ("rnnkit.kernels.native", "rnnkit.kernels.gated.cuda._native")
#: Where a failed compile's full log is kept.
LOG_DIR = Path(tempfile.gettempdir()) / "rnnkit-kernels-build"

_OFF = {"0", "no", "off", "false"}
_ON = {"1", "yes", "on", "true"}


@dataclass(frozen=True)
class TorchInfo:
    """The build environment's torch: version, CUDA version (``None``: a CPU build) and the
    compute capabilities of the visible GPUs (``"9.0"``)."""

    version: str
    cuda: str | None
    device_archs: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What the hook did: the files to ship (none when it skipped or failed), the one line it
    prints, and whether that line is a warning."""

    files: list[Path] = field(default_factory=list)
    message: str = ""
    warning: bool = False


def requested(environ: Mapping[str, str]) -> bool | None:
    """``RNNKIT_BUILD_CUDA``: ``False`` (off), ``True`` (asked for) or ``None`` (unset: build
    where possible).

    Raises:
        ValueError: another value.
    """
    raw = environ.get(ENV, "").strip().lower()
    if not raw:
        return None
    if raw in _OFF:
        return False
    if raw in _ON:
        return True
    raise ValueError(f"{ENV}={environ.get(ENV)!r} is neither 0 nor 1")


def probe_torch() -> TorchInfo | None:
    """The build environment's torch, or ``None`` where it has none (an isolated build):
    looked up without importing anything when it is absent."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    archs: set[str] = set()
    if torch.version.cuda is not None and torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            archs.add(f"{major}.{minor}")
    return TorchInfo(torch.__version__, torch.version.cuda, tuple(sorted(archs)))


def arch_list(environ: Mapping[str, str], info: TorchInfo) -> str | None:
    """The architectures to compile for: ``$TORCH_CUDA_ARCH_LIST``, else the visible GPUs'."""
    given = environ.get(ARCH_ENV, "").strip()
    if given:
        return given
    return ";".join(info.device_archs) or None


def skip_reason(
    environ: Mapping[str, str],
    version: str,
    info: TorchInfo | None,
    nvcc: str | None,
    toolchain: str | None,
) -> str | None:
    """Why the hook does not compile the library (``None``: it does).

    Args:
        environ: the build's environment variables (``RNNKIT_BUILD_CUDA``,
            ``TORCH_CUDA_ARCH_LIST``).
        version: the wheel target's version, ``"standard"`` or ``"editable"``.
        info: the build environment's torch (:func:`probe_torch`).
        nvcc: path of nvcc (``None``: not found).
        toolchain: what the C++ toolchain lacks (ninja, a compiler), or ``None``.
    """
    try:
        wanted = requested(environ)
    except ValueError as e:
        return str(e)
    if wanted is False:
        return f"{ENV}=0"
    if version == "editable":
        return "an editable install compiles it from the source tree on first use"
    if info is None:
        return (
            "torch is not importable in the build environment (pip's build isolation installs "
            "none; build with `pip install --no-build-isolation` where a CUDA torch, nvcc and "
            "ninja are installed)"
        )
    if info.cuda is None:
        return f"torch {info.version} is built without CUDA"
    if nvcc is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if toolchain is not None:
        return toolchain
    if arch_list(environ, info) is None:
        return (
            f"no GPU is visible and {ARCH_ENV} is not set (set it to the architectures to "
            f"build for, e.g. {ARCH_ENV}=9.0)"
        )
    return None


@contextmanager
def library_modules(src: Path) -> Iterator[dict[str, ModuleType]]:
    """:data:`MODULES` executed from the source tree ``src`` under their own names, without
    their packages' ``__init__`` (which import rnnkit-core, absent from a build environment);
    ``sys.modules`` is restored on exit."""
    saved = {name: sys.modules.get(name) for name in MODULES}
    loaded: dict[str, ModuleType] = {}
    try:
        for name in MODULES:
            path = src / Path(*name.split(".")).with_suffix(".py")
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # the later module imports it by this name
            spec.loader.exec_module(module)
            loaded[name] = module
        yield loaded
    finally:
        for name, before in saved.items():
            if before is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = before


def compile_prebuilt(library: Any, summary: Any, out: Path, arches: str, info: str) -> Outcome:
    """Compile ``library`` (a :class:`rnnkit.kernels.native.NativeLibrary`) for ``arches`` and
    write it with its manifest to ``out``; a failure becomes a warning naming the compiler's
    first error (``summary`` of the exception) and the full log under :data:`LOG_DIR`.

    Args:
        info: what the manifest records besides the key (the nvcc version), never compared.
    """
    work = Path(tempfile.mkdtemp(prefix="rnnkit-cuda-"))
    start = time.perf_counter()
    try:
        try:
            built = library.compile_into(work, env={ARCH_ENV: arches})
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            log = LOG_DIR / f"{library.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            log.write_text(f"{e}\n")
            return Outcome(
                message=(
                    f"compiling {library.name} failed: {summary(e)} (full log: {log}); the "
                    "wheel is built without it and it is compiled on first use instead"
                ),
                warning=True,
            )
        files = library.write_prebuilt(built, out, arches, {"nvcc": info})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    return Outcome(
        files=files,
        message=f"compiled {library.name} for {arches} in {seconds:.0f} s, shipped prebuilt",
    )


def run(src: Path, version: str, environ: Mapping[str, str], out: Path) -> Outcome:
    """Decide, and compile where the environment allows; never raises for a missing tool or a
    failed compile (the wheel is then built without the library)."""
    try:
        wanted = requested(environ)
    except ValueError:
        wanted = None
    info = probe_torch() if wanted is not False and version != "editable" else None
    with ExitStack() as stack:
        nvcc = toolchain = None
        if info is not None and info.cuda is not None:
            modules = stack.enter_context(library_modules(src))
            cuda = modules["rnnkit.kernels.gated.cuda._native"]
            native = modules["rnnkit.kernels.native"]
            nvcc = cuda.nvcc()
            toolchain = native._toolchain_problem()
        why = skip_reason(environ, version, info, nvcc, toolchain)
        arches = arch_list(environ, info) if info is not None else None
        if why is not None or arches is None:
            return Outcome(
                message=f"no prebuilt CUDA library in this wheel: {why}; compiled on first use",
                warning=bool(wanted),
            )
        return compile_prebuilt(cuda.LIBRARY, native._summary, out, arches, cuda._nvcc_version())


class CudaPrebuiltHook(BuildHookInterface):  # type: ignore[misc,valid-type,type-arg,unused-ignore]
    """Hatch's hook (``[tool.hatch.build.targets.wheel.hooks.custom]``)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._out = Path(tempfile.mkdtemp(prefix="rnnkit-prebuilt-"))
        src = Path(self.root) / "src"
        outcome = run(src, version, os.environ, self._out)
        if outcome.files:
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            for path in outcome.files:
                build_data["force_include"][str(path)] = f"{WHEEL_DIR}/{path.name}"
        line = f"rnnkit-kernels: {outcome.message}"
        if outcome.warning:
            self.app.display_warning(line)
        else:
            self.app.display_info(line)

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        shutil.rmtree(self._out, ignore_errors=True)
