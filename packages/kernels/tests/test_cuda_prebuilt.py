"""The ahead-of-time build of the ``cuda`` backend's library into the wheel, without a GPU.

The wheel's build hook (``packages/kernels/hatch_build.py``, imported here by path: hatchling
need not be installed) decides whether to compile, and says why not: a CPU torch, no torch at
all (pip's build isolation), no nvcc, ``RNNKIT_BUILD_CUDA=0``, an editable install, no GPU and
no ``TORCH_CUDA_ARCH_LIST``; a failed compile becomes a warning with the compiler's first error
and the log, never a failed build. The loader (:mod:`rnnkit.kernels.native`) takes a prebuilt
library only where its manifest matches the running torch, CUDA, Python, platform, sources and
device architecture, else ignores it with a reason and uses the JIT cache; ``rnnkit kernels
status`` says which. Loading a real prebuilt library is in ``test_native_cache.py`` (it needs a
compiled one); building a real wheel is marked ``experiment`` (about 10 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from rnnkit.kernels import native
from rnnkit.kernels.gated import cuda
from rnnkit.kernels.native import BuildError, NativeLibrary

KERNELS = Path(__file__).resolve().parents[1]


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rnnkit_kernels_hatch_build", KERNELS / "hatch_build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = _load_hook()
CPU_TORCH = hook.TorchInfo("2.13.0+cpu", None)
CUDA_TORCH = hook.TorchInfo("2.13.0+cu128", "12.8", ("9.0",))
HEADLESS_CUDA_TORCH = hook.TorchInfo("2.13.0+cu128", "12.8", ())
NVCC = "/usr/local/cuda/bin/nvcc"


# --- the hook's decision -----------------------------------------------------------------------


def test_hook_builds_where_everything_is_there() -> None:
    assert hook.skip_reason({}, "standard", CUDA_TORCH, NVCC, None) is None
    assert hook.arch_list({}, CUDA_TORCH) == "9.0"
    given = {"TORCH_CUDA_ARCH_LIST": "8.0;9.0"}
    assert hook.arch_list(given, CUDA_TORCH) == "8.0;9.0"
    assert hook.skip_reason({"RNNKIT_BUILD_CUDA": "1"}, "standard", CUDA_TORCH, NVCC, None) is None


@pytest.mark.parametrize(
    ("environ", "version", "info", "nvcc", "toolchain", "reason"),
    [
        ({}, "standard", CPU_TORCH, NVCC, None, "torch 2.13.0+cpu is built without CUDA"),
        ({}, "standard", CUDA_TORCH, None, None, "nvcc not found"),
        ({"RNNKIT_BUILD_CUDA": "0"}, "standard", CUDA_TORCH, NVCC, None, "RNNKIT_BUILD_CUDA=0"),
        ({"RNNKIT_BUILD_CUDA": "maybe"}, "standard", CUDA_TORCH, NVCC, None, "neither 0 nor 1"),
        ({}, "editable", CUDA_TORCH, NVCC, None, "editable install"),
        ({}, "standard", None, NVCC, None, "pip install --no-build-isolation"),
        ({}, "standard", CUDA_TORCH, NVCC, "ninja is not installed", "ninja is not installed"),
        ({}, "standard", HEADLESS_CUDA_TORCH, NVCC, None, "TORCH_CUDA_ARCH_LIST is not set"),
    ],
    ids=[
        "cpu-torch",
        "no-nvcc",
        "env-off",
        "env-bad",
        "editable",
        "isolated",
        "no-ninja",
        "no-gpu",
    ],
)
def test_hook_skip_reasons(
    environ: dict[str, str],
    version: str,
    info: Any,
    nvcc: str | None,
    toolchain: str | None,
    reason: str,
) -> None:
    why = hook.skip_reason(environ, version, info, nvcc, toolchain)
    assert why is not None and reason in why


def test_no_gpu_builds_for_the_architectures_asked_for() -> None:
    environ = {"TORCH_CUDA_ARCH_LIST": "9.0"}
    assert hook.skip_reason(environ, "standard", HEADLESS_CUDA_TORCH, NVCC, None) is None
    assert hook.arch_list(environ, HEADLESS_CUDA_TORCH) == "9.0"


def test_the_switch_words_and_every_visible_gpu() -> None:
    """``RNNKIT_BUILD_CUDA`` takes the usual on/off words in any case; without
    ``TORCH_CUDA_ARCH_LIST`` the hook builds for every visible GPU's architecture."""
    for word in ("0", "no", "OFF", "false"):
        assert hook.requested({"RNNKIT_BUILD_CUDA": word}) is False
        assert hook.skip_reason({"RNNKIT_BUILD_CUDA": word}, "standard", CUDA_TORCH, NVCC, None)
    for word in ("1", "yes", "On", "TRUE"):
        assert hook.requested({"RNNKIT_BUILD_CUDA": word}) is True
    two = hook.TorchInfo("2.13.0+cu128", "12.8", ("8.0", "9.0"))
    assert hook.arch_list({}, two) == "8.0;9.0"


