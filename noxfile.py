"""Every developer and CI entry point of the rnnkit monorepo.

    nox                      # the default sessions: what CI runs
    nox -s tests             # per-package tests (each package installed alone with its deps)
    nox -s "tests(package='core')"
    nox -s integration       # cross-package tests against really installed distributions
    nox -s plugin lint typecheck docs
    nox -s experiments       # minutes-long experiments and full sweeps (not default)
    nox -s bench             # benchmarks (not default)
    nox -s oldest_torch      # every package's tests on the oldest torch accepted (not default)

Every install is constrained by constraints.txt so that torch resolves to the CPU build
that lies on disk instead of a multi-GB CUDA build.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_venv = "no"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "plugin", "integration", "lint", "typecheck", "docs"]

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
PYTHON = "3.11"

# Each package with the local distributions it needs (siblings are pinned with ==).
PACKAGES: dict[str, list[str]] = {
    "core": ["packages/core"],
    # [cpp]: ninja, so that the fused_cpp backend's C++ loops build (CI has a C++ compiler)
    "kernels": ["packages/core", "packages/kernels[triton,cpp]"],
    "models": ["packages/core", "packages/models"],
    # [series]: statsmodels, whose shipped data the sunspots/co2/elnino tasks read;
    # [tensorboard]: the --tensorboard tests read the event files back; [hub]: huggingface_hub,
    # for rnnkit push/pull (tested against a local stand-in); [rl]: popgym (and gymnasium), two
    # small pure-Python wheels, for the POPGym tests of rnnkit rl
    "tasks": ["packages/core", "packages/models", "packages/tasks[series,tensorboard,hub,rl]"],
}
ALL = [
    "packages/core",
    "packages/kernels[triton,cpp]",
    "packages/models",
    "packages/tasks[series,tensorboard,hub,rl]",
]
TEST_DEPS = ["pytest>=8"]
# The plugins in this repository, each its own distribution found only through its entry point.
# rnnkit-lion needs rnnkit-tasks (the task it registers) and, through it, rnnkit-models.
CORE_PLUGINS = ["plugins/mingru", "plugins/qrnn"]  # need rnnkit-core alone
TASK_PLUGINS = ["plugins/lion"]
PLUGINS = [*CORE_PLUGINS, *TASK_PLUGINS]
# tests/test_export.py: torch.onnx.export(dynamo=True) needs onnx and onnxscript; the exported
# models run on ONNX Runtime
ONNX_TEST_DEPS = ["onnx", "onnxscript", "onnxruntime"]


def install(session: nox.Session, *args: str) -> None:
    # --no-compile: byte-compiling all of torch costs more than the tests that use it
    session.install("--no-compile", *CONSTRAINTS, *args)


def pytest(
    session: nox.Session,
    *paths: str,
    env: dict[str, str] | None = None,
    allow_none_collected: bool = False,
) -> None:
    # 2 threads match the CI machine; more only oversubscribes it.
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    # pytest exits 5 when a selection collects nothing (a package with no experiments yet)
    codes = [0, 5] if allow_none_collected else [0]
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *paths,
        *session.posargs,
        env=env,
        success_codes=codes,
    )


@nox.session(python=PYTHON)
@nox.parametrize("package", list(PACKAGES))
def tests(session: nox.Session, package: str) -> None:
    """Install one package (non-editable) with only its own dependencies and run its tests."""
    install(session, *PACKAGES[package], *TEST_DEPS)
    if package == "core":
        session.run("rnnkit", "info")  # the CLI works with rnnkit-core alone
    # CI has a C++ compiler: the fused_cpp tests must build and run there, never skip.
    env = {"RNNKIT_REQUIRE_CPP": "1"} if package == "kernels" else None
    pytest(session, f"packages/{package}/tests", env=env)


@nox.session(python=PYTHON)
def plugin(session: nox.Session) -> None:
    """Every plugin of plugins/, installed from its directory, found through its entry point,
    in ONE environment (a venv per plugin would cost CI minutes it does not have), in two
    steps: first the plugins that need rnnkit-core alone, tested with nothing else installed
    (they must work on the reference backends, without rnnkit-kernels or rnnkit-models); then
    rnnkit-lion, which needs rnnkit-tasks (the task it registers) and rnnkit-models."""
    install(session, "packages/core", *CORE_PLUGINS, *TEST_DEPS)
    session.run("rnnkit", "list", "cells", "mingru")
    session.run("rnnkit", "list", "models", "qrnn")
    # one pytest call for these (no plugin has a conftest.py, test module names are distinct)
    pytest(session, *(f"{p}/tests" for p in CORE_PLUGINS))
    install(session, "packages/models", "packages/tasks", *TASK_PLUGINS)
    session.run("rnnkit", "list", "models", "lion")
    pytest(session, *(f"{p}/tests" for p in TASK_PLUGINS))


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Cross-package tests: every distribution and every plugin installed for real."""
    install(session, *ALL, "packages/rnnkit", *PLUGINS, *TEST_DEPS, *ONNX_TEST_DEPS)
    pytest(session, "tests")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check over the whole tree."""
    session.install("ruff>=0.17,<0.18")  # pinned: new rules and formats arrive with minors
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package (all installed editable in one venv)."""
    editable = [a for p in [*ALL, *PLUGINS] for a in ("-e", p)]
    install(session, *editable, "mypy>=2.4,<2.5", *TEST_DEPS)
    session.run(
        "mypy",
        "packages/core/src",
        "packages/kernels/src",
        "packages/models/src",
        "packages/tasks/src",
        *(f"{p}/src" for p in PLUGINS),
    )


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs, strict: broken links and docstrings the API
    reference cannot render fail). mkdocstrings reads the sources statically: no package is
    installed here."""
    session.install("mkdocs>=1.6", "mkdocstrings-python>=2.0,<3")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )


@nox.session(python=PYTHON, default=False)
def experiments(session: nox.Session) -> None:
    """The tests marked `experiment` (deselected everywhere else): learning experiments, full
    sweeps over every cell and end-to-end scripts that take minutes. Not part of CI."""
    install(session, *ALL, "packages/rnnkit", *PLUGINS, *TEST_DEPS, *ONNX_TEST_DEPS)
    env = {"RNNKIT_REQUIRE_CPP": "1"}
    for package in PACKAGES:
        pytest(
            session,
            f"packages/{package}/tests",
            "-m",
            "experiment",
            env=env,
            allow_none_collected=True,
        )
    pytest(
        session,
        *(f"{p}/tests" for p in PLUGINS),
        "-m",
        "experiment",
        allow_none_collected=True,
    )
    pytest(session, "tests", "-m", "experiment", allow_none_collected=True)


#: The oldest torch the packages declare (``torch>=`` in every pyproject.toml), which
#: ``oldest_torch`` tests; also the GPU machines' torch.
TORCH_FLOOR = "2.11.0"


@nox.session(python=PYTHON, default=False)
def oldest_torch(session: nox.Session) -> None:
    """Every package's tests (the default selection) on the oldest torch the packages accept,
    installed together in one venv. Not part of CI: PyPI's Linux wheel of that torch is a CUDA
    build (about 0.5 GB to download, 4.7 GB installed), and the four suites take about 30
    minutes on 2 cores. Run it before raising the floor or after changing code that torch
    traces (``torch.compile``, ``torch.export``): dynamo's behaviour changes between releases."""
    pins = Path(session.create_tmp()) / "constraints.txt"
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins.write_text(
        "\n".join(f"torch=={TORCH_FLOOR}" if ln.startswith("torch==") else ln for ln in lines)
    )
    session.install("--no-compile", "-c", str(pins), *ALL, *TEST_DEPS)
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    for package in PACKAGES:
        pytest(session, f"packages/{package}/tests", env={"RNNKIT_REQUIRE_CPP": "1"})


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Run the CPU benchmarks in quick mode (figures go in the notes, never in tests)."""
    install(session, *ALL)
    for script in sorted((ROOT / "tools" / "bench").glob("*.py")):
        session.run("python", str(script), "--quick", *session.posargs)
