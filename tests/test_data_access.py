"""Data access: the run listing (`analysis.runs`), the tidy export (`analysis.export`) and `sim.record.to_dataframe`,
checked against the record read directly with h5py."""

import json
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from analysis import export, runs
from sim.record import to_dataframe


def names(f: h5py.File, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs[key]]


@pytest.fixture(scope="module")
def three_runs(arithmetic_run, soup_run, tmp_path_factory):
    """A directory of 3 runs: a complete organism run, a complete soup in a nested folder (as a sweep's), and a copy of
    the organism run whose config asks for more steps than it holds and whose file has been idle (a stopped run)."""
    root = tmp_path_factory.mktemp("listing")
    shutil.copytree(arithmetic_run, root / "arith")
    shutil.copytree(soup_run, root / "sweep" / "point" / "s0")
    shutil.copytree(arithmetic_run, root / "stopped")
    with h5py.File(root / "stopped" / "run.h5", "r+") as f:
        config = json.loads(f.attrs["config"])
        config["steps"] = 5000
        f.attrs["config"] = json.dumps(config)
    idle = os.stat(root / "stopped" / "run.h5").st_mtime - 3600
    os.utime(root / "stopped" / "run.h5", (idle, idle))
    return root


def test_runs_lists_every_run_with_its_state(three_runs, arithmetic_run, capsys):
    assert runs.main([str(three_runs), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"arith", "sweep/point/s0", "stopped"}
    with h5py.File(arithmetic_run / "run.h5", "r") as f:
        config = json.loads(f.attrs["config"])
        counts = f["particles/kind_counts"][-1]
        replicators = int(counts[names(f, "kind_names").index("self_replicator")])
        metric = float(f["particles/held_out_metric"][-1])
        done = len(f["steps/step"])
    arith = rows["arith"]
    assert (arith["mode"], arith["task"], arith["seed"]) == ("organism", "arithmetic", config["seed"])
    assert (arith["steps_done"], arith["steps_planned"]) == (done, config["steps"])
    assert arith["final_metric"] == metric and arith["self_replicators"] == replicators
    assert arith["status"] == "complete"
    assert rows["stopped"]["status"] == "stopped" and rows["stopped"]["steps_planned"] == 5000
    soup = rows["sweep/point/s0"]
    assert soup["mode"] == "soup" and soup["status"] == "complete" and soup["final_metric"] is None


def test_runs_table_has_one_line_per_run(three_runs, capsys):
    assert runs.main([str(three_runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(runs.COLUMNS)
    body = lines[2:]
    assert len(body) == 3
    row = next(line for line in body if line.startswith("stopped "))
    assert "/5000" in row and row.split()[-1] == "stopped"


def test_runs_marks_an_unreadable_record_and_goes_on(three_runs, tmp_path, capsys):
    shutil.copytree(three_runs, tmp_path / "all")
    (tmp_path / "all" / "broken").mkdir()
    (tmp_path / "all" / "broken" / "run.h5").write_text("not hdf5")
    assert runs.main([str(tmp_path / "all"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert len(rows) == 4 and rows["broken"]["status"] == "unreadable" and "broken" in rows["broken"]["error"]


def test_runs_rejects_a_missing_directory(tmp_path, capsys):
    assert runs.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trips_the_record(arithmetic_run, tmp_path, fmt):
    out = tmp_path / fmt
    assert export.main([str(arithmetic_run), "--format", fmt, "--out", str(out), "--tables", *export.TABLES]) == 0
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    with h5py.File(arithmetic_run / "run.h5", "r") as f:
        kinds = names(f, "kind_names")
        P = f["topology/layer"].shape[0]
        particles = read(out / "particles.csv" if fmt == "csv" else out / "particles.parquet")
        assert list(particles.columns) == ["step", "particle", "kind", "sr_loss", "effective_weight", "layer",
                                           "source", "target"]  # fmt: skip
        T = len(f["particles/step"])
        assert len(particles) == T * P
        for column in ("sr_loss", "effective_weight"):
            recorded = f[f"particles/{column}"][()]  # [T, P] float32
            exported = particles[column].to_numpy().astype(recorded.dtype).reshape(T, P)
            np.testing.assert_array_equal(exported, recorded)
        codes = np.array([kinds.index(k) for k in particles["kind"].astype(str)]).reshape(T, P)
        np.testing.assert_array_equal(codes, f["particles/kind"][()])
        np.testing.assert_array_equal(particles["step"].to_numpy().reshape(T, P)[:, 0], f["particles/step"][()])
        for column in ("layer", "source", "target"):
            np.testing.assert_array_equal(particles[column].to_numpy().reshape(T, P)[0], f[f"topology/{column}"][()])
        steps = read(out / f"steps.{fmt}")
        for column in ("step", "task_loss", "sr_loss", "metric", "sr_active", "wall_time"):
            np.testing.assert_array_equal(steps[column].to_numpy(), f[f"steps/{column}"][()])
        snapshots = read(out / f"snapshots.{fmt}")
        weights = f["snapshots/weights"][()]  # [S, P, n]
        exported = snapshots["value"].to_numpy().astype(np.float32).reshape(weights.shape)
        np.testing.assert_array_equal(exported, weights)
        census = read(out / f"census.{fmt}")
        np.testing.assert_array_equal(census[kinds].to_numpy(), f["particles/kind_counts"][()])


def test_soup_events_by_name(soup_run, tmp_path):
    assert export.main([str(soup_run), "--out", str(tmp_path), "--tables", "events"]) == 0
    events = pd.read_csv(tmp_path / "events.csv")
    with h5py.File(soup_run / "run.h5", "r") as f:
        event_names = names(f, "event_names")
        assert len(events) == len(f["events/step"]) > 0
        codes = [event_names.index(k) for k in events["kind"]]
        np.testing.assert_array_equal(codes, f["events/kind"][()])
        np.testing.assert_array_equal(events["source"], f["events/source"][()])


def test_to_dataframe_of_each_table(mnist_run):
    frame = to_dataframe(mnist_run, "particles")
    assert isinstance(frame["kind"].dtype, pd.CategoricalDtype)
    last = frame[frame["step"] == frame["step"].max()]
    census = to_dataframe(mnist_run, "census").iloc[-1]
    counts = last["kind"].value_counts()
    assert {k: int(counts[k]) for k in counts.index} == {k: int(census[k]) for k in counts.index}
    assert counts.sum() == 1200
    per_layer = frame.groupby("layer")["particle"].nunique()
    assert per_layer.tolist() == [225 * 5, 5 * 5, 5 * 10]


def test_export_rejects_bad_input(arithmetic_run, tmp_path, capsys):
    assert export.main([str(arithmetic_run), "--format", "xls", "--out", str(tmp_path / "x")]) == 2
    assert export.main([str(tmp_path / "no-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "xls" in err[0] and "no-run" in err[1]
    assert not (tmp_path / "x").exists()
