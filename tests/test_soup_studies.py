"""Soups: lineages from event logs, the soup report, the known fixpoint, the default soup that lives, and the three
literature studies (`examples/soup_*.yaml`, the known fixpoint) at reduced size with their reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
import yaml

from analysis import known_fixpoint, report, robustness
from analysis.common import load_run
from analysis.soup import (
    EventLog,
    analyse,
    counts_per_step,
    largest_lineage,
    report_body,
    report_findings,
    trace_lineages,
)
from sim.config import build_config
from sim.events import EVENT_NAMES
from sim.particles import SELF_REPLICATOR, ParticleSpec, classify
from sim.run import main as run_main
from sim.soup import SoupModel
from sim.sweep import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]
CODE = {name: code for code, name in enumerate(EVENT_NAMES)}


# --- lineages -------------------------------------------------------------------------------------------------------


def log_of(rows: list[tuple[int, str, int, int]]) -> EventLog:
    steps, kinds, sources, targets = zip(*[(s, CODE[k], a, b) for s, k, a, b in rows])
    return EventLog(np.array(steps), np.array(kinds), np.array(sources), np.array(targets), list(EVENT_NAMES))


def test_lineages_of_a_hand_built_event_log():
    log = log_of([
        (1, "attack", 1, 2), (1, "attack", 2, 3),  # simultaneous: 3 takes 2's lineage from before the block (2)
        (1, "replicate", 0, 1),                     # 1 now descends from 0
        (2, "melt", 1, 3), (2, "respawn", 0, 0),    # melt keeps 3's lineage; respawn gives 0 a new one (4)
        (2, "learn_from", 2, 3),                    # 3 imitates 2, whose lineage is 1's first founder
        (4, "noise", 1, 1), (4, "replicate", 3, 0), (4, "replicate", 0, 2),  # 2 takes 0's pre-block lineage (4)
    ])  # fmt: skip
    lineages = trace_lineages(log, 4, np.array([0, 1, 2, 3, 4]))
    assert lineages.labels.tolist() == [
        [0, 1, 2, 3],  # before any event
        [0, 0, 1, 2],
        [4, 0, 1, 1],
        [4, 0, 1, 1],  # step 3 had no events
        [1, 0, 4, 1],
    ]
    assert lineages.parent.tolist() == [3, 0, 0, 2]  # the source of each particle's last lineage event
    assert largest_lineage(lineages.labels).tolist() == [1, 2, 2, 2, 2]
    members = np.array([[True, True, False, False]] * 5)
    assert largest_lineage(lineages.labels, members).tolist() == [1, 2, 1, 1, 1]
    counts = counts_per_step(log, 4)
    assert counts.shape == (5, len(EVENT_NAMES)) and counts.sum() == 9
    assert counts[1, CODE["attack"]] == 2 and counts[4, CODE["replicate"]] == 2 and counts[3].sum() == 0


# --- the soup record and report -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lineage_soup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 60-particle soup where self-replicators replicate often (so lineages grow), and the CLI's output."""
    out = tmp_path_factory.mktemp("soup") / "run"
    args = ["--mode", "soup", "--steps", "150", "--quiet", "--out", str(out), "--set", "soup.size=60",
            "--set", "train.lr=0.04", "--set", "events.replicate=0.3", "--set", "events.learn_from=0.05"]  # fmt: skip
    return out, args


def test_end_summary_and_soup_report_count_the_recorded_events(lineage_soup, capsys, tmp_path):
    out, args = lineage_soup
    assert run_main(args) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("events: "))
    printed_counts = {k: int(v) for k, v in (item.split("=") for item in line[len("events: ") :].split(", "))}
    assert list(printed_counts) == list(EVENT_NAMES)
    run = load_run(out)
    srs = int(run.particles["kind_counts"][-1][SELF_REPLICATOR])
    assert f"self-replicators at the end: {srs}" in printed and srs > 0
    result = analyse(run, tmp_path, None)
    numbers = result.to_json()
    assert numbers["event_totals"] == printed_counts
    assert printed_counts["replicate"] > 0 and printed_counts["learn_from"] > 0
    assert result.figures[0].is_file()
    lineages = numbers["lineages"]
    founders = dict(map(tuple, lineages["self_replicator_founders"]))
    assert len(founders) == srs and lineages["largest_at_end"] >= lineages["largest_self_replicator_lineage_at_end"]
    assert lineages["largest_ever"] > 1  # replication made at least one lineage grow
    top = lineages["top"][0]
    assert f"| {top['founder']} | {top['size']} | {top['self_replicators']} |" in "\n".join(
        report_body(run, result, tmp_path)
    )
    assert f"the largest {lineages['largest_at_end']} particles strong" in report_findings(run, result)[0]


