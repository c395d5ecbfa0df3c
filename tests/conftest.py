import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


# A command's wall-clock limit: it is there to stop a hang, not to time anything, so it allows a CI machine several
# times slower than the one the suite was written on (the slowest command here takes about a minute).
TIMEOUT_S = 1200


def harness_cmd(*args: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the `harness` CLI exactly as a user would, in `cwd`."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def kill_when(*args: str, cwd: Path, ready) -> None:
    """Start `harness *args` in a process group of its own and kill -9 the whole group (ranks and launcher workers
    included) as soon as ready() holds, or when the job ends first."""
    job = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not ready() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


# A tiny, fast training config on synthetic data (seconds on 2 cores).
TINY = ["data=markov", "data.train_tokens=2e5", "data.val_tokens=2e4", "data.tokens=2e4",
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
        "task.batch_size=8", "task.eval_points=2", "task.eval_tokens=2048", "progress=off"]


@pytest.fixture
def tiny():
    return list(TINY)
