"""The Mesa agent: one particle on its cell of the particle graph, a thin view into the model's bank."""

from __future__ import annotations

import torch
from mesa.discrete_space import FixedAgent

from sim.particles import KIND_NAMES, classify, effective_weights, sr_loss


class ParticleAgent(FixedAgent):
    """A particle: row `index` of the model's weight bank. Every property reads the bank's live state."""

    def __init__(self, model, index: int, cell) -> None:
        super().__init__(model)
        self.index = index
        self.cell = cell

    @property
    def weights(self) -> torch.Tensor:
        """This particle's weights `[n]`: a view of the bank row, not a copy."""
        return self.model.weights.detach()[self.index]

    def _row(self) -> torch.Tensor:
        return self.model.weights.detach()[self.index : self.index + 1]  # [1, n]

    @property
    def kind(self) -> str:
        """Fixpoint kind of the particle's current weights (docs/science.md §2)."""
        return KIND_NAMES[int(classify(self._row(), self.model.spec)[0])]

    @property
    def sr_loss(self) -> float:
        """Current self-replication loss."""
        return float(sr_loss(self._row(), self.model.spec)[0])

    @property
    def effective_weight(self) -> float:
        """Current effective weight: the factor the particle applies to the value it carries (docs/science.md §3)."""
        return float(effective_weights(self._row(), self.model.spec)[0])

    def step(self) -> None:
        """Particles are trained in one batched update by the model; an agent has nothing to do on its own."""