def test_event_counts_survive_a_resume(tmp_path):
    config = build_config(overrides=[("mode", "soup"), ("soup.size", 20), ("steps", 30),
                                     ("record.snapshot_every", 10)])  # fmt: skip
    for name in ("whole", "part"):
        (tmp_path / name).mkdir()
    whole = SoupModel(config, run_dir=tmp_path / "whole", agents=False)
    while whole.steps < 30:
        whole.step()
    whole.close()
    part = SoupModel(config, run_dir=tmp_path / "part", agents=False)
    while part.steps < 20:
        part.step()
    part.close()
    resumed = SoupModel(config, run_dir=tmp_path / "part", resume=True, agents=False)
    while resumed.steps < 30:
        resumed.step()
    resumed.close()
    assert torch.equal(resumed.event_counts, whole.event_counts) and int(whole.event_counts.sum()) > 0


# --- the default soup lives -----------------------------------------------------------------------------------------


def soup_end(seed: int, *overrides: tuple[str, object]) -> dict[str, int]:
    """Kind counts at the end of a 100-particle soup, 300 steps, run ten times faster than the default soup: ten
    times the learning rate and ten times every event rate."""
    settings = [("mode", "soup"), ("soup.size", 100), ("steps", 300), ("seed", seed), ("record.log_every", 300),
                ("train.lr", 0.04), ("events.replicate", 0.2), *overrides]  # fmt: skip
    model = SoupModel(build_config(overrides=settings), agents=False)
    while model.steps < 300:
        model.step()
    return model.summary["kind_counts"]


@pytest.mark.slow  # four soups of 300 steps: a study, not a unit
def test_the_default_soup_keeps_self_replicators_where_the_old_one_collapses_to_zero():
    default = build_config(overrides=[("mode", "soup")]).events
    assert default.respawn_zero and default.attack == default.melt == 0.005  # what the scaled soups below stand for
    for seed in (0, 1, 2):
        lives = soup_end(seed, ("events.attack", 0.05), ("events.melt", 0.05))
        assert lives["self_replicator"] > 0 and lives["zero"] == 0, lives
    # the old defaults: attack and melt 0.01, zero particles not respawned
    old = soup_end(0, ("events.attack", 0.1), ("events.melt", 0.1), ("events.respawn_zero", False))
    assert old["self_replicator"] == 0 and old["zero"] > 50, old


# --- the known fixpoint ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "h"), [(4, 2), (5, 3), (5, 5)])
def test_the_identity_particle_is_an_exact_self_replicator_for_the_whole_cap(k, h):
    spec = ParticleSpec(k, h)
    identity = known_fixpoint.identity_particle(spec)
    assert classify(identity.unsqueeze(0), spec).tolist() == [SELF_REPLICATOR]
    assert reference.kind(reference.ReferenceParticle.from_row(identity, k, h)) == "self_replicator"
    times = known_fixpoint.iterate(identity.unsqueeze(0), spec, 100, 1e-4)
    assert times.fixpoint.tolist() == [100] and times.vergence.tolist() == [100]


def plain_times(weights: torch.Tensor, k: int, h: int, cap: int, tolerance: float) -> tuple[int, int]:
    """Time to vergence and as fixpoint of one copy by the per-particle reference, as the literature counts them."""
    particle = reference.ReferenceParticle.from_row(weights, k, h)
    vergence = fixpoint = 0
    still = True
    for _ in range(cap):
        particle = reference.ReferenceParticle.from_row(
            torch.tensor(reference.self_application(particle), dtype=torch.float64), k, h
        )
        kind = reference.kind(particle, eps=tolerance)
        if kind in ("zero", "divergent"):
            break
        if kind == "self_replicator" and still:
            fixpoint += 1
        elif kind != "self_replicator":
            still = False
        vergence += 1
    return vergence, fixpoint


