"""The suite's own parallelism: `make test` runs pytest-xdist with --dist loadgroup so that the tests sharing a
module fixture (marked xdist_group) run on one worker, which builds the fixture once."""
import os
import subprocess
import sys

GROUPED = '''
import os
from pathlib import Path
import pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    Path(f"grouped-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    Path(f"free-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_tests_marked_xdist_group_run_on_one_worker(tmp_path):
    # pytest 9.2 with pytest-xdist 3.8 spread them over every worker, silently (pytest-xdist#1386)
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                           "--dist", "loadgroup", "test_grouped.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    grouped = {path.read_text() for path in tmp_path.glob("grouped-*")}
    assert len(list(tmp_path.glob("grouped-*"))) == 6 and len(list(tmp_path.glob("free-*"))) == 6
    assert len(grouped) == 1, f"the grouped tests ran on {', '.join(sorted(grouped))}"
