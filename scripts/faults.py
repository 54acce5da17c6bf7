"""Fault injection: bad inputs, damaged files, kills and signals against the toolkit's command lines.

    python scripts/faults.py [--quick]

Each bad input runs a command line (`sim.run`, the `analysis` commands, `sim.sweep`) in a child process and counts
as handled cleanly when the command ends within 30 s with exit status 1 or 2, exactly one line on stderr, no
traceback, and every file of the damaged run unchanged; a damaged record that a command reads without complaint counts
as handled only when h5py reads every attribute and dataset of it as in the undamaged record (the damage hit bytes the
record does not use). Each kill/signal trial stops a live run (SIGKILL at a random moment, SIGTERM, SIGINT, two
SIGTERMs, two writers on one directory, a disk that fills) or extends a finished one (`--resume --steps`, once killed
on the way) and counts as intact when the record opens, the checkpoint loads and `--resume` ends with the same rows as
an uninterrupted run. A byte scan inverts 4 bytes at evenly spaced places of a record and reads each as the commands
do. The last line reads `N bad inputs tried, M handled cleanly; K kill/signal trials, J intact`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.record import CHECKPOINT_NAME, RECORD_NAME, load_checkpoint, open_record, read_group  # noqa: E402
from sim.rundir import LOCK_NAME  # noqa: E402

FAST = ["--task", "arithmetic", "--quiet", "--set", "record.log_every=5", "--set", "record.snapshot_every=20"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def command(
    module: str, *args: str, preexec: Callable | None = None, timeout: float = 30
) -> subprocess.CompletedProcess | None:
    """Run `python -m module args`; None when it did not end within `timeout` seconds (30: a bad input's limit)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired:
        return None


def digest(run_dir: Path) -> dict[str, str]:
    if not run_dir.is_dir():
        return {}
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.iterdir())
        if p.is_file() and p.name != LOCK_NAME
    }


def clean(result: subprocess.CompletedProcess | None) -> tuple[bool, str]:
    if result is None:
        return False, "no exit within 30 s"
    lines = result.stderr.strip().splitlines()
    if result.returncode not in (1, 2):
        return False, f"exit status {result.returncode}"
    if "Traceback" in result.stderr or len(lines) != 1:
        return False, f"{len(lines)} lines on stderr: {result.stderr.strip()[:200]!r}"
    return True, lines[0]


def truncate(size: int) -> Callable[[Path], None]:
    """Cut a file to `size` bytes (-1: to half its size; a size below -1: by that many bytes)."""

    def damage(path: Path) -> None:
        length = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size if size >= 0 else length // 2 if size == -1 else max(0, length + size))

    return damage


def invert(offset: int, count: int = 4) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        start = offset if offset >= 0 else len(data) // 2
        data[start : start + count] = bytes(255 - b for b in data[start : start + count])
        path.write_bytes(bytes(data))

    return damage


def set_attr(name: str, value: object) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f.attrs[name] = value

    return damage


