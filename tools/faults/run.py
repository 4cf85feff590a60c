"""Run the native-cache, run and plugin faults of issue 14 end to end, as a user meets them.

Each scenario works in a fresh temporary directory with its own caches (``RNNKIT_CACHE``,
``RNNKIT_CPP_CACHE``, ``RNNKIT_DATA``, ``XDG_CACHE_HOME``, ``XDG_DATA_HOME``), so the caches of
the person running it are never touched. It drives the installed ``rnnkit`` command (or
``python -c`` for library use), injects one fault (a truncated cached library, a kill -9, an
edited checkpoint, a plugin that exits at import, ...) and compares what happens with what the
documentation promises. Plugins are injected without installing anything: a plugin module and
a ``.dist-info`` folder declaring its ``rnnkit`` entry point go to a folder on ``PYTHONPATH``,
which is how an installed distribution is found.

It prints one table (scenario, fault, expected, observed, ok), then the output of each failed
scenario, and exits with status 1 if any scenario failed (2 if it could not run at all).

Usage::

    python tools/faults/run.py            # everything (compiles one native library 3 times)
    python tools/faults/run.py --quick    # without the scenarios that compile
    python tools/faults/run.py --only plugin --keep

Only the standard library is imported here; rnnkit runs in the child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the native library the cache scenarios build: the smallest one (a single source file)
LIBRARY = "rnnkit_scan_cpp"
#: the limit on any one child process: a hang is a failure, never a hung script
TIMEOUT = 600.0
#: environment variables of the person running the script that would change what a child does
_INHERITED_RNNKIT = ("RNNKIT_", "PYTHONPATH")


# --- running things ------------------------------------------------------------------------


@dataclass
class Done:
    """A finished child process."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return exit_text(self.returncode)


