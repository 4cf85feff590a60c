"""The ``rnnkit`` pytest plugin: it reports what the conformance checks ran, and a
``--rnnkit-cells`` pattern that matches no registered cell is an error (issue 14 item 16)."""

from __future__ import annotations

import pytest

from rnnkit.core.testing import registered_cases

pytest_plugins = ["pytester"]


def test_the_terminal_summary_and_the_test_say_what_each_check_ran(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        from rnnkit.core import Elman
        from rnnkit.core.testing import CellConformance

        class TestElman(CellConformance):
            def make_cell(self):
                return Elman(input_size=3, hidden_size=4)
        """
    )
    xml = pytester.path / "junit.xml"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-k", "empty_batch or state_spec", f"--junitxml={xml}"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*rnnkit conformance: what each check ran*",
            "*TestElman::test_state_spec: state_spec on Elman: ran reference x1",
            "*TestElman::test_empty_batch: empty_batch on Elman: ran *reference x1*",
        ]
    )
    text = xml.read_text()
    assert 'property name="rnnkit_conformance" value="empty_batch on Elman: ran' in text


def test_a_cells_pattern_that_matches_nothing_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_case(rnnkit_cell_case):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--rnnkit-cells", "lstn*")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, not a skip
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--rnnkit-cells 'lstn*' matches no registered cell*"])
    ok = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--rnnkit-cells", "lstm")
    ok.assert_outcomes(passed=len(registered_cases("lstm")))
