"""The organism forward: a layered network whose every connection is a particle of the bank (docs/science.md §3).

Neuron o of layer l+1 sums `p_{o,i}(x_i)` over its incoming particles, where a particle carries x by evaluating itself
on the row `(0, ..., 0, x)`. Linear particles reduce to `a * x` with `a` the effective weight, so the fast path is one
batched product for all `a` followed by ordinary matmuls; the general path evaluates every particle on every value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from sim.particles import (
    ACTIVATIONS,
    ParticleSpec,
    effective_weights,
    kernel_effective_weights,
    task_sgd_,
    unpack,
    uses_kernels,
)


def skipped_pairs(depth: int) -> list[int]:
    """The first layer of every pair of middle layers that a residual skip goes around, for `depth` layers: 1, 3, 5, ...
    while the pair's second layer is still a middle one (the first and last layers never take part)."""
    return list(range(1, depth - 2, 2))


def check_residual_widths(sizes: list[int]) -> None:
    """ValueError unless the widths around every skipped pair of layer sizes `sizes` match (the skip adds them)."""
    for first in skipped_pairs(len(sizes) - 1):
        if sizes[first] != sizes[first + 2]:
            raise ValueError(
                f"organism.residual adds the input of layer {first} to the output of layer {first + 1}, which needs "
                f"equal widths, got {sizes[first]} and {sizes[first + 2]} (set organism.residual false)"
            )


class Layers:
    """The layout that organisms and the dense control share: layer sizes `[d_in, ..., d_out]`, one connection per
    (layer, out, in) numbered layer by layer, row-major over `[out, in]`; optional residual skips and activation."""

    def __init__(self, sizes: list[int], residual: bool, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"organism.activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.sizes = list(sizes)
        self.residual = residual
        self.activation = activation
        if residual:
            check_residual_widths(self.sizes)
        counts = [n_in * n_out for n_in, n_out in itertools.pairwise(self.sizes)]
        self.offsets = [0, *itertools.accumulate(counts)]  # connection id range of layer l: offsets[l]:offsets[l+1]

    @property
    def n_particles(self) -> int:
        """The number of connections (a particle each in an organism)."""
        return self.offsets[-1]

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    def layer_slice(self, layer: int) -> slice:
        return slice(self.offsets[layer], self.offsets[layer + 1])


class Organism(Layers):
    """An organism of layer sizes `[d_in, width, ..., d_out]` over a particle bank; holds no weights itself."""

    def __init__(self, sizes: list[int], spec: ParticleSpec, residual: bool = True, activation: str = "none") -> None:
        super().__init__(sizes, residual, activation)
        self.spec = spec

    def forward(
        self, weights: torch.Tensor, x: torch.Tensor, path: str = "auto", layer_inputs: list | None = None
    ) -> torch.Tensor:
        """Organism output `[B, d_out]` for inputs `x [B, d_in]` through the bank `weights [P, n]`.

        `path` is "fast" (effective weights; linear particles only), "general" or "auto". If `layer_inputs` is a list,
        the input `[B, n_in]` of every layer is appended to it (for task-contribution measurements).
        """
        if path == "auto":
            path = "fast" if self.spec.linear else "general"
        if path == "fast" and not self.spec.linear:
            raise ValueError("the fast path needs linear particles (particle.activation = 'none')")
        if path == "fast":
            return self.forward_effective(effective_weights(weights, self.spec), x, layer_inputs)

        def general(layer: int, x: torch.Tensor) -> torch.Tensor:
            return self._general_layer(weights[self.layer_slice(layer)], x, self.sizes[layer], self.sizes[layer + 1])

        return self._layers(general, x, layer_inputs)

    def forward_effective(
        self, effective: torch.Tensor, x: torch.Tensor, layer_inputs: list | None = None
    ) -> torch.Tensor:
        """The fast path from the effective weights `[P]` of linear particles: ordinary matmuls, `[B, d_out]`."""
        # one split, not a slice per layer: autograd then joins the layers' gradients with a single cat
        counts = [end - start for start, end in itertools.pairwise(self.offsets)]
        matrices = [a.view(n_out, n_in) for a, n_in, n_out in zip(effective.split(counts), self.sizes, self.sizes[1:])]
        return self._layers(lambda layer, x: x @ matrices[layer].T, x, layer_inputs)

    def _layers(self, layer_fn: Callable, x: torch.Tensor, layer_inputs: list | None) -> torch.Tensor:
        """`layer_fn(layer, x)` layer after layer, with the residual skips and activations between them."""
        act = ACTIVATIONS[self.activation]
        skip = None
        pairs = skipped_pairs(self.depth)
        for layer in range(self.depth):
            if layer_inputs is not None:
                layer_inputs.append(x)
            # the reference adds a skip around every pair of middle layers
            if self.residual and layer in pairs:
                skip = x
            x = layer_fn(layer, x)
            if skip is not None and layer - 1 in pairs:
                x = x + skip
                skip = None
            if act is not None and layer < self.depth - 1:
                x = act(x)
        return x

    def _general_layer(self, weights: torch.Tensor, x: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
        """Every particle of one layer evaluated on every batch value of its source neuron, then summed per target."""
        W1, W2, W3 = unpack(weights, self.spec)
        act = ACTIVATIONS[self.spec.activation]
        source = x.T.repeat(n_out, 1).unsqueeze(-1)  # [P_l, B, 1]: particle (o, i) reads x[:, i]
        hidden = source * W1[:, :, -1].unsqueeze(1)  # [P_l, B, h]: only the last input slot is non-zero
        if act is not None:
            hidden = act(hidden)
        hidden = hidden @ W2.transpose(1, 2)
        if act is not None:
            hidden = act(hidden)
        carried = (hidden @ W3.transpose(1, 2)).squeeze(-1)  # [P_l, B]
        return carried.view(n_out, n_in, -1).sum(dim=1).T  # [B, n_out]


def sgd_step_(
    network,
    weights: torch.Tensor,
    momentum_buffer: torch.Tensor,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    lr: float,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task SGD-with-momentum step (torch.optim.SGD's) of `network` (an `Organism`, or any network with
    `forward(weights, x)`) on its bank `weights` and momentum buffer, in place: the output for `x`, `loss_fn(output)`,
    its gradient, the update. Returns (loss, output), detached.

    An organism of linear particles on the CPU runs autograd only through the dense network of effective weights; the
    gradient dL/da then reaches W1, W2, W3 in closed form, fused with the update in one pass over the bank
    (sim.kernels). Otherwise autograd runs through the whole forward.
    """
    bank = weights.detach()
    if isinstance(network, Organism) and uses_kernels(bank, network.spec):
        effective = kernel_effective_weights(bank, network.spec).requires_grad_(True)  # [P]
        output = network.forward_effective(effective, x)
        loss = loss_fn(output)
        (upstream,) = torch.autograd.grad(loss, effective)
        task_sgd_(bank, momentum_buffer, upstream, network.spec, lr, momentum)
        return loss.detach(), output.detach()
    with torch.enable_grad():
        leaf = weights if weights.requires_grad else bank.requires_grad_(True)
        output = network.forward(leaf, x)
        loss = loss_fn(output)
        (grad,) = torch.autograd.grad(loss, leaf)
    with torch.no_grad():
        momentum_buffer.mul_(momentum).add_(grad)
        bank.sub_(momentum_buffer, alpha=lr)
    return loss.detach(), output.detach()
