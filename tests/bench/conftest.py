"""`make bench-compare` ends in one line per slower case, not in pytest-benchmark's traceback."""
import pytest
from pytest_benchmark.session import PerformanceRegression

SLOWER = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter):
    try:
        return (yield)
    except PerformanceRegression:
        terminalreporter.config.stash[SLOWER] = terminalreporter.config._benchmarksession.performance_regressions
        terminalreporter._session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    # after pytest's own last line, so these are the last lines of the run
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for name, reason in config.stash.get(SLOWER, []):
        reporter.write_line(f"slower: {name}: {reason.strip()}")
