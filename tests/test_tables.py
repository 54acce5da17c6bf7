"""Every list of kinds and tasks is derived from its table: these tests fail when one drifts from it."""

from __future__ import annotations

import dataclasses

import h5py
import matplotlib.colors
import numpy as np
import pytest
import torch

import analysis.common
import sim.figures
from analysis.common import metric_label
from analysis.group_report import metric_limits
from sim import config, particles, run
from sim.model import OrganismModel
from sim.particles import DRAW_ORDER, KIND_COLOURS, KIND_LABELS, KIND_NAMES, KINDS, SHORT_KINDS
from sim.runner import SHORT_KINDS as RUNNER_SHORT_KINDS
from sim.tasks import METRICS, TASK_TABLE, make_task


# --- kinds ---------------------------------------------------------------------------------------------------------
def test_kind_codes_name_their_kinds():
    assert tuple(k.name for k in KINDS) == KIND_NAMES
    for name in KIND_NAMES:
        assert KIND_NAMES[getattr(particles, name.upper())] == name


@pytest.mark.parametrize("field", ["name", "short", "colour", "label", "layer"])
def test_every_kind_has_its_own(field):
    values = [getattr(kind, field) for kind in KINDS]
    assert len(set(values)) == len(values)


def test_kind_maps_and_draw_order_cover_exactly_the_kinds():
    for mapping in (KIND_COLOURS, KIND_LABELS, SHORT_KINDS):
        assert tuple(mapping) == KIND_NAMES
    assert sorted(DRAW_ORDER) == sorted(KIND_NAMES)
    assert [k.layer for k in sorted(KINDS, key=lambda k: DRAW_ORDER.index(k.name))] == sorted(k.layer for k in KINDS)


def test_the_page_the_reports_and_the_progress_line_use_the_one_table():
    assert sim.figures.KIND_COLOURS is KIND_COLOURS
    assert analysis.common.KIND_COLOURS is KIND_COLOURS and analysis.common.KIND_LABELS is KIND_LABELS
    assert RUNNER_SHORT_KINDS is SHORT_KINDS


def test_the_page_draws_every_kind_in_its_colour():
    layout = sim.figures.graph_layout(len(KINDS), np.zeros((0, 2), dtype=np.int64))
    codes = np.arange(len(KINDS))
    fig = sim.figures.topology_figure(layout, codes, np.ones(len(KINDS)))
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(KIND_NAMES)
    drawn = fig.axes[0].collections[-1].get_facecolors()  # the particles' markers, in particle order
    assert np.allclose(drawn[:, :3], [matplotlib.colors.to_rgb(KIND_COLOURS[n]) for n in KIND_NAMES])


def test_the_record_names_the_kinds_and_counts_each(arithmetic_run):
    with h5py.File(arithmetic_run / "run.h5", "r") as f:
        assert [str(n) for n in f.attrs["kind_names"]] == list(KIND_NAMES)
        assert f["particles/kind_counts"].shape[1] == len(KIND_NAMES)


# --- tasks ---------------------------------------------------------------------------------------------------------
def test_config_tasks_and_their_defaults_come_from_the_table():
    assert tuple(TASK_TABLE) == config.TASKS
    name_field = {f.name: f for f in dataclasses.fields(config.TaskConfig)}["name"]
    assert name_field.metadata["choices"] == tuple(TASK_TABLE)
    for name, entry in TASK_TABLE.items():
        resolved = config.build_config(overrides=[("task.name", name)])
        assert (resolved.organism.width, resolved.particle.hidden, resolved.task.batch_size) == (
            entry.width, entry.hidden, entry.batch_size,
        )  # fmt: skip
        assert resolved.train.task_first_threshold == entry.gate_threshold
        for key in config.TASK_DEFAULTS[name]:
            config.check_key(key)


def test_the_run_cli_offers_exactly_the_tasks():
    action = run.parser()._option_string_actions["--task"]
    assert tuple(action.choices) == tuple(TASK_TABLE)


@pytest.mark.parametrize("name", list(TASK_TABLE))
def test_every_task_builds_with_its_metric(name):
    task = make_task(name, 0, "cpu", torch.float32)
    entry = TASK_TABLE[name]
    assert task.name == name and task.metric_name == entry.metric.name
    assert task.higher_is_better == entry.metric.higher_is_better
    assert METRICS[task.metric_name] == entry.metric


def test_tasks_that_share_a_metric_name_share_the_metric():
    for entry in TASK_TABLE.values():
        assert METRICS[entry.metric.name] == entry.metric


@pytest.mark.parametrize("metric", list(METRICS.values()), ids=list(METRICS))
def test_the_reports_read_the_metric_from_the_table(metric):
    assert metric_label(metric.name).startswith(metric.words)
    assert ("lower is better" in metric_label(metric.name)) == (not metric.higher_is_better)
    assert metric_limits(metric.name) == (0.0, metric.upper)


def test_the_record_stores_which_way_the_metric_is_better(arithmetic_run):
    with h5py.File(arithmetic_run / "run.h5", "r") as f:
        assert f.attrs["metric_name"] == "mae" and not f.attrs["higher_is_better"]
    assert analysis.common.load_run(arithmetic_run).higher_is_better is False


@pytest.mark.parametrize("name", list(TASK_TABLE))
def test_the_gate_line_names_the_metric_from_the_table(name):
    metric = TASK_TABLE[name].metric
    closed = 0.999 if metric.higher_is_better else 1e-9  # a gate that one step cannot open
    model = OrganismModel(task_name=name, steps=1, train_task_first_threshold=closed)
    model.step()
    assert f"train {metric.short} " in model.gate_status()
