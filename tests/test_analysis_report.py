"""analysis.report: one run, several runs (mean, sd, t-interval), a sweep directory, and the errors of every script."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis import group_report, pruning, report
from analysis.report_format import fmt
from sim.record import GROUPS
from sim.run import main as sim_run

ROOT = Path(__file__).resolve().parents[1]
T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student t quantiles for 2 and 3 degrees of freedom
DRAWS = ["--draws", "10"]


def record_last_row(run_dir: Path) -> dict:
    with h5py.File(run_dir / "run.h5", "r", swmr=True) as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["kind_names"]]
        return {
            "kind_counts": dict(zip(names, f["particles/kind_counts"][-1].tolist())),
            "held_out_metric": float(f["particles/held_out_metric"][-1]),
            "step": int(f["particles/step"][-1]),
        }


def images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def check_figures_referenced(out: Path) -> None:
    """Every PNG under `out` is embedded by exactly one report.md beside or above it, and every embedded file exists."""
    referenced = set()
    for md in out.rglob("report.md"):
        for link in images(md.read_text()):
            path = (md.parent / link).resolve()
            assert path.is_file(), f"{md} embeds a missing {link}"
            referenced.add(path)
    pngs = {p.resolve() for p in out.rglob("*.png")}
    assert pngs and pngs == referenced


@pytest.fixture(scope="module")
def seed_runs(arithmetic_run, tmp_path_factory):
    """Three arithmetic runs of different seeds (the fixture's, and two shorter ones)."""
    root = tmp_path_factory.mktemp("seeds")
    runs = [arithmetic_run]
    for seed in (1, 2):
        out = root / f"arith-s{seed}"
        assert sim_run(["--quiet", "--task", "arithmetic", "--steps", "100", "--seed", str(seed), "--out", str(out),
                        "--set", "record.snapshot_every=50"]) == 0  # fmt: skip
        runs.append(out)
    return runs


@pytest.fixture(scope="module")
def single(arithmetic_run, tmp_path_factory):
    """The full report of a copy of the arithmetic fixture, written to its default place."""
    run = tmp_path_factory.mktemp("single") / "arith"
    shutil.copytree(arithmetic_run, run)
    assert report.main([str(run), *DRAWS]) == 0
    return run, run / "report"


@pytest.mark.slow  # a whole report (tests/test_report_page.py keeps one in the inner loop)
def test_single_run_report_embeds_every_figure(single):
    _, out = single
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    check_figures_referenced(out)
    md = (out / "report.md").read_text()
    for name in report.SCRIPTS:
        assert f"(`analysis.{name}`)" in md  # a section per script, run or skipped with its reason


@pytest.mark.slow  # a whole report (tests/test_report_page.py keeps one in the inner loop)
def test_single_run_summary_matches_record_and_pruning_json(single):
    run, out = single
    summary = json.loads((out / "summary.json").read_text())
    headline = summary["headline"]
    last = record_last_row(run)
    for kind, count in last["kind_counts"].items():
        assert headline[f"final.kind_counts.{kind}"] == count
    assert headline["final.held_out_metric"] == last["held_out_metric"]
    assert headline["final.step"] == last["step"] and summary["complete"] is True
    numbers = json.loads((out / "pruning.json").read_text())
    assert summary["scripts"]["pruning"]["status"] == "done"
    assert headline["pruning.metric_full"] == numbers["metric_full"]
    for kind, d in numbers["dropout"].items():
        assert headline[f"pruning.dropout.{kind}.metric"] == d["metric"]
        assert headline[f"pruning.dropout.{kind}.count"] == d["count"]
    for key in ("self_replicators", "pure_self_replicators", "l1", "magnitude", "contribution", "random_mean"):
        assert headline[f"pruning.equal_sparsity.{key}"] == numbers["equal_sparsity"][key]
    # the report states the dropout finding with these numbers
    md = (out / "report.md").read_text()
    n_sr = numbers["dropout"].get("self_replicator", {}).get("count")
    if n_sr:
        sentence = (f"Dropping all {n_sr} self-replicators leaves the held-out MAE at "
                    f"{fmt(numbers['equal_sparsity']['self_replicators'])} vs "
                    f"{fmt(numbers['metric_full'])} full, both in float64 (within 1% or the float32 floor "
                    f"{numbers['metric_floor']:.2g}: ")  # fmt: skip
        assert sentence in md
    assert "### The pure threshold (0.01)" in md


@pytest.mark.slow  # a whole report (tests/test_report_page.py keeps one in the inner loop)
def test_pruning_json_of_the_report_equals_the_script(single, tmp_path):
    run, out = single
    path = tmp_path / "p.json"
    assert pruning.main([str(run), "--out", str(tmp_path), "--json", str(path), *DRAWS]) == 0
    assert json.loads(path.read_text()) == json.loads((out / "pruning.json").read_text())


@pytest.mark.slow  # whole reports over several runs
def test_several_runs_aggregate_mean_sd_and_t_interval(seed_runs, tmp_path, capsys):
    assert report.main([*map(str, seed_runs), *DRAWS]) == 2
    assert "need --out" in capsys.readouterr().err
    out = tmp_path / "group"
    assert report.main([*map(str, seed_runs), "--out", str(out), "--only", "pruning", *DRAWS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    per_run = [json.loads((out / r["label"] / "summary.json").read_text())["headline"] for r in summary["runs"]]
    assert len(per_run) == 3
    for run_dir, headline in zip(seed_runs, per_run):
        last = record_last_row(run_dir)
        assert headline["final.kind_counts.self_replicator"] == last["kind_counts"]["self_replicator"]
    checked = 0
    keys = ["final.held_out_metric", "final.kind_counts.self_replicator", "final.sr_loss_mean", "pruning.metric_full"]
    for key in [*keys, "pruning.equal_sparsity.random_mean", "pruning.equal_sparsity.magnitude"]:
        values = np.array([h[key] for h in per_run])
        s = summary["aggregate"][key]
        mean, sd = values.mean(), values.std(ddof=1)
        half = T_975[2] * sd / np.sqrt(3)
        assert s["n"] == 3 and s["values"] == pytest.approx(values.tolist())
        assert s["mean"] == pytest.approx(mean) and s["sd"] == pytest.approx(sd)
        assert s["ci95"] == pytest.approx([mean - half, mean + half])
        checked += sd > 0
    assert checked >= 3  # the seeds differ, so the intervals are not degenerate
    check_figures_referenced(out)
    assert {p.name for p in (out / "figures").iterdir()} == {
        "aggregate_over_time.png", "aggregate_pruning_curve.png", "aggregate_equal_sparsity.png"}  # fmt: skip
    md = (out / "report.md").read_text()
    assert "Dropping all self-replicators:" in md and "## Headline numbers" in md


def test_describe_against_numpy():
    values = [0.3, 0.5, 0.4, 0.9]
    s = group_report.describe(values)
    mean, sd = np.mean(values), np.std(values, ddof=1)
    assert s["mean"] == pytest.approx(mean) and s["sd"] == pytest.approx(sd)
    assert s["ci95"] == pytest.approx([mean - T_975[3] * sd / 2, mean + T_975[3] * sd / 2])
    one = group_report.describe([2.0])
    assert one["mean"] == 2.0 and one["sd"] is None and one["ci95"] is None


def test_bands_against_numpy():
    curves = np.array([[1.0, 10.0, 100.0], [2.0, 20.0, 50.0], [4.0, 5.0, 80.0]])
    mean, lo, hi = group_report.band(curves)
    half = T_975[2] * curves.std(axis=0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(mean, curves.mean(axis=0))
    np.testing.assert_allclose(hi - lo, 2 * half)
    gmean, glo, ghi = group_report.band(curves, log=True)
    np.testing.assert_allclose(gmean, 10 ** np.log10(curves).mean(axis=0))
    assert np.all(glo > 0) and np.all(glo < gmean) and np.all(gmean < ghi)


@pytest.mark.slow  # whole reports over several runs
def test_sweep_directory(seed_runs, tmp_path):
    sweep = tmp_path / "sweep"
    entries = []
    layout = [("train.alpha=0.5", 0, seed_runs[0]), ("train.alpha=0.5", 1, seed_runs[1]),
              ("train.alpha=1.0", 0, seed_runs[2])]  # fmt: skip
    for point, seed, source in layout:
        shutil.copytree(source, sweep / point / f"s{seed}")
        alpha = float(point.split("=")[1])
        entries.append({"point": point, "seed": seed, "params": {"train.alpha": alpha}, "run_dir": f"{point}/s{seed}",
                        "status": "done", "error": None})  # fmt: skip
    entries.append({"point": "train.alpha=1.0", "seed": 1, "params": {"train.alpha": 1.0},
                    "run_dir": "train.alpha=1.0/s1", "status": "failed", "error": "RuntimeError: boom"})  # fmt: skip
    entries.append({"point": "train.alpha=2.0", "seed": 0, "params": {"train.alpha": 2.0},
                    "run_dir": "train.alpha=2.0/s0", "status": "running", "error": None})  # fmt: skip
    index = {"base_config": {}, "grid": {"train.alpha": [0.5, 1.0, 2.0]}, "seeds": [0, 1], "runs": entries}
    (sweep / "sweep.json").write_text(json.dumps(index))
    assert report.main([str(sweep), "--only", "pruning", *DRAWS]) == 0
    out = sweep / "report"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"] == ["train.alpha"]
    points = {p["point"]: p for p in summary["points"]}
    assert [points[p]["n_runs"] for p in ("train.alpha=0.5", "train.alpha=1.0", "train.alpha=2.0")] == [2, 1, 0]
    headlines = [json.loads((out / "train.alpha=0.5" / f"s{s}" / "summary.json").read_text())["headline"]
                 for s in (0, 1)]  # fmt: skip
    for key in ("final.held_out_metric", "pruning.equal_sparsity.magnitude", "final.kind_counts.other"):
        values = np.array([h[key] for h in headlines])
        s = points["train.alpha=0.5"]["aggregate"][key]
        assert s["mean"] == pytest.approx(values.mean()) and s["sd"] == pytest.approx(values.std(ddof=1))
        assert s["ci95"][1] - s["ci95"][0] == pytest.approx(2 * 12.706204736174707 * values.std(ddof=1) / np.sqrt(2))
    assert points["train.alpha=1.0"]["aggregate"]["final.held_out_metric"]["sd"] is None
    not_counted = {(e["point"], e["seed"]): e for e in summary["not_counted"]}
    assert set(not_counted) == {("train.alpha=1.0", 1), ("train.alpha=2.0", 0)}
    assert not_counted[("train.alpha=1.0", 1)]["error"] == "RuntimeError: boom"
    md = (out / "report.md").read_text()
    assert "RuntimeError: boom" in md and "| train.alpha=2.0 | 0 | running |" in md
    assert (out / "figures" / "sweep_train.alpha.png").is_file()
    check_figures_referenced(out)


def test_malformed_sweep_index(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"runs": [{"point": "a"}]}')
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.json" in err and "run_dir" in err


# --- errors: every script, one line on stderr, exit status 2 ------------------------------------------------------


@pytest.fixture
def broken(arithmetic_run, tmp_path):
    """Copies of the arithmetic fixture, broken in different ways."""

    def make(how: str) -> Path:
        run = tmp_path / how
        if how == "not_a_run":
            run.mkdir()
            (run / "notes.txt").write_text("no record here")
            return run
        shutil.copytree(arithmetic_run, run)
        if how == "newer_schema":
            with h5py.File(run / "run.h5", "r+") as f:
                f.attrs["schema_version"] = 99
        elif how == "truncated":
            os.truncate(run / "run.h5", (run / "run.h5").stat().st_size // 2)
        elif how == "no_weights":
            (run / "checkpoint.pt").unlink()
            with h5py.File(run / "run.h5", "r+") as f:
                for dataset in f["snapshots"].values():
                    dataset.resize(0, axis=0)
                f["rows"][GROUPS.index("snapshots")] = 0  # its committed count agrees: no snapshot was ever written
        return run

    return make


MAINS = {"pruning": pruning.main, "report": report.main}


@pytest.mark.parametrize("script", MAINS)
@pytest.mark.parametrize("how, words", [
    ("not_a_run", "is not a run directory"),
    ("newer_schema", "has record schema 99, newer than"),
    # where the cut falls decides whether HDF5 refuses the file or a dataset read fails
    ("truncated", "is not a readable HDF5 record|is a corrupt or incomplete record|cannot read /"),
    ("missing", "is not a run directory"),
])  # fmt: skip
def test_bad_run_directories(script, how, words, broken, tmp_path, capsys):
    run = tmp_path / "does-not-exist" if how == "missing" else broken(how)
    assert MAINS[script]([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"analysis.{script}: error: ")
    assert any(w in err for w in words.split("|")), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_missing_data_is_named(broken, soup_run, tmp_path, capsys):
    run = broken("no_weights")
    assert pruning.main([str(run), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0 /snapshots rows" in err and "final weights (no checkpoint either)" in err
    # the report goes on and says in the report which data each skipped script lacked
    assert report.main([str(run), "--out", str(tmp_path / "r"), "--only", "pruning"]) == 0
    assert "0 /snapshots rows" in (tmp_path / "r" / "report.md").read_text()
    assert report.main([str(soup_run), "--out", str(tmp_path / "soup"), *DRAWS]) == 0
    md = (tmp_path / "soup" / "report.md").read_text()
    assert "soup run: pruning needs an organism with a task" in md
    summary = json.loads((tmp_path / "soup" / "summary.json").read_text())
    assert summary["scripts"]["pruning"]["status"] == "skipped"
    last = record_last_row(soup_run)
    assert all(summary["headline"][f"final.kind_counts.{k}"] == c for k, c in last["kind_counts"].items())
    if any((tmp_path / "soup").rglob("*.png")):
        check_figures_referenced(tmp_path / "soup")


def test_bad_report_options(arithmetic_run, tmp_path, capsys):
    assert report.main([str(arithmetic_run), "--out", str(tmp_path / "o"), "--draws", "3"]) == 2
    assert "--draws must be at least 10" in capsys.readouterr().err
    assert report.main([str(arithmetic_run), "--out", str(tmp_path / "o"), "--only", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_report_on_a_record_being_written(tmp_path):
    out = tmp_path / "live"
    command = [sys.executable, "-m", "sim.run", "--quiet", "--task", "arithmetic", "--steps", "1000000", "--out",
               str(out), "--set", "record.snapshot_every=100"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        assert report.main([str(out), "--out", str(tmp_path / "r"), "--only", "pruning", *DRAWS]) == 0
        assert proc.poll() is None  # the run went on while the report read its record
    finally:
        proc.kill()
        proc.wait()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["complete"] is False and summary["scripts"]["pruning"]["status"] == "done"
    assert "not complete (still being written, or stopped)" in (tmp_path / "r" / "report.md").read_text()
