"""The fast tier (`-m "not integration"`) stays free of processes: tests/conftest.py refuses to collect a test that
starts one but is not marked integration, and names it.

Each case runs pytest (in this process, through `pytester`) on a deliberately broken test file next to a copy of
the real tests/conftest.py. The process-starting calls are spelt in pieces here, so that this module itself does
not look like one that starts a process.
"""

from __future__ import annotations

import pytest

from tests.support.project import REPO
from tests.support.tiers import PROCESS_CALLS, PROCESS_FIXTURES

CONFTEST = (REPO / "tests" / "conftest.py").read_text()
SPAWN = "sub" + "process"  # what a module that runs a command imports
INI = "[pytest]\naddopts = --strict-markers\nmarkers =\n    integration: starts a process\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def refused(result: pytest.RunResult) -> str:
    """The UsageError's text, once checked that collection stopped with it."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    text = result.stderr.str()
    assert "start a process but are not marked integration" in text, text
    return text


def test_an_unmarked_test_using_a_process_fixture_is_refused(project: pytest.Pytester) -> None:
    project.makepyfile(test_unmarked="""
        def test_uses_moto(s3_endpoint):
            assert s3_endpoint

        def test_pure():
            assert True
    """)
    text = refused(project.runpytest("--collect-only", "-q"))
    assert "1 test(s)" in text
    assert "test_unmarked.py::test_uses_moto: fixture s3_endpoint" in text
    assert "test_pure" not in text


@pytest.mark.parametrize("fixture", sorted(PROCESS_FIXTURES))
def test_every_listed_fixture_counts_through_other_fixtures_too(project: pytest.Pytester, fixture: str) -> None:
    project.makepyfile(test_unmarked=f"""
        import pytest

        @pytest.fixture
        def {fixture}():
            return "stand-in"

        @pytest.fixture
        def wrapper({fixture}):
            return {fixture}

        def test_indirect(wrapper):
            assert wrapper
    """)
    assert f"test_unmarked.py::test_indirect: fixture {fixture}" in refused(project.runpytest("--collect-only"))


@pytest.mark.parametrize("call", [SPAWN, "Po" + "pen", *[c for c in PROCESS_CALLS if c.endswith("(")]])
def test_an_unmarked_test_in_a_module_that_starts_a_process_is_refused(project: pytest.Pytester, call: str) -> None:
    project.makepyfile(test_module=f"""
        import pytest

        NOTE = {call!r}  # the module's source names it

        @pytest.mark.integration
        def test_marked():
            pass

        def test_unmarked():
            pass
    """)
    text = refused(project.runpytest("--collect-only"))
    assert f"test_module.py::test_unmarked: its module mentions {call!r}" in text
    assert "test_marked" not in text


def test_every_offender_is_named_at_once(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_one=f"import {SPAWN}\n\ndef test_a():\n    {SPAWN}.run(['true'], check=True)\n",
        test_two="def test_b(server):\n    pass\n\ndef test_c(airflow_stack):\n    pass\n",
    )
    text = refused(project.runpytest("--collect-only"))
    assert "3 test(s)" in text
    for line in ("test_one.py::test_a: its module mentions", "test_two.py::test_b: fixture server",
                 "test_two.py::test_c: fixture airflow_stack"):
        assert line in text


def test_marked_tests_are_collected_and_deselected_by_the_fast_tier(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marked=f"""
            import {SPAWN}
            import pytest

            pytestmark = pytest.mark.integration

            def test_runs_a_command():
                assert {SPAWN}.run(["true"]).returncode == 0

            def test_uses_moto(s3_endpoint):
                assert s3_endpoint
        """,
        test_pure="def test_pure():\n    assert True\n",
    )
    collected = project.runpytest("--collect-only", "-q")
    assert collected.ret == pytest.ExitCode.OK, collected.stderr.str()
    collected.stdout.fnmatch_lines(["*3 tests collected*"])
    fast = project.runpytest("-m", "not integration")
    fast.assert_outcomes(passed=1, deselected=2)
