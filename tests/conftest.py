"""Shared fixtures: short runs written once per test session (once for all pytest-xdist workers), for the analysis
tests to read."""

import fcntl
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # figures drawn by the tests need no display

from sim.run import main


def _run(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Path:
    """The fixture run `name`, made once per test session: under pytest-xdist the first worker to ask makes it in the
    session's directory (under a lock) and every worker reads that one. Tests only read these runs (or copy them)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are siblings in the session's directory
    out = root / "fixture-runs" / name
    out.parent.mkdir(exist_ok=True)
    with (out.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = out.parent / f"{name}.done"
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a run some worker started and did not finish
            assert main(["--quiet", "--out", str(out), *args]) == 0
            done.touch()
    return out


@pytest.fixture(scope="session")
def arithmetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An arithmetic organism (18 particles) trained long enough for self-replicators to appear, 10 snapshots."""
    return _run(
        tmp_path_factory, "arithmetic", "--task", "arithmetic", "--steps", "1000", "--set", "record.snapshot_every=100"
    )


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short MNIST organism (1200 particles, embedded data) with SR training from the first step, so that
    self-replicators appear within its 300 steps; 4 snapshots."""
    return _run(tmp_path_factory, "mnist", "--steps", "300", "--set", "record.snapshot_every=100",
                "--set", "train.task_first_threshold=0")  # fmt: skip


@pytest.fixture(scope="session")
def soup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small soup with population events, 5 snapshots."""
    return _run(tmp_path_factory, "soup", "--mode", "soup", "--steps", "200", "--set", "soup.size=200",
                "--set", "record.snapshot_every=50")  # fmt: skip