def exit_text(code: int | None) -> str:
    """``exit 2`` or ``killed by SIGKILL``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def traceback_in(text: str) -> bool:
    return "Traceback (most recent call last)" in text


#: every child started in the background, so that none outlives the script (they run in
#: sessions of their own, out of reach of a Ctrl-C given to the script)
_STARTED: list[Watched] = []


class Watched:
    """A running child whose stdout and stderr are collected line by line as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.args = args
        # a session of its own: Ctrl-C reaches the whole group (the compiler too), as in a
        # terminal, and a kill can reach the children it left
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        _STARTED.append(self)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: Iterable[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> bool:
        """Wait until ``text`` appears on stdout or stderr (False: exited or timed out first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if any(text in line for line in (*self.out, *self.err)):
                    return True
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's process group (what remains of it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = TIMEOUT) -> Done:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        return Done(self.args, self.proc.returncode, "".join(self.out), "".join(self.err))


def rnnkit_executable() -> str:
    """The installed ``rnnkit`` console script of this interpreter's environment."""
    here = Path(sys.executable).parent / "rnnkit"
    if here.exists():
        return str(here)
    found = shutil.which("rnnkit")
    if found is None:
        raise SystemExit("tools/faults/run.py: the rnnkit command is not installed")
    return found


class Sandbox:
    """A fresh directory with caches of its own, where commands run as a user types them."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_RNNKIT)}
        caches = self.dir / ".cache"
        env.update(
            {
                "XDG_CACHE_HOME": str(caches),
                "XDG_DATA_HOME": str(self.dir / ".local" / "share"),
                "RNNKIT_CACHE": str(caches / "rnnkit"),
                "RNNKIT_CPP_CACHE": str(caches / "rnnkit" / "cpp"),
                "RNNKIT_DATA": str(self.dir / ".local" / "share" / "rnnkit"),
                # one thread per process: the scenarios test behaviour, not speed, and several
                # run at once
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = env

    @property
    def cpp_cache(self) -> Path:
        return Path(self.env["RNNKIT_CPP_CACHE"])

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def run(
        self, args: Sequence[str], env: dict[str, str] | None = None, stdout: int | None = None
    ) -> Done:
        full = list(args)
        try:
            proc = subprocess.run(
                full,
                cwd=self.dir,
                env=self._env(env),
                stdout=subprocess.PIPE if stdout is None else stdout,
                stderr=subprocess.PIPE,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raw: object = e.stderr
            err = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
            return Done(full, 124, "", err + f"\n(timed out after {TIMEOUT:.0f} s)")
        return Done(full, proc.returncode, proc.stdout or "", proc.stderr or "")

    def rnnkit(self, *args: str, env: dict[str, str] | None = None) -> Done:
        return self.run([rnnkit_executable(), *args], env)

    def python(self, code: str, *args: str, env: dict[str, str] | None = None) -> Done:
        return self.run([sys.executable, "-c", textwrap.dedent(code), *args], env)

    def start(self, args: Sequence[str], env: dict[str, str] | None = None) -> Watched:
        return Watched(list(args), self.dir, self._env(env))

    def start_rnnkit(self, *args: str, env: dict[str, str] | None = None) -> Watched:
        return self.start([rnnkit_executable(), *args], env)


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a scenario observed; ``ok`` is ``None`` when it could not run here (skipped)."""

    observed: str
    ok: bool | None
    #: the commands' output, shown when the scenario failed
    details: list[Done] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    group: str
    name: str
    fault: str
    expected: str
    check: Callable[[Context], Outcome]
    #: compiles the native library (skipped by ``--quick``)
    compiles: bool = False


class Context:
    """Shared by the scenarios: the temporary root and what more than one scenario reuses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._base_run: tuple[Path, Done] | None = None
        self._toolchain: str | None = None
        self._toolchain_known = False
        #: the native cache holding a good build of LIBRARY, once a scenario made one
        self.golden_cache: Path | None = None

    def sandbox(self, name: str) -> Sandbox:
        return Sandbox(self.root, name)

    def base_run(self) -> tuple[Path, Done]:
        """A finished run (``BASE_ARGS``), trained once and copied by the scenarios."""
        with self._lock:
            if self._base_run is None:
                box = self.sandbox("base-run")
                done = box.rnnkit("train", *BASE_ARGS, "--out", "run")
                self._base_run = (box.dir / "run", done)
            return self._base_run

    def toolchain_problem(self) -> str | None:
        """Why this machine cannot compile the native libraries (``None``: it can)."""
        with self._lock:
            if not self._toolchain_known:
                box = self.sandbox("toolchain")
                done = box.rnnkit("kernels", "status", LIBRARY)
                available = status_fields(done.stdout).get("available", "")
                if done.returncode != 0:
                    self._toolchain = f"`rnnkit kernels status` failed ({done.describe()})"
                else:
                    self._toolchain = None if available == "yes" else available
                self._toolchain_known = True
            return self._toolchain


SCENARIOS: list[Scenario] = []


def scenario(
    group: str, name: str, fault: str, expected: str, *, compiles: bool = False
) -> Callable[[Callable[[Context], Outcome]], Callable[[Context], Outcome]]:
    def add(check: Callable[[Context], Outcome]) -> Callable[[Context], Outcome]:
        SCENARIOS.append(Scenario(group, name, fault, expected, check, compiles))
        return check

    return add


def verdict(checks: dict[str, bool]) -> tuple[bool, str]:
    """All checks passed, and the names of those that did not."""
    failed = [name for name, passed in checks.items() if not passed]
    return not failed, ("; FAILED: " + ", ".join(failed)) if failed else ""


# --- native library cache ------------------------------------------------------------------


def status_fields(text: str) -> dict[str, str]:
    """The ``key value`` lines of ``rnnkit kernels status NAME`` (one library)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("  ") and line.strip():
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


def key_dir(cache: Path) -> Path | None:
    """The build-key folder of LIBRARY in ``cache`` (``None`` before anything was made)."""
    found = sorted(p for p in (cache / LIBRARY).glob("*") if p.is_dir())
    return found[0] if found else None


def toolchain_skip(ctx: Context) -> Outcome | None:
    problem = ctx.toolchain_problem()
    return None if problem is None else Outcome(f"skipped: {problem}", None)


@scenario(
    "cache",
    "Ctrl-C in a first compile",
    "SIGINT to `rnnkit kernels build` and its compiler while compiling",
    "nothing recorded: no FAILED marker, status `available yes`, no build folder left",
    compiles=True,
)
def ctrl_c_during_compile(ctx: Context) -> Outcome:
    if (skip := toolchain_skip(ctx)) is not None:
        return skip
    box = ctx.sandbox("ctrl-c")
    build = box.start_rnnkit("kernels", "build", LIBRARY)
    if not build.wait_for("compiling"):
        done = build.finish()
        return Outcome(f"no compile started ({done.describe()})", False, [done])
    time.sleep(1.0)  # the compiler is at work
    if build.proc.poll() is not None:
        return Outcome("the compile ended before the interrupt", False, [build.finish()])
    build.signal_group(signal.SIGINT)
    done = build.finish()
    key = key_dir(box.cpp_cache)
    marker = key is not None and (key / "FAILED").exists()
    leftovers = [] if key is None else list(key.glob(".build-*"))
    status = box.rnnkit("kernels", "status", LIBRARY)
    available = status_fields(status.stdout).get("available", "?")
    ok, why = verdict(
        {
            "interrupted": done.returncode != 0,
            "no FAILED marker": not marker,
            "available": available == "yes",
            "no build folder": not leftovers,
        }
    )
    observed = (
        f"{done.describe()}; FAILED marker: {'yes' if marker else 'no'}; status `available "
        f"{available}`; build folders left: {len(leftovers)}{why}"
    )
    return Outcome(observed, ok, [done, status])


@scenario(
    "cache",
    "kill -9 in a first compile",
    "kill -9 of `rnnkit kernels build` while it compiles (its lock file stays behind)",
    "while held, status shows the lock and its pid; after the kill no lock, and the next build "
    "compiles at once (no wait) and removes the build folder the kill left",
    compiles=True,
)
def kill_during_compile(ctx: Context) -> Outcome:
    if (skip := toolchain_skip(ctx)) is not None:
        return skip
    box = ctx.sandbox("stale-lock")
    build = box.start_rnnkit("kernels", "build", LIBRARY)
    if not build.wait_for("compiling"):
        done = build.finish()
        return Outcome(f"no compile started ({done.describe()})", False, [done])
    held = box.rnnkit("kernels", "status", LIBRARY)
    lock_shown = status_fields(held.stdout).get("lock", "")
    if build.proc.poll() is not None:
        return Outcome("the compile ended before the kill", False, [build.finish(), held])
    os.kill(build.pid, signal.SIGKILL)  # the rnnkit process only, as `kill -9 PID` does
    killed = build.finish()
    build.signal_group(signal.SIGKILL)  # then the compiler it left running
    key = key_dir(box.cpp_cache)
    lock_file = key / "build.lock" if key is not None else None
    left_text = lock_file.read_text() if lock_file is not None and lock_file.exists() else ""
    left_by_kill = [] if key is None else list(key.glob(".build-*"))
    after = box.rnnkit("kernels", "status", LIBRARY)
    start = time.monotonic()
    again = box.rnnkit("kernels", "build", LIBRARY, env={"RNNKIT_CPP_LOCK_TIMEOUT": "600"})
    seconds = time.monotonic() - start
    if again.returncode == 0 and key is not None and (key / f"{LIBRARY}.so").exists():
        ctx.golden_cache = box.cpp_cache
    left_after = [] if key is None else list(key.glob(".build-*"))
    ok, why = verdict(
        {
            "lock shown with pid": f"process {build.pid} " in lock_shown,
            "killed": killed.returncode == -signal.SIGKILL,
            "owner left in lock file": str(build.pid) in left_text,
            "no lock after": "lock" not in status_fields(after.stdout),
            "rebuilt": again.returncode == 0 and "compiled" in again.stdout,
            "no wait": "waiting for" not in again.stderr,
            "build folder removed": not left_after,
        }
    )
    observed = (
        f"held: `lock {clip(lock_shown, 48)}`; after kill -9: lock file names dead pid "
        f"{build.pid}, status shows no lock; next build {again.describe()}, "
        f"{'compiled' if 'compiled' in again.stdout else 'not compiled'} in {seconds:.0f} s"
        f"{', waited' if 'waiting for' in again.stderr else ', no wait'}; build folders: "
        f"{len(left_by_kill)} left by the kill, {len(left_after)} after the next build{why}"
    )
    return Outcome(observed, ok, [killed, held, after, again])


def golden(ctx: Context) -> tuple[Path | None, list[Done]]:
    """A native cache with a good build of LIBRARY (made here if no scenario made one)."""
    if ctx.golden_cache is not None:
        return ctx.golden_cache, []
    box = ctx.sandbox("golden")
    done = box.rnnkit("kernels", "build", LIBRARY)
    if done.returncode != 0:
        return None, [done]
    ctx.golden_cache = box.cpp_cache
    return ctx.golden_cache, [done]


def damaged_cache(ctx: Context, name: str) -> tuple[Sandbox, Path] | Outcome:
    """A sandbox holding a copy of the golden cache, and the cached library's path."""
    cache, details = golden(ctx)
    if cache is None:
        return Outcome("could not build the library to damage", False, details)
    box = ctx.sandbox(name)
    shutil.copytree(cache, box.cpp_cache)
    key = key_dir(box.cpp_cache)
    assert key is not None
    return box, key / f"{LIBRARY}.so"


def torch_library() -> Path | None:
    """A real shared library that is not rnnkit's (torch's ``libc10``), found without torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return next(iter(sorted(lib.glob("libc10*.so*"))), None)


@scenario(
    "cache",
    "truncated cached library",
    "the cached .so cut to half its size (a full disk)",
    "`rnnkit kernels build` sets it aside (.bad-*), rebuilds, exit 0; the next process loads "
    "the rebuilt one",
    compiles=True,
)
def truncated_library(ctx: Context) -> Outcome:
    if (skip := toolchain_skip(ctx)) is not None:
        return skip
    made = damaged_cache(ctx, "truncated")
    if isinstance(made, Outcome):
        return made
    box, so = made
    data = so.read_bytes()
    so.write_bytes(data[: len(data) // 2])
    build = box.rnnkit("kernels", "build", LIBRARY)
    aside = list(so.parent.glob(f"{so.name}.bad-*"))
    again = box.rnnkit("kernels", "build", LIBRARY)
    ok, why = verdict(
        {
            "rebuilt": build.returncode == 0 and "compiled" in build.stdout,
            "said why": "does not match its recorded digest" in build.stderr,
            "kept aside": len(aside) == 1,
            "next loads": again.returncode == 0 and "loaded from the cache" in again.stdout,
        }
    )
    observed = (
        f"{build.describe()}, {'compiled' if 'compiled' in build.stdout else 'not compiled'}, "
        f"set aside as {aside[0].name if aside else 'nothing'}; next build: {again.describe()}, "
        f"{'loaded from the cache' if 'loaded' in again.stdout else 'not loaded'}{why}"
    )
    return Outcome(observed, ok, [build, again])


@scenario(
    "cache",
    "foreign cached library",
    "the cached .so replaced by torch's libc10, then `rnnkit kernels build --force`",
    "never loaded: rebuilt from nothing, exit 0, the cache holds rnnkit's library again",
    compiles=True,
)
def foreign_library(ctx: Context) -> Outcome:
    if (skip := toolchain_skip(ctx)) is not None:
        return skip
    foreign = torch_library()
    if foreign is None:
        return Outcome("skipped: torch's libc10 not found", None)
    made = damaged_cache(ctx, "foreign")
    if isinstance(made, Outcome):
        return made
    box, so = made
    shutil.copy(foreign, so)
    build = box.rnnkit("kernels", "build", "--force", LIBRARY)
    replaced = so.exists() and so.read_bytes() != foreign.read_bytes()
    ok, why = verdict(
        {
            "rebuilt": build.returncode == 0 and "compiled" in build.stdout,
            "replaced": replaced,
        }
    )
    observed = (
        f"{build.describe()}, {'compiled' if 'compiled' in build.stdout else 'not compiled'}; "
        f"cached .so {'is rnnkit' + chr(39) + 's again' if replaced else 'still foreign'}{why}"
    )
    return Outcome(observed, ok, [build])


UNWRITABLE = """
import json, sys, warnings, torch
from rnnkit.core import create_cell
from rnnkit.kernels import native
torch.manual_seed(0)
cell = create_cell("gru", input_size=3, hidden_size=4, heads=2)
x = torch.randn(2, 5, 3)
problem = native.libraries()["rnnkit_fused_cpp"].why_unavailable()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y1, _ = cell(x, backend="fused_cpp")  # asked for by name
    y2, _ = cell(x)  # auto, afterwards
ref, _ = cell(x, backend="reference")
print(json.dumps({
    "problem": problem,
    "warnings": [str(w.message) for w in caught],
    "equal": bool(torch.allclose(y1, ref, atol=1e-6) and torch.allclose(y2, ref, atol=1e-6)),
}))
"""


@scenario(
    "cache",
    "unwritable native cache",
    "RNNKIT_CPP_CACHE cannot be written; a GRU forward with backend='fused_cpp', then auto",
    "both forwards run the pure-torch loop (equal to the reference), one warning saying the "
    "cache cannot be written",
)
def unwritable_cache(ctx: Context) -> Outcome:
    box = ctx.sandbox("unwritable")
    if os.geteuid() == 0:  # root writes anywhere: a cache path below a plain file instead
        blocker = box.dir / "a-file"
        blocker.write_text("not a directory\n")
        cache = blocker / "cpp"
    else:
        cache = box.dir / "read-only"
        cache.mkdir()
        cache.chmod(0o555)
    done = box.python(UNWRITABLE, env={"RNNKIT_CPP_CACHE": str(cache)})
    if done.returncode != 0:
        return Outcome(f"{done.describe()}: {last_line(done.stderr)}", False, [done])
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if got["problem"] is not None:
        return Outcome(f"skipped: {got['problem']}", None)
    messages = got["warnings"]
    ok, why = verdict(
        {
            "equal": got["equal"],
            "one warning": len(messages) == 1,
            "says why": bool(messages) and "cannot be written" in messages[0],
        }
    )
    first = clip(messages[0], 90) if messages else "none"
    observed = (
        f"{done.describe()}; outputs {'equal' if got['equal'] else 'differ'}; "
        f"{len(messages)} warning(s): {first}{why}"
    )
    return Outcome(observed, ok, [done])


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return clip(lines[-1], 160) if lines else ""


def clip(text: str, width: int) -> str:
    """``text`` cut to about ``width`` characters at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    return text[:width].rsplit(" ", 1)[0] + " ..."


# --- runs ----------------------------------------------------------------------------------

#: a short run that checkpoints often (the default task, digits_rows, with a small LSTM)
BASE_ARGS = (
    "--steps",
    "300",
    "--hidden-size",
    "16",
    "--eval-every",
    "100",
    "--checkpoint-every",
    "10",
    "--no-progress",
    "--no-plot",
)

#: two ``rnnkit train`` that start together: both wait on a barrier folder after start-up
#: and read the same pinned clock second, so their default directory names collide for sure
SAME_SECOND = """
import sys, time
from pathlib import Path
from typing import Any
from rnnkit.core.cli import main
from rnnkit.core.plugins import get_host
from rnnkit.tasks import trainer
get_host()
trainer.timestamp = lambda: "20250101-120000"
seed, barrier = sys.argv[1], Path(sys.argv[2])
(barrier / seed).touch()
deadline = time.monotonic() + 600
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.005)
sys.exit(main(["train", "--steps", "8", "--eval-every", "4", "--hidden-size", "8",
               "--no-progress", "--no-plot", "--seed", seed]))
"""


@scenario(
    "runs",
    "two runs at once",
    "two `rnnkit train` into the default run dir in the same second",
    "two directories (the second with suffix -2), each with its own final.json and metrics.jsonl",
)
def concurrent_runs(ctx: Context) -> Outcome:
    box = ctx.sandbox("same-second")
    barrier = box.dir / ".barrier"
    barrier.mkdir()
    code = textwrap.dedent(SAME_SECOND)
    runs = [box.start([sys.executable, "-c", code, s, str(barrier)]) for s in ("1", "2")]
    done = [r.finish() for r in runs]
    if any(d.returncode != 0 for d in done):
        return Outcome(", ".join(d.describe() for d in done), False, done)
    dirs = sorted(p for p in (box.dir / "runs").iterdir())
    checks: dict[str, bool] = {"two directories": len(dirs) == 2}
    seeds = []
    for d in dirs:
        final = json.loads((d / "final.json").read_text())
        seeds.append(final["config"]["seed"])
        steps = [json.loads(line)["step"] for line in (d / "metrics.jsonl").open()]
        checks[f"{d.name}: own metrics"] = steps == [4, 8]
    checks["one run each"] = sorted(seeds) == [1, 2]
    checks["suffix -2"] = len(dirs) == 2 and dirs[1].name == dirs[0].name + "-2"
    ok, why = verdict(checks)
    names = ", ".join(d.name.split("-", 2)[-1] if "-" in d.name else d.name for d in dirs)
    observed = f"both exit 0; dirs ...{names}; seeds {sorted(seeds)}; metrics steps 4, 8 each{why}"
    return Outcome(observed, ok, done)


def read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the data of a safetensors file (read with the standard library)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def tensors(path: Path) -> dict[str, bytes]:
    """Each tensor's dtype, shape and bytes, by name."""
    header, data = read_safetensors(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = json.dumps([info["dtype"], info["shape"]]).encode() + data[lo:hi]
    return out


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


#: damages a checkpoint file in place and returns what the refusal to resume must name
Damage = Callable[[Path], list[str]]


def refused_resume(ctx: Context, damage: Damage) -> Outcome:
    """Copy the base run, ``damage`` its checkpoint, and resume: it must be refused (exit 2)
    naming the checkpoint and what ``damage`` returned, with no traceback and nothing in the
    run directory changed."""
    base, made = ctx.base_run()
    if made.returncode != 0:
        return Outcome(f"the run to damage failed ({made.describe()})", False, [made])
    box = ctx.sandbox(damage.__name__.replace("_", "-"))
    run = box.dir / "run"
    shutil.copytree(base, run)
    names = damage(run / "checkpoint.safetensors")
    before = snapshot(run)
    done = box.rnnkit("train", "--out", "run", "--resume", "--no-progress", "--no-plot")
    checks = {
        "exit 2": done.returncode == 2,
        "no traceback": not traceback_in(done.stderr),
        "names the file": "checkpoint.safetensors" in done.stderr,
        "run dir unchanged": snapshot(run) == before,
    }
    for n in names:
        checks[f"names {n}"] = n in done.stderr
    ok, why = verdict(checks)
    return Outcome(f"{done.describe()}: {last_line(done.stderr)}{why}", ok, [done])


def damaged_checkpoint(name: str, fault: str, expected: str) -> Callable[[Damage], Damage]:
    """Register a ``runs`` scenario: :func:`refused_resume` with the decorated damage."""

    def add(damage: Damage) -> Damage:
        scenario("runs", name, fault, expected)(functools.partial(refused_resume, damage=damage))
        return damage

    return add


@damaged_checkpoint(
    "corrupted checkpoint tensor",
    "one byte pattern flipped inside a model tensor of checkpoint.safetensors; `--resume`",
    "refused, exit 2, naming the checkpoint, the tensor and its checksum; run dir unchanged",
)
def corrupt_tensor(path: Path) -> list[str]:
    header, data = read_safetensors(path)
    name = next(n for n in sorted(header) if n.startswith("model.") and "weight" in n)
    lo = int(header[name]["data_offsets"][0])
    raw = bytearray(data)
    raw[lo + 6] ^= 0x5A  # inside the first values; the file still parses
    write_safetensors(path, header, bytes(raw))
    return [name, "checksum"]


@damaged_checkpoint(
    "edited checkpoint metadata",
    "`step` set to -5 in the checkpoint's metadata; `--resume`",
    "refused, exit 2, naming the checkpoint and the field `step`; run dir unchanged",
)
def edited_meta(path: Path) -> list[str]:
    header, data = read_safetensors(path)
    meta = header["__metadata__"]
    fields = json.loads(str(meta["rnnkit"]))
    fields["step"] = -5
    meta["rnnkit"] = json.dumps(fields)
    write_safetensors(path, header, data)
    return ["'step'"]


#: the kill -9 scenario kills the run once a checkpoint past this step exists (the first
#: evaluation is at step 100: the checkpoint then holds a history to continue)
KILL_AFTER = 100


def checkpointed_step(run: Path) -> int:
    """The step of the run's last checkpoint (-1 before the first)."""
    try:
        return int(json.loads((run / "checkpoint.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def history(run: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without the wall-clock times."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@scenario(
    "runs",
    "kill -9 then --resume",
    "kill -9 of `rnnkit train` past its first evaluation (step 100 of 300); then `rnnkit "
    "train --resume`",
    "the resumed run finishes (exit 0) with weights, checkpoint, metrics.jsonl and scores equal "
    "to an uninterrupted run's; no .tmp file left",
)
def kill_then_resume(ctx: Context) -> Outcome:
    base, straight = ctx.base_run()
    if straight.returncode != 0:
        return Outcome(f"the uninterrupted run failed ({straight.describe()})", False, [straight])
    box = ctx.sandbox("kill-resume")
    run = box.dir / "run"
    train = box.start_rnnkit("train", *BASE_ARGS, "--out", "run")
    deadline = time.monotonic() + TIMEOUT
    while checkpointed_step(run) <= KILL_AFTER and train.proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if train.proc.poll() is not None:
        done = train.finish()
        return Outcome(f"the run ended before the kill ({done.describe()})", False, [done])
    os.kill(train.pid, signal.SIGKILL)
    killed = train.finish()
    stopped_at = checkpointed_step(run)
    resumed = box.rnnkit("train", "--out", "run", "--resume", "--no-progress", "--no-plot")
    if resumed.returncode != 0:
        return Outcome(f"resume: {resumed.describe()}", False, [killed, resumed])
    a = json.loads((base / "final.json").read_text())
    b = json.loads((run / "final.json").read_text())
    same_weights = tensors(base / "model.safetensors") == tensors(run / "model.safetensors")
    same_ckpt = tensors(base / "checkpoint.safetensors") == tensors(run / "checkpoint.safetensors")
    same_history = history(base) == history(run)
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    ok, why = verdict(
        {
            "killed": killed.returncode == -signal.SIGKILL,
            "same weights": same_weights,
            "same checkpoint": same_ckpt,
            "same scores": (a["valid"], a["test"]) == (b["valid"], b["test"]),
            "same metrics.jsonl": same_history,
            "no .tmp left": not leftovers,
        }
    )
    observed = (
        f"killed after the checkpoint of step {stopped_at}; resume exit 0; model and checkpoint "
        f"tensors {'bit-equal' if same_weights and same_ckpt else 'DIFFER'}, metrics.jsonl "
        f"{'equal' if same_history else 'DIFFERS'}, test "
        f"{b['test'].get('accuracy', b['test'])} vs {a['test'].get('accuracy', a['test'])}{why}"
    )
    return Outcome(observed, ok, [killed, resumed])


@scenario(
    "runs",
    "SIGTERM",
    "SIGTERM to a running `rnnkit train` (a batch scheduler's stop)",
    "stops at a step boundary with a checkpoint, exit 130, no final.json",
)
def sigterm(ctx: Context) -> Outcome:
    box = ctx.sandbox("sigterm")
    run = box.dir / "run"
    args = ("--steps", "100000", "--eval-every", "100000", "--checkpoint-every", "20")
    train = box.start_rnnkit("train", *args, "--hidden-size", "16", "--no-progress", "--out", "run")
    deadline = time.monotonic() + TIMEOUT
    while not (run / "checkpoint.json").exists() and train.proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    train.proc.send_signal(signal.SIGTERM)
    done = train.finish()
    step = None
    if (run / "checkpoint.json").exists():
        step = json.loads((run / "checkpoint.json").read_text()).get("step")
    ok, why = verdict(
        {
            "exit 130": done.returncode == 130,
            "said so": "SIGTERM" in done.stderr,
            "checkpoint": isinstance(step, int) and 0 < step < 100000,
            "no final.json": not (run / "final.json").exists(),
            "no traceback": not traceback_in(done.stderr),
        }
    )
    return Outcome(f"{done.describe()}; checkpoint at step {step}; no final.json{why}", ok, [done])


@scenario(
    "runs",
    "closed pipe",
    "`rnnkit list cells | head -1` with head already gone (stdout's reader closed)",
    "quiet: no traceback, exit 141 (128 + SIGPIPE)",
)
def closed_pipe(ctx: Context) -> Outcome:
    box = ctx.sandbox("pipe")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = box.run([rnnkit_executable(), "list", "cells"], stdout=write_end)
    finally:
        os.close(write_end)
    ok, why = verdict(
        {
            "exit 141": done.returncode == 141,
            "no traceback": not traceback_in(done.stderr),
            "no BrokenPipeError": "BrokenPipe" not in done.stderr,
        }
    )
    stderr = "empty" if not done.stderr.strip() else f"{len(done.stderr.splitlines())} lines"
    return Outcome(f"{done.describe()}; stderr {stderr}{why}", ok, [done])


def refused_option(ctx: Context, flag: str, value: str) -> Outcome:
    """``rnnkit train FLAG VALUE`` must be refused by name (exit 2, no traceback) before any
    run directory exists."""
    box = ctx.sandbox(flag.lstrip("-"))
    done = box.rnnkit("train", flag, value, "--no-progress", "--no-plot")
    runs = box.dir / "runs"
    left = list(runs.iterdir()) if runs.exists() else []
    ok, why = verdict(
        {
            "exit 2": done.returncode == 2,
            "names the flag": flag in done.stderr,
            "no traceback": not traceback_in(done.stderr),
            "no run dir": not left,
        }
    )
    made = "none" if not runs.exists() else f"runs/ with {len(left)} entries"
    observed = f"{done.describe()}: {last_line(done.stderr)}; run dirs: {made}{why}"
    return Outcome(observed, ok, [done])


#: the options `rnnkit train` must refuse: (flag, value)
REFUSED_OPTIONS = (("--patience", "-1"), ("--lr", "nan"))
for _flag, _value in REFUSED_OPTIONS:
    scenario(
        "runs",
        f"{_flag} {_value}",
        f"`rnnkit train {_flag} {_value}` (default run dir)",
        "refused by name, exit 2, before any run directory exists",
    )(functools.partial(refused_option, flag=_flag, value=_value))


# --- plugins -------------------------------------------------------------------------------


def plugin_sandbox(ctx: Context, name: str, plugins: dict[str, str]) -> Sandbox:
    """A sandbox whose ``PYTHONPATH`` holds ``plugins`` (entry-point name: module source) as
    distributions: the module and a ``.dist-info`` folder with its ``rnnkit`` entry point."""
    box = ctx.sandbox(name)
    site = box.dir / "site"
    site.mkdir()
    for plugin, source in plugins.items():
        module = f"rnnkit_fault_{plugin}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"rnnkit_fault_{plugin}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: rnnkit-fault-{plugin}\nVersion: 0.1\n"
        )
        (info / "entry_points.txt").write_text(f"[rnnkit]\n{plugin} = {module}\n")
    box.env["PYTHONPATH"] = str(site)
    return box


def plugin_status(plugins_output: str, name: str) -> str:
    """The status column and what follows of plugin ``name``'s row in ``rnnkit plugins``
    (columns: plugin, distribution, version, status, registered); empty if not listed."""
    for line in plugins_output.splitlines():
        parts = line.split()
        if parts[:1] == [name] and len(parts) > 3:
            return " ".join(parts[3:])
    return ""


GOOD_PLUGIN = '''
from rnnkit.core import GRU, hookimpl

class FaultGood(GRU):
    """a cell of a plugin that does nothing wrong"""

@hookimpl
def rnnkit_register_cells(register):
    register("faultgood", FaultGood)
'''

SECOND_LSTM = '''
from rnnkit.core import LSTM, hookimpl

class CopyLSTM(LSTM):
    """another lstm"""

@hookimpl
def rnnkit_register_cells(register):
    register("lstm", CopyLSTM)
'''

USE_LSTM = """
import json, torch, warnings
from rnnkit.core import LSTM, create_cell
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cell = create_cell("lstm", input_size=3, hidden_size=4)
    good = create_cell("faultgood", input_size=3, hidden_size=4)
y, _ = cell(torch.randn(2, 5, 3))
print(json.dumps({
    "builtin": type(cell) is LSTM,
    "good": type(good).__name__,
    "shape": list(y.shape),
    "warnings": [str(w.message) for w in caught],
}))
"""


@scenario(
    "plugins",
    "a second lstm",
    "a plugin registering cell `lstm`, beside a plugin that is fine",
    "the later plugin skipped with a warning naming both; `rnnkit plugins` and library use "
    "work, with the built-in lstm and the good plugin's cell",
)
def second_lstm(ctx: Context) -> Outcome:
    box = plugin_sandbox(ctx, "second-lstm", {"copycat": SECOND_LSTM, "good": GOOD_PLUGIN})
    listing = box.rnnkit("plugins")
    use = box.python(USE_LSTM)
    if use.returncode != 0:
        return Outcome(f"library use: {use.describe()}: {last_line(use.stderr)}", False, [use])
    got = json.loads(use.stdout.strip().splitlines()[-1])
    warned = [m for m in got["warnings"] if "copycat" in m]
    ok, why = verdict(
        {
            "plugins exit 0": listing.returncode == 0,
            "copycat broken": plugin_status(listing.stdout, "copycat").startswith("broken"),
            "good ok": plugin_status(listing.stdout, "good").startswith("ok"),
            "warning names both": any("'lstm'" in m and "plugin core" in m for m in warned),
            "built-in lstm": got["builtin"],
            "good cell": got["good"] == "FaultGood",
        }
    )
    message = clip(warned[0].split(": ", 1)[-1], 100) if warned else "no warning"
    observed = (
        f"plugins {listing.describe()} (copycat broken, good ok); library: built-in lstm, "
        f"faultgood works; warning: {message}{why}"
    )
    return Outcome(observed, ok, [listing, use])


@scenario(
    "plugins",
    "sys.exit / Ctrl-C at import",
    "one plugin module calling sys.exit(3), another raising KeyboardInterrupt, when imported",
    "both skipped and named (broken: SystemExit, KeyboardInterrupt) with a warning; "
    "`rnnkit plugins` exit 0, the other plugins load",
)
def exit_at_import(ctx: Context) -> Outcome:
    box = plugin_sandbox(
        ctx,
        "exit-at-import",
        {
            "exiter": "import sys\nsys.exit(3)\n",
            "interrupter": "raise KeyboardInterrupt\n",
            "good": GOOD_PLUGIN,
        },
    )
    listing = box.rnnkit("plugins")
    checks = {"plugins exit 0": listing.returncode == 0}
    shown = []
    for name, error in (("exiter", "SystemExit"), ("interrupter", "KeyboardInterrupt")):
        status = plugin_status(listing.stdout, name)
        shown.append(f"{name}: {clip(status.removesuffix(' -'), 60) or 'not listed'}")
        checks[f"{name} named broken"] = status.startswith("broken") and error in status
        checks[f"{name} warned"] = f"plugin {name} (" in listing.stderr
    for name in ("core", "good"):
        checks[f"{name} ok"] = plugin_status(listing.stdout, name).startswith("ok")
    ok, why = verdict(checks)
    observed = f"plugins {listing.describe()}; {'; '.join(shown)}; core, good ok{why}"
    return Outcome(observed, ok, [listing])


FLAKY_KERNEL = """
from rnnkit.core import Kernel, Priority, hookimpl
from rnnkit.core.reference import reference_forward

def probe():
    raise RuntimeError("driver probe crashed")

@hookimpl
def rnnkit_register_kernels(register):
    register(Kernel("faultflaky", "lstm", reference_forward, description="available() raises",
                    priority=Priority.FUSED_ON_CHIP, available=probe))
"""

USE_FLAKY = """
import json, torch, warnings
from rnnkit.core import LSTM, BackendUnavailableError
torch.manual_seed(0)
cell = LSTM(4, 5)
x = torch.randn(2, 3, 4)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y, _ = cell(x)
ref, _ = cell(x, backend="reference")
try:
    cell(x, backend="faultflaky")
    named = "ran"
except BackendUnavailableError as e:
    named = str(e)
print(json.dumps({
    "equal": bool(torch.allclose(y, ref, atol=1e-6)),
    "warnings": [str(w.message) for w in caught if "faultflaky" in str(w.message)],
    "named": named,
}))
"""


@scenario(
    "plugins",
    "available() raises",
    "a plugin kernel for lstm (top tier) whose available() raises",
    "auto passes over it with a warning naming the kernel and its plugin and runs another "
    "backend; asking for it by name says why",
)
def available_raises(ctx: Context) -> Outcome:
    box = plugin_sandbox(ctx, "available-raises", {"flakyplug": FLAKY_KERNEL})
    use = box.python(USE_FLAKY)
    if use.returncode != 0:
        return Outcome(f"{use.describe()}: {last_line(use.stderr)}", False, [use])
    got = json.loads(use.stdout.strip().splitlines()[-1])
    warned = got["warnings"]
    ok, why = verdict(
        {
            "other backend ran": got["equal"],
            "warning names plugin": any("flakyplug" in m and "available()" in m for m in warned),
            "by name: refused": "flakyplug" in got["named"] and "driver probe" in got["named"],
        }
    )
    shown = clip(warned[0], 110) if warned else "no warning"
    return Outcome(f"forward equals the reference; warning: {shown}{why}", ok, [use])


SHADOW_LIST = """
from rnnkit.core import hookimpl

def configure(parser):
    parser.add_argument("rest", nargs="*")

def run(args):
    print("the plugin's list ran")
    return 7

@hookimpl
def rnnkit_register_commands(register):
    register("list", help="a command named like a built-in", configure=configure, run=run)
"""


@scenario(
    "plugins",
    "a plugin command `list`",
    "a plugin registering a command named `list`",
    "refused with a warning (built-in name); `rnnkit plugins` shows it broken, not as a "
    "command; `rnnkit list cells` runs the built-in",
)
def command_named_list(ctx: Context) -> Outcome:
    box = plugin_sandbox(ctx, "command-list", {"shadow": SHADOW_LIST})
    listing = box.rnnkit("plugins")
    cells = box.rnnkit("list", "cells")
    row = plugin_status(listing.stdout, "shadow")
    ok, why = verdict(
        {
            "plugins exit 0": listing.returncode == 0,
            "shown broken": row.startswith("broken") and "commands: list" not in row,
            "warning": "command 'list' is a built-in rnnkit command" in cells.stderr,
            "built-in ran": cells.returncode == 0
            and "lstm" in cells.stdout
            and "plugin's list" not in cells.stdout,
        }
    )
    shown = clip(row.removesuffix(" -"), 80) or "not listed"
    return Outcome(
        f"plugins: shadow {shown}; `list cells` {cells.describe()}, built-in table{why}",
        ok,
        [listing, cells],
    )


# --- the table -----------------------------------------------------------------------------

COLUMNS = (("scenario", 24), ("fault", 34), ("expected", 38), ("observed", 52), ("ok", 4))


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    """A plain-text table, each cell wrapped to its column."""
    widths = [w for _, w in COLUMNS]
    lines = ["  ".join(name.ljust(w) for name, w in COLUMNS).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        wrapped = [textwrap.wrap(cell, w) or [""] for cell, w in zip(row, widths, strict=True)]
        for i in range(max(len(c) for c in wrapped)):
            cells = zip(wrapped, widths, strict=True)
            parts = [(c[i] if i < len(c) else "").ljust(w) for c, w in cells]
            lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def run_one(ctx: Context, sc: Scenario) -> tuple[Outcome, float]:
    start = time.monotonic()
    try:
        outcome = sc.check(ctx)
    except Exception as e:  # a scenario that breaks is a failed scenario, shown in the table
        outcome = Outcome(f"the scenario itself failed: {type(e).__name__}: {e}", False)
    return outcome, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="skip the scenarios that compile a native library"
    )
    parser.add_argument(
        "--only", metavar="PATTERN", help="scenarios whose name or group matches (glob)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    pattern = f"*{(args.only or '').lower()}*"
    chosen = [
        sc
        for sc in SCENARIOS
        if not (args.quick and sc.compiles)
        and (
            args.only is None
            or any(fnmatch.fnmatch(s.lower(), pattern) for s in (sc.name, sc.group))
        )
    ]
    if not chosen:
        print("no scenario matches", file=sys.stderr)
        return 2
    rnnkit_executable()
    root = Path(tempfile.mkdtemp(prefix="rnnkit-faults-"))
    ctx = Context(root)
    started = time.monotonic()
    results: dict[str, tuple[Outcome, float]] = {}
    # the cache scenarios run in order, in one worker: the later ones damage copies of the
    # library the kill -9 scenario built
    native = [sc for sc in chosen if sc.group == "cache"]
    others = [sc for sc in chosen if sc.group != "cache"]

    def run_chain(chain: list[Scenario]) -> None:
        for sc in chain:
            results[sc.name] = run_one(ctx, sc)

    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_chain, native)] if native else []
            futures += [pool.submit(run_chain, [sc]) for sc in others]
            for f in futures:
                f.result()
    finally:
        for child in _STARTED:  # what a failed or interrupted scenario left running
            if child.proc.poll() is None:  # alive: its process group is still its own
                child.signal_group(signal.SIGKILL)
        if args.keep:
            print(f"kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = []
    for sc in chosen:
        outcome, _ = results[sc.name]
        mark = "skip" if outcome.ok is None else ("ok" if outcome.ok else "FAIL")
        rows.append((f"{sc.group}: {sc.name}", sc.fault, sc.expected, outcome.observed, mark))
    print(table(rows))
    failed = [sc for sc in chosen if results[sc.name][0].ok is False]
    skipped = sum(1 for sc in chosen if results[sc.name][0].ok is None)
    print(
        f"\n{len(chosen) - len(failed) - skipped} ok, {len(failed)} failed, {skipped} skipped "
        f"in {time.monotonic() - started:.0f} s"
        + (" (--quick: the compiling cache scenarios were left out)" if args.quick else "")
    )
    for sc in failed:
        outcome, seconds = results[sc.name]
        print(f"\n=== {sc.group}: {sc.name} (FAILED after {seconds:.0f} s)")
        for done in outcome.details:
            print(f"$ {' '.join(done.args)[:200]}\n  {done.describe()}")
            for label, text in (("stdout", done.stdout), ("stderr", done.stderr)):
                if text.strip():
                    print(f"  {label}:\n" + textwrap.indent(text.strip()[-3000:], "    "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
