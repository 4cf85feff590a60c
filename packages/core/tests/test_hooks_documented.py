"""Every hook is documented in docs/plugins.md and exercised by a test (datasette's rule)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from rnnkit.core import hookspecs

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins.md"
TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    args = ", ".join(inspect.signature(spec).parameters)
    assert f"`{hook}({args})`" in DOCS.read_text(), f"{hook} is not documented in {DOCS}"


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    sources = "".join(
        p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name
    )
    assert f"{hook}=" in sources or f"def {hook}(" in sources, f"no test implements {hook}"


def test_hookspecs_are_exactly_the_hook_names() -> None:
    declared = {n for n in dir(hookspecs) if n.startswith("rnnkit_")}
    assert declared == set(hookspecs.HOOK_NAMES)
