"""Sweeps on Dask: records equal to runs made one by one with sim.run, local and remote clusters, kill and resume."""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import torch
import yaml

from sim.config import from_dict
from sim.record import CONFIG_NAME, load_checkpoint, open_record
from sim.run import main as run_main
from sim.runner import build_model
from sim.sweep import load_sweep, main, plan, point_name

ROOT = Path(__file__).resolve().parents[1]
STEPS = 150
BASE = {"task": {"name": "arithmetic"}, "steps": STEPS, "record": {"snapshot_every": 50}}
SWEEP = {"base": BASE, "grid": {"train.alpha": [0.5, 1.0]}, "seeds": 3}
RUN_DIRS = [f"train.alpha={a}/s{s}" for a in (0.5, 1.0) for s in range(3)]


def write_sweep(path: Path, sweep: dict) -> Path:
    path.write_text(yaml.safe_dump(sweep))
    return path


def index(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """The sweep's six runs made one by one with `sim.run`, keyed by the run directory the sweep should give them."""
    root = tmp_path_factory.mktemp("one_by_one")
    out = {}
    for name in RUN_DIRS:
        alpha, seed = name.split("=")[1].split("/s")
        args = ["--task", "arithmetic", "--steps", str(STEPS), "--seed", seed, "--set", f"train.alpha={alpha}",
                "--set", "record.snapshot_every=50", "--quiet", "--out", str(root / name)]  # fmt: skip
        assert run_main(args) == 0
        out[name] = root / name
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Same config file, every dataset and attribute of the record (but timing and provenance), same checkpoint."""
    assert (a / CONFIG_NAME).read_text() == (b / CONFIG_NAME).read_text()
    with open_record(a) as fa, open_record(b) as fb:
        skip = {"created", "git_commit", "run_id"}  # provenance: when, from which source, which run
        assert {k: str(v) for k, v in fa.attrs.items() if k not in skip} == {
            k: str(v) for k, v in fb.attrs.items() if k not in skip
        }
        names_a, names_b = [], []
        fa.visit(lambda n: names_a.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        fb.visit(lambda n: names_b.append(n) if isinstance(fb[n], h5py.Dataset) else None)
        assert sorted(names_a) == sorted(names_b) and "snapshots/weights" in names_a
        for name in names_a:
            if name != "steps/wall_time":
                np.testing.assert_array_equal(fa[name][:], fb[name][:], err_msg=f"{a}: {name}")
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert sa.keys() == sb.keys() and sa["step"] == STEPS
    for key in sa.keys() - {"run_id", "digest"}:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


def file_state(run_dir: Path) -> dict[str, tuple]:
    """Inode, modification time and content hash of each file of a run directory."""
    out = {}
    for path in sorted(run_dir.iterdir()):
        st = path.stat()
        out[path.name] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.mark.slow
def test_local_cluster_sweep_equals_runs_one_by_one(tmp_path, references):
    out = tmp_path / "sweep"
    assert main([str(write_sweep(tmp_path / "s.yaml", SWEEP)), "--workers", "2", "--out", str(out), "--quiet"]) == 0
    data = index(out)
    assert [r["run_dir"] for r in data["runs"]] == RUN_DIRS
    assert all(r["status"] == "done" and r["error"] is None for r in data["runs"])
    assert [(r["point"], r["seed"], r["params"]) for r in data["runs"]] == [
        (f"train.alpha={a}", s, {"train.alpha": a}) for a in (0.5, 1.0) for s in range(3)
    ]
    assert data["seeds"] == [0, 1, 2] and data["grid"] == SWEEP["grid"] and "points" not in data
    # the base config is the one sim.run resolves for alpha 1 (the default) and seed 0
    assert data["base_config"] == yaml.safe_load((references["train.alpha=1.0/s0"] / CONFIG_NAME).read_text())
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/s*")) == sorted(RUN_DIRS)
    for name in RUN_DIRS:
        assert_same_run(out / name, references[name])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies left unreaped do not count)."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session, with everything it started, and wait until all are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while _live_members(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _live_members(proc.pid), "processes of the killed group are left behind"


@pytest.fixture
def scheduler():
    """A Dask scheduler and two one-thread workers on loopback, started as the CLI starts them; torn down after."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            cwd=ROOT,
            start_new_session=True,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        procs.append(
            subprocess.Popen(
                [*dask, "worker", address, "--nthreads", "1", "--nworkers", "2", "--no-dashboard"],
                cwd=ROOT,
                start_new_session=True,
                stderr=subprocess.DEVNULL,
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            _kill_group(proc)


@pytest.mark.slow
def test_sweep_on_a_separate_scheduler_gives_the_same_records(tmp_path, references, scheduler):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", SWEEP)
    assert main([str(sweep), "--scheduler", scheduler, "--out", str(out), "--quiet"]) == 0
    assert [r["status"] for r in index(out)["runs"]] == ["done"] * 6
    for name in RUN_DIRS:
        assert_same_run(out / name, references[name])


@pytest.mark.slow
def test_killed_sweep_finishes_without_rerunning_finished_runs(tmp_path, references):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", SWEEP | {"points": [{"train.lr": -1}]})
    command = [sys.executable, "-m", "sim.sweep", str(sweep), "--workers", "2", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            runs = index(out)["runs"] if (out / "sweep.json").exists() else []
            statuses = [r["status"] for r in runs if r["run_dir"] in RUN_DIRS]
            if statuses.count("done") >= 2 and "running" in statuses:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
    finally:
        _kill_group(proc)
    finished = [r["run_dir"] for r in runs if r["status"] == "done"]
    assert 2 <= len(finished) < 6
    before = {name: file_state(out / name) for name in finished}

    assert main([str(sweep), "--workers", "2", "--out", str(out), "--quiet"]) == 1  # the invalid point failed
    for name in finished:
        assert file_state(out / name) == before[name], f"{name} was run again"
    for name in RUN_DIRS:
        assert_same_run(out / name, references[name])
    runs = index(out)["runs"]
    assert [r["status"] for r in runs if r["run_dir"] in RUN_DIRS] == ["done"] * 6
    failed = [r for r in runs if r["status"] == "failed"]
    expected = [("train.lr=-1", seed, {"train.lr": -1}) for seed in range(3)]
    assert [(r["point"], r["seed"], r["params"]) for r in failed] == expected
    assert all("train.lr must be >= 0" in r["error"] and "\n" not in r["error"] for r in failed)
    assert not (out / "train.lr=-1").exists()


def _start_and_abandon(run_dir: Path, reference: Path, steps: int) -> np.ndarray:
    """Run the reference's config for `steps` steps, flushing the record at every log interval, then close it without
    the rows still buffered (as a kill would leave it); returns the recorded step wall times."""
    config = from_dict(yaml.safe_load((reference / CONFIG_NAME).read_text()))
    run_dir.mkdir(parents=True)
    model = build_model(config, run_dir, resume=False)
    shutil.copy(reference / CONFIG_NAME, run_dir / CONFIG_NAME)
    for _ in range(steps):
        model.step()
        if model.steps % config.record.log_every == 0:
            model.record.flush()  # at every log interval, as a slow run does (the record waits a second otherwise)
    model.record.file.close()
    with h5py.File(run_dir / "run.h5", "r") as f:
        return f["steps/wall_time"][:]


@pytest.mark.slow
def test_rerun_resumes_from_checkpoints_and_restarts_runs_without_one(tmp_path, references):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", SWEEP | {"grid": {"train.alpha": [0.5]}})
    shutil.copytree(references["train.alpha=0.5/s0"], out / "train.alpha=0.5/s0")  # finished
    before = file_state(out / "train.alpha=0.5/s0")
    # s1 killed at step 125 (checkpoint at 100, rows to 120); s2 without a checkpoint, as a kill before the step-0
    # checkpoint leaves it
    resumed = _start_and_abandon(out / "train.alpha=0.5/s1", references["train.alpha=0.5/s1"], 125)
    restarted = _start_and_abandon(out / "train.alpha=0.5/s2", references["train.alpha=0.5/s2"], 30)
    (out / "train.alpha=0.5/s2/checkpoint.pt").unlink()
    assert (out / "train.alpha=0.5/s1/checkpoint.pt").exists() and len(resumed) == 120
    assert not (out / "train.alpha=0.5/s2/checkpoint.pt").exists() and len(restarted) == 30

    assert main([str(sweep), "--workers", "2", "--out", str(out), "--quiet"]) == 0
    assert file_state(out / "train.alpha=0.5/s0") == before
    for seed in (1, 2):
        assert_same_run(out / f"train.alpha=0.5/s{seed}", references[f"train.alpha=0.5/s{seed}"])
    with open_record(out / "train.alpha=0.5/s1") as f1, open_record(out / "train.alpha=0.5/s2") as f2:
        # the resumed run kept the rows up to its checkpoint; the restarted one wrote all of its own
        np.testing.assert_array_equal(f1["steps/wall_time"][:100], resumed[:100])
        assert not np.array_equal(f1["steps/wall_time"][100:120], resumed[100:120])
        assert not np.array_equal(f2["steps/wall_time"][:30], restarted)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("grids: {train.alpha: [1]}\nseeds: 2\n", "unknown key 'grids'"),
        ("grid: {train.nope: [1]}\nseeds: 2\n", "unknown config key 'train.nope'"),
        ("grid: {seed: [1, 2]}\nseeds: 2\n", "seeds are set by the sweep file"),
        ("grid: {train.alpha: 0.5}\nseeds: 2\n", "train.alpha must be a non-empty list"),
        ("grid: {train.alpha: [[0.5]]}\nseeds: 2\n", "values must be numbers"),
        ("points: [{train.n_sr: 5}, 3]\nseeds: 2\n", "points must be a list of mappings"),
        ("grid: {train.alpha: [0.5]}\n", "`seeds` is missing"),
        ("seeds: three\n", "seeds must be a count"),
        ("seeds: [0, 0]\n", "must not repeat a seed"),
        ("seeds: 0\n", "a count must be in 1.."),
        ("seeds: [18446744073709551616]\n", "a list must hold integers in 0..2**64-1"),
        ("base: {steps: -1}\nseeds: 2\n", "steps must be an integer in 0.."),
        ("config: nowhere.yaml\nseeds: 2\n", "cannot read config file"),
        ("seeds: [1,\n", "malformed sweep file"),
    ],
)
def test_bad_sweep_file_is_one_line_exit_2(tmp_path, capsys, text, words):
    (tmp_path / "s.yaml").write_text(text)
    assert main([str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and err[0].startswith("sim.sweep: error:")
    assert not (tmp_path / "out").exists()


def test_cli_errors_and_a_changed_base_config_are_refused(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", {"base": BASE, "grid": {"train.lr": [-1, -2]}, "seeds": 2})
    out = tmp_path / "out"
    assert main([str(sweep), "--workers", "0", "--out", str(out)]) == 2
    assert main([str(sweep), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "--out", str(out)]) == 2
    assert not out.exists()
    assert main([str(sweep), "--out", str(out), "--quiet"]) == 1  # every point invalid: no run, no cluster
    assert [r["status"] for r in index(out)["runs"]] == ["failed"] * 4
    before = (out / "sweep.json").read_text()
    capsys.readouterr()
    changed = write_sweep(
        tmp_path / "changed.yaml", {"base": BASE | {"steps": STEPS + 1}, "grid": {"train.lr": [-1]}, "seeds": 2}
    )
    assert main([str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another base config (steps: 150 there, 151 here)" in err[0]
    assert (out / "sweep.json").read_text() == before
    with (out / ".sweep.lock").open("w") as held:  # a sweep running in the directory holds this lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main([str(sweep), "--out", str(out)]) == 2
        assert "another sweep is running" in capsys.readouterr().err
    assert (out / "sweep.json").read_text() == before


def test_point_names_are_canonical_safe_and_distinct(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", {
        "base": BASE, "grid": {"train.n_sr": [5], "train.alpha": [1, 1.0, 0.5]},
        "points": [{"task.data_dir": "/a/b"}, {"task.data_dir": "/a_b"}, {"train.alpha": 1, "train.n_sr": 5}],
        "seeds": [3],
    })  # fmt: skip
    names = [run.point for run in plan(load_sweep(sweep), tmp_path)]
    # 1 and 1.0 are the same alpha; keys in a fixed order, so the listed point repeats a grid point
    assert names[:2] == ["train.alpha=1.0,train.n_sr=5", "train.alpha=0.5,train.n_sr=5"] and len(names) == 4
    assert names[2] != names[3] and all(n.startswith("task.data_dir=_a_b~") for n in names[2:])
    assert all("/" not in n for n in names) and point_name({}) == "base"


def test_a_list_valued_key_sweeps_lists(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", {"base": BASE, "grid": {"organism.hidden": [[4, 3], [2]]}, "seeds": 1})
    runs = plan(load_sweep(sweep), tmp_path)
    assert [run.params for run in runs] == [{"organism.hidden": [4, 3]}, {"organism.hidden": [2]}]
    assert runs[0].point != runs[1].point and all(
        run.point.startswith("organism.hidden=_4") or run.point.startswith("organism.hidden=_2") for run in runs
    )
