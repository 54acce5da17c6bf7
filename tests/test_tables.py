"""Every list of kinds and tasks is derived from its table, and the README's configuration table, kind list and usage
line agree with the code: these tests fail when one drifts (the README's event table: tests/test_events.py)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

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


# --- the README's tables and lists ---------------------------------------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"
# a documented key: `name`, an optional symbol (`weight_interface` k), then its default in parentheses
DOCUMENTED_KEY = re.compile(r"`(\w+)`(?: \w)? \(([^)]*)\)")


def _readme_section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading."""
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    end = re.compile(r"\n#+ ").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def _config_table() -> dict[str, list[tuple[str, str]]]:
    """The README's configuration table: per section (`top level`, `organism`, ...) its keys with their documented
    defaults, in the order written."""
    rows = {}
    for line in _readme_section("### Configuration").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and cells[0] not in ("section", "---"):
            rows[cells[0].strip("`")] = DOCUMENTED_KEY.findall(cells[1])
    return rows


def _documented_default(value: object) -> str:
    """A default as the README writes it: `none`, `true`, `0.004`, `shared_neuron`."""
    return "none" if value is None else str(value).lower()


def _section_fields(name: str) -> list[dataclasses.Field]:
    """The keys of config section `name` (`top level`: the keys outside any section) that the table lists: the
    `events` row names the rates and event parameters as a group (their own table is `sim.events.markdown_table`)."""
    if name == "top level":
        return [f for f in dataclasses.fields(config.Config) if f.name not in config.SECTIONS]
    fields = dataclasses.fields(type(getattr(config.Config(), name)))
    return [f for f in fields if f.name not in config.EVENT_RATES and f.name not in config.EVENT_PARAMS]


def test_the_readme_config_table_lists_every_section_and_key_in_order():
    table = _config_table()
    sections = [f.name for f in dataclasses.fields(config.Config) if f.name in config.SECTIONS]
    assert list(table) == ["top level", *sections]
    for section, keys in table.items():
        assert [key for key, _ in keys] == [f.name for f in _section_fields(section)], section


def test_the_readme_config_table_gives_each_default():
    for section, keys in _config_table().items():
        fields = {f.name: f for f in _section_fields(section)}
        for key, documented in keys:
            full = key if section == "top level" else f"{section}.{key}"
            tasks = {name: defaults[full] for name, defaults in config.TASK_DEFAULTS.items() if full in defaults}
            if tasks:  # a task's default: "MNIST 5, arithmetic 3"
                written = dict(re.findall(r"(\w+) ([-+.\de]+)", documented))
                assert {name.lower(): float(value) for name, value in written.items()} == tasks, full
            else:
                first = re.split(r"[:;,]| \(", documented)[0].split(" ")[0]
                assert first == _documented_default(fields[key].default), full


def test_the_readme_config_table_names_the_event_keys_as_the_event_table():
    # the rates and parameters themselves: the README's event table, checked against EVENTS in test_events.py
    line = next(line for line in _readme_section("### Configuration").splitlines() if line.startswith("| `events`"))
    assert "a rate per event type" in line and "the event parameters" in line


def test_the_readme_names_the_kinds_of_the_table():
    record = _readme_section("### The record (`run.h5`, schema 1)")
    listed = re.search(r"Kind codes index `kind_names`: ([^.]*)\.", record).group(1)
    assert re.findall(r"`(\w+)`", listed) == list(KIND_NAMES)
    for text in (record, (README.parent / "docs" / "record.md").read_text()):
        assert re.findall(r"`kind_counts \[T, (\d+)\]`", text) == [str(len(KINDS))]


@pytest.mark.parametrize("flag", ["--mode", "--task", "--device"])
def test_the_readme_usage_offers_the_run_cli_choices(flag):
    usage = _readme_section("## The main job")
    (written,) = re.findall(rf"\[{flag} ([\w|]+)\]", usage)
    assert written.split("|") == list(run.parser()._option_string_actions[flag].choices)
