"""What Mesa gets from the models: a DataCollector of the logged numbers, config keys as keyword arguments (so that
`mesa.batch_run` runs them), and agents built only when something asks for them."""

from __future__ import annotations

import math

import mesa
import pytest
from helpers import finish

import sim.model
from sim.config import ConfigError, build_config, keyword_key
from sim.model import REPORTERS, OrganismModel
from sim.particles import KIND_NAMES
from sim.record import open_record, read_group
from sim.soup import SoupModel


def test_batch_run_rows_carry_the_logged_numbers_of_each_point():
    rows = mesa.batch_run(
        OrganismModel, parameters={"task_name": "arithmetic", "train_alpha": [0.5, 1.0], "steps": 20}, max_steps=20,
        display_progress=False,
    )  # fmt: skip
    assert [row["train_alpha"] for row in rows] == [0.5, 1.0]
    for row in rows:
        alone = finish(OrganismModel(task_name="arithmetic", train_alpha=row["train_alpha"], steps=20))
        assert alone.summary["step"] == 20
        assert row["held_out_metric"] == alone.summary["held_out_metric"]
        assert row["sr_loss"] == alone.summary["sr_loss"]
        assert [row[kind] for kind in KIND_NAMES] == [alone.summary["kind_counts"][kind] for kind in KIND_NAMES]
    assert rows[0]["sr_loss"] != rows[1]["sr_loss"]  # the swept alpha reached the models


def test_the_collector_measures_at_log_steps_only(tmp_path):
    config = build_config(overrides=[("task.name", "arithmetic"), ("steps", 25), ("record.log_every", 10)])
    model = OrganismModel(config, run_dir=tmp_path)
    calls = []
    measure = model.held_out_metric
    model.held_out_metric = lambda *args: calls.append(model.steps) or measure(*args)
    finish(model)
    model.close()
    assert calls == [10, 20, 25]
    frame = model.datacollector.get_model_vars_dataframe()
    assert list(frame.columns) == list(REPORTERS) and len(frame) == 25  # entry i: as of step i + 1
    assert frame.iloc[:9].isna().all().all()
    with open_record(tmp_path) as f:
        logged = read_group(f, "particles")
    assert logged["step"][0] == 0  # the initial state: in the record, not in the collector (entry i is step i + 1)
    for row, step in list(enumerate(logged["step"]))[1:]:
        at = frame.iloc[step - 1]
        assert at["held_out_metric"] == pytest.approx(logged["held_out_metric"][row], rel=1e-6)
        assert [at[k] for k in KIND_NAMES] == logged["kind_counts"][row].tolist()
        assert at["sr_loss"] == pytest.approx(logged["sr_loss"][row].mean(), rel=1e-5)
    assert (frame.iloc[10:19] == frame.iloc[9]).all().all()  # between logs: the last logged numbers


def test_a_soup_collects_too_without_a_metric():
    model = finish(SoupModel(steps=4, soup_size=20, record_log_every=2))
    frame = model.datacollector.get_model_vars_dataframe()
    assert len(frame) == 4 and frame.iloc[-1][list(KIND_NAMES)].sum() == 20
    assert math.isnan(frame.iloc[-1]["held_out_metric"])


def test_keywords_are_config_keys_on_the_defaults_of_the_mode():
    model = OrganismModel(task_name="arithmetic", train_alpha=0.5, steps=7, seed=3, organism_width=4)
    assert (model.config.task.name, model.config.train.alpha, model.config.steps, model.config.seed) == (
        "arithmetic", 0.5, 7, 3,
    )  # fmt: skip
    assert model.sizes == [2, 4, 4, 1] and model.config.task.batch_size == 50  # the task's defaults still fill in
    soup = SoupModel(soup_size=30, steps=2)
    assert soup.config.mode == "soup" and soup.n_particles == 30 and soup.config.events.attack > 0


def test_keyword_names_map_onto_config_keys():
    assert keyword_key("task_name") == "task.name"
    assert keyword_key("train_task_first_threshold") == "train.task_first_threshold"
    assert keyword_key("steps") == "steps"


@pytest.mark.parametrize("keywords", [{"task_nmae": "arithmetic"}, {"alpha": 0.5}, {"train_": 1}])
def test_an_unknown_keyword_is_a_type_error_naming_it(keywords):
    with pytest.raises(TypeError, match=repr(next(iter(keywords)))):
        OrganismModel(**keywords)


def test_a_bad_keyword_value_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.alpha"):
        OrganismModel(task_name="arithmetic", train_alpha=-1.0)


def test_keywords_do_not_amend_a_given_config():
    with pytest.raises(TypeError, match="steps"):
        OrganismModel(build_config(overrides=[("task.name", "arithmetic")]), steps=3)


def test_agents_and_their_network_are_built_when_asked_for(monkeypatch):
    built = []
    network = sim.model.Network
    monkeypatch.setattr(sim.model, "Network", lambda *args, **kwargs: built.append(1) or network(*args, **kwargs))
    model = finish(OrganismModel(task_name="arithmetic", steps=3))
    assert built == []
    assert len(model.agents) == 18 and built == [1]
    assert model.grid is model.grid and len(model.agents) == 18 and built == [1]


def test_a_model_without_agents_says_so():
    config = build_config(overrides=[("mode", "soup"), ("soup.size", 10), ("soup.degree", 2)])
    model = SoupModel(config, agents=False)
    assert len(model.agents) == 0
    with pytest.raises(ValueError, match="agents=False"):
        model.grid  # noqa: B018


def test_the_record_and_the_events_need_no_graph_only_the_agents_build_it(tmp_path, monkeypatch):
    built = []
    graph_of = sim.model.particle_graph
    monkeypatch.setattr(sim.model, "particle_graph", lambda *args: built.append(1) or graph_of(*args))
    finish(OrganismModel(task_name="arithmetic", steps=3, events_attack=0.5))
    config = build_config(overrides=[("task.name", "arithmetic"), ("steps", 3)])
    model = finish(OrganismModel(config, run_dir=tmp_path))
    model.close()
    assert built == []  # the record's edges and the events' neighbours come from the layer sizes
    with open_record(tmp_path) as f:
        edges = f["topology/edges"][()]
    assert {tuple(e) for e in edges.tolist()} == {tuple(sorted(e)) for e in model.graph.edges()} and built == [1]
    assert len(edges) == model.graph.number_of_edges() > 0