def test_the_cuda_library_needs_nvcc_only_to_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA machine without nvcc the ``cuda`` library can still run (a prebuilt or cached
    one): ``requirement`` is met, ``build_requirement`` names nvcc; the library is wired to
    both, to the wheel's folder and to the device's architecture."""
    from rnnkit.kernels.gated.cuda import _native as cuda_native

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_native, "nvcc", lambda: None)
    assert cuda_native.requirement() is None
    assert "nvcc not found" in str(cuda_native.build_requirement())
    lib = cuda_native.LIBRARY
    assert lib.requires is cuda_native.requirement
    assert lib.build_requires is cuda_native.build_requirement
    assert lib.device_arch is cuda_native._arch and lib.prebuilt_dir == cuda_native.PREBUILT_DIR
    assert lib.toolkit_flags is cuda_native._toolkit_flags


def _with_headers(root: Path) -> Path:
    """``root`` made a toolkit folder with the CUDA runtime header (an empty stand-in)."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def _fake_toolkit(tmp_path: Path) -> tuple[Path, Path]:
    """A toolkit at ``tmp/cuda-13.0`` (headers, ``lib64``) and ``tmp/wrap/bin/nvcc``: a wrapper
    script with no headers beside it that answers ``--dryrun`` as nvcc does (``#$ TOP=...`` on
    stderr), as an ``nvcc`` in ``/usr/local/bin`` that execs the toolkit's does."""
    root = _with_headers(tmp_path / "cuda-13.0")
    (root / "lib64").mkdir()
    wrapper = tmp_path / "wrap" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    lines = ["#!/bin/sh", "echo '#$ _NVVM_BRANCH_=nvvm' >&2", f"echo '#$ TOP={root}/bin/..' >&2"]
    wrapper.write_text("\n".join(lines) + "\n")
    wrapper.chmod(0o755)
    return root, wrapper


@pytest.fixture
def toolkit_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cuda._native`` with no ``$CUDA_HOME`` / ``$CUDA_PATH`` and a fresh :func:`toolkit_root`
    cache (cleared again afterwards, so later tests see this machine's toolkit)."""
    from rnnkit.kernels.gated.cuda import _native as cuda_native

    for env in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(env, raising=False)
    cuda_native.toolkit_root.cache_clear()
    yield cuda_native
    cuda_native.toolkit_root.cache_clear()


def test_toolkit_root_sees_through_an_nvcc_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """Where ``nvcc`` is a wrapper with no headers above it, torch's extension builder guesses
    the wrong toolkit (the folder above the wrapper's ``bin/``) and the glue's compile fails on
    ``cuda_runtime.h``; the build asks nvcc for its root instead and adds that root's include
    folder and libraries to the compile."""
    from torch.utils import cpp_extension

    root, wrapper = _fake_toolkit(tmp_path)
    monkeypatch.setattr(toolkit_env, "nvcc", lambda: str(wrapper))
    assert toolkit_env.toolkit_root() == root.resolve()
    assert toolkit_env.build_requirement() is None
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(wrapper.parent.parent))
    includes, ldflags = toolkit_env._toolkit_flags()
    assert includes == [str(root.resolve() / "include")]
    assert ldflags == [f"-L{root.resolve() / 'lib64'}"]
    # where torch's own guess has the headers, nothing is added
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(root))
    assert toolkit_env._toolkit_flags() == ([], [])


