"""The native library cache under faults: damaged or foreign cached libraries, killed and
interrupted builds, concurrent builders, an unwritable cache, ``--force``.

One tiny library is compiled once per session (a few seconds to half a minute); each test
copies that cache and damages the copy. Loading a damaged library can kill a process, so
everything that loads runs in a child process; a "compile" in those children copies the tiny
library's good build (the real compiler is exercised by the session fixture and by
``test_fused_cpp.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rnnkit.kernels import native
from rnnkit.kernels.native import BuildError, NativeLibrary

NAME = "rnnkit_test_cache_tiny"
SOURCE = f"""
#include <torch/library.h>
#include <ATen/ATen.h>
static at::Tensor plus_one(const at::Tensor& x) {{ return x + 1; }}
TORCH_LIBRARY({NAME}, m) {{ m.def("plus_one(Tensor x) -> Tensor", plus_one); }}
"""

pytestmark = pytest.mark.skipif(
    native._toolchain_problem() is not None and not os.environ.get("RNNKIT_REQUIRE_CPP"),
    reason=f"cannot compile here: {native._toolchain_problem()}",
)


def _script(code: str, csrc: Path) -> str:
    """``code`` after a prelude defining ``lib``, ``fake_compile`` (copies the good build
    ``csrc/good.so`` instead of compiling) and ``GOOD``."""
    prelude = f"""
    import shutil, sys, torch
    from pathlib import Path
    from rnnkit.kernels import native
    from rnnkit.kernels.native import BuildError, NativeLibrary
    lib = NativeLibrary(name={NAME!r}, csrc=Path({str(csrc)!r}), sources=("tiny.cpp",))
    GOOD = Path({str(csrc / "good.so")!r})

    def fake_compile(self, work, verbose):
        shutil.copy(GOOD, work / {NAME + ".so"!r})
        torch.ops.load_library(str(work / {NAME + ".so"!r}))

    """
    return textwrap.dedent(prelude) + textwrap.dedent(code)


def _child(code: str, cache: Path, csrc: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run :func:`_script` of ``code`` in a fresh interpreter with the cache at ``cache``."""
    full_env = {**os.environ, native.CACHE_ENV: str(cache), **env}
    return subprocess.run(
        [sys.executable, "-c", _script(code, csrc)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(csrc, cache)``: the tiny library's sources and a cache holding its good build."""
    root = tmp_path_factory.mktemp("native_cache")
    csrc, cache = root / "csrc", root / "cache"
    csrc.mkdir()
    (csrc / "tiny.cpp").write_text(SOURCE)
    # a real compile, in a child: the test process must not load the library
    done = _child(
        "info = lib.build()\nassert info.compiled\nprint(info.path)",
        cache,
        csrc,
    )
    assert done.returncode == 0, done.stderr
    built = Path(done.stdout.strip().splitlines()[-1])
    shutil.copy(built, csrc / "good.so")
    return csrc, cache


def _copy(golden: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private copy of the golden cache: ``(csrc, cache, key directory)``."""
    csrc, cache = golden
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    (key_dir,) = (mine / NAME).iterdir()
    return csrc, mine, key_dir


RUN_AND_REPORT = """
native.NativeLibrary._compile = fake_compile
info = lib.build()
assert lib.ops().plus_one(torch.zeros(2)).tolist() == [1.0, 1.0]
print("compiled" if info.compiled else "loaded")
"""


def test_good_cache_loads_without_compiling(golden: tuple[Path, Path], tmp_path: Path) -> None:
    csrc, cache, _ = _copy(golden, tmp_path)
    done = _child(RUN_AND_REPORT, cache, csrc)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["loaded"]


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty", "no digest"])
def test_damaged_cached_library_is_set_aside_and_rebuilt(
    golden: tuple[Path, Path], tmp_path: Path, damage: str
) -> None:
    """Never loaded: the child would die (SIGBUS, SIGABRT) or register the wrong ops."""
    csrc, cache, key_dir = _copy(golden, tmp_path)
    so = key_dir / f"{NAME}.so"
    data = so.read_bytes()
    if damage == "truncated":
        so.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        shutil.copy(torch_library(), so)
    elif damage == "empty":
        so.write_bytes(b"")
    else:
        (key_dir / f"{NAME}.so.sha256").unlink()
    guard = """
    _load = torch.ops.load_library
    def load_library(path):
        assert ".build-" in str(path), f"loaded the unverified cache entry {path}"
        _load(path)
    torch.ops.load_library = load_library
    """
    done = _child(textwrap.dedent(guard) + RUN_AND_REPORT, cache, csrc)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["compiled"]
    assert "does not match its recorded digest" in done.stderr
    assert list(key_dir.glob(f"{NAME}.so.bad-*")), "the damaged file was not kept aside"
    if damage == "truncated":  # the rebuilt entry is good for the next process
        again = _child(RUN_AND_REPORT, cache, csrc)
        assert again.returncode == 0 and again.stdout.split() == ["loaded"], again.stderr


def torch_library() -> Path:
    """A real shared library that is not ours (torch's own)."""
    import torch

    lib_dir = Path(torch.__file__).parent / "lib"
    return next(p for p in sorted(lib_dir.glob("libc10*.so*")))


def test_force_rebuilds_from_nothing(golden: tuple[Path, Path], tmp_path: Path) -> None:
    csrc, cache, key_dir = _copy(golden, tmp_path)
    (key_dir / "FAILED").write_text("an old failure\n")
    code = RUN_AND_REPORT.replace("lib.build()", "lib.build(force=True)")
    done = _child(code, cache, csrc)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["compiled"]
    assert not (key_dir / "FAILED").exists()


HOLD_LOCK = """
import time
directory = lib.cache_dir()
directory.mkdir(parents=True, exist_ok=True)
with native._build_lock(directory, lib.name):
    print("holding", flush=True)
    time.sleep(120)
"""


def _start_holder(cache: Path, csrc: Path) -> subprocess.Popen[str]:
    env = {**os.environ, native.CACHE_ENV: str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _script(HOLD_LOCK, csrc)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_held_lock_is_shown_and_waiting_times_out(
    golden: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csrc, cache, key_dir = _copy(golden, tmp_path)
    (key_dir / f"{NAME}.so").unlink()  # a build is needed
    holder = _start_holder(cache, csrc)
    try:
        monkeypatch.setenv(native.CACHE_ENV, str(cache))
        monkeypatch.setattr(native, "_REGISTRY", dict(native.libraries()))
        status = NativeLibrary(name=NAME, csrc=csrc, sources=("tiny.cpp",)).status()
        assert f"process {holder.pid}" in status.get("lock", ""), status
        code = "native.NativeLibrary._compile = fake_compile\nlib.build()"
        start = time.monotonic()
        done = _child(code, cache, csrc, **{native.LOCK_TIMEOUT_ENV: "1"})
        assert time.monotonic() - start < 60
        assert done.returncode != 0
        assert "timed out" in done.stderr and f"process {holder.pid}" in done.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_builder_leaves_no_lock_behind(golden: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL in the middle of a build: the next process builds at once, not after a wait."""
    csrc, cache, key_dir = _copy(golden, tmp_path)
    (key_dir / f"{NAME}.so").unlink()
    holder = _start_holder(cache, csrc)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert native.lock_holder(key_dir) is None
    start = time.monotonic()
    done = _child(RUN_AND_REPORT, cache, csrc, **{native.LOCK_TIMEOUT_ENV: "30"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["compiled"]
    assert time.monotonic() - start < 30
    assert "waiting for" not in done.stderr


HOLD_LOCK_COMPILING = """
import tempfile, time
directory = lib.cache_dir()
directory.mkdir(parents=True, exist_ok=True)
with native._build_lock(directory, lib.name):
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))  # as build() makes it
    (work / "gated_ops.o").write_bytes(b"half an object file")
    print("holding", flush=True)
    time.sleep(120)
"""


def test_the_build_folder_of_a_killed_builder_is_removed_by_the_next_build(
    golden: tuple[Path, Path], tmp_path: Path
) -> None:
    """kill -9 skips the builder's cleanup: its private ``.build-*`` folder (object files of
    a half-done compile) stays in the cache until the next build, which removes it."""
    csrc, cache, key_dir = _copy(golden, tmp_path)
    (key_dir / f"{NAME}.so").unlink()
    env = {**os.environ, native.CACHE_ENV: str(cache)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _script(HOLD_LOCK_COMPILING, csrc)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert len(list(key_dir.glob(".build-*"))) == 1  # what the kill left
    done = _child(RUN_AND_REPORT, cache, csrc)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["compiled"]
    assert list(key_dir.glob(".build-*")) == []


@pytest.mark.parametrize(
    "interruption",
    [
        KeyboardInterrupt(),
        RuntimeError("Error building extension: ninja: build stopped: interrupted by user."),
    ],
    ids=["KeyboardInterrupt", "ninja interrupted"],
)
def test_an_interrupted_compile_is_not_recorded_as_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: BaseException
) -> None:
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_REGISTRY", dict(native.libraries()))
    (tmp_path / "tiny.cpp").write_text(SOURCE)

    def interrupted(self: NativeLibrary, work: Path, verbose: bool) -> None:
        raise interruption

    monkeypatch.setattr(NativeLibrary, "_compile", interrupted)
    lib = NativeLibrary(name=NAME, csrc=tmp_path, sources=("tiny.cpp",))
    with pytest.raises(KeyboardInterrupt):
        lib.build()
    assert not (lib.cache_dir() / "FAILED").exists()
    assert lib.why_unavailable() is None  # the next call tries again
    assert not list(lib.cache_dir().glob(".build-*")), "the build directory was left behind"


def test_an_unwritable_cache_is_a_build_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(native.CACHE_ENV, str(blocker / "cache"))
    monkeypatch.setattr(native, "_REGISTRY", dict(native.libraries()))
    (tmp_path / "tiny.cpp").write_text(SOURCE)
    lib = NativeLibrary(name=NAME, csrc=tmp_path, sources=("tiny.cpp",))
    with pytest.raises(BuildError, match="cannot be written"):
        lib.build()
    reason = lib.why_unavailable()
    assert reason is not None and "cannot be written" in reason


def test_fused_cpp_falls_back_once_when_the_cache_is_unwritable(tmp_path: Path) -> None:
    """A cell's forward on ``fused_cpp`` runs the pure-torch loop with one warning; later
    ``auto`` calls pass the backend over silently."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    script = """
    import warnings, torch
    from rnnkit.core import create_cell
    cell = create_cell("gru", input_size=3, hidden_size=4, heads=2)
    x = torch.randn(2, 5, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1, _ = cell(x, backend="fused_cpp")
        y2, _ = cell(x)
        y3, _ = cell(x)
    y_ref, _ = cell(x, backend="fused")
    assert torch.equal(y1, y_ref) and torch.allclose(y2, y_ref) and torch.allclose(y3, y_ref)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "cannot be written" in messages[0], messages
    print("ok")
    """
    env = {**os.environ, native.CACHE_ENV: str(blocker / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


LOAD_PREBUILT = """
def no_compile(self, *args, **kwargs):
    raise AssertionError("compiled although a matching prebuilt library is there")

native.NativeLibrary._compile = no_compile
prebuilt_dir = Path(sys.argv[1])
lib.write_prebuilt(GOOD, prebuilt_dir, "")  # what the wheel's build hook ships
shipped = NativeLibrary(
    name=lib.name, csrc=lib.csrc, sources=lib.sources, prebuilt_dir=prebuilt_dir
)
info = shipped.build()
assert info.prebuilt and not info.compiled, info
assert info.path == prebuilt_dir / (lib.name + ".so")
assert shipped.ops().plus_one(torch.zeros(2)).tolist() == [1.0, 1.0]
assert not shipped.cache_dir().exists(), "the cache was touched"
print(shipped.status()["built"])
"""


def test_a_matching_prebuilt_library_loads_without_the_cache(
    golden: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real library shipped prebuilt (as the wheel's build hook writes it) is loaded and its
    ops run, with an empty cache and no compile."""
    csrc, _ = golden
    script = _script(LOAD_PREBUILT, csrc)
    env = {**os.environ, native.CACHE_ENV: str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "prebuilt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["prebuilt"]
