"""pytest plugin (entry point ``pytest11: rnnkit``): parametrizes ``rnnkit_cell_case`` over
every registered cell, adds ``--rnnkit-cells PATTERN``, and reports what the conformance checks
ran.

Every conformance check that runs inside a test publishes a one-line summary (which backends
ran which configurations, which were skipped and why; see
:mod:`rnnkit.core.testing.report`): it is attached to the test as the user property
``rnnkit_conformance`` (in JUnit XML with ``--junitxml``) and printed in an "rnnkit
conformance" section of the terminal summary.

Kept import-light: rnnkit and torch are only imported when a test asks for the cases.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

#: The user property a test's check summaries are attached under (as ``report.PROPERTY``).
PROPERTY = "rnnkit_conformance"

#: The tests running now, innermost last (a check publishes to the last one).
_running: list[pytest.Item] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rnnkit")
    group.addoption(
        "--rnnkit-cells",
        default=None,
        metavar="PATTERN",
        help="registered cells the rnnkit conformance kit runs on: names containing PATTERN, "
        "or matching it as a glob when it has * ? [ (as `rnnkit list cells PATTERN`); a "
        "pattern that matches no registered cell is an error",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Summaries(), "rnnkit-conformance-summaries")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rnnkit_cell_case" not in metafunc.fixturenames:
        return
    from rnnkit.core.testing.suite import registered_cases

    pattern: Any = metafunc.config.getoption("--rnnkit-cells")
    try:
        # An empty parametrization would skip every test: a typo would pass the suite.
        cases = registered_cases(pattern, strict=True)
    except ValueError as exc:
        raise pytest.UsageError(f"--rnnkit-cells {exc}") from None
    metafunc.parametrize("rnnkit_cell_case", cases, ids=[c.id for c in cases])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def record(summary: str) -> bool:
    """Attach a check's ``summary`` to the running test; ``False`` when none is running."""
    if not _running:
        return False
    _running[-1].user_properties.append((PROPERTY, summary))
    return True


class _Summaries:
    """Collects the summaries from the test reports (so that they also arrive from xdist
    workers) and prints them at the end of the run."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == PROPERTY:
                self.lines.append((report.nodeid, str(value)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.lines:
            return
        terminalreporter.section("rnnkit conformance: what each check ran")
        for nodeid, summary in self.lines:
            terminalreporter.write_line(f"{nodeid}: {summary}")