@pytest.mark.parametrize("variable", ["CUDA_HOME", "CUDA_PATH"])
def test_toolkit_root_takes_the_toolkit_variable_first(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """``$CUDA_HOME`` (or ``$CUDA_PATH`` where it is unset, as torch's builder reads them) wins
    over nvcc's own answer; one without headers is named, by its variable, in the reason the
    library cannot be compiled (instead of a compiler error on a missing header)."""
    _, wrapper = _fake_toolkit(tmp_path)
    monkeypatch.setattr(toolkit_env, "nvcc", lambda: str(wrapper))
    other = _with_headers(tmp_path / "other")
    monkeypatch.setenv(variable, str(other))
    assert toolkit_env.toolkit_root() == other
    toolkit_env.toolkit_root.cache_clear()
    monkeypatch.setenv(variable, str(tmp_path / "empty"))
    assert toolkit_env.toolkit_root() is None
    reason = str(toolkit_env.build_requirement())
    assert "cuda_runtime.h" in reason
    assert f"${variable} ({tmp_path / 'empty'})" in reason
    assert f"set {variable} to the toolkit's root" in reason


def test_toolkit_root_without_headers_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """An nvcc whose reported root has no headers either: no root, and the reason names the
    nvcc that was found."""
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\necho '#$ TOP={tmp_path / 'nowhere'}' >&2\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(toolkit_env, "nvcc", lambda: str(wrapper))
    assert toolkit_env.toolkit_root() is None
    assert str(wrapper) in str(toolkit_env.build_requirement())


def test_cuda_home_wins_over_cuda_path_unless_it_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """Both set: ``$CUDA_HOME``'s toolkit, and it is the one named in the reason; set but empty
    (``CUDA_HOME= rnnkit ...``): as if unset, so ``$CUDA_PATH`` counts."""
    home = _with_headers(tmp_path / "home")
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setenv("CUDA_PATH", str(_with_headers(tmp_path / "path")))
    assert toolkit_env.toolkit_root() == home
    toolkit_env.toolkit_root.cache_clear()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "empty"))
    assert toolkit_env.toolkit_root() is None
    reason = str(toolkit_env.build_requirement())
    assert f"$CUDA_HOME ({tmp_path / 'empty'})" in reason
    assert "set CUDA_HOME to the toolkit's root" in reason
    toolkit_env.toolkit_root.cache_clear()
    monkeypatch.setenv("CUDA_HOME", "")
    assert toolkit_env.toolkit_root() == tmp_path / "path"


def test_toolkit_root_of_a_plain_toolkit_does_not_ask_nvcc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """An nvcc in its toolkit's ``bin/`` with the headers beside it: that toolkit, without
    running ``nvcc --dryrun`` (this nvcc answers nothing, as a broken or slow one may)."""
    root = _with_headers(tmp_path / "cuda")
    (root / "bin").mkdir()
    mute = root / "bin" / "nvcc"
    mute.write_text("#!/bin/sh\nexit 1\n")
    mute.chmod(0o755)
    monkeypatch.setattr(toolkit_env, "nvcc", lambda: str(mute))
    assert toolkit_env.toolkit_root() == root


def test_toolkit_flags_link_lib_where_there_is_no_lib64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toolkit_env: Any
) -> None:
    """A toolkit with ``lib/`` and no ``lib64/`` (conda's layout) links from ``lib/``."""
    from torch.utils import cpp_extension

    root, wrapper = _fake_toolkit(tmp_path)
    (root / "lib64").rename(root / "lib")
    monkeypatch.setattr(toolkit_env, "nvcc", lambda: str(wrapper))
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert toolkit_env._toolkit_flags() == (
        [str(root.resolve() / "include")],
        [f"-L{root.resolve() / 'lib'}"],
    )


def test_this_machines_nvcc_has_a_toolkit(toolkit_env: Any) -> None:
    """Where nvcc is installed (CI's build machines have nvcc 13, some as a wrapper script in
    ``/usr/local/bin``), its toolkit's headers are found."""
    if toolkit_env.nvcc() is None:
        pytest.skip("no nvcc on this machine")
    root = toolkit_env.toolkit_root()
    assert root is not None and (root / "include" / "cuda_runtime.h").is_file()


