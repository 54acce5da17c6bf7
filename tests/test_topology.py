"""Organism and soup topologies: particle counts and ids, neighbourhoods, the CSR adjacency (docs/science.md §7)."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.organism import Organism
from sim.particles import ParticleSpec
from sim.topology import (
    edges_csr,
    layer_sizes,
    neighbour_csr,
    organism_graph,
    particle_edges,
    particle_graph,
    particle_graph_size,
    particle_table,
    soup_graph,
)

MNIST = layer_sizes(225, 5, 3, 10)
ARITHMETIC = layer_sizes(2, 3, 3, 1)


def test_layer_sizes_of_the_two_reference_organisms():
    assert MNIST == [225, 5, 5, 10]
    assert ARITHMETIC == [2, 3, 3, 1]
    with pytest.raises(ValueError):
        layer_sizes(2, 0, 3, 1)
    assert layer_sizes(784, 5, 3, 10, hidden=[300, 100]) == [784, 300, 100, 10]  # LeNet-300-100
    with pytest.raises(ValueError):
        layer_sizes(784, 5, 3, 10, hidden=[300, 0])


@pytest.mark.parametrize(("sizes", "count"), [(MNIST, 1200), (ARITHMETIC, 18), ([3, 1, 4], 7)])
def test_particle_counts(sizes, count):
    """One particle per connection: MNIST 225*5 + 5*5 + 5*10, arithmetic 2*3 + 3*3 + 3*1."""
    assert particle_table(sizes).n_particles == count
    assert organism_graph(sizes).number_of_edges() == count
    assert Organism(sizes, ParticleSpec()).n_particles == count


@pytest.mark.parametrize("sizes", [MNIST, ARITHMETIC, [3, 1, 4]])
def test_edge_particle_ids_match_the_particle_table(sizes):
    table = particle_table(sizes)
    graph = organism_graph(sizes)
    assert graph.number_of_nodes() == sum(sizes)
    seen = set()
    for (l_in, source), (l_out, target), p in graph.edges(data="particle"):
        assert (l_in, l_out) == (table.layer[p], table.layer[p] + 1)
        assert (source, target) == (table.source[p], table.target[p])
        seen.add(p)
    assert seen == set(range(table.n_particles))


@pytest.mark.parametrize("sizes", [MNIST, ARITHMETIC])
def test_particle_ids_run_layer_by_layer_row_major_over_out_in(sizes):
    """The order the organism relies on when it reshapes a layer's effective weights into `[out, in]`."""
    table = particle_table(sizes)
    organism = Organism(sizes, ParticleSpec())
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        ids = range(organism.n_particles)[organism.layer_slice(layer)]
        expected = [(o, i) for o in range(n_out) for i in range(n_in)]
        assert [(table.target[p], table.source[p]) for p in ids] == expected
        assert all(table.layer[p] == layer for p in ids)


def brute_force_neighbours(sizes: list[int], neighbourhood: str) -> set[frozenset[int]]:
    """Unordered neighbour pairs straight from the definition, over every pair of particles."""
    table = particle_table(sizes)
    pairs = set()
    for a, b in itertools.combinations(range(table.n_particles), 2):
        neurons_a = {(table.layer[a], table.source[a]), (table.layer[a] + 1, table.target[a])}
        neurons_b = {(table.layer[b], table.source[b]), (table.layer[b] + 1, table.target[b])}
        if neighbourhood == "shared_neuron":
            close = bool(neurons_a & neurons_b)
        elif neighbourhood == "same_target":
            close = (table.layer[a], table.target[a]) == (table.layer[b], table.target[b])
        else:
            close = table.layer[a] == table.layer[b]
        if close:
            pairs.add(frozenset((a, b)))
    return pairs


def edge_set(graph: nx.Graph) -> set[frozenset[int]]:
    return {frozenset(edge) for edge in graph.edges()}


@pytest.mark.parametrize("neighbourhood", ["shared_neuron", "same_target", "same_layer"])
@pytest.mark.parametrize("sizes", [ARITHMETIC, [4, 2, 3], [3, 5]])
def test_neighbourhoods_follow_their_definition(sizes, neighbourhood):
    graph = particle_graph(organism_graph(sizes), neighbourhood)
    assert set(graph.nodes()) == set(range(particle_table(sizes).n_particles))
    assert edge_set(graph) == brute_force_neighbours(sizes, neighbourhood)


