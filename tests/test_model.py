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


@pytest.mark.parametrize(("threshold", "opens"), [(0.05, True), (1.0, False)])
def test_task_first_gate(tmp_path, threshold, opens):
    config = build_config(overrides=[("steps", 12), ("record.log_every", 4), ("task.batch_size", 64),
                                     ("train.task_first_threshold", threshold)])  # fmt: skip
    model = OrganismModel(config, run_dir=tmp_path)
    assert not model.sr_active
    for _ in range(12):
        model.step()
    model.close()
    with open_record(tmp_path) as f:
        active = read_group(f, "steps")["sr_active"]
    assert active[:4].sum() == 0  # closed until the first log interval has measured the train metric
    assert bool(active[4:].all()) is opens and bool(active.any()) is opens


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