def test_the_compile_gets_the_toolkit_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library's ``toolkit_flags`` reach torch's extension builder (include folders and
    linker flags), after the library's own."""
    from torch.utils import cpp_extension

    seen: dict[str, Any] = {}
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.update(kw))
    lib = _tiny(tmp_path, toolkit_flags=lambda: (["/cuda/include"], ["-L/cuda/lib64"]))
    lib._compile(tmp_path / "build", False)
    assert seen["extra_include_paths"] == [str(lib.csrc), "/cuda/include"]
    assert seen["extra_ldflags"][-1] == "-L/cuda/lib64"


def test_probe_sees_this_torch() -> None:
    info = hook.probe_torch()
    assert info is not None
    assert (info.version, info.cuda) == (torch.__version__, torch.version.cuda)


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA torch would compile here")
@pytest.mark.parametrize("asked", [False, True])
def test_hook_run_here_ships_nothing_and_says_why(tmp_path: Path, asked: bool) -> None:
    """With this CPU torch the hook writes nothing, in one line; asked for it, it warns."""
    environ = {"RNNKIT_BUILD_CUDA": "1"} if asked else {}
    outcome = hook.run(KERNELS / "src", "standard", environ, tmp_path)
    assert outcome.files == [] and list(tmp_path.iterdir()) == []
    assert outcome.message == (
        f"no prebuilt CUDA library in this wheel: torch {torch.__version__} is built without "
        "CUDA; compiled on first use"
    )
    assert outcome.warning is asked
    assert "\n" not in outcome.message
    # the library's modules were run from the source tree and taken out of sys.modules again
    assert sys.modules["rnnkit.kernels.native"] is native


def test_hook_loads_the_library_definition_from_the_source_tree() -> None:
    """The hook runs ``gated/cuda/_native.py`` without the packages' ``__init__`` (which need
    rnnkit-core) and gets the same library, then restores ``sys.modules``."""
    with hook.library_modules(KERNELS / "src") as modules:
        lib = modules["rnnkit.kernels.gated.cuda._native"].LIBRARY
        assert lib is not cuda.LIBRARY and lib.name == cuda.LIBRARY.name
        assert lib.sources_digest() == cuda.LIBRARY.sources_digest()
        # the source tree's own folder; the imported package may be installed elsewhere
        tail = Path(*hook.WHEEL_DIR.split("/"))
        assert lib.prebuilt_dir == KERNELS / "src" / tail
        assert cuda.LIBRARY.prebuilt_dir.parts[-len(tail.parts) :] == tail.parts
    assert sys.modules["rnnkit.kernels.native"] is native


def _tiny(tmp_path: Path, **kwargs: Any) -> NativeLibrary:
    csrc = tmp_path / "csrc"
    csrc.mkdir(exist_ok=True)
    source = csrc / "tiny.cpp"
    if not source.exists():
        source.write_text("// tiny\n")
    kwargs.setdefault("prebuilt_dir", tmp_path / "prebuilt")
    return NativeLibrary(name="rnnkit_test_prebuilt", csrc=csrc, sources=("tiny.cpp",), **kwargs)


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # the test libraries must not reach `rnnkit kernels` of other tests
    monkeypatch.setattr(native, "_REGISTRY", dict(native._REGISTRY))


def test_a_failed_compile_warns_with_the_first_error_and_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook's compile failing is a warning and no files: the wheel is still built."""
    lib = _tiny(tmp_path)
    output = (
        "Error building extension 'rnnkit_gated_cuda': [1/3] nvcc ... gated_cuda.cu\n"
        "FAILED: gated_cuda.cuda.o\n"
        'gated_cuda.cu(12): error: identifier "undefined_thing" is undefined\n'
        "1 error detected\n"
    )

    def failing(directory: Path, *, env: dict[str, str] | None = None) -> Path:
        assert env == {"TORCH_CUDA_ARCH_LIST": "9.0"}
        raise RuntimeError(output)

    monkeypatch.setattr(lib, "compile_into", failing)
    monkeypatch.setattr(hook, "LOG_DIR", tmp_path / "logs")
    outcome = hook.compile_prebuilt(lib, native._summary, tmp_path / "out", "9.0", "nvcc 13")
    assert outcome.files == [] and outcome.warning
    assert 'gated_cuda.cu(12): error: identifier "undefined_thing" is undefined' in outcome.message
    (log,) = (tmp_path / "logs").iterdir()
    assert f"(full log: {log})" in outcome.message
    assert "1 error detected" in log.read_text()
    assert not (tmp_path / "out").exists()


