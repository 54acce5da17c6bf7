"""The dense control (`mode: dense`): a plain bias-free MLP of the organism's layer sizes, trained like an organism.

Its connection weights are ordinary numbers, one per connection, held as a bank `[P, 1]` in the organism's particle-id
order (layer by layer, row-major over `[out, in]`), so the record has the organism's schema with these weights in the
place of the effective weights, and every reader of organism records reads it. It has no particles, so no kinds
(code -1), no SR loss (NaN) and no self-training. It is trained with the organism's optimiser, learning rate and seed on
the same batches: the model draws (and discards) the organism's particle initialisation from its generator first, so
the batch sequence that follows is the organism's.
"""

from __future__ import annotations

import itertools

import torch

from sim.config import Config
from sim.model import OrganismModel
from sim.organism import Layers
from sim.particles import ACTIVATIONS, ParticleSpec

NO_KIND = -1  # the kind code of every connection of the dense control


class DenseNetwork(Layers):
    """A bias-free MLP of layer sizes `[d_in, ..., d_out]` with the organism's residual skips and activation; its
    weights are a flat vector `[P]` (or a bank `[P, 1]`) in particle-id order, so an organism's effective weights
    drive it exactly as they drive the organism's fast path."""

    def __init__(self, sizes: list[int], residual: bool = False, activation: str = "none") -> None:
        super().__init__(sizes, residual, activation)

    def matrices(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """The weight matrix `[n_out, n_in]` of every layer, views of `weights [P]` or `[P, 1]`."""
        flat = weights.reshape(-1)
        return [
            flat[self.layer_slice(layer)].view(self.sizes[layer + 1], self.sizes[layer]) for layer in range(self.depth)
        ]

    def forward(self, weights: torch.Tensor, x: torch.Tensor, layer_inputs: list | None = None) -> torch.Tensor:
        """Output `[B, d_out]` for inputs `x [B, d_in]`; the input `[B, n_in]` of every layer is appended to
        `layer_inputs` when it is a list. Skips and activation follow `sim.organism.Organism.forward`."""
        act = ACTIVATIONS[self.activation]
        skip = None
        for layer, matrix in enumerate(self.matrices(weights)):
            if layer_inputs is not None:
                layer_inputs.append(x)
            middle = 0 < layer < self.depth - 1
            if self.residual and middle and (layer - 1) % 2 == 0 and layer + 1 < self.depth - 1:
                skip = x
            x = x @ matrix.T
            if skip is not None and (layer - 1) % 2 == 1:
                x = x + skip
                skip = None
            if act is not None and layer < self.depth - 1:
                x = act(x)
        return x


def init_dense_weights(
    sizes: list[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Connection weights `[P, 1]` drawn as `torch.nn.Linear` draws its own: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    layers = []
    for n_in, n_out in itertools.pairwise(sizes):
        bound = 1.0 / n_in**0.5
        u = torch.rand(n_out * n_in, generator=generator, device=device, dtype=dtype)
        layers.append((2 * u - 1) * bound)
    return torch.cat(layers).unsqueeze(1)


class DenseModel(OrganismModel):
    """The dense control of an organism config: same layer sizes, task, optimiser, learning rate, batches and seed."""

    mode = "dense"

    def __init__(self, config: Config, run_dir=None, resume: bool = False, agents: bool = False) -> None:
        # no particles, so no Mesa agents and no particle graph: `agents` is accepted and ignored
        super().__init__(config, run_dir=run_dir, resume=resume, agents=False)

    def _network(self, config: Config, spec: ParticleSpec) -> DenseNetwork:
        return DenseNetwork(self.sizes, config.organism.residual, config.organism.activation)

    def _initial_weights(self, n_particles: int) -> torch.Tensor:
        super()._initial_weights(n_particles)  # drawn and discarded: the batches that follow are the organism's
        init = torch.Generator(device=self.device).manual_seed(self.config.seed)
        return init_dense_weights(self.sizes, init, self.device, self.dtype)

    def _gate_threshold(self) -> float:
        return float("nan")  # no self-training: a NaN threshold never opens the gate (and `sr_active` stays 0)

    def gate_status(self) -> str | None:
        return None  # nothing waits for the gate

    def _self_train(self) -> torch.Tensor:
        return torch.full((), float("nan"), device=self.device)

    def _particle_state(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = torch.full((len(weights),), NO_KIND, dtype=torch.int8, device=weights.device)
        return kind, torch.full_like(weights[:, 0], float("nan")), weights[:, 0]
