"""Shared fixtures: short runs written once per test session, for the analysis tests to read."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")  # figures drawn by the tests need no display

from sim.run import main


def _run(root: Path, name: str, *args: str) -> Path:
    out = root / name
    assert main(["--quiet", "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="session")
def arithmetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An arithmetic organism (18 particles) trained long enough for self-replicators to appear, 10 snapshots."""
    root = tmp_path_factory.mktemp("runs")
    return _run(root, "arithmetic", "--task", "arithmetic", "--steps", "1000", "--set", "record.snapshot_every=100")


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short MNIST organism (1200 particles, embedded data) with SR training from the first step, so that
    self-replicators appear within its 300 steps; 4 snapshots."""
    root = tmp_path_factory.mktemp("runs")
    return _run(root, "mnist", "--steps", "300", "--set", "record.snapshot_every=100",
                "--set", "train.task_first_threshold=0")  # fmt: skip


@pytest.fixture(scope="session")
def soup_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small soup with population events, 5 snapshots."""
    root = tmp_path_factory.mktemp("runs")
    return _run(root, "soup", "--mode", "soup", "--steps", "200", "--set", "soup.size=200",
                "--set", "record.snapshot_every=50")  # fmt: skip