def test_known_fixpoint_times_match_a_per_particle_loop():
    spec = ParticleSpec(4, 2)
    bank = known_fixpoint.noisy_identities(spec, [1e-1, 1e-5, 1e-9], 4, torch.Generator().manual_seed(1))
    times = known_fixpoint.iterate(bank, spec, 40, 1e-4)
    expected = [plain_times(row, 4, 2, 40, 1e-4) for row in bank]
    assert list(zip(times.vergence.tolist(), times.fixpoint.tolist())) == expected
    assert times.vergence[:4].max() < times.vergence[8:].min()  # less noise, longer before it verges


# --- the three studies at reduced size ------------------------------------------------------------------------------


def reduced(name: str, tmp_path: Path, param: str, values: list, steps: int | None = None) -> Path:
    """The example sweep file `name` with two values of its swept parameter, two seeds and maybe fewer steps."""
    sweep = yaml.safe_load((ROOT / "examples" / name).read_text())
    assert list(sweep["grid"]) == [param] and sweep["seeds"] == 10 and sweep["base"]["soup"]["size"] == 10
    sweep["grid"][param] = values
    sweep["seeds"] = 2
    if steps is not None:
        sweep["base"]["steps"] = steps
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_curves(tmp_path: Path, name: str, param: str, values: list, steps: int | None = None) -> dict:
    path = reduced(name, tmp_path, param, values, steps)
    out = tmp_path / "sweep"
    assert sweep_main([str(path), "--workers", "1", "--out", str(out), "--quiet"]) == 0
    assert report.main([str(out), "--only", "soup"]) == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["parameters"] == [param] and summary["figures"] == [f"figures/sweep_{param}.png"]
    assert (out / "report" / summary["figures"][0]).is_file()
    assert f"(figures/sweep_{param}.png)" in (out / "report" / "report.md").read_text()
    curves = {}
    for point in summary["points"]:
        assert point["n_runs"] == 2
        aggregate = point["aggregate"]
        for key in ("final.kind_counts.self_replicator", "final.kind_counts.zero"):
            s = aggregate[key]
            assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
        curves[point["params"][param]] = aggregate
    assert list(curves) == values
    return curves


@pytest.mark.slow  # a Dask cluster
def test_learn_from_study_at_reduced_size(tmp_path):
    curves = sweep_curves(tmp_path, "soup_learn_from.yaml", "events.learn_from_severity", [0, 100], steps=20)
    # severity 0 changes nothing and nothing self-trains: the random particles stay what they were
    assert curves[0]["final.kind_counts.other"]["mean"] == 10


@pytest.mark.slow  # a Dask cluster
def test_mixed_study_at_reduced_size(tmp_path):
    curves = sweep_curves(tmp_path, "soup_mixed.yaml", "train.n_sr", [0, 100])
    assert curves[0]["final.kind_counts.self_replicator"]["mean"] == 0  # no self-training, no fixpoint in 5 steps


def test_known_fixpoint_study_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "kf"
    args = ["--known-fixpoint", "--trials", "6", "--max-steps", "30", "--noise-exponents", "0", "4", "9", "--out",
            str(out)]  # fmt: skip
    assert robustness.main(args) == 0
    assert re.search(r"figure: .*known_fixpoint\.png", capsys.readouterr().out)
    numbers = json.loads((out / "known_fixpoint.json").read_text())
    assert list(numbers["levels"]) == ["1e-0", "1e-4", "1e-9"] and numbers["tolerance"] == 1e-4
    assert numbers["noise_free"] == {"time_to_vergence": 30, "time_as_fixpoint": 30}
    levels = numbers["levels"].values()
    assert all(0 <= v["time_as_fixpoint"]["median"] <= v["time_to_vergence"]["median"] <= 30 for v in levels)
    assert (out / "known_fixpoint.png").is_file()
    assert robustness.main(["--known-fixpoint", "--trials", "0", "--out", str(out)]) == 2
    assert "--trials" in capsys.readouterr().err
