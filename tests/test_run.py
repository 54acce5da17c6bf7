"""The CLI end to end: records, bad input, kill and resume, reproducibility, soup mode.

Bad input is checked in this process (`main` returns the exit status); one test runs `python -m sim.run` to see the
status a shell gets. The kill-and-resume test kills a real process at a random moment: it prints the seed of that
moment, and `SIGKILL_SEED=N` replays it.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import reference
import torch
from helpers import ROOT, one_line_error, run_module

from analysis.report import main as report_main
from sim.particles import KIND_NAMES
from sim.record import is_complete, load_checkpoint, open_record, read_attrs, read_group
from sim.run import main
from sim.tasks import make_task

FAST = ["--task", "arithmetic", "--quiet", "--set", "record.log_every=5", "--set", "record.snapshot_every=20"]


def test_record_holds_every_step_and_the_contract(tmp_path):
    out = tmp_path / "run"
    assert main([*FAST, "--steps", "43", "--out", str(out)]) == 0
    assert is_complete(out)
    with open_record(out) as f:
        attrs = read_attrs(f)
        steps = read_group(f, "steps")
        particles = read_group(f, "particles")
        snapshots = read_group(f, "snapshots")
        assert attrs["kind_names"] == list(KIND_NAMES)
        assert attrs["config"]["steps"] == 43 and attrs["seed"] == 0
        assert {"torch", "mesa", "h5py"} <= set(attrs["versions"]) and attrs["git_commit"]
        assert f["particles/kind"].dtype == np.int8 and f["particles/kind"].shape[1] == 18
        assert f["topology/layer"].shape == (18,) and f["topology/edges"].shape[1] == 2
    np.testing.assert_array_equal(steps["step"], np.arange(1, 44))
    np.testing.assert_array_equal(particles["step"], [0, 5, 10, 15, 20, 25, 30, 35, 40, 43])
    np.testing.assert_array_equal(snapshots["step"], [0, 20, 40, 43])
    assert np.all(particles["kind_counts"].sum(axis=1) == 18)
    for row, kinds in zip(particles["kind_counts"], particles["kind"]):
        np.testing.assert_array_equal(row, np.bincount(kinds, minlength=5))
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 43
    np.testing.assert_allclose(snapshots["weights"][-1], state["weights"].numpy(), rtol=1e-6)
    assert (out / "config.yaml").is_file()


def test_step_zero_is_the_initial_state_and_a_zero_step_run_is_complete(tmp_path):
    """The first /particles row and snapshot are step 0, before any training: kinds, SR losses and effective
    weights of the initial weights, as the per-particle reference computes them from that snapshot."""
    assert main([*FAST, "--steps", "0", "--out", str(tmp_path / "zero")]) == 0
    assert main([*FAST, "--steps", "7", "--out", str(tmp_path / "seven")]) == 0
    assert is_complete(tmp_path / "zero")
    rows = {}
    for name in ("zero", "seven"):
        with open_record(tmp_path / name) as f:
            rows[name] = read_group(f, "particles"), read_group(f, "snapshots"), read_group(f, "steps")
    (particles, snapshots, steps), (later, later_snapshots, _) = rows["zero"], rows["seven"]
    assert len(steps["step"]) == 0 and particles["step"].tolist() == [0] and snapshots["step"].tolist() == [0]
    initial = torch.as_tensor(snapshots["weights"][0]).double()  # [18, n]
    state = load_checkpoint(tmp_path / "zero" / "checkpoint.pt")
    assert state["step"] == 0 and torch.equal(state["weights"], torch.as_tensor(snapshots["weights"][0]))
    particles_ref = [reference.ReferenceParticle.from_row(row, 5, 3) for row in initial]
    np.testing.assert_array_equal(particles["kind"][0], [KIND_NAMES.index(reference.kind(p)) for p in particles_ref])
    losses = [float(reference.sr_loss(p).detach()) for p in particles_ref]
    np.testing.assert_allclose(particles["sr_loss"][0], losses, rtol=1e-5)
    effective = [reference.effective_weight(p) for p in particles_ref]
    np.testing.assert_allclose(particles["effective_weight"][0], effective, rtol=1e-5, atol=1e-7)
    organism = [reference.ReferenceParticle.from_row(row, 5, 3) for row in initial]
    task = make_task("arithmetic", 0, "cpu", torch.float64)
    mae = (reference.organism_forward(organism, [2, 3, 3, 1], task.test_x) - task.test_y).abs().mean()
    assert particles["held_out_metric"][0] == pytest.approx(float(mae.detach()), rel=1e-5)
    # a longer run with the same seed starts from the same state
    assert later["step"][0] == 0 and later_snapshots["step"].tolist() == [0, 7]
    np.testing.assert_array_equal(later_snapshots["weights"][0], snapshots["weights"][0])
    np.testing.assert_array_equal(later["kind"][0], particles["kind"][0])


@pytest.mark.slow  # a whole report of each mode
def test_every_analysis_reads_a_zero_step_run(tmp_path):
    for args, name in (([*FAST], "arithmetic"), (["--quiet", "--set", "task.batch_size=100"], "mnist"),
                       (["--quiet", "--mode", "soup", "--set", "soup.size=50"], "soup")):  # fmt: skip
        assert main([*args, "--steps", "0", "--out", str(tmp_path / name)]) == 0
        assert report_main([str(tmp_path / name), "--out", str(tmp_path / f"{name}-report"), "--draws", "10",
                            "--max-steps", "5"]) == 0  # fmt: skip
        summary = json.loads((tmp_path / f"{name}-report" / "summary.json").read_text())
        assert summary["complete"] and summary["headline"]["final.step"] == 0
        # pruning needs an organism; the soup analysis needs population events, which organisms have only when asked
        expected_skips = {"pruning"} if name == "soup" else {"soup"}
        skipped = {n for n, s in summary["scripts"].items() if s["status"] != "done"}
        assert skipped == expected_skips, summary["scripts"]


def test_same_seed_same_record_other_seed_differs(tmp_path):
    records = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert main([*FAST, "--steps", "25", "--seed", seed, "--out", str(tmp_path / name)]) == 0
        with open_record(tmp_path / name) as f:
            records.append({k: v for k, v in read_group(f, "steps").items() if k != "wall_time"} | {
                "weights": read_group(f, "snapshots")["weights"]})  # fmt: skip
    for key in records[0]:
        np.testing.assert_array_equal(records[0][key], records[1][key])
    assert not np.array_equal(records[0]["weights"], records[2]["weights"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--steps", "-5"], "--steps must be a non-negative integer"),
        (["--steps", "2.5"], "--steps must be a non-negative integer"),
        (["--task", "cifar"], "invalid choice: 'cifar'"),
        (["--mode", "pond"], "invalid choice: 'pond'"),
        (["--set", "train.nope=1"], "unknown config key 'train.nope'"),
        (["--set", "organism.width=0"], "organism.width must be an integer in 1.."),
        (["--set", "events.attack=-0.1"], "events.attack must be >= 0"),
        (["--set", "train.lr=abc"], "train.lr must be a number"),
        (["--set", "justakey"], "--set needs KEY=VALUE"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--set", "threads=0"], "threads must be an integer in 1.."),
        (["--config", "missing.yaml"], "cannot read config file"),
        (["--resume", "nowhere"], "holds no checkpoint"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    base = [] if args[0] == "--resume" else ["--task", "arithmetic", "--steps", "3", "--out", str(tmp_path / "r")]
    one_line_error(capsys, main, [*base, *args], words)
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_bad_input_ends_the_process_with_status_2(tmp_path):
    result = run_module("sim.run", "--task", "arithmetic", "--steps", "-5", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["sim.run: error: argument --steps: --steps must be a non-negative "
                                                  "integer, got '-5'"]  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_malformed_config_and_existing_outputs_are_refused_untouched(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    one_line_error(capsys, main, ["--config", str(tmp_path / "bad.yaml")], "malformed config file")

    existing = tmp_path / "afile"
    existing.write_text("keep me")
    one_line_error(capsys, main, [*FAST, "--steps", "3", "--out", str(existing)], "existing file")
    assert existing.read_text() == "keep me"

    out = tmp_path / "done"
    assert main([*FAST, "--steps", "5", "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "run.h5").read_bytes()
    one_line_error(capsys, main, [*FAST, "--steps", "3", "--out", str(out)], "already holds a run record")
    assert (out / "run.h5").read_bytes() == before


def test_cuda_without_gpu_is_refused(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    one_line_error(
        capsys, main, [*FAST, "--steps", "3", "--device", "cuda", "--out", str(tmp_path / "r")], "no CUDA GPU"
    )
    assert not (tmp_path / "r").exists()


def test_bad_idx_directory_is_refused(tmp_path, capsys):
    (tmp_path / "idx").mkdir()
    argv = ["--steps", "3", "--set", f"task.data_dir={tmp_path / 'idx'}", "--out", str(tmp_path / "r")]
    one_line_error(capsys, main, argv, "idx")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sigkill_leaves_a_readable_record_and_resume_matches_an_uninterrupted_run(tmp_path):
    # The kill point is counted in checkpoints, not seconds: a fast machine finished a 1,500-step run inside a fixed
    # delay, so the moment is "soon after the checkpoint at step `target`", which is far from the run's end.
    seed = int(os.environ.get("SIGKILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    target, delay = 100 * rng.randint(1, 10), rng.uniform(0.0, 0.05)
    print(f"SIGKILL {delay:.3f} s after the checkpoint at step {target} (SIGKILL_SEED={seed} replays it)")
    args = ["--task", "arithmetic", "--steps", "3000", "--seed", "7", "--quiet",
            "--set", "record.log_every=5", "--set", "record.snapshot_every=100"]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", *args, "--out", str(killed)], cwd=ROOT)
    deadline = time.time() + 120

    def checkpoint_step() -> int:
        path = killed / "checkpoint.pt"
        return load_checkpoint(path)["step"] if path.exists() else -1

    while checkpoint_step() < target and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with h5py.File(killed / "run.h5", "r", swmr=True) as f:  # a killed SWMR writer's file opens as a SWMR reader
        n = f["steps/step"].shape[0]
        steps = {name: d[:] for name, d in f["steps"].items()}
        assert n > 0 and all(len(v) == n for v in steps.values())
        np.testing.assert_array_equal(steps["step"], np.arange(1, n + 1))
        logged = f["particles/step"][:]
        assert len(logged) == f["particles/kind"].shape[0] and logged[-1] <= n and n - logged[-1] < 5
    assert not is_complete(killed)

    assert run_module("sim.run", "--resume", str(killed), "--quiet").returncode == 0
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    resumed_state, full_state = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(full / "checkpoint.pt")
    assert resumed_state["step"] == full_state["step"] == 3000
    assert torch.equal(resumed_state["weights"], full_state["weights"])
    with open_record(killed) as a, open_record(full) as b:
        for group in ("steps", "particles", "snapshots"):
            ra, rb = read_group(a, group), read_group(b, group)
            for key in ra:
                if key != "wall_time":
                    np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{group}/{key}")


def test_soup_mode_counts_kinds_and_records_events(tmp_path):
    out = tmp_path / "soup"
    args = ["--mode", "soup", "--steps", "30", "--quiet", "--out", str(out), "--set", "soup.size=60",
            "--set", "record.log_every=5", "--set", "events.attack=0.2", "--set", "events.noise=0.1"]  # fmt: skip
    assert main(args) == 0
    with open_record(out) as f:
        attrs = read_attrs(f)
        particles = read_group(f, "particles")
        events = read_group(f, "events")
    assert attrs["mode"] == "soup"
    assert particles["kind"].shape == (7, 60) and np.all(particles["kind_counts"].sum(axis=1) == 60)
    assert {0, 4} <= set(np.unique(events["kind"]).tolist())  # attack and noise both happened
    assert np.all((events["step"] >= 1) & (events["step"] <= 30))