def test_shared_neuron_is_the_line_graph_of_the_undirected_neuron_graph():
    neurons = organism_graph(ARITHMETIC)
    line = nx.line_graph(neurons.to_undirected())
    particle_of = {frozenset(edge): p for *edge, p in neurons.edges(data="particle")}
    expected = {frozenset((particle_of[frozenset(a)], particle_of[frozenset(b)])) for a, b in line.edges()}
    assert edge_set(particle_graph(neurons, "shared_neuron")) == expected


def test_mnist_neighbourhood_degrees():
    """A first-layer particle shares its pixel with 4 others and its hidden neuron with 224 + 5 others."""
    graph = particle_graph(organism_graph(MNIST))
    table = particle_table(MNIST)
    first = next(p for p in range(1200) if table.layer[p] == 0)
    assert graph.degree(first) == 4 + 224 + 5
    last = 1199  # hidden 4 -> output 9: 4 other sources of output 9, 9 other outputs of hidden 4, 5 inputs of hidden 4
    assert (table.layer[last], table.source[last], table.target[last]) == (2, 4, 9)
    assert graph.degree(last) == 4 + 9 + 5


def test_unknown_neighbourhood_is_refused():
    with pytest.raises(ValueError, match="neighbourhood"):
        particle_graph(organism_graph(ARITHMETIC), "everyone")


def assert_csr_matches(graph: nx.Graph) -> None:
    indptr, indices = neighbour_csr(graph)
    assert indptr.dtype == indices.dtype == torch.int64
    assert indptr.shape == (graph.number_of_nodes() + 1,)
    assert int(indptr[-1]) == indices.numel() == 2 * graph.number_of_edges()
    for node in graph.nodes():
        row = indices[indptr[node] : indptr[node + 1]].tolist()
        assert len(row) == len(set(row))
        assert set(row) == set(graph.neighbors(node))


@pytest.mark.parametrize("neighbourhood", ["shared_neuron", "same_target", "same_layer"])
def test_neighbour_csr_matches_the_organism_graph(neighbourhood):
    assert_csr_matches(particle_graph(organism_graph(ARITHMETIC), neighbourhood))


@settings(max_examples=15, deadline=None)
@given(size=st.integers(3, 40), degree=st.integers(1, 6), seed=st.integers(0, 1000))
def test_soup_graph_is_regular_and_its_csr_matches(size, degree, seed):
    if degree >= size or (size * degree) % 2:
        with pytest.raises(ValueError):
            soup_graph(size, degree, seed)
        return
    graph = soup_graph(size, degree, seed)
    assert graph.number_of_nodes() == size
    assert all(d == degree for _, d in graph.degree())
    assert_csr_matches(graph)


def test_complete_soup_graph_links_every_pair():
    graph = soup_graph(10, 4, seed=0, kind="complete")
    assert graph.number_of_nodes() == 10 and graph.number_of_edges() == 45
    with pytest.raises(ValueError, match="soup.graph"):
        soup_graph(10, 4, seed=0, kind="ring")


@pytest.mark.parametrize("neighbourhood", ["shared_neuron", "same_target", "same_layer"])
@pytest.mark.parametrize("sizes", [[2, 3, 3, 1], [6, 4, 5, 3], [3, 1]])
def test_particle_graph_size_counts_the_edges_without_building_the_graph(sizes, neighbourhood):
    graph = particle_graph(organism_graph(sizes), neighbourhood)
    assert particle_graph_size(sizes, neighbourhood) == graph.number_of_edges()


@pytest.mark.parametrize("neighbourhood", ["shared_neuron", "same_target", "same_layer"])
@pytest.mark.parametrize("sizes", [[2, 3, 3, 1], [6, 4, 5, 3], [3, 1], MNIST])
def test_particle_edges_and_their_csr_are_the_graphs(sizes, neighbourhood):
    """The edges and the CSR computed from the layer sizes are the networkx graph's, the CSR array for array (so
    the events draw the same neighbours)."""
    graph = particle_graph(organism_graph(sizes), neighbourhood)
    edges = particle_edges(sizes, neighbourhood)
    assert edges.dtype == np.int64 and edges.shape == (graph.number_of_edges(), 2)
    assert (edges[:, 0] < edges[:, 1]).all() and {frozenset(e) for e in edges.tolist()} == edge_set(graph)
    for mine, theirs in zip(edges_csr(edges, graph.number_of_nodes()), neighbour_csr(graph), strict=True):
        assert torch.equal(mine, theirs)