def _prebuild(lib: NativeLibrary, tmp_path: Path, arches: str = "9.0") -> list[Path]:
    """What the hook ships for ``lib`` after a compile (a file standing for the library)."""
    fake = tmp_path / "compiled.so"
    fake.write_bytes(b"\x7fELF not really a library")

    def compiled(directory: Path, *, env: dict[str, str] | None = None) -> Path:
        assert env == {"TORCH_CUDA_ARCH_LIST": arches}
        return fake

    lib.compile_into = compiled  # type: ignore[method-assign]
    assert lib.prebuilt_dir is not None
    outcome = hook.compile_prebuilt(lib, native._summary, lib.prebuilt_dir, arches, "nvcc 13")
    assert not outcome.warning, outcome.message
    return list(outcome.files)


def test_the_hook_ships_the_library_with_its_key(tmp_path: Path) -> None:
    lib = _tiny(tmp_path)
    so, manifest_path = _prebuild(lib, tmp_path, "8.0;9.0")
    assert (so.name, manifest_path.name) == (f"{lib.name}.so", f"{lib.name}.json")
    manifest = json.loads(manifest_path.read_text())
    expected = native.prebuilt_fields(lib.name, lib.sources_digest())
    assert {k: manifest[k] for k in expected} == expected
    assert manifest["torch"] == torch.__version__ and manifest["cuda"] == str(torch.version.cuda)
    assert manifest["arch_list"] == "8.0;9.0" and manifest["nvcc"] == "nvcc 13"
    assert manifest["sha256"] == native._sha256(so)


# --- the loader's key matching -----------------------------------------------------------------


def test_a_matching_prebuilt_is_taken(tmp_path: Path) -> None:
    _prebuild(_tiny(tmp_path), tmp_path)
    lib = _tiny(tmp_path, device_arch=lambda: "9.0")
    path, text = lib._prebuilt_state()
    assert path == tmp_path / "prebuilt" / f"{lib.name}.so"
    assert text.startswith(str(path)) and "arch 9.0" in text
    status = lib.status()
    assert status["built"] == "prebuilt" and status["available"] == "yes"
    assert lib.cannot_build() is None


def _edit(tmp_path: Path, **fields: str) -> None:
    path = tmp_path / "prebuilt" / "rnnkit_test_prebuilt.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest))


MISMATCHES = [
    (
        {"torch": "2.4.0+cu121"},
        "9.0",
        f"built for torch 2.4.0+cu121, this is torch {torch.__version__}",
    ),
    ({"cuda": "12.1"}, "9.0", f"built for CUDA 12.1, this is CUDA {torch.version.cuda}"),
    ({"python": "3.99"}, "9.0", "built for Python 3.99, this is Python"),
    ({"sources": "0123456789abcdef"}, "9.0", "built from other sources"),
    ({"format": "0"}, "9.0", "built for format 0, this is format 1"),
    ({}, "8.0", "built for GPU architectures 9.0, this device is 8.0"),
    ({"arch_list": "9.0a"}, "10.0", "built for GPU architectures 9.0a, this device is 10.0"),
    ({}, "none", "built for GPU architectures 9.0, there is no GPU here"),
]


@pytest.mark.parametrize(("fields", "device", "reason"), MISMATCHES)
def test_a_prebuilt_whose_key_differs_is_ignored_with_a_reason(
    tmp_path: Path, fields: dict[str, str], device: str, reason: str
) -> None:
    """Ignored (never loaded), the reason in ``status``; the JIT path is used as without it."""
    _prebuild(_tiny(tmp_path), tmp_path)
    _edit(tmp_path, **fields)
    lib = _tiny(tmp_path, device_arch=lambda: device, build_requires=lambda: "no nvcc here")
    path, text = lib._prebuilt_state()
    assert path is None and text.startswith("ignored: ") and reason in text
    status = lib.status()
    assert status["prebuilt"] == text
    assert status["built"] == "not built (no nvcc here)" == f"not built ({lib.why_unavailable()})"
    with pytest.raises(BuildError, match="no nvcc here"):
        lib.build()  # went on to compile, which this machine cannot do


