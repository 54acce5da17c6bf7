"""The organism forward, fast and general path, against the per-connection reference in tests/reference.py."""

from __future__ import annotations

import pytest
import reference
import torch
from helpers import assert_matches, random_bank
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import build_config
from sim.model import OrganismModel
from sim.organism import Organism
from sim.particles import ParticleSpec
from sim.topology import layer_sizes, particle_table

ARITHMETIC = [2, 3, 3, 1]
MNIST = [225, 5, 5, 10]


def random_inputs(batch: int, d_in: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(batch, d_in, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_forward_and_grad(
    bank: torch.Tensor, spec: ParticleSpec, sizes: list[int], x: torch.Tensor, upstream: torch.Tensor, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference output `[B, d_out]` and gradient of `sum(output * upstream)` w.r.t. every particle `[P, n]`."""
    k, h = spec.weight_interface, spec.hidden
    particles = [reference.ReferenceParticle.from_row(row.double(), k, h, spec.activation) for row in bank]
    out = reference.organism_forward(particles, sizes, x.double(), **options)
    (out * upstream.double()).sum().backward()
    grad = torch.tensor([p.flat_grad() for p in particles], dtype=torch.float64)
    return out.detach(), grad


def forward_and_grad(
    organism: Organism, bank: torch.Tensor, x: torch.Tensor, upstream: torch.Tensor, path: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = bank.clone().requires_grad_(True)
    out = organism.forward(weights, x, path=path)
    (out * upstream).sum().backward()
    return out.detach(), weights.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("sizes", "particle_activation", "organism_activation", "path"),
    [
        (ARITHMETIC, "none", "none", "fast"),
        (ARITHMETIC, "none", "none", "general"),
        ([3, 2, 4, 2], "none", "tanh", "fast"),
        ([3, 2, 4, 2], "tanh", "none", "general"),
        ([3, 2, 4, 2], "tanh", "relu", "auto"),
        ([3, 2, 4, 2], "sigmoid", "leaky_relu", "general"),
        ([3, 2, 4, 2], "leaky_relu", "sigmoid", "auto"),
        ([3, 2, 4, 2], "none", "sigmoid", "fast"),
    ],
)
def test_forward_and_gradient_match_the_reference(sizes, particle_activation, organism_activation, path, dtype):
    spec = ParticleSpec(5, 3, particle_activation)
    organism = Organism(sizes, spec, activation=organism_activation)
    bank = random_bank(organism.n_particles, spec, dtype, seed=1)
    x = random_inputs(7, sizes[0], dtype, seed=2)
    upstream = random_inputs(7, sizes[-1], dtype, seed=3)
    out, grad = forward_and_grad(organism, bank, x, upstream, path)
    expected_out, expected_grad = reference_forward_and_grad(
        bank, spec, sizes, x, upstream, activation=organism_activation
    )
    assert out.shape == (7, sizes[-1]) and out.dtype == dtype
    assert_matches(out, expected_out, dtype)
    assert_matches(grad, expected_grad, dtype)


def test_fast_path_equals_general_path_on_the_mnist_organism():
    spec = ParticleSpec(5, 5)
    organism = Organism(MNIST, spec)
    assert organism.n_particles == 1200
    bank = random_bank(1200, spec, torch.float64, seed=4)
    x = torch.rand(16, 225, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    upstream = random_inputs(16, 10, torch.float64, seed=6)
    fast_out, fast_grad = forward_and_grad(organism, bank, x, upstream, "fast")
    general_out, general_grad = forward_and_grad(organism, bank, x, upstream, "general")
    torch.testing.assert_close(fast_out, general_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_grad, general_grad, rtol=1e-10, atol=1e-10)
    assert fast_grad.abs().sum() > 0


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    k=st.integers(4, 6),
    h=st.integers(1, 4),
    particle_activation=st.sampled_from(["none", "tanh"]),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_the_reference(sizes, k, h, particle_activation, seed):
    spec = ParticleSpec(k, h, particle_activation)
    organism = Organism(sizes, spec, residual=False)
    bank = random_bank(organism.n_particles, spec, torch.float64, seed)
    x = random_inputs(3, sizes[0], torch.float64, seed + 1)
    upstream = random_inputs(3, sizes[-1], torch.float64, seed + 2)
    out, grad = forward_and_grad(organism, bank, x, upstream)
    expected_out, expected_grad = reference_forward_and_grad(bank, spec, sizes, x, upstream)
    assert_matches(out, expected_out, torch.float64)
    assert_matches(grad, expected_grad, torch.float64)
    if spec.linear:
        general_out, general_grad = forward_and_grad(organism, bank, x, upstream, "general")
        assert_matches(general_out, expected_out, torch.float64)
        assert_matches(general_grad, expected_grad, torch.float64)


def test_residual_has_no_effect_at_depth_three():
    spec = ParticleSpec(5, 3)
    bank = random_bank(18, spec, torch.float64, seed=7)
    x = random_inputs(5, 2, torch.float64, seed=8)
    plain = Organism(ARITHMETIC, spec, residual=False).forward(bank, x)
    torch.testing.assert_close(Organism(ARITHMETIC, spec, residual=True).forward(bank, x), plain, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [4, 5, 6])
def test_residual_skips_match_the_reference(depth):
    sizes = layer_sizes(2, 3, depth, 2)
    spec = ParticleSpec(5, 3)
    organism = Organism(sizes, spec, residual=True, activation="tanh")
    bank = random_bank(organism.n_particles, spec, torch.float64, seed=depth)
    x = random_inputs(4, 2, torch.float64, seed=9)
    upstream = random_inputs(4, 2, torch.float64, seed=10)
    out, grad = forward_and_grad(organism, bank, x, upstream)
    expected_out, expected_grad = reference_forward_and_grad(
        bank, spec, sizes, x, upstream, activation="tanh", residual=True
    )
    assert_matches(out, expected_out, torch.float64)
    assert_matches(grad, expected_grad, torch.float64)
    without = Organism(sizes, spec, residual=False, activation="tanh").forward(bank, x)
    assert (out - without).abs().max() > 1e-6  # the skip is really there


def plain_residual_forward(matrices: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference's skip rule, written from its description: a first layer, then the middle layers numbered
    1, 2, ...: before an odd-numbered one its input is kept, after an even-numbered one the kept input is added; then
    the last layer. `matrices[l]` is layer l's `[n_out, n_in]` weight matrix (linear particles, no activation)."""
    x = x @ matrices[0].T
    kept = None
    for number, matrix in enumerate(matrices[1:-1], start=1):
        if number % 2 == 1:
            kept = x
        x = x @ matrix.T
        if number % 2 == 0:
            x = x + kept
    return x @ matrices[-1].T


def test_the_default_organism_has_the_reference_skips_at_depth_five():
    config = build_config(overrides=[("task.name", "arithmetic"), ("organism.depth", 5)])
    assert config.organism.residual  # the reference builds its organisms with residual skips
    model = OrganismModel(config, agents=False)
    sizes = model.sizes
    assert sizes == [2, 3, 3, 3, 3, 1]
    bank = random_bank(model.n_particles, model.spec, torch.float64, seed=21)
    k, h = model.spec.weight_interface, model.spec.hidden
    effective = [reference.effective_weight(reference.ReferenceParticle.from_row(row, k, h)) for row in bank]
    matrices, offset = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        matrices.append(torch.tensor(effective[offset : offset + n_in * n_out], dtype=torch.float64).view(n_out, n_in))
        offset += n_in * n_out
    x = random_inputs(6, 2, torch.float64, seed=22)
    expected = plain_residual_forward(matrices, x)
    torch.testing.assert_close(model.organism.forward(bank, x), expected, rtol=1e-12, atol=1e-12)
    without = Organism(sizes, model.spec, residual=False).forward(bank, x)
    assert (expected - without).abs().max() > 1e-3  # the skip changes the output


def test_residual_skips_need_equal_widths_around_each_pair():
    with pytest.raises(ValueError, match="organism.residual .* equal widths, got 3 and 4"):
        Organism([2, 3, 5, 4, 1], ParticleSpec(5, 3))
    Organism([2, 3, 5, 4, 1], ParticleSpec(5, 3), residual=False)


def test_each_particle_carries_its_topology_connection():
    """Only particle p alive with effective weight 1: input neuron `source[p]` drives output neuron `target[p]`."""
    sizes = [4, 3]
    k, h = 5, 2
    spec = ParticleSpec(k, h)
    organism = Organism(sizes, spec)
    table = particle_table(sizes)
    for p in range(organism.n_particles):
        bank = torch.zeros(organism.n_particles, spec.n_weights, dtype=torch.float64)
        bank[p, k - 1] = 1.0  # W1[0, k-1]
        bank[p, k * h] = 1.0  # W2[0, 0]
        bank[p, k * h + h * h] = 1.0  # W3[0, 0]
        out = organism.forward(bank, torch.eye(4, dtype=torch.float64))  # [4 inputs, 3 outputs]
        expected = torch.zeros(4, 3, dtype=torch.float64)
        expected[table.source[p], table.target[p]] = 1.0
        torch.testing.assert_close(out, expected)


def test_layer_inputs_are_recorded():
    spec = ParticleSpec(5, 3)
    organism = Organism(ARITHMETIC, spec)
    bank = random_bank(18, spec, torch.float32, seed=11)
    x = random_inputs(6, 2, torch.float32, seed=12)
    inputs: list[torch.Tensor] = []
    out = organism.forward(bank, x, layer_inputs=inputs)
    assert [t.shape for t in inputs] == [(6, 2), (6, 3), (6, 3)]
    torch.testing.assert_close(inputs[0], x)
    last = organism.layer_slice(2)
    torch.testing.assert_close(Organism([3, 1], spec).forward(bank[last], inputs[2]), out)


def test_fast_path_refuses_nonlinear_particles():
    spec = ParticleSpec(5, 3, "tanh")
    organism = Organism(ARITHMETIC, spec)
    with pytest.raises(ValueError, match="fast path"):
        organism.forward(random_bank(18, spec, torch.float32, seed=13), torch.zeros(2, 2), path="fast")
