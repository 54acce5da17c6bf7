"""`python -m analysis.soup RUN_DIR`: the population events of a run and the lineages they make.

Read from the record's `/events` rows (step, kind, source, target) and the logged kinds:
- **event counts**: how many events of each kind every step applied;
- **kind census with events**: the particles of each kind at every logged step, with the event counts overlaid;
- **lineages**: which initial particle (or respawned one) every particle's weights descend from. Every particle starts
  as its own lineage; `replicate`, `attack` and `learn_from` make the target a descendant of the source (its weights
  are now the source's copy, the source's function applied to it, or an imitation of the source); `respawn` starts a
  new lineage (a fresh random particle); `melt` and `noise` keep the target's lineage. Events of one kind in one step
  are simultaneous, as the simulation applies them: they all read the lineages as they were before that kind.
  Reported: the largest lineage's size over time (over all particles and over the self-replicators alone), the number
  of lineages the self-replicators belong to, and the founder of every final self-replicator.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.common import (
    KIND_COLOURS,
    KIND_LABELS,
    AnalysisError,
    Run,
    new_figure,
    run_parser,
    run_script,
    save_figure,
)
from analysis.report_format import md_table
from analysis.results import Numbers, Result
from sim.particles import SELF_REPLICATOR
from sim.record import open_record, read_group

LINEAGE_EVENTS = ("replicate", "attack", "learn_from")  # the target's weights descend from the source's
NEW_LINEAGE_EVENTS = ("respawn",)  # the target's weights are fresh
TOP_LINEAGES = 10  # how many of the largest final lineages the numbers list


@dataclass
class EventLog:
    """The `/events` rows of a record in the order applied, arrays `[E]`, and the event names their kinds index."""

    step: np.ndarray
    kind: np.ndarray
    source: np.ndarray
    target: np.ndarray
    names: list[str]


def read_events(run: Run) -> EventLog:
    """The run's event rows (none yet in a soup of 0 steps); AnalysisError for a run other than a soup that recorded
    none (an organism with every event rate 0: nothing to analyse)."""
    with open_record(run.run_dir) as f:
        rows = read_group(f, "events") if "events" in f else {}
    names = [str(n) for n in run.attrs.get("event_names", [])]
    if not len(rows.get("step", [])):
        if run.mode != "soup":
            raise AnalysisError(f"{str(run.run_dir)!r} recorded no population events (all event rates 0?)")
        rows = {key: np.zeros(0, dtype=np.int64) for key in ("step", "kind", "source", "target")}
    return EventLog(rows["step"].astype(np.int64), rows["kind"].astype(np.int64), rows["source"].astype(np.int64),
                    rows["target"].astype(np.int64), names)  # fmt: skip


def counts_per_step(log: EventLog, last_step: int) -> np.ndarray:
    """Events of each kind applied in every step 0..last_step, int `[last_step + 1, K]`."""
    counts = np.zeros((last_step + 1, len(log.names)), dtype=np.int64)
    keep = log.step <= last_step
    np.add.at(counts, (log.step[keep], log.kind[keep]), 1)
    return counts


@dataclass
class Lineages:
    """Lineage labels of every particle at the sample steps, `labels [T, P]` (a label is the founder's id: a particle
    id for the initial particles, `P + i` for the i-th respawned one), and the direct parent of every particle at
    the end (the source of the last lineage event it received; itself if none)."""

    steps: np.ndarray  # [T]
    labels: np.ndarray  # [T, P]
    parent: np.ndarray  # [P]


def trace_lineages(log: EventLog, n_particles: int, sample_steps: np.ndarray) -> Lineages:
    """Follow the lineages through the event rows, sampling the labels after all events of each sample step (which
    must be ascending)."""
    labels = np.arange(n_particles)
    parent = np.arange(n_particles)
    next_label = n_particles
    inherit = {log.names.index(n) for n in LINEAGE_EVENTS if n in log.names}
    fresh = {log.names.index(n) for n in NEW_LINEAGE_EVENTS if n in log.names}
    # blocks of consecutive rows with one (step, kind): the simultaneous events of one kind in one step
    change = np.flatnonzero((np.diff(log.step) != 0) | (np.diff(log.kind) != 0)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(log.step)]])
    samples = []
    block = 0
    for step in sample_steps:
        while block < len(starts) and ends[block] > starts[block] and log.step[starts[block]] <= step:
            rows = slice(starts[block], ends[block])
            kind = int(log.kind[starts[block]])
            src, tgt = log.source[rows], log.target[rows]
            if kind in inherit:
                labels[tgt] = labels[src]  # fancy indexing on the right copies: the pre-block labels
                parent[tgt] = src
            elif kind in fresh:
                labels[tgt] = np.arange(next_label, next_label + len(tgt))
                parent[tgt] = tgt
                next_label += len(tgt)
            block += 1
        samples.append(labels.copy())
    return Lineages(np.asarray(sample_steps), np.array(samples).reshape(len(sample_steps), n_particles), parent)


def largest_lineage(labels: np.ndarray, members: np.ndarray | None = None) -> np.ndarray:
    """Size of the largest lineage at every sample, `[T]`, over all particles or over those where `members [T, P]`."""
    sizes = []
    for t, row in enumerate(labels):
        chosen = row if members is None else row[members[t]]
        sizes.append(int(np.bincount(chosen).max()) if len(chosen) else 0)
    return np.array(sizes)


@dataclass(frozen=True)
class TopLineage(Numbers):
    """One of the largest lineages at the end."""

    founder: int  # the particle id it descends from
    size: int  # particles in it at the end
    self_replicators: int  # of them self-replicators


@dataclass(frozen=True)
class LineageNumbers(Numbers):
    """The lineages (who descends from whom through the events) at the end of a soup."""

    alive_at_end: int
    largest_at_end: int
    largest_self_replicator_lineage_at_end: int  # the most self-replicators in one lineage
    self_replicator_lineages_at_end: int  # lineages the self-replicators belong to
    largest_ever: int
    top: list[TopLineage]  # the largest at the end, largest first
    # [particle, founder] and [particle, direct parent] of every final self-replicator (per-run detail, not headline
    # numbers)
    self_replicator_founders: list[list[int]]
    self_replicator_parents: list[list[int]]


@dataclass(frozen=True)
class SoupResult(Result):
    """Event counts and lineages of one run with population events."""

    event_names: list[str]
    event_totals: dict[str, int]  # event name -> events applied
    events_per_step: dict[str, float]
    final_step: int
    lineages: LineageNumbers


def analyse(run: Run, out_dir: Path, args: argparse.Namespace) -> SoupResult:
    """Event counts, the kind census with events, lineages; the figure `soup.png` into `out_dir`."""
    log = read_events(run)
    run.require_rows("particles", 1, "the kind census")
    sample_steps = run.particles["step"].astype(np.int64)
    last_step = int(max(sample_steps.max(), log.step.max(initial=0)))
    counts = counts_per_step(log, last_step)
    kinds = run.particles["kind"].astype(np.int64)  # [T, P]
    lineages = trace_lineages(log, run.n_particles, sample_steps)
    replicators = kinds == SELF_REPLICATOR  # [T, P]
    largest = largest_lineage(lineages.labels)
    largest_sr = largest_lineage(lineages.labels, replicators)
    sr_lineages = np.array([len(np.unique(row[m])) for row, m in zip(lineages.labels, replicators)])
    final = lineages.labels[-1]
    sizes = np.bincount(final)
    top = np.argsort(-sizes, kind="stable")[:TOP_LINEAGES]
    final_sr = np.flatnonzero(replicators[-1])
    result = SoupResult(
        event_names=log.names,
        event_totals=dict(zip(log.names, counts.sum(axis=0).tolist())),
        events_per_step=dict(zip(log.names, (counts.sum(axis=0) / max(last_step, 1)).tolist())),
        final_step=int(sample_steps[-1]),
        lineages=LineageNumbers(
            alive_at_end=int(np.count_nonzero(sizes)),
            largest_at_end=int(largest[-1]),
            largest_self_replicator_lineage_at_end=int(largest_sr[-1]),
            self_replicator_lineages_at_end=int(sr_lineages[-1]),
            largest_ever=int(largest.max()),
            top=[
                TopLineage(int(f), int(sizes[f]), int(np.count_nonzero(final[final_sr] == f))) for f in top if sizes[f]
            ],
            self_replicator_founders=[[int(p), int(final[p])] for p in final_sr],
            self_replicator_parents=[[int(p), int(lineages.parent[p])] for p in final_sr],
        ),
    )
    series = {"steps": sample_steps, "largest": largest, "largest_sr": largest_sr, "sr_lineages": sr_lineages}
    return result.with_figures([_figure(run, counts, series, out_dir / "soup.png")])


# --- what the report says -------------------------------------------------------------------------------------------


def report_findings(run: Run, result: SoupResult) -> list[str]:
    """The lineages in a sentence with numbers (the one-run report's findings; the event counts are its own)."""
    lineages = result.lineages
    return [
        f"At the end {lineages.alive_at_end} lineages are alive, the largest {lineages.largest_at_end} "
        f"particles strong (the largest ever: {lineages.largest_ever}); the self-replicators belong to "
        f"{lineages.self_replicator_lineages_at_end} lineages, the largest holding "
        f"{lineages.largest_self_replicator_lineage_at_end} of them.",
    ]


def report_body(run: Run, result: SoupResult, out: Path) -> list[str]:
    """The report's tables: events per kind, and the largest lineages at the end."""
    rows = [[name, total, f"{result.events_per_step[name]:.3g}"] for name, total in result.event_totals.items()]
    lines = [md_table(["event", "applied", "per step"], rows)]
    top = result.lineages.top
    if top:
        rows = [[entry.founder, entry.size, entry.self_replicators] for entry in top]
        lines.append(md_table(["founder", "particles at the end", "of them self-replicators"], rows))
    return lines


# --- the figure -----------------------------------------------------------------------------------------------------


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over `window` steps (the per-step counts are small integers, noisy to the eye)."""
    if window <= 1 or len(values) < window:
        return values.astype(float)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="same")


EVENT_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#000000", "#7f7f7f")  # not the kinds'


def _figure(run: Run, counts: np.ndarray, series: dict[str, np.ndarray], path: Path) -> Path:
    names = [str(n) for n in run.attrs.get("event_names", [])]
    fired = [i for i in range(counts.shape[1]) if counts[:, i].any()]
    window = max(1, counts.shape[0] // 50)
    steps = np.arange(counts.shape[0])
    smoothed = {i: _smooth(counts[:, i], window) for i in fired}
    fig, axes = new_figure(3, width=5.4, height=4.2)

    ax = axes[0, 0]
    for i in fired:
        ax.plot(steps, smoothed[i], label=names[i], lw=1.2, color=EVENT_COLORS[i % len(EVENT_COLORS)])
    ax.set_xlabel("step")
    ax.set_ylabel(f"events per step (running mean over {window})")
    ax.set_title("Events by kind")
    if fired:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no event fired", transform=ax.transAxes, ha="center", va="center")

    ax = axes[0, 1]
    for k, name in enumerate(run.kind_names):
        ax.plot(run.particles["step"], run.particles["kind_counts"][:, k], color=KIND_COLOURS[name], lw=2,
                label=KIND_LABELS[name])  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("particles (thick lines)")
    ax.set_title("Kinds, with the events overlaid (thin)")
    ax.legend(fontsize=7, loc="upper left")
    twin = ax.twinx()
    for i in fired:
        twin.plot(steps, smoothed[i], lw=0.8, alpha=0.7, color=EVENT_COLORS[i % len(EVENT_COLORS)], label=names[i])
    twin.set_ylabel("events per step (thin lines)")
    if fired:
        twin.legend(fontsize=7, loc="upper right")

    ax = axes[0, 2]
    ax.plot(series["steps"], series["largest"], label="largest lineage (all particles)", color="black")
    ax.plot(series["steps"], series["largest_sr"], label="largest lineage of self-replicators",
            color=KIND_COLOURS["self_replicator"])  # fmt: skip
    ax.plot(series["steps"], series["sr_lineages"], label="lineages among self-replicators", ls="--",
            color=KIND_COLOURS["self_replicator"])  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("particles / lineages")
    ax.set_title("Lineages (replicate, attack, learn-from)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{run.name}: population events and lineages")
    return save_figure(fig, path)


# --- command line ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = run_parser("python -m analysis.soup", "Population events and lineages of a run.")
    return run_script("analysis.soup", p, analyse, argv)


if __name__ == "__main__":
    sys.exit(main())