def test_sources_edited_after_the_build_make_the_prebuilt_stale(tmp_path: Path) -> None:
    _prebuild(_tiny(tmp_path), tmp_path)
    (tmp_path / "csrc" / "tiny.cpp").write_text("// edited\n")
    path, text = _tiny(tmp_path, device_arch=lambda: "9.0")._prebuilt_state()
    assert path is None and "built from other sources" in text


def test_prebuilt_switch_and_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RNNKIT_PREBUILT=0`` ignores it; bytes that differ from the manifest's digest are never
    loaded; no manifest at all says ``none shipped``."""
    assert _tiny(tmp_path)._prebuilt_state() == (None, "none shipped")
    so, _ = _prebuild(_tiny(tmp_path), tmp_path)
    monkeypatch.setenv(native.PREBUILT_ENV, "0")
    assert _tiny(tmp_path)._prebuilt_state() == (None, "ignored (RNNKIT_PREBUILT=0)")
    monkeypatch.delenv(native.PREBUILT_ENV)
    so.write_bytes(b"\x7fELF truncated")
    lib = _tiny(tmp_path, device_arch=lambda: "9.0", build_requires=lambda: "no nvcc here")
    assert lib._prebuilt_state()[0] == so  # the digest is checked when it is loaded
    with pytest.raises(BuildError, match="no nvcc here"):
        lib.build()
    assert lib.status()["prebuilt"] == f"ignored: {so} does not match its recorded digest"


def test_loading_a_prebuilt_reads_its_manifest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest read to match the key also gives the digest the bytes are checked
    against when the library is loaded: one read per lookup, not two."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    _prebuild(_tiny(tmp_path), tmp_path)
    manifest = tmp_path / "prebuilt" / "rnnkit_test_prebuilt.json"
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == manifest:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    loaded: list[str] = []
    monkeypatch.setattr(Path, "read_text", counting)
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    lib = _tiny(tmp_path, device_arch=lambda: "9.0", build_requires=lambda: "no nvcc here")
    assert lib.build().prebuilt
    assert loaded == [str(manifest.with_suffix(".so"))]
    assert len(reads) == 1


def test_arch_covers() -> None:
    covers = native.arch_covers
    assert covers("9.0", "9.0") and covers("8.0;9.0", "9.0") and covers("7.5 8.0", "8.0")
    assert covers("8.0", "8.6")  # same major, newer minor runs the machine code
    assert not covers("8.6", "8.0") and not covers("8.0", "9.0")
    assert covers("8.0+PTX", "9.0") and not covers("9.0+PTX", "8.9")
    assert covers("9.0a", "9.0") and not covers("9.0a", "10.0") and not covers("9.0a+PTX", "10.0")
    assert not covers("Hopper", "9.0") and not covers("", "9.0") and not covers("9.0", "none")
    # the other suffix and separator of TORCH_CUDA_ARCH_LIST; one suffix at most; a device
    # reports a plain major.minor
    assert covers("10.0f", "10.0") and covers("8.0,9.0", "9.0")
    assert not covers("9.0af", "9.0") and not covers("9.0", "9.0a")


def test_the_prebuilt_key_covers_python_minor_headers_and_cuda_flags(tmp_path: Path) -> None:
    """Python is compared to the minor version (an extension built for 3.11 does not load in
    3.12); editing a header or changing an nvcc flag makes a prebuilt library stale."""
    fields = native.prebuilt_fields("x", "d")
    assert fields["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert fields["platform"].startswith(sys.platform)
    header = tmp_path / "csrc" / "tiny.h"
    _tiny(tmp_path)  # makes csrc
    header.write_text("// v1\n")
    before = _tiny(tmp_path, headers=("tiny.h",)).sources_digest()
    header.write_text("// v2\n")
    assert _tiny(tmp_path, headers=("tiny.h",)).sources_digest() != before
    flagged = _tiny(tmp_path, headers=("tiny.h",), cuda_cflags=("-O2",)).sources_digest()
    assert flagged != _tiny(tmp_path, headers=("tiny.h",)).sources_digest()


def test_a_prebuilt_serves_without_a_compiler_unless_forced_disabled_or_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A matching prebuilt makes the library available where nothing could compile it;
    ``build(force=True)`` compiles instead (here: cannot); ``RNNKIT_CPP=0`` still disables it;
    a manifest whose library file is gone is ignored with that reason."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    _prebuild(_tiny(tmp_path), tmp_path)
    no_nvcc = {"device_arch": lambda: "9.0", "build_requires": lambda: "no nvcc here"}
    lib = _tiny(tmp_path, **no_nvcc)
    assert lib.why_unavailable() is None and lib.status()["available"] == "yes"
    loaded: list[Path] = []
    monkeypatch.setattr(lib, "_load_prebuilt", lambda p: loaded.append(p) or True)
    with pytest.raises(BuildError, match="no nvcc here"):
        lib.build(force=True)
    assert loaded == []
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    status = _tiny(tmp_path, **no_nvcc).status()
    assert (
        status["built"]
        == "not built (disabled by RNNKIT_CPP=0)"
        == (f"not built ({status['available']})")
    )
    monkeypatch.delenv(native.DISABLE_ENV)
    so = tmp_path / "prebuilt" / "rnnkit_test_prebuilt.so"
    so.unlink()
    assert _tiny(tmp_path, **no_nvcc)._prebuilt_state() == (None, f"ignored: {so} is missing")


def test_a_cached_library_needs_no_compiler_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cannot_build`` is ``None`` where the cache holds the library, even without nvcc and
    without a prebuilt: ``rnnkit kernels build`` loads it."""
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    lib = _tiny(tmp_path, device_arch=lambda: "9.0", build_requires=lambda: "no nvcc here")
    assert lib.cannot_build() == "no nvcc here"
    cached = lib._library(lib.cache_dir())
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF")
    assert lib.cannot_build() is None


