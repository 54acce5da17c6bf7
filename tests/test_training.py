"""`train.order` and `train.sr_optimizer` against a plain loop: torch.optim.SGD over one weight tensor, written out."""

from __future__ import annotations

import pytest
import torch
from helpers import arithmetic, finish

from sim.config import Config
from sim.model import OrganismModel
from sim.organism import Organism
from sim.particles import init_weights, sr_loss
from sim.tasks import make_task
from sim.topology import layer_sizes

ORDERS = ("sr_first", "task_first")
SR_OPTIMIZERS = ("fresh", "persistent", "shared")
STEPS = 4


def config_for(order: str, sr_optimizer: str) -> Config:
    return arithmetic(**{"steps": STEPS, "dtype": "float64", "device": "cpu", "train.n_sr": 3, "train.alpha": 0.7,
                         "train.order": order, "train.sr_optimizer": sr_optimizer})  # fmt: skip


def plain_loop(config: Config) -> torch.Tensor:
    """The simulation steps as a textbook loop: SR steps and a task step with torch's SGD, in the configured order;
    fresh: a new SR optimiser every step, persistent: one of its own, shared: the task's."""
    t, spec = config.train, config.particle.spec()
    generator = torch.Generator().manual_seed(config.seed)  # the model's one generator: weights, then batches
    task = make_task(config.task.name, config.seed, "cpu", torch.float64)
    organism = Organism(layer_sizes(task.d_in, config.organism.width, config.organism.depth, task.d_out), spec)
    weights = init_weights(organism.n_particles, spec, generator, dtype=torch.float64).requires_grad_(True)
    task_optimizer = torch.optim.SGD([weights], lr=t.lr, momentum=t.momentum)
    own_sr_optimizer = torch.optim.SGD([weights], lr=t.lr, momentum=t.momentum)

    def self_train() -> None:
        optimizer = {
            "fresh": torch.optim.SGD([weights], lr=t.lr, momentum=t.momentum),
            "persistent": own_sr_optimizer,
            "shared": task_optimizer,
        }[t.sr_optimizer]
        for _ in range(t.n_sr):
            optimizer.zero_grad()
            (t.alpha * sr_loss(weights, spec).sum()).backward()
            optimizer.step()

    def train_task() -> None:
        x, y = task.sample_batch(config.task.batch_size, generator)
        task_optimizer.zero_grad()
        task.loss(organism.forward(weights, x), y).backward()
        task_optimizer.step()

    for _ in range(config.steps):
        for phase in (self_train, train_task) if t.order == "sr_first" else (train_task, self_train):
            phase()
    return weights.detach()


@pytest.mark.parametrize("sr_optimizer", SR_OPTIMIZERS)
@pytest.mark.parametrize("order", ORDERS)
def test_a_step_is_the_plain_loop(order, sr_optimizer):
    config = config_for(order, sr_optimizer)
    model = finish(OrganismModel(config))
    torch.testing.assert_close(model.weights.detach(), plain_loop(config), rtol=1e-9, atol=1e-12)


def test_every_choice_changes_the_training():
    finals = {
        (order, sr_optimizer): finish(OrganismModel(config_for(order, sr_optimizer))).weights.detach()
        for order in ORDERS
        for sr_optimizer in SR_OPTIMIZERS
    }
    values = list(finals.values())
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            assert (a - b).abs().max() > 1e-9
