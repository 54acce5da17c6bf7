"""The analysis scripts' shared contract (bad run directories: one line, exit status 2), and the helpers their own
test files (`test_analysis_specialisation.py` etc.) import: run a CLI, read a record with h5py alone, edit a copy."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers import one_line_error

from analysis import connectivity, robustness, specialisation, trajectories
from sim.record import GROUPS, ROWS_NAME


def run_cli(main: Callable[[list[str]], int], run_dir: Path, tmp: Path, *extra: str) -> tuple[dict[str, Any], Path]:
    """Run a script's `main` on `run_dir` with figures into `tmp/figures`; returns its JSON numbers and that folder."""
    out, path = tmp / "figures", tmp / "numbers.json"
    assert main([str(run_dir), "--out", str(out), "--json", str(path), *extra]) == 0
    return json.loads(path.read_text()), out


def read_record(run_dir: Path) -> dict[str, Any]:
    """The groups of a finished record read with h5py alone (no `sim.record`, no `analysis`)."""
    with h5py.File(run_dir / "run.h5", "r", swmr=True) as f:
        out = {f"{group}/{name}": f[group][name][()] for group in ("steps", "particles", "snapshots", "topology")
               for name in f[group]}  # fmt: skip
        out["kind_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs["kind_names"]]
        out["layer_sizes"] = json.loads(f.attrs["layer_sizes"])
        out["config"] = json.loads(f.attrs["config"])
    return out


def edited_copy(run_dir: Path, dest: Path, edit: Callable[[h5py.File], None]) -> Path:
    """A copy of the run directory whose record `edit` has changed (opened read-write)."""
    shutil.copytree(run_dir, dest)
    with h5py.File(dest / "run.h5", "r+") as f:
        edit(f)
    return dest


def truncate(group: str, rows: int) -> Callable[[h5py.File], None]:
    """An edit that cuts every dataset of `group` to its first `rows` rows (a record early in its run: its writer has
    committed just those rows)."""

    def edit(f: h5py.File) -> None:
        for dataset in f[group].values():
            dataset.resize(rows, axis=0)
        f[ROWS_NAME][GROUPS.index(group)] = rows

    return edit


def pngs_exist(paths: list[str | Path]) -> None:
    """Every path is a non-trivial PNG file."""
    assert paths
    for path in paths:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def finite_mean(values: np.ndarray) -> float:
    return float(values[np.isfinite(values)].mean())


# --- what every script must do with bad input ----------------------------------------------------------------------

SCRIPTS = {"specialisation": specialisation.main, "connectivity": connectivity.main,
           "trajectories": trajectories.main, "robustness": robustness.main}  # fmt: skip


@pytest.fixture(scope="module")
def bad_runs(arithmetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A path that is not a run, a record of a newer schema, and a truncated record."""
    root = tmp_path_factory.mktemp("bad-runs")
    (root / "not-a-run").mkdir()

    def newer(f: h5py.File) -> None:
        f.attrs["schema_version"] = 99

    truncated = root / "truncated"
    shutil.copytree(arithmetic_run, truncated)
    data = (truncated / "run.h5").read_bytes()
    (truncated / "run.h5").write_bytes(data[: len(data) // 3])
    return {"not-a-run": root / "not-a-run", "newer": edited_copy(arithmetic_run, root / "newer", newer),
            "truncated": truncated}  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case", ["not-a-run", "newer", "truncated"])
def test_bad_run_directories_give_one_line_and_status_2(script, case, bad_runs, tmp_path, capsys):
    path = bad_runs[case]
    one_line_error(capsys, SCRIPTS[script], [str(path), "--out", str(tmp_path)], str(path))
    assert not list(tmp_path.iterdir())  # nothing written