def test_compile_into_sets_the_architectures_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env`` (the hook's ``TORCH_CUDA_ARCH_LIST``) overrides ``build_env`` during the compile
    and the environment is restored afterwards."""
    from torch.utils import cpp_extension

    seen: list[str | None] = []
    monkeypatch.setattr(native, "_toolchain_problem", lambda: None)
    monkeypatch.setattr(
        cpp_extension, "load", lambda **_: seen.append(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    )
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    lib = _tiny(tmp_path, build_env=lambda: {"TORCH_CUDA_ARCH_LIST": "8.6"})
    lib.compile_into(tmp_path / "out", env={"TORCH_CUDA_ARCH_LIST": "8.0;9.0"})
    lib.compile_into(tmp_path / "out")
    assert seen == ["8.0;9.0", "8.6"] and "TORCH_CUDA_ARCH_LIST" not in os.environ


# --- rnnkit kernels build / status -------------------------------------------------------------


def test_kernels_status_says_prebuilt_cached_or_why_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from rnnkit.core import cli

    assert cli.main(["kernels", "status", cuda.LIBRARY.name]) == 0
    out = capsys.readouterr().out
    prebuilt_line = next(ln for ln in out.splitlines() if ln.strip().startswith("prebuilt"))
    assert prebuilt_line.split(None, 1)[1] == cuda.LIBRARY.status()["prebuilt"]
    if torch.version.cuda is None:
        assert f"built      not built ({cuda.available()})" in out
    _prebuild(_tiny(tmp_path), tmp_path)
    _tiny(tmp_path, device_arch=lambda: "9.0")
    assert cli.main(["kernels", "status", "rnnkit_test_prebuilt"]) == 0
    assert "built      prebuilt" in capsys.readouterr().out


def test_build_skips_a_library_it_cannot_compile_unless_one_is_prebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rnnkit kernels build`` without names skips a library whose compiler is missing (nvcc)
    when nothing is prebuilt; with a matching prebuilt it loads that one instead."""
    from rnnkit.core import cli

    monkeypatch.setattr(native, "_REGISTRY", {})
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    _tiny(tmp_path, build_requires=lambda: "nvcc not found")
    assert cli.main(["kernels", "build"]) == 0
    assert "rnnkit_test_prebuilt: skipped (nvcc not found)" in capsys.readouterr().out
    _prebuild(_tiny(tmp_path), tmp_path)
    lib = _tiny(tmp_path, device_arch=lambda: "9.0", build_requires=lambda: "nvcc not found")
    assert lib.cannot_build() is None
    loaded: list[str] = []
    monkeypatch.setattr(lib, "_load_prebuilt", lambda p: loaded.append(str(p)) or True)
    monkeypatch.setattr(lib, "_loaded", lambda info: info)
    info = lib.build()
    assert info.prebuilt and not info.compiled and loaded == [str(info.path)]


# --- a real wheel ------------------------------------------------------------------------------


@pytest.mark.experiment
def test_a_wheel_built_here_has_no_prebuilt_and_installs(tmp_path: Path) -> None:
    """``pip wheel`` (build isolation: torch is not in the build environment) makes a pure
    wheel without the library, says why in one line, and installs; the installed package
    reports the library as not built, with the reason."""
    pip = [sys.executable, "-m", "pip"]
    done = subprocess.run(
        [*pip, "wheel", "-v", "--no-deps", "-w", str(tmp_path / "dist"), str(KERNELS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rnnkit-kernels: no prebuilt CUDA library in this wheel: torch is not importable" in (
        done.stdout + done.stderr
    )
    (wheel,) = (tmp_path / "dist").glob("rnnkit_kernels-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rnnkit/kernels/gated/cuda/_native.py" in names
    assert not [n for n in names if "_prebuilt" in n or n.endswith(".so")]
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    import rnnkit.core

    core_root = Path(rnnkit.core.__file__).parents[2]
    code = (
        "import rnnkit.kernels.gated.cuda._native as m; print(m.__file__); "
        "print(m.LIBRARY.status()['prebuilt'])"
    )
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{core_root}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    path, prebuilt = out.stdout.strip().splitlines()
    assert path.startswith(str(site)) and prebuilt == "none shipped"


# --- tools/gpu ---------------------------------------------------------------------------------

GPU_TOOLS = KERNELS.parents[1] / "tools" / "gpu"
FAKE_PYTHON = """#!/usr/bin/env bash
# records each call; `kernels status` answers as a machine where the wheel gave a prebuilt one
echo "PY $*" >> "$CALLS"
case "$*" in
  *"kernels status"*)
    echo "rnnkit_gated_cuda"
    [ -n "${PREBUILT:-}" ] && echo "  built      prebuilt" ;;
esac
exit 0
"""


@pytest.mark.skipif(not GPU_TOOLS.is_dir(), reason="tools/gpu is not in this checkout")
def test_gpu_scripts_parse_and_share_the_setup() -> None:
    scripts = sorted(GPU_TOOLS.glob("*.sh"))
    assert len(scripts) >= 6
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script.name, done.stderr)
    for script in GPU_TOOLS.glob("*_check.sh"):
        assert 'source "$(dirname "$0")/_setup.sh"' in script.read_text(), script.name


@pytest.mark.skipif(not GPU_TOOLS.is_dir(), reason="tools/gpu is not in this checkout")
@pytest.mark.parametrize("prebuilt", [True, False])
def test_cuda_check_tries_the_ahead_of_time_build(tmp_path: Path, prebuilt: bool) -> None:
    """With a stand-in Python: cuda_check.sh installs packages/kernels without build isolation,
    reads ``kernels status``, builds on first use only where that did not say ``prebuilt``, and
    exits 3 when the tests pass but nothing was prebuilt."""
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    (root / ".whl").mkdir()
    (root / ".whl" / "rnnkit_core-0.1.0-py3-none-any.whl").write_text("")
    shutil.copytree(GPU_TOOLS, root / "tools" / "gpu")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHON": str(fake),
        "CALLS": str(calls),
        "RNNKIT_CPP_CACHE": str(tmp_path / "cache"),
        **({"PREBUILT": "1"} if prebuilt else {}),
    }
    done = subprocess.run(
        ["bash", str(root / "tools" / "gpu" / "cuda_check.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    log = calls.read_text()
    assert "-m pip install -v --no-index --no-deps --no-build-isolation" in log
    assert ("kernels build rnnkit_gated_cuda" in log) is not prebuilt
    expected = "ahead-of-time build: prebuilt" if prebuilt else "ahead-of-time build: NOT prebuilt"
    assert expected in done.stdout
    assert done.returncode == (0 if prebuilt else 3), done.stdout + done.stderr
