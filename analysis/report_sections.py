"""What the one-run report says about each analysis besides pruning: its findings in sentences with numbers, and the
few tables a reader needs (never a dump of the numbers' keys: those are in `NAME.json` beside the report).

`SECTIONS[name]` is `(findings, body)` for the script `analysis.NAME`, both reading the script's typed result:
`findings(run, result)` gives sentences, `body(run, result, out)` gives markdown lines (long tables go to CSV in
`out`). A script without an entry gets one sentence pointing at its JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from analysis import soup
from analysis.common import KIND_LABELS, Run
from analysis.connectivity import ConnectivityResult
from analysis.report_format import fmt, interval, md_table, metric_words, percent, table
from analysis.results import Result
from analysis.robustness import RobustnessResult
from analysis.robustness import findings as stability_findings
from analysis.specialisation import SpecialisationResult
from analysis.trajectories import TrajectoriesResult

Findings = Callable[[Run, Any], list[str]]
Body = Callable[[Run, Any, Path], list[str]]


def _label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


# --- specialisation ------------------------------------------------------------------------------------------------


def specialisation_findings(run: Run, n: SpecialisationResult) -> list[str]:
    out = []
    steps = np.asarray(n.series.step)
    replicators = np.asarray(n.series.kind_counts.get("self_replicator", np.zeros(len(steps))))
    threshold = run.config.train.task_first_threshold or 0
    gate = n.sr_active_step
    if run.is_organism and threshold > 0:
        if gate is None:
            out.append(
                f"Self-training never started: the running train {run.metric_name} stayed short of the gate's "
                f"{fmt(threshold)} (the task trains alone until it gets there), so nothing could specialise."
            )
        else:
            out.append(f"Self-training started at step {gate}, when the running train {run.metric_name} reached the "
                       f"gate's {fmt(threshold)}; before that only the task trained.")  # fmt: skip
    first = n.first_self_replicator_step
    if first is None:
        out.append("No particle became a self-replicator.")
    else:
        peak = int(replicators.max())
        at = int(steps[int(replicators.argmax())])
        end = int(replicators[-1])
        sentence = (f"The first self-replicator appeared at step {first}; self-replicators peaked at {peak} of "
                    f"{run.n_particles} (step {at}) and end at {end} ({percent(end / run.n_particles)}).")  # fmt: skip
        if end < peak / 2:
            counts = ", ".join(f"{_label(k)} {v}" for k, v in n.kind_counts.items() if v)
            sentence += f" They then died out: at the end the particles are {counts}."
        out.append(sentence)
    if n.final_metric is not None:
        out.append(f"The {metric_words(run)} ends at {fmt(n.final_metric)} (best {fmt(n.best_metric)}).")
    if n.per_layer:
        parts = [
            f"layer {layer} {e.kind_counts.get('self_replicator', 0)} of {e.n_particles}"
            for layer, e in n.per_layer.items()
        ]
        out.append("Self-replicators by layer at the end: " + ", ".join(parts) + ".")
    return out


def specialisation_body(run: Run, n: SpecialisationResult, out: Path) -> list[str]:
    if not n.per_layer:
        return []
    kinds = [k for k in run.kind_names if any(e.kind_counts.get(k) for e in n.per_layer.values())]
    rows = []
    for layer, e in n.per_layer.items():
        total = e.n_particles
        cells = [f"{e.kind_counts.get(k, 0)} ({percent(e.kind_counts.get(k, 0) / total)})" for k in kinds]
        rows.append([layer, total, *cells, e.first_self_replicator_step])
    header = ["layer", "particles", *(_label(k) for k in kinds), "first self-replicator (step)"]
    return ["Kinds per layer at the end (count and share of the layer):\n", md_table(header, rows)]


# --- connectivity --------------------------------------------------------------------------------------------------


def connectivity_findings(run: Run, n: ConnectivityResult) -> list[str]:
    out = []
    mixing = n.kind_mixing.get("self_replicator")
    if mixing and 0 < mixing.overall_fraction < 1:
        same, share = mixing.neighbour_same_kind, mixing.overall_fraction
        ratio = same / share
        how = "cluster" if ratio > 1.2 else "avoid each other" if ratio < 0.8 else "sit as if placed at random"
        out.append(f"Self-replicators {how} on the particle graph: {percent(same)} of their neighbours are "
                   f"self-replicators, against {percent(share)} of all particles.")  # fmt: skip
    elif len(n.kind_mixing) == 1:
        out.append(f"Every particle ends as {_label(next(iter(n.kind_mixing)))}: there is no mixing of kinds to "
                   f"measure.")  # fmt: skip
    else:
        out.append("No particle ends as a self-replicator, so there are none to place on the graph.")
    pixels = n.pixel_map
    if pixels and pixels.mean_intensity_self_replicators is not None and pixels.mean_intensity_others:
        out.append(
            f"The {pixels.n_input_self_replicators} self-replicating input particles read pixels of mean intensity "
            f"{fmt(pixels.mean_intensity_self_replicators)}, the other input particles "
            f"{fmt(pixels.mean_intensity_others)}: self-replicators sit where the digits rarely reach; "
            f"{pixels.pixels_all_self_replicators} pixels feed only self-replicators."
        )
    return out


def connectivity_body(run: Run, n: ConnectivityResult, out: Path) -> list[str]:
    rows = [[_label(k), percent(m.overall_fraction), percent(m.neighbour_same_kind)]
            for k, m in n.kind_mixing.items()]  # fmt: skip
    header = ["kind", "share of all particles", "share of its particles' neighbours of the same kind"]
    return ["Kind mixing over the particle graph (equal shares: placed as if at random):\n", md_table(header, rows)]


# --- trajectories --------------------------------------------------------------------------------------------------


def trajectories_findings(run: Run, n: TrajectoriesResult) -> list[str]:
    out = []
    settled = {k: s for k, s in n.settled_step.items() if s is not None}
    if settled:
        parts = ", ".join(f"{_label(k)} by step {s}" for k, s in settled.items())
        out.append(f"Particles settle (median distance to their final weights below 1% of where it started): {parts}.")
    moving = n.movement_per_step_last
    if moving:
        parts = ", ".join(f"{_label(k)} {fmt(v)}" for k, v in moving.items())
        out.append(f"Median distance moved per step between the last two snapshots: {parts}.")
    variance = {layer: e.explained_variance_2d for layer, e in n.layers.items()}
    still = [layer for layer, e in n.layers.items() if e.movement_share < n.pca_min_movement]
    if still and not n.pca_drawn:
        out.append(f"No PCA figure for layer(s) {', '.join(still)}: the particles' own movement over time is under "
                   f"{percent(n.pca_min_movement)} of the weights' variance; a projection would show still "
                   f"dots.")  # fmt: skip
    elif variance and not n.pca_drawn:
        lo, hi = min(variance.values()), max(variance.values())
        spread = percent(lo) if lo == hi else f"[{percent(lo)}, {percent(hi)}]"
        out.append(f"No PCA figure: the first two principal components explain only {spread} of the weights' variance "
                   f"per layer (below {percent(n.pca_min_variance)}), too little for a 2-D picture to "
                   f"mean anything.")  # fmt: skip
    return out


def trajectories_body(run: Run, n: TrajectoriesResult, out: Path) -> list[str]:
    kinds = list(n.path_length)
    rows = [[_label(k), n.path_length[k], n.movement_per_step_last.get(k), n.settled_step.get(k)]
            for k in kinds]  # fmt: skip
    lines = [md_table(["final kind", "mean path length", "movement per step at the end", "settled by step"], rows)]
    rows = [[layer, e.n_particles, percent(e.explained_variance_2d), percent(e.movement_share), e.n_nonfinite]
            for layer, e in n.layers.items()]  # fmt: skip
    lines += ["Variance the first two principal components explain, and the share of the variance that is the "
              "particles' own movement over time, per layer:\n",
              md_table(["layer", "particles", "PC1 + PC2", "movement over time", "left out (non-finite)"],
                       rows)]  # fmt: skip
    return lines


# --- robustness ----------------------------------------------------------------------------------------------------


def robustness_findings(run: Run, n: RobustnessResult) -> list[str]:
    levels = list(n.levels.values())
    noisy = [e for e in levels if e.noise > 0]
    robust = [e.noise for e in noisy if e.stayed_sr_fraction >= 0.9]
    out = [f"{n.n_self_replicators} final self-replicators, {n.repeats} noisy copies each per noise level, "
           f"self-applied up to {n.max_steps} times."]  # fmt: skip
    control = next((e for e in levels if e.noise == 0), None)
    if control is not None:
        out.append(f"Without noise {percent(control.stayed_sr_fraction)} stay self-replicators throughout.")
    if robust:
        out.append(f"Up to noise {fmt(max(robust))}, at least 90% of the copies stay self-replicators throughout.")
    fragile = [e for e in noisy if e.stayed_sr_fraction < 0.9]
    if fragile:
        worst = max(fragile, key=lambda e: e.noise)
        ends = ", ".join(f"{_label(k)} {percent(v)}" for k, v in worst.end_fraction.items() if v)
        median = worst.sr_steps.median if worst.sr_steps else None
        out.append(f"At noise {fmt(worst.noise)} the median copy stops being a self-replicator after "
                   f"{fmt(median)} self-applications; they end as {ends}.")  # fmt: skip
    return out + stability_findings(n)


def robustness_body(run: Run, n: RobustnessResult, out: Path) -> list[str]:
    kinds = [k for k in run.kind_names if any(e.end_fraction.get(k) for e in n.levels.values())]
    rows = []
    for e in n.levels.values():
        sr, verged = e.sr_steps, e.vergence_steps
        rows.append([
            fmt(e.noise), e.n, percent(e.stayed_sr_fraction),
            f"{fmt(sr.median)} {interval(sr.q1, sr.q3)}" if sr else "–", percent(e.verged_fraction),
            f"{fmt(verged.median)} {interval(verged.q1, verged.q3)}" if verged else "–",
            *(percent(e.end_fraction.get(k, 0)) for k in kinds),
        ])  # fmt: skip
    header = ["noise s", "copies", "stayed SR", "steps as SR: median [q1, q3]", "became zero/divergent",
              "steps to that: median [q1, q3]", *(f"end: {_label(k)}" for k in kinds)]  # fmt: skip
    return [table(header, rows, out, "robustness_levels", "Per noise level")]


SECTIONS: dict[str, tuple[Findings, Body]] = {
    "specialisation": (specialisation_findings, specialisation_body),
    "connectivity": (connectivity_findings, connectivity_body),
    "trajectories": (trajectories_findings, trajectories_body),
    "robustness": (robustness_findings, robustness_body),
    "soup": (soup.report_findings, soup.report_body),
}


def findings(name: str, run: Run, result: Result) -> list[str]:
    """The findings of script `name` on `run`."""
    if name in SECTIONS:
        return SECTIONS[name][0](run, result)
    return [f"`analysis.{name}`: its numbers are in [`{name}.json`]({name}.json)."]


def body(name: str, run: Run, result: Result, out: Path) -> list[str]:
    """The tables of script `name`'s section of the report."""
    return SECTIONS[name][1](run, result, out) if name in SECTIONS else []
