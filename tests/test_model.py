"""The Mesa model: agents as live views of the bank, the step schedule, the train-task-first gate."""

import numpy as np
import pytest
import torch
from helpers import arithmetic

from sim.agents import ParticleAgent
from sim.config import build_config
from sim.model import OrganismModel
from sim.particles import sr_loss
from sim.record import open_record, read_group
from sim.soup import SoupModel


def test_one_agent_per_particle_on_the_particle_graph():
    model = OrganismModel(arithmetic())
    agents = list(model.agents)
    assert len(agents) == model.n_particles == 18
    assert all(isinstance(a, ParticleAgent) for a in agents)
    agent = agents[4]
    assert agent.cell.coordinate == agent.index
    neighbours = {cell.coordinate for cell in agent.cell.neighborhood}
    assert neighbours == set(model.graph.neighbors(agent.index))


def test_agents_read_the_banks_live_state():
    model = OrganismModel(arithmetic())
    agent = list(model.agents)[3]
    assert agent.weights.data_ptr() == model.weights.detach()[3].data_ptr()  # a view, not a copy
    assert agent.kind == "other"
    before = agent.sr_loss
    with torch.no_grad():
        model.weights[3].zero_()
    assert agent.kind == "zero" and agent.sr_loss == 0.0 and agent.effective_weight == 0.0 and before > 0
    with torch.no_grad():
        model.weights[3].fill_(float("nan"))
    assert agent.kind == "divergent"


def test_step_trains_both_objectives():
    model = OrganismModel(arithmetic(steps=200))
    sr_before = float(sr_loss(model.weights.detach(), model.spec).mean())
    mae_before = model.held_out_metric()
    for _ in range(200):
        model.step()
    assert model.steps == 200 and not model.running
    assert float(sr_loss(model.weights.detach(), model.spec).mean()) < sr_before
    assert model.held_out_metric() < mae_before


def test_n_sr_zero_leaves_sr_loss_to_the_task():
    trained = SoupModel(build_config(overrides=[("mode", "soup"), ("soup.size", 40), ("events.attack", 0.0),
                                                ("events.melt", 0.0), ("events.replicate", 0.0)]))  # fmt: skip
    frozen = SoupModel(build_config(overrides=[("mode", "soup"), ("soup.size", 40), ("train.n_sr", 0),
                                               ("events.attack", 0.0), ("events.melt", 0.0),
                                               ("events.replicate", 0.0)]))  # fmt: skip
    start = frozen.weights.detach().clone()
    for model in (trained, frozen):
        for _ in range(20):
            model.step()
    assert torch.equal(frozen.weights.detach(), start)
    assert float(sr_loss(trained.weights.detach(), trained.spec).mean()) < float(sr_loss(start, trained.spec).mean())


def plain_gate(metric: np.ndarray, threshold: float, window: int, higher_is_better: bool) -> np.ndarray:
    """Whether self-training ran at each step 1..T, from the train metric of every step: closed until the end of the
    first window of `window` steps (steps window, 2*window, ...) whose mean metric reached the threshold, then open."""
    active, is_open = [], threshold == 0
    for step in range(1, len(metric) + 1):
        active.append(is_open)
        if not is_open and step % window == 0:
            mean = sum(float(m) for m in metric[step - window : step]) / window
            is_open = mean >= threshold if higher_is_better else mean <= threshold
    return np.array(active)


def run_to_end(config, run_dir):
    run_dir.mkdir(exist_ok=True)
    model = OrganismModel(config, run_dir=run_dir, agents=False)
    while model.steps < config.steps:
        model.step()
    model.close()
    with open_record(run_dir) as f:
        return model, read_group(f, "steps")


@pytest.mark.parametrize(
    ("task", "threshold", "steps", "extra"),
    [("arithmetic", 0.3, 120, []), ("mnist", 0.4, 60, [("task.batch_size", 200), ("train.task_first_window", 7)])],
)
def test_task_first_gate_ignores_the_record_settings(tmp_path, task, threshold, steps, extra):
    """log_every 1, 10 and 50 (and snapshot_every) give bit-identical weights, and the gate opens where the plain rule
    on the recorded train metric says."""
    finals = []
    for log_every in (1, 10, 50):
        config = build_config(overrides=[("task.name", task), ("steps", steps), ("record.log_every", log_every),
                                         ("record.snapshot_every", 3 * log_every),
                                         ("train.task_first_threshold", threshold), *extra])  # fmt: skip
        model, rows = run_to_end(config, tmp_path / f"log{log_every}")
        expected = plain_gate(rows["metric"], threshold, config.train.task_first_window, task == "mnist")
        assert np.array_equal(rows["sr_active"].astype(bool), expected)
        assert expected.any() and not expected.all()  # the gate opened during the run
        finals.append(model.weights.detach().clone())
    assert all(torch.equal(finals[0], other) for other in finals[1:])


def test_resume_mid_window_keeps_the_gate(tmp_path):
    """A checkpoint in the middle of a gate window carries the window's partial sum: the resumed run opens the gate at
    the same step and ends bit-identical."""
    config = build_config(overrides=[("steps", 40), ("task.batch_size", 200), ("train.task_first_threshold", 0.4),
                                     ("train.task_first_window", 7), ("record.snapshot_every", 5)])  # fmt: skip
    whole, rows = run_to_end(config, tmp_path / "whole")
    (tmp_path / "cut").mkdir()
    cut = OrganismModel(config, run_dir=tmp_path / "cut", agents=False)
    while cut.steps < 17:  # the last checkpoint is at step 15, inside the window 15..21
        cut.step()
    cut.close()
    resumed = OrganismModel(config, run_dir=tmp_path / "cut", resume=True, agents=False)
    assert resumed.steps == 15
    while resumed.steps < config.steps:
        resumed.step()
    resumed.close()
    with open_record(tmp_path / "cut") as f:
        resumed_rows = read_group(f, "steps")
    assert rows["step"][rows["sr_active"].astype(bool)][0] > 17  # the gate opens after the resume
    np.testing.assert_array_equal(resumed_rows["sr_active"], rows["sr_active"])
    assert torch.equal(resumed.weights.detach(), whole.weights.detach())


def test_a_closed_gate_stays_closed(tmp_path):
    config = build_config(overrides=[("steps", 12), ("task.batch_size", 64), ("train.task_first_threshold", 1.0),
                                     ("train.task_first_window", 3)])  # fmt: skip
    _, rows = run_to_end(config, tmp_path)
    assert not rows["sr_active"].any()


def test_float64_and_nonlinear_particles_run():
    model = OrganismModel(arithmetic(dtype="float64", **{"particle.activation": "tanh", "steps": 3}))
    for _ in range(3):
        model.step()
    assert model.weights.dtype == torch.float64 and np.isfinite(model.held_out_metric())


def test_a_large_organism_builds_no_particle_graph_and_records_no_edges(tmp_path):
    """784-64-64-10 (54,784 particles, a line graph of 36 M edges): without events nothing builds the graph."""
    from sim.config import build_config
    from sim.model import OrganismModel
    from sim.record import open_record

    config = build_config(overrides=[("steps", 1), ("device", "cpu"), ("task.image_side", 28), ("organism.width", 64)])
    model = OrganismModel(config, run_dir=tmp_path)
    model.step()
    model.close()
    assert model._graph is None
    with open_record(tmp_path / "run.h5") as f:
        assert f["topology/edges"].shape == (0, 2) and f["topology/layer"].shape == (model.n_particles,)
