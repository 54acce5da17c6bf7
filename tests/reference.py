"""A deliberately plain, per-particle reference of docs/science.md §1-§3, written from the text, independent of `sim`.

One `torch.nn.Module` per particle, Python loops everywhere. The batched bank in `sim` is checked against it; nothing
here may import from `sim`, or a shared mistake would go unnoticed.
"""

from __future__ import annotations

import torch
from torch import nn

POSITION_EPS = 1e-8  # docs/science.md §1: "plus a tiny epsilon, so no column is exactly zero"
KIND_EPS = 1e-5  # docs/science.md §2
ACTIVATIONS = {
    "none": None,
    "tanh": torch.tanh,
    "relu": lambda x: torch.where(x > 0, x, 0.0 * x),
    "sigmoid": lambda x: 1.0 / (1.0 + torch.exp(-x)),
    "leaky_relu": lambda x: torch.where(x > 0, x, 0.01 * x),  # torch's default negative slope
}


class ReferenceParticle(nn.Module):
    """One particle `p: R^k -> R`: Linear(k, h), Linear(h, h), Linear(h, 1), no biases, optional activation."""

    def __init__(self, k: int, h: int, activation: str = "none", dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.k, self.h = k, h
        self.act = ACTIVATIONS[activation]
        self.layers = nn.ModuleList(
            [
                nn.Linear(k, h, bias=False, dtype=dtype),
                nn.Linear(h, h, bias=False, dtype=dtype),
                nn.Linear(h, 1, bias=False, dtype=dtype),
            ]
        )

    @classmethod
    def from_row(cls, row: torch.Tensor, k: int, h: int, activation: str = "none") -> ReferenceParticle:
        """A particle whose weights are one bank row, read in the documented order: W1 `[h, k]` row-major, W2, W3."""
        particle = cls(k, h, activation, dtype=row.dtype)
        values = row.detach().tolist()
        index = 0
        with torch.no_grad():
            for layer in particle.layers:
                n_out, n_in = layer.weight.shape
                for r in range(n_out):
                    for c in range(n_in):
                        layer.weight[r, c] = values[index]
                        index += 1
        assert index == len(values), "row length does not match k*h + h*h + h"
        return particle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`p(x)` for rows `x [m, k]` -> `[m]`."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.act is not None and i < 2:
                x = self.act(x)
        return x.squeeze(-1)

    def flat_weights(self) -> list[float]:
        """The weights in the documented order, as plain floats."""
        values = []
        for layer in self.layers:
            weight = layer.weight.detach()
            n_out, n_in = weight.shape
            for r in range(n_out):
                for c in range(n_in):
                    values.append(float(weight[r, c]))
        return values

    def flat_grad(self) -> list[float]:
        """The gradients of the weights in the documented order (zeros where none was computed)."""
        values = []
        for layer in self.layers:
            n_out, n_in = layer.weight.shape
            grad = layer.weight.grad if layer.weight.grad is not None else torch.zeros_like(layer.weight)
            for r in range(n_out):
                for c in range(n_in):
                    values.append(float(grad[r, c]))
        return values


def coordinate_rows(weights: list[float], k: int, h: int) -> list[list[float]]:
    """`c_j = (w_j, layer_j, row_j, col_j, 0, ...)` of length k, position columns divided by their max + eps."""
    rows = []
    index = 0
    for layer, (n_out, n_in) in enumerate([(h, k), (h, h), (1, h)]):
        for r in range(n_out):
            for c in range(n_in):
                rows.append([weights[index], float(layer), float(r), float(c)] + [0.0] * (k - 4))
                index += 1
    for column in (1, 2, 3):
        largest = max(row[column] for row in rows)
        for row in rows:
            row[column] = row[column] / (largest + POSITION_EPS)
    return rows


def self_application(particle: ReferenceParticle, weights: list[float] | None = None) -> list[float]:
    """`p(c_j)` for the coordinate rows of `weights` (by default the particle's own), evaluated by `particle`."""
    weights = particle.flat_weights() if weights is None else weights
    rows = coordinate_rows(weights, particle.k, particle.h)
    dtype = particle.layers[0].weight.dtype
    with torch.no_grad():
        return particle(torch.tensor(rows, dtype=dtype)).tolist()


def sr_loss(particle: ReferenceParticle) -> torch.Tensor:
    """`mean_j (p(c_j) - w_j)^2` with inputs and targets as plain constants: autograd reaches only the parameters."""
    weights = particle.flat_weights()
    dtype = particle.layers[0].weight.dtype
    inputs = torch.tensor(coordinate_rows(weights, particle.k, particle.h), dtype=dtype)
    targets = torch.tensor(weights, dtype=dtype)
    return ((particle(inputs) - targets) ** 2).mean()


def effective_weight(particle: ReferenceParticle) -> float:
    """`p((0, ..., 0, 1))`."""
    unit = [[0.0] * (particle.k - 1) + [1.0]]
    with torch.no_grad():
        return float(particle(torch.tensor(unit, dtype=particle.layers[0].weight.dtype))[0])


def kind(particle: ReferenceParticle, eps: float = KIND_EPS) -> str:
    """The first matching kind of docs/science.md §2."""
    weights = particle.flat_weights()
    if any(w != w or abs(w) == float("inf") for w in weights):
        return "divergent"
    if all(abs(w) < eps for w in weights):
        return "zero"
    once = self_application(particle)
    if all(abs(a - w) < eps for a, w in zip(once, weights, strict=True)):
        return "self_replicator"
    twice = self_application(particle, once)
    if all(abs(a - w) < eps for a, w in zip(twice, weights, strict=True)):
        return "self_replicator_2nd"
    return "other"


def organism_forward(
    particles: list[ReferenceParticle],
    sizes: list[int],
    x: torch.Tensor,
    activation: str = "none",
    residual: bool = False,
) -> torch.Tensor:
    """Organism output `[B, d_out]`: every connection i -> o of every layer is one particle, evaluated on
    `(0, ..., 0, x_i)`; neuron o sums its incoming particles; the activation sits between layers, not after the last.

    Particle ids run layer by layer and, inside a layer, over targets o then sources i (id = offset + o * n_in + i).
    With `residual`, the middle layers (those from hidden to hidden neurons: 1 .. depth-2) are taken in pairs
    (1, 2), (3, 4), ...; a complete pair's input is added to its output before that output's activation.
    """
    act = ACTIVATIONS[activation]
    depth = len(sizes) - 1
    middle = list(range(1, depth - 1))
    pairs = [(middle[i], middle[i + 1]) for i in range(0, len(middle) - 1, 2)]
    skip_from = {first: second for first, second in pairs}
    skips = {}
    offset = 0
    for layer in range(depth):
        if residual and layer in skip_from:
            skips[skip_from[layer]] = x
        n_in, n_out = sizes[layer], sizes[layer + 1]
        outputs = []
        for o in range(n_out):
            total = torch.zeros(x.shape[0], dtype=x.dtype)
            for i in range(n_in):
                particle = particles[offset + o * n_in + i]
                rows = torch.zeros(x.shape[0], particle.k, dtype=x.dtype)
                rows[:, -1] = x[:, i]
                total = total + particle(rows)
            outputs.append(total)
        offset += n_in * n_out
        x = torch.stack(outputs, dim=1)
        if layer in skips:
            x = x + skips.pop(layer)
        if act is not None and layer < depth - 1:
            x = act(x)
    return x
