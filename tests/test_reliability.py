"""Damaged files, crafted checkpoints, concurrent writers, full disks and signals: refused on one line, nothing lost.

Every corruption is made here on a small arithmetic run; `scripts/faults.py` runs the wider list from the command line.
"""

import hashlib
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analysis.common import load_run
from analysis.pruning import main as pruning_main
from sim.config import build_config, from_dict
from sim.record import (
    CHECKPOINT_KEYS,
    CHECKPOINT_NAME,
    RecordError,
    extended_checkpoint,
    is_complete,
    load_checkpoint,
    open_record,
    read_attrs,
    read_group,
    save_checkpoint,
)
from sim.run import main
from sim.rundir import LOCK_NAME, RunDir, RunDirError
from sim.runner import build_model, write_config

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--task", "arithmetic", "--quiet", "--set", "record.log_every=5", "--set", "record.snapshot_every=20"]
OVERRIDES = [("task.name", "arithmetic"), ("record.log_every", 5), ("record.snapshot_every", 20)]


def run_cli(*args: str, preexec=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def digest_files(run_dir: Path) -> dict[str, str]:
    """Every run file's digest (the lock file holds only the last writer's pid)."""
    files = [p for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != LOCK_NAME]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_same_rows(a: Path, b: Path) -> None:
    with open_record(a) as fa, open_record(b) as fb:
        for group in ("steps", "particles", "snapshots", "events"):
            ra, rb = read_group(fa, group), read_group(fb, group)
            for key in ra:
                if key != "wall_time":
                    np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{group}/{key}")


def partial_run(run_dir: Path, steps: int, stop_at: int, seed: int = 0) -> None:
    """A run of `steps` steps stopped cleanly after `stop_at` (checkpoint written), as a killed-then-stopped run."""
    config = build_config(None, [*OVERRIDES, ("steps", steps), ("seed", seed)])
    run_dir.mkdir(parents=True)
    model = build_model(config, run_dir, resume=False)
    write_config(config, run_dir)
    while model.steps < stop_at:
        model.step()
    model.checkpoint()
    model.close()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "run"
    assert main([*FAST, "--steps", "60", "--out", str(out)]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- 1. nothing executes from a run directory ------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_that_runs_code_on_load_is_refused(small_run, tmp_path, capsys):
    run_dir = copy_run(small_run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    state = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    torch.save({**state, "weights": _RunsCode(marker)}, run_dir / CHECKPOINT_NAME)
    before = digest_files(run_dir)

    with pytest.raises(RecordError, match="objects other than tensors, numbers and strings: refused"):
        load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert main(["--resume", str(run_dir), "--quiet"]) == 2
    assert pruning_main([str(run_dir), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("refused" in line for line in err)
    assert not marker.exists()
    assert digest_files(run_dir) == before


def test_paths_in_a_record_stay_inside_its_run_directory(small_run, tmp_path):
    other = copy_run(small_run, tmp_path / "other")
    run_dir = copy_run(small_run, tmp_path / "run")
    with h5py.File(run_dir / "run.h5", "r+") as f:
        f.attrs["checkpoint"] = "../other/checkpoint.pt"
    with pytest.raises(RecordError, match="points outside its run directory"):
        load_run(run_dir).final_weights()
    before = digest_files(run_dir)
    assert main(["--resume", str(run_dir), "--quiet"]) == 2  # refused, not ignored
    assert digest_files(run_dir) == before

    linked = copy_run(small_run, tmp_path / "linked")
    (linked / CHECKPOINT_NAME).unlink()
    (linked / CHECKPOINT_NAME).symlink_to(other / CHECKPOINT_NAME)
    with pytest.raises(RecordError, match="points outside its run directory"):
        load_run(linked).final_weights()
    assert load_run(other).final_weights()[1] == 60  # the record's own checkpoint still reads


# --- 2. one writer per run directory ---------------------------------------------------------------------------------
def _writer(args: list[str], start, log: str) -> None:
    sys.stderr = open(log, "w")  # noqa: SIM115  (the process ends with os._exit)
    start.wait()
    code = main(args)
    sys.stderr.flush()
    os._exit(code)


def _start_together(jobs: list[tuple[list[str], Path]]) -> list[int]:
    """Fork one process per job, release them all at once, and return their exit statuses."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    procs = [context.Process(target=_writer, args=(args, start, str(log))) for args, log in jobs]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    start.set()
    for proc in procs:
        proc.join(300)
    return [proc.exitcode for proc in procs]


@pytest.mark.slow  # starts sim.run processes
def test_twenty_pairs_of_writers_started_together_never_lose_a_run_or_a_row(tmp_path):
    jobs = []
    for pair in range(20):
        out = tmp_path / f"pair{pair}"
        for member in range(2):
            seed = 2 * pair + member
            jobs.append(([*FAST, "--steps", "40", "--seed", str(seed), "--out", str(out)], tmp_path / f"{seed}.err"))
    codes = _start_together(jobs)
    pids_named = 0
    for pair in range(20):
        out = tmp_path / f"pair{pair}"
        pair_codes = codes[2 * pair : 2 * pair + 2]
        assert sorted(pair_codes) == [0, 2], (pair, pair_codes)
        winner = 2 * pair + pair_codes.index(0)
        loser_err = (tmp_path / f"{2 * pair + pair_codes.index(2)}.err").read_text().strip().splitlines()
        assert len(loser_err) == 1
        assert "in use by another writer (pid" in loser_err[0] or "already holds a run record" in loser_err[0]
        pids_named += "pid" in loser_err[0]
        assert is_complete(out)
        state = load_checkpoint(out / CHECKPOINT_NAME)
        with open_record(out) as f:
            attrs = read_attrs(f)
            steps = read_group(f, "steps")["step"]
            last_snapshot = read_group(f, "snapshots")["weights"][-1]
        assert attrs["seed"] == state["seed"] == winner and attrs["run_id"] == state["run_id"]
        np.testing.assert_array_equal(steps, np.arange(1, 41))
        np.testing.assert_array_equal(last_snapshot, state["weights"].numpy())
    assert pids_named > 0
    reference = tmp_path / "reference"
    winner = 0 if codes[0] == 0 else 1
    assert main([*FAST, "--steps", "40", "--seed", str(winner), "--out", str(reference)]) == 0
    assert_same_rows(tmp_path / "pair0", reference)


@pytest.mark.slow  # starts sim.run processes
def test_two_resumes_of_one_run_started_together_lose_nothing(tmp_path):
    reference = tmp_path / "reference"
    assert main([*FAST, "--steps", "200", "--out", str(reference)]) == 0
    jobs = []
    for i in range(5):
        partial_run(tmp_path / f"run{i}", steps=200, stop_at=50)
        jobs += [(["--resume", str(tmp_path / f"run{i}"), "--quiet"], tmp_path / f"{i}-{m}.err") for m in range(2)]
    codes = _start_together(jobs)
    for i in range(5):
        assert sorted(codes[2 * i : 2 * i + 2]) == [0, 2]
        assert is_complete(tmp_path / f"run{i}")
        assert_same_rows(tmp_path / f"run{i}", reference)


@pytest.mark.slow  # starts sim.run processes
def test_a_second_writer_is_refused_naming_the_holder_and_errors_remove_only_their_own_files(tmp_path):
    run_dir = tmp_path / "held"
    with RunDir.claim(run_dir, new=True):
        with pytest.raises(RunDirError, match=f"in use by another writer \\(pid {os.getpid()}\\)"):
            RunDir.claim(run_dir, new=True)
        result = run_cli(*FAST, "--steps", "5", "--out", str(run_dir))
        assert result.returncode == 2 and f"pid {os.getpid()}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # the claim made the directory and nothing else: an error path leaves no trace of it
    claim = RunDir.claim(tmp_path / "made" / "deep", new=True)
    claim.discard()
    assert not (tmp_path / "made").exists()
    # a directory that held someone's files keeps them
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert (
        main([*FAST, "--task", "mnist", "--steps", "5", "--set", "task.data_dir=/nonexistent", "--out", str(kept)]) == 2
    )
    assert sorted(p.name for p in kept.iterdir()) in (["notes.txt"], ["notes.txt", "run.lock"])


# --- full disk: a failed flush never leaves rows it did not write ----------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail (EFBIG), as on a full disk

    return apply


@pytest.mark.slow  # starts sim.run processes
def test_a_write_that_fails_mid_run_stops_on_one_line_and_keeps_every_committed_row(tmp_path):
    run_dir = tmp_path / "run"
    args = [*FAST, "--steps", "3000", "--seed", "3", "--set", "record.snapshot_every=500"]
    result = run_cli(*args, "--out", str(run_dir), preexec=_file_size_limit(200_000))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.h5" in lines[0] and "File too large" in lines[0], lines
    with open_record(run_dir) as f:
        steps = read_group(f, "steps")
        particles = read_group(f, "particles")
    n = len(steps["step"])
    assert 0 < n < 3000
    np.testing.assert_array_equal(steps["step"], np.arange(1, n + 1))  # no row of zeros
    assert np.all(steps["wall_time"] > 0)
    assert np.all(np.diff(particles["step"]) == 5) and 0 < particles["step"][-1] <= n  # every log row, in order
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)  # the last good checkpoint is intact
    assert state["step"] % 500 == 0 and state["step"] <= n

    assert run_cli("--resume", str(run_dir), "--quiet").returncode == 0
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    assert_same_rows(run_dir, full)


# --- 3. damaged files: one line, exit 2, within seconds, nothing changed ---------------------------------------------
def _truncate(size: int):
    def damage(path: Path) -> None:
        with open(path, "r+b") as f:
            f.truncate(size if size >= 0 else path.stat().st_size // 2)

    return damage


def _invert(offset: int, count: int = 4):
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        start = offset if offset >= 0 else len(data) // 2
        data[start : start + count] = bytes(255 - b for b in data[start : start + count])
        path.write_bytes(bytes(data))

    return damage


RECORD_DAMAGE = {
    "empty": _truncate(0),
    "100 bytes": _truncate(100),
    "512 bytes": _truncate(512),
    "2048 bytes": _truncate(2048),
    "half": _truncate(-1),
    "inverted at 0": _invert(0),
    "inverted at 8": _invert(8),
    "inverted at 100": _invert(100),
    "inverted at 1000": _invert(1000),
}


@pytest.mark.parametrize("damage", list(RECORD_DAMAGE))
def test_a_damaged_record_is_refused_on_one_line_within_seconds(small_run, tmp_path, capsys, damage):
    run_dir = copy_run(small_run, tmp_path / "run")
    RECORD_DAMAGE[damage](run_dir / "run.h5")
    before = digest_files(run_dir)
    started = time.monotonic()
    try:
        with open_record(run_dir) as f:
            for group in ("steps", "particles", "snapshots", "events"):
                read_group(f, group)
        opened = True
    except RecordError as exc:
        opened = False
        assert "run.h5" in str(exc) and "\n" not in str(exc)
    resume = main(["--resume", str(run_dir), "--quiet"])
    assert time.monotonic() - started < 10
    if not opened:
        assert resume == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "run.h5" in err[0]
    assert digest_files(run_dir) == before or resume == 0


def _invert_chunk(dataset: str):
    """Four bytes inverted in the middle of the last stored chunk of `dataset`."""

    def damage(path: Path) -> None:
        with h5py.File(path, "r") as f:
            chunks = f[dataset].id
            info = chunks.get_chunk_info(chunks.get_num_chunks() - 1)
        _invert(info.byte_offset + info.size // 2)(path)

    return damage


def _set_kinds(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["particles/kind"][-1, 3] = 42


ROW_DAMAGE = {
    "a snapshot's weights": (_invert_chunk("snapshots/weights"), "/snapshots/weights"),
    "the particle graph": (_invert_chunk("topology/edges"), "/topology/edges"),
    "the committed row counts": (_invert_chunk("rows"), "damaged record"),
    "a kind code out of range": (_set_kinds, "/particles/kind holds code 42, outside -1..4"),
}


@pytest.mark.parametrize("damage", list(ROW_DAMAGE))
def test_damaged_rows_that_a_command_would_not_read_are_found_first(small_run, tmp_path, capsys, damage):
    run_dir = copy_run(small_run, tmp_path / "run")
    with h5py.File(run_dir / "run.h5", "r") as f:  # every dataset of a new record is checksummed
        assert all(f[g][name].fletcher32 for g in ("steps", "particles", "snapshots", "topology") for name in f[g])
        assert f["rows"].fletcher32
    make, words = ROW_DAMAGE[damage]
    make(run_dir / "run.h5")
    before = digest_files(run_dir)
    with pytest.raises(RecordError, match=re.escape(words)):
        load_run(run_dir)
    assert main(["--resume", str(run_dir), "--quiet"]) == 2  # the run is complete: resume read nothing else before
    assert pruning_main([str(run_dir), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(words in line for line in err), err
    assert digest_files(run_dir) == before


def _flip_weights(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["weights"][0, 0] += 1.0
    torch.save(state, path)  # the old digest stays


def _from_other_seed(tmp_path: Path):
    def damage(path: Path) -> None:
        other = tmp_path / "other-seed"
        assert main([*FAST, "--steps", "60", "--seed", "9", "--out", str(other)]) == 0
        shutil.copy(other / CHECKPOINT_NAME, path)

    return damage


CHECKPOINT_DAMAGE = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(5000)), "not a checkpoint"),
    "text": (lambda p: p.write_text("hello"), "not a checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "not a checkpoint"),
    "inverted inside": (_invert(-1, 64), "damaged|digest"),
    "truncated": (_truncate(-1), "damaged"),
    "weights changed": (_flip_weights, "fails its digest"),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_refused_on_one_line(small_run, tmp_path, capsys, damage):
    run_dir = copy_run(small_run, tmp_path / "run")
    make, words = CHECKPOINT_DAMAGE[damage]
    make(run_dir / CHECKPOINT_NAME)
    before = digest_files(run_dir)
    with pytest.raises(RecordError, match=words):
        load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert main(["--resume", str(run_dir), "--quiet"]) == 2
    assert pruning_main([str(run_dir), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("checkpoint.pt" in line for line in err)
    assert digest_files(run_dir) == before


# --- 4. the checkpoint is bound to its record and config -------------------------------------------------------------
def test_resume_and_analysis_refuse_a_checkpoint_of_another_run_or_a_changed_config(small_run, tmp_path, capsys):
    other_seed = copy_run(small_run, tmp_path / "seed")
    _from_other_seed(tmp_path)(other_seed / CHECKPOINT_NAME)
    edited = copy_run(small_run, tmp_path / "edited")
    text = (edited / "config.yaml").read_text()
    (edited / "config.yaml").write_text(text.replace("lr: 0.004", "lr: 0.01"))
    cases = ((other_seed, "belongs to another run (seed 9"), (edited, "changed after the run started (train.lr: 0.004"))
    for run_dir, words in cases:
        before = digest_files(run_dir)
        assert main(["--resume", str(run_dir), "--quiet"]) == 2
        assert pruning_main([str(run_dir), "--out", str(tmp_path / "fig")]) == 2  # analysis binds it the same way
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and all(words in line for line in err), err
        assert digest_files(run_dir) == before


def test_resume_refuses_a_checkpoint_newer_than_its_record_and_names_steps_it_re_runs(tmp_path, capsys):
    config = build_config(None, [*OVERRIDES, ("steps", 100)])
    older = tmp_path / "older"
    partial_run(older, steps=100, stop_at=40)
    old_checkpoint = (older / CHECKPOINT_NAME).read_bytes()
    assert main(["--resume", str(older), "--quiet"]) == 0
    partial = tmp_path / "partial"
    partial_run(partial, steps=100, stop_at=40)
    (partial / CHECKPOINT_NAME).write_bytes(old_checkpoint)
    capsys.readouterr()
    # another run's checkpoint of the same config and seed: refused by its run id
    assert main(["--resume", str(partial), "--quiet"]) == 2
    assert "belongs to another run (run id" in capsys.readouterr().err

    ahead = tmp_path / "ahead"
    partial_run(ahead, steps=100, stop_at=40)
    snapshot = (ahead / "run.h5").read_bytes()
    model = build_model(config, ahead, resume=True)
    while model.steps < 70:
        model.step()
    model.checkpoint()
    model.close()
    (ahead / "run.h5").write_bytes(snapshot)
    before = digest_files(ahead)
    assert main(["--resume", str(ahead), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "newer than the record: it counts" in err and len(err.strip().splitlines()) == 1
    assert digest_files(ahead) == before

    behind = tmp_path / "behind"
    partial_run(behind, steps=100, stop_at=40)
    checkpoint_40 = (behind / CHECKPOINT_NAME).read_bytes()
    model = build_model(config, behind, resume=True)
    while model.steps < 57:
        model.step()
    model.record.flush()
    model.close()  # rows to 57, checkpoint at 40
    (behind / CHECKPOINT_NAME).write_bytes(checkpoint_40)
    assert main(["--resume", str(behind), "--quiet"]) == 0
    assert "re-runs steps 41..57" in capsys.readouterr().err
    reference = tmp_path / "reference"
    assert main([*FAST, "--steps", "100", "--out", str(reference)]) == 0
    assert_same_rows(behind, reference)


def test_a_resume_may_choose_its_device_and_threads_anew(tmp_path, capsys):
    run_dir = tmp_path / "run"
    partial_run(run_dir, steps=50, stop_at=30)
    # what a `--resume --threads 2` killed before its first checkpoint leaves: config.yaml and the record say 2
    config_file = run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("threads: null", "threads: 2"))
    with h5py.File(run_dir / "run.h5", "r+") as f:
        f.attrs["config"] = f.attrs["config"].replace('"threads": null', '"threads": 2')
    assert main(["--resume", str(run_dir), "--quiet"]) == 0
    assert main(["--resume", str(run_dir), "--quiet"]) == 0 and "already complete" in capsys.readouterr().out


# --- 7. SIGTERM and SIGINT: finish the step, flush, checkpoint, exit 143/130 -----------------------------------------
@pytest.mark.slow  # starts sim.run processes
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_checkpoints_and_resume_is_bit_identical(tmp_path, signum, status):
    args = [*FAST, "--steps", "4000", "--seed", "5", "--set", "record.snapshot_every=1000"]
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", *args, "--out", str(run_dir)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run_dir / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and f"resume with: python -m sim.run --resume {run_dir}" in err
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert 0 < state["step"] < 4000 and state["step"] % 1000 != 0  # written at the stop, not a snapshot's
    with open_record(run_dir) as f:
        assert len(read_group(f, "steps")["step"]) == state["step"]

    assert run_cli("--resume", str(run_dir), "--quiet").returncode == 0
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    assert_same_rows(run_dir, full)
    resumed, uninterrupted = load_checkpoint(run_dir / CHECKPOINT_NAME), load_checkpoint(full / CHECKPOINT_NAME)
    assert torch.equal(resumed["weights"], uninterrupted["weights"])


@pytest.mark.slow  # starts sim.run processes
def test_a_second_signal_exits_at_once_without_a_traceback_and_keeps_a_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", *FAST, "--steps", "100000", "--out", str(run_dir)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run_dir / CHECKPOINT_NAME).exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    load_checkpoint(run_dir / CHECKPOINT_NAME)
    with open_record(run_dir) as f:
        read_group(f, "steps")


# --- 11. the page serves replays only from its runs directory --------------------------------------------------------
def test_the_page_replays_only_records_under_its_runs_directory(small_run, tmp_path, monkeypatch):
    from sim.replay import RUNS_ENV, check_replay_path, load_replay

    runs = tmp_path / "runs"
    inside = copy_run(small_run, runs / "a")
    outside = copy_run(small_run, tmp_path / "elsewhere")
    (runs / "link").symlink_to(outside)
    monkeypatch.setenv(RUNS_ENV, str(runs))
    assert load_replay(check_replay_path(inside)).steps[-1] == 60
    for path in (outside, runs / "link", runs / ".." / "elsewhere", "/etc/passwd"):
        with pytest.raises(RecordError, match="outside the runs directory this page serves"):
            check_replay_path(path)
    monkeypatch.delenv(RUNS_ENV)
    monkeypatch.chdir(tmp_path)
    assert check_replay_path("runs/a") == inside.resolve()  # the default: runs/ of the working directory
    with pytest.raises(RecordError):
        check_replay_path("elsewhere")


# --- 10. sizes beyond the machine are refused before anything is allocated ------------------------------------------
@pytest.mark.parametrize(
    ("setting", "words"),
    [("organism.width=100000", "bank"), ("particle.hidden=10000", "bank"), ("task.batch_size=1000000000", "batch"),
     ("particle.weight_interface=1000000", "coordinates")],
)  # fmt: skip
def test_a_config_that_cannot_fit_memory_is_refused_at_once(tmp_path, capsys, setting, words):
    out = tmp_path / "run"
    started = time.monotonic()
    assert main([*FAST, "--steps", "3", "--set", setting, "--out", str(out)]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and f"({words}:" in err[0] and setting.split("=")[0] in err[0]
    assert not out.exists()


# --- 9. `--resume DIR --steps N` extends a run, bit-identically to a run of N steps from the start -------------------
# intervals that 20 is no multiple of: the 20-step run logs and snapshots its last step only because it is the last
EXTEND = ["--quiet", "--set", "record.log_every=3", "--set", "record.snapshot_every=7"]
EXTENDED = {
    "arithmetic with events": ["--task", "arithmetic", "--set", "events.noise=0.02", "--set", "events.attack=0.01"],
    "arithmetic with the gate opening": ["--task", "arithmetic", "--set", "train.task_first_window=4",
                                         "--set", "train.task_first_threshold=0.25"],
}  # fmt: skip


def assert_same_run(a: Path, b: Path) -> None:
    """Every dataset of two records (wall times aside) and every checkpoint entry but the run's identity equal."""
    assert_same_rows(a, b)
    with open_record(a) as fa, open_record(b) as fb:
        for name in fa["topology"]:
            np.testing.assert_array_equal(fa["topology"][name][()], fb["topology"][name][()], err_msg=name)
        assert read_attrs(fa)["config"] == read_attrs(fb)["config"]
    sa, sb = load_checkpoint(a / CHECKPOINT_NAME), load_checkpoint(b / CHECKPOINT_NAME)
    for key in CHECKPOINT_KEYS:
        if key not in ("run_id",):
            same = torch.equal(sa[key], sb[key]) if isinstance(sa[key], torch.Tensor) else sa[key] == sb[key]
            assert same, key
    assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()


@pytest.mark.parametrize("run", list(EXTENDED))
def test_resume_with_more_steps_extends_a_finished_run_bit_identically(tmp_path, capsys, run):
    args = [*EXTEND, *EXTENDED[run]]
    extended, full = tmp_path / "extended", tmp_path / "full"
    assert main([*args, "--steps", "20", "--out", str(extended)]) == 0
    with open_record(extended) as f:  # the extras of its last step, which a 40-step run does not have
        assert read_group(f, "particles")["step"][-1] == 20 and read_group(f, "snapshots")["step"][-1] == 20
    capsys.readouterr()
    assert main(["--resume", str(extended), "--steps", "40", "--quiet"]) == 0
    assert "20 steps (steps 21-40 of a resumed run) in" in capsys.readouterr().out  # its rate counts these 20 only
    assert main([*args, "--steps", "40", "--out", str(full)]) == 0
    with open_record(full) as f:
        assert 20 not in read_group(f, "particles")["step"]
        if "events" in run:
            assert read_group(f, "events")["step"].size > 0
        if "gate" in run:
            active = read_group(f, "steps")["sr_active"]
            assert not active[0] and active[-1]  # the gate opened during the run
    assert_same_run(extended, full)
    assert is_complete(extended)


def test_resume_refuses_fewer_steps_and_takes_equal_steps_as_a_plain_resume(small_run, tmp_path, capsys):
    run_dir = copy_run(small_run, tmp_path / "run")
    before = digest_files(run_dir)
    assert main(["--resume", str(run_dir), "--steps", "59", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps 59 is fewer than the 60 steps" in err[0] and "not shortened" in err[0]
    assert main(["--resume", str(run_dir), "--steps", "60", "--quiet"]) == 0
    assert "already complete (60 steps)" in capsys.readouterr().out
    assert digest_files(run_dir) == before


def test_an_extension_stopped_part_way_resumes_as_the_extension(tmp_path, capsys):
    full = tmp_path / "full"
    assert main([*FAST, "--steps", "90", "--out", str(full)]) == 0
    # killed after the extension replaced the checkpoint, before it touched the record and config.yaml ...
    early = tmp_path / "early"
    assert main([*FAST, "--steps", "50", "--out", str(early)]) == 0
    state = load_checkpoint(early / CHECKPOINT_NAME)
    save_checkpoint(early / CHECKPOINT_NAME, extended_checkpoint(early, state, 90))
    # ... or after it rewrote the record, before config.yaml
    late = copy_run(early, tmp_path / "late")
    model = build_model(from_dict(load_checkpoint(late / CHECKPOINT_NAME)["config"]), late, resume=True)
    model.close()
    with open_record(late) as f:
        assert read_attrs(f)["config"]["steps"] == 90 and "steps: 50" in (late / "config.yaml").read_text()
    # an interrupted run (stopped at step 30 of 50) extended straight away
    stopped = tmp_path / "stopped"
    partial_run(stopped, steps=50, stop_at=30)
    assert main(["--resume", str(stopped), "--steps", "90", "--quiet"]) == 0
    for run_dir in (early, late):
        assert main(["--resume", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    for run_dir in (early, late, stopped):
        assert_same_run(run_dir, full)


# --- analysis command lines: output paths of the wrong kind are refused before anything is read ----------------------
ANALYSIS_RUN_SCRIPTS = ("connectivity", "pruning", "robustness", "soup", "specialisation", "trajectories")
WRONG_OUTPUTS = [
    *[(f"analysis.{name}", ["RUN", "--json", "DIR"], "--json") for name in ANALYSIS_RUN_SCRIPTS],
    *[(f"analysis.{name}", ["RUN", "--out", "FILE"], "--out") for name in (*ANALYSIS_RUN_SCRIPTS, "report", "export")],
    ("analysis.pruning_study", ["RUN", "--out", "FILE"], "--out"),
    ("analysis.pruning_study", ["RUN", "--json", "DIR"], "--json"),
    ("analysis.known_fixpoint", ["--out", "FILE"], "--out"),
]


@pytest.mark.parametrize(("module", "args", "flag"), WRONG_OUTPUTS)
def test_every_analysis_refuses_an_output_of_the_wrong_kind_on_one_line(small_run, tmp_path, capsys, module, args,
                                                                         flag):  # fmt: skip
    import importlib

    a_file, a_dir = tmp_path / "a-file", tmp_path / "a-dir"
    a_file.write_text("kept")
    a_dir.mkdir()
    before = digest_files(small_run)
    places = {"RUN": str(small_run), "FILE": str(a_file), "DIR": str(a_dir)}
    assert importlib.import_module(module).main([places.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and ("existing file" in err[0] or "is a directory" in err[0]), err
    assert a_file.read_text() == "kept" and not any(a_dir.iterdir()) and digest_files(small_run) == before


# --- a huge --steps starts at once, as any run does ------------------------------------------------------------------
@pytest.mark.slow
def test_a_huge_step_count_starts_at_once_and_stops_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sim.run", "--task", "arithmetic", "--steps", "1e12", "--out",
                             str(run_dir)], cwd=ROOT, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = proc.stderr.readline()  # a progress line after the first log interval (stderr is not a terminal)
        assert first.startswith("step ") and "/1000000000000 " in first, first
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert state["config"]["steps"] == 10**12 and 0 < state["step"] < 10**12