def write_dataset(name: str, value: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            f[name][...] = value

    return damage


def invert_chunk(dataset: str) -> Callable[[Path], None]:
    """Four bytes inverted in the middle of the last stored chunk of `dataset` (data no command reads first)."""

    def damage(path: Path) -> None:
        with h5py.File(path, "r") as f:
            chunks = f[dataset].id
            info = chunks.get_chunk_info(chunks.get_num_chunks() - 1)
        invert(info.byte_offset + info.size // 2)(path)

    return damage


def content(path: Path) -> dict[str, object]:
    """Every attribute and dataset of an HDF5 file as read by h5py alone (no toolkit checks)."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            out[f"{name}@"] = repr(sorted((k, repr(v)) for k, v in obj.attrs.items()))
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()].tobytes()

        out["/@"] = repr(sorted((k, repr(v)) for k, v in f.attrs.items()))
        f.visititems(visit)
    return out


def same_content(path: Path, original: Path) -> bool:
    """Whether damage left everything the record holds as it was (it hit bytes the record does not use)."""
    try:
        return content(path) == content(original)
    except Exception:  # noqa: BLE001  (unreadable by h5py: the damage hit something the record uses)
        return False


def byte_scan(base: Path, work: Path, offsets: int) -> tuple[int, int, int]:
    """Four bytes inverted at `offsets` evenly spaced places of a record, each read as every command reads it
    (`open_record`, `verify_record`, the attributes): (refused, left the content as it was, read as if sound)."""
    from sim.record import RecordError, read_attrs, verify_record

    original = (base / RECORD_NAME).read_bytes()
    damaged = work / "scan" / RECORD_NAME
    damaged.parent.mkdir(exist_ok=True)
    refused = unchanged = undetected = 0
    for offset in np.linspace(0, len(original) - 4, offsets).astype(int):
        data = bytearray(original)
        data[offset : offset + 4] = bytes(255 - b for b in data[offset : offset + 4])
        damaged.write_bytes(bytes(data))
        try:
            with open_record(damaged.parent) as f:
                verify_record(f, damaged)
                read_attrs(f)
        except RecordError:
            refused += 1
            continue
        if same_content(damaged, base / RECORD_NAME):
            unchanged += 1
        else:
            undetected += 1
            print(f"FAIL byte scan: 4 bytes inverted at {offset} read as if sound")
    return refused, unchanged, undetected


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_inputs(work: Path, base: Path, other: Path) -> list[tuple[str, bool, str]]:
    """Every bad input, run; (name, handled cleanly, what happened)."""
    results = []
    (work / "bomb.yaml").write_text(
        'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n'
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9))
    )
    (work / "big.yaml").write_text("steps: 1\n" + "# padding\n" * 200_000)
    (work / "malformed.yaml").write_text("steps: [1,\n")
    (work / "afile").write_text("a file")
    (work / "adir").mkdir(exist_ok=True)
    (work / "sweep-bomb.yaml").write_text((work / "bomb.yaml").read_text() + "seeds: 2\n")
    (work / "sweep-seeds.yaml").write_text(
        "base: {task: {name: arithmetic}, steps: 3}\nseeds: [18446744073709551616]\n"
    )
    out = str(work / "out")
    cli = [
        ["--steps", "-5"],
        ["--steps", "2.5"],
        ["--steps", "abc"],
        ["--seed", "18446744073709551616"],
        ["--seed", "-1"],
        ["--task", "cifar"],
        ["--mode", "pond"],
        ["--set", "train.lr=nan"],
        ["--set", "train.lr=inf"],
        ["--set", "train.lr=abc"],
        ["--set", "organism.width=0"],
        ["--set", "justakey"],
        ["--set", "train.nope=1"],
        ["--set", "events.noise_sigma=-inf"],
        ["--config", "missing.yaml"],
        ["--config", "/dev/zero"],
        ["--config", str(work / "bomb.yaml")],
        ["--config", str(work / "big.yaml")],
        ["--config", str(work / "malformed.yaml")],
        ["--config", str(work / "adir")],
        ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"],
        ["--task", "mnist", "--set", "task.data_dir=/nonexistent"],
        ["--resume", str(work / "nowhere")],
    ]
    for args in cli:
        result = command("sim.run", "--task", "arithmetic", "--steps", "3", "--out", out, *args)
        ok, what = clean(result)
        ok = ok and not Path(out).exists()
        results.append(("sim.run " + " ".join(args)[:60], ok, what))
    for target in ("afile", "/proc/organism-run", "/sys/organism-run", "afile/below", "a" * 300):
        path = target if target.startswith("/") else str(work / target)
        ok, what = clean(command("sim.run", *FAST, "--steps", "3", "--out", path))
        results.append((f"sim.run --out {target[:40]}", ok, what))
    for name in ("sweep-bomb.yaml", "sweep-seeds.yaml"):
        ok, what = clean(command("sim.sweep", str(work / name), "--out", str(work / "sweep"), "--quiet"))
        results.append((f"sim.sweep {name}", ok, what))

    record_damage = {
        "record empty": truncate(0),
        "record 100 bytes": truncate(100),
        "record 512 bytes": truncate(512),
        "record 2048 bytes": truncate(2048),
        "record cut by 1000 bytes": truncate(-1000),
        "record cut by 10 bytes": truncate(-10),
        "record half": truncate(-1),
        "record inverted at 0": invert(0),
        "record inverted at 8": invert(8),
        "record inverted at 100": invert(100),
        "record inverted at 1000": invert(1000),
        "record inverted in the middle": invert(-1, 64),
        "schema_version a string": set_attr("schema_version", "1"),
        "layer_sizes wrong": set_attr("layer_sizes", "[2, 5, 1]"),
        "config not JSON": set_attr("config", "{nope"),
        "checkpoint attribute outside": set_attr("checkpoint", f"../{other.name}/checkpoint.pt"),
        "kind codes out of range": write_dataset("particles/kind", 42),
        "a snapshot's chunk damaged": invert_chunk("snapshots/weights"),
        "the particle graph's chunk damaged": invert_chunk("topology/edges"),
        "the committed row counts damaged": invert_chunk("rows"),
        "metrics all NaN": write_dataset("particles/held_out_metric", np.nan),
    }
    checkpoint_damage = {
        "checkpoint random bytes": lambda p: p.write_bytes(os.urandom(5000)),
        "checkpoint text": lambda p: p.write_text("hello"),
        "checkpoint empty": lambda p: p.write_bytes(b""),
        "checkpoint inverted": invert(-1, 64),
        "checkpoint truncated": truncate(-1),
        "checkpoint weights changed": lambda p: torch.save(
            {**torch.load(p, weights_only=True), "weights": torch.zeros(18, 21)}, p
        ),
        "checkpoint runs code": lambda p: torch.save({"weights": RunsCode(work / "code-ran")}, p),
        "checkpoint of another seed": lambda p: shutil.copy(other / CHECKPOINT_NAME, p),
        "config.yaml edited": lambda p: (p.parent / "config.yaml").write_text(
            (p.parent / "config.yaml").read_text().replace("lr: 0.004", "lr: 0.01")
        ),
    }
    cases = [(n, RECORD_NAME, d) for n, d in record_damage.items()]
    cases += [(n, CHECKPOINT_NAME, d) for n, d in checkpoint_damage.items()]
    for name, file, damage in cases:
        run_dir = work / "damaged"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base, run_dir)
        damage(run_dir / file)
        before = digest(run_dir)
        for module, args in (
            ("sim.run", ["--resume", str(run_dir), "--quiet"]),
            ("analysis.report", [str(run_dir), "--out", str(work / "report")]),
        ):
            result = command(module, *args)
            ok, what = clean(result)
            if result is not None and result.returncode == 0 and name in ("metrics all NaN",):
                ok, what = True, "reported (NaN metrics are data, not damage)"
            elif result is not None and result.returncode == 0 and same_content(run_dir / file, base / file):
                ok, what = True, "ran: the damage hit bytes the record does not use (its content is unchanged)"
            ok = ok and digest(run_dir) == before and not (work / "code-ran").exists()
            results.append((f"{module} on {name}", ok, what))
    before = digest(base)
    for module in ("pruning", "connectivity", "robustness", "specialisation", "trajectories", "soup", "report",
                   "export"):  # fmt: skip
        flags = [["--out", "afile"]] + ([] if module in ("report", "export") else [["--json", "adir"]])
        for flag, place in flags:
            ok, what = clean(command(f"analysis.{module}", str(base), flag, str(work / place)))
            ok = ok and (work / "afile").read_text() == "a file" and not any((work / "adir").iterdir())
            results.append((f"analysis.{module} {flag} {place}", ok, what))
    for args in (["--steps", "59"], ["--steps", "-1"]):  # shorter than the finished run of 60 steps
        ok, what = clean(command("sim.run", "--resume", str(base), *args, "--quiet"))
        results.append((f"sim.run --resume {' '.join(args)}", ok and digest(base) == before, what))
    return results


def same_rows(a: Path, b: Path) -> bool:
    with open_record(a) as fa, open_record(b) as fb:
        for group in ("steps", "particles", "snapshots", "events"):
            ra, rb = read_group(fa, group), read_group(fb, group)
            for key in ra:
                if key != "wall_time" and not np.array_equal(ra[key], rb[key]):
                    return False
    return True


def intact_after_resume(run_dir: Path, reference: Path, *extra: str) -> bool:
    """Whether the record opens, the checkpoint loads and `--resume` (with `extra` flags) ends with the reference's
    rows."""
    try:
        with open_record(run_dir) as f:
            read_group(f, "steps")
        if (run_dir / CHECKPOINT_NAME).exists():
            load_checkpoint(run_dir / CHECKPOINT_NAME)
            result = command("sim.run", "--resume", str(run_dir), *extra, "--quiet", timeout=600)
            if result is None or result.returncode != 0:
                return False
        else:  # killed before its first checkpoint: a fresh run must be possible
            shutil.rmtree(run_dir)
            if command("sim.run", *ARGS, "--out", str(run_dir), timeout=600).returncode != 0:
                return False
        return same_rows(run_dir, reference)
    except Exception:  # noqa: BLE001  (any failure to read or resume is a trial that did not stay intact)
        return False


ARGS = [*FAST, "--steps", "3000", "--seed", "11", "--set", "record.snapshot_every=200"]


def start(run_dir: Path, preexec: Callable | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.run", *ARGS, "--out", str(run_dir)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)


def trials(work: Path, reference: Path, quick: bool) -> list[tuple[str, bool]]:
    out = []
    rng = random.Random(0)
    kills = 3 if quick else 8
    for i in range(kills):
        run_dir = work / f"kill{i}"
        proc = start(run_dir)
        wait_for(run_dir / RECORD_NAME)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()
        proc.communicate()
        out.append((f"SIGKILL {i}", intact_after_resume(run_dir, reference)))
    for i, (signals, status) in enumerate(
        [
            ((signal.SIGTERM,), 143),
            ((signal.SIGINT,), 130),
            ((signal.SIGTERM, signal.SIGTERM), 143),
            ((signal.SIGINT, signal.SIGINT), 130),
        ]
    ):
        run_dir = work / f"signal{i}"
        proc = start(run_dir)
        wait_for(run_dir / CHECKPOINT_NAME)
        time.sleep(rng.uniform(0.0, 1.0))
        for signum in signals:
            proc.send_signal(signum)
        _, err = proc.communicate()
        ok = proc.returncode == status and "Traceback" not in err
        out.append(
            (f"{'+'.join(signal.Signals(s).name for s in signals)}", ok and intact_after_resume(run_dir, reference))
        )
    for i in range(2 if quick else 5):
        run_dir = work / f"pair{i}"
        procs = [start(run_dir), start(run_dir)]
        codes = sorted(p.wait() for p in procs)
        for p in procs:
            p.communicate()
        out.append((f"two writers {i}", codes == [0, 2] and same_rows(run_dir, reference)))
    # a finished run of 1234 steps (its last step off both intervals) extended to the reference's 3000; then one
    # such extension killed at a random moment and resumed
    short = [("1234" if a == "3000" else a) for a in ARGS]
    for i, kill in enumerate((False, True)):
        run_dir = work / f"extend{i}"
        made = command("sim.run", *short, "--out", str(run_dir), timeout=600)
        extend = [sys.executable, "-m", "sim.run", "--resume", str(run_dir), "--steps", "3000", "--quiet"]
        proc = subprocess.Popen(extend, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kill:
            time.sleep(rng.uniform(0.5, 3.0))
            proc.kill()
        _, err = proc.communicate()
        ok = made is not None and made.returncode == 0 and (kill or proc.returncode == 0)
        name = "SIGKILL during an extension" if kill else "extension of a finished run (1234 -> 3000 steps)"
        # a killed extension is finished by its own command again (a kill before it replaced the checkpoint leaves
        # the shorter run, which a plain --resume rightly calls complete)
        out.append((name, ok and intact_after_resume(run_dir, reference, "--steps", "3000")))
    run_dir = work / "full-disk"
    limit = 150_000

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = start(run_dir, preexec=cap)
    _, err = proc.communicate()
    ok = proc.returncode == 1 and len(err.strip().splitlines()) == 1 and "run.h5" in err
    out.append(("full disk (file size limit)", ok and intact_after_resume(run_dir, reference)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer kill trials")
    parser.add_argument("--verbose", action="store_true", help="one line per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        base, other, reference = work / "base", work / "other", work / "reference"
        for run_dir, seed, steps in ((base, "0", "60"), (other, "9", "60")):
            made = command("sim.run", *FAST, "--steps", steps, "--seed", seed, "--out", str(run_dir), timeout=600)
            assert made is not None and made.returncode == 0
        assert command("sim.run", *ARGS, "--out", str(reference), timeout=600).returncode == 0
        inputs = bad_inputs(work, base, other)
        scan = byte_scan(base, work, 100 if args.quick else 400)
        kills = trials(work, reference, args.quick)
    for name, ok, what in inputs:
        if args.verbose or not ok:
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {what}")
    for name, ok in kills:
        if args.verbose or not ok:
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(
        f"record byte scan: 4 bytes inverted at {sum(scan)} places, {scan[0]} refused, {scan[1]} in bytes the record "
        f"does not use (content unchanged), {scan[2]} read as if sound"
    )
    handled = sum(ok for _, ok, _ in inputs)
    intact = sum(ok for _, ok in kills)
    print(
        f"{len(inputs)} bad inputs tried, {handled} handled cleanly; {len(kills)} kill/signal trials, {intact} intact"
    )
    return 0 if handled == len(inputs) and intact == len(kills) and not scan[2] else 1


if __name__ == "__main__":
    sys.exit(main())
