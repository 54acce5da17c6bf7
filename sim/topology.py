"""Topologies as networkx graphs: the organism's neuron DiGraph, the particle graph over it, and soup graphs.

The organism is a DiGraph of neurons `(layer, index)`; every edge `(l, i) -> (l + 1, o)` carries one particle id
(docs/science.md §7). Particle ids run layer by layer and, inside a layer, row-major over `[out, in]`, so that a layer's
effective weights reshape directly into its `[out, in]` weight matrix.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

NEIGHBOURHOODS = ("shared_neuron", "same_target", "same_layer")


def layer_sizes(d_in: int, width: int, depth: int, d_out: int, hidden: list[int] | None = None) -> list[int]:
    """Neuron counts of an organism with `depth` layers of particles: `[d_in, width, ..., width, d_out]`, or
    `[d_in, *hidden, d_out]` when a list of hidden widths is given (it overrides `width` and `depth`)."""
    if hidden is not None:
        if not hidden or min(hidden) < 1 or min(d_in, d_out) < 1:
            raise ValueError(f"organism sizes must be positive, got d_in={d_in} hidden={hidden} d_out={d_out}")
        return [d_in, *hidden, d_out]
    if min(d_in, width, d_out) < 1 or depth < 1:
        raise ValueError(f"organism sizes must be positive, got d_in={d_in} width={width} depth={depth} d_out={d_out}")
    return [d_in] + [width] * (depth - 1) + [d_out]


@dataclass(frozen=True)
class ParticleTable:
    """Where each particle sits: its layer and the neuron indices it connects, arrays of length P."""

    layer: np.ndarray
    source: np.ndarray
    target: np.ndarray

    @property
    def n_particles(self) -> int:
        return len(self.layer)


def particle_table(sizes: list[int]) -> ParticleTable:
    """Layer, source neuron and target neuron of every particle, in particle-id order."""
    layer, source, target = [], [], []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        out_idx, in_idx = np.meshgrid(np.arange(n_out), np.arange(n_in), indexing="ij")
        layer.append(np.full(n_in * n_out, index))
        source.append(in_idx.ravel())
        target.append(out_idx.ravel())
    return ParticleTable(np.concatenate(layer), np.concatenate(source), np.concatenate(target))


def organism_graph(sizes: list[int]) -> nx.DiGraph:
    """DiGraph of neurons `(layer, index)`; edge attribute `particle` is the particle id carried by that connection."""
    graph = nx.DiGraph()
    for index, n in enumerate(sizes):
        graph.add_nodes_from(((index, i) for i in range(n)), layer=index)
    table = particle_table(sizes)
    graph.add_edges_from(
        ((layer, s), (layer + 1, t), {"particle": p})
        for p, (layer, s, t) in enumerate(zip(table.layer.tolist(), table.source.tolist(), table.target.tolist()))
    )
    return graph


def particle_graph(neurons: nx.DiGraph, neighbourhood: str = "shared_neuron") -> nx.Graph:
    """Undirected graph over particle ids: particles are neighbours when they share a neuron (the line graph of the
    neuron graph), share their target neuron (`same_target`), or sit in the same layer (`same_layer`)."""
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"events.neighbourhood must be one of {NEIGHBOURHOODS} for organisms, got {neighbourhood!r}")
    groups: dict[object, list[int]] = {}
    for u, v, p in neurons.edges(data="particle"):
        if neighbourhood == "shared_neuron":
            keys = (u, v)
        elif neighbourhood == "same_target":
            keys = (v,)
        else:
            keys = (u[0],)
        for key in keys:
            groups.setdefault(key, []).append(p)
    graph = nx.Graph()
    graph.add_nodes_from(range(neurons.number_of_edges()))
    for members in groups.values():
        graph.add_edges_from(itertools.combinations(members, 2))
    return graph


def particle_graph_size(sizes: list[int], neighbourhood: str = "shared_neuron") -> int:
    """The number of edges `particle_graph` would have for an organism of layer `sizes`, without building it: the
    pairs of particles in each group (two particles share at most one neuron, so no pair is counted twice)."""
    pairs = 0
    for layer, width in enumerate(sizes):
        fan_in = sizes[layer - 1] if layer > 0 else 0
        fan_out = sizes[layer + 1] if layer + 1 < len(sizes) else 0
        group = {"shared_neuron": fan_in + fan_out, "same_target": fan_in}.get(neighbourhood)
        if group is not None:
            pairs += width * group * (group - 1) // 2
    if neighbourhood == "same_layer":
        pairs = sum(a * b * (a * b - 1) // 2 for a, b in itertools.pairwise(sizes))
    return pairs


def particle_edges(sizes: list[int], neighbourhood: str = "shared_neuron") -> np.ndarray:
    """The edges of `particle_graph(organism_graph(sizes), neighbourhood)` as particle-id pairs `[E, 2]` (int64, the
    smaller id first, sorted), computed from the layer sizes without building a graph (milliseconds, where the
    networkx line graph of the MNIST organism takes a third of a second)."""
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"events.neighbourhood must be one of {NEIGHBOURHOODS} for organisms, got {neighbourhood!r}")
    offsets = [0, *itertools.accumulate(a * b for a, b in itertools.pairwise(sizes))]
    groups = []  # [n_groups, group_size] particle ids: every pair inside a row is an edge
    if neighbourhood == "same_layer":
        groups = [np.arange(offsets[layer], offsets[layer + 1])[None, :] for layer in range(len(sizes) - 1)]
    else:  # one group per neuron: the particles into it, and (shared_neuron) those out of it
        for layer, width in enumerate(sizes):
            neuron = np.arange(width)[:, None]
            members = []
            if layer > 0:  # particle (target o, source i) of layer l - 1 has id offsets[l - 1] + o * n_in + i
                n_in = sizes[layer - 1]
                members.append(offsets[layer - 1] + neuron * n_in + np.arange(n_in)[None, :])  # [width, n_in]
            if layer + 1 < len(sizes) and neighbourhood == "shared_neuron":
                members.append(offsets[layer] + np.arange(sizes[layer + 1])[None, :] * width + neuron)  # [width, n_out]
            if members:
                groups.append(np.concatenate(members, axis=1))
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for members in groups:
        first, second = np.triu_indices(members.shape[1], 1)
        pairs.append(np.stack([members[:, first].ravel(), members[:, second].ravel()], axis=1))
    edges = np.sort(np.concatenate(pairs).astype(np.int64), axis=1)
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]


def edges_csr(edges: np.ndarray, n_nodes: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR adjacency `(indptr [P + 1], indices [2E])` of undirected `edges [E, 2]`, each row's neighbours in
    increasing order: the same arrays as `neighbour_csr` of the graph with these edges."""
    both = np.concatenate([edges, edges[:, ::-1]]).astype(np.int64)  # [2E, 2]
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    indptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(both[:, 0], minlength=n_nodes), out=indptr[1:])
    return torch.as_tensor(indptr, device=device), torch.as_tensor(both[:, 1].copy(), device=device)


def soup_graph(size: int, degree: int, seed: int, kind: str = "regular") -> nx.Graph:
    """The soup's neighbourhood over `size` free particles: a random `degree`-regular graph (`regular`), or the
    complete graph (`complete`: any particle meets any other; `degree` is unused)."""
    if kind == "complete":
        return nx.complete_graph(size)
    if kind != "regular":
        raise ValueError(f"soup.graph must be regular or complete, got {kind!r}")
    if degree >= size or (size * degree) % 2:
        raise ValueError(f"soup needs degree < size and size*degree even, got size={size} degree={degree}")
    return nx.random_regular_graph(degree, size, seed=seed)


def neighbour_csr(graph: nx.Graph, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacency of a particle graph as CSR `(indptr [P + 1], indices [2E])` int64 tensors, for vectorised draws."""
    matrix = nx.to_scipy_sparse_array(graph, nodelist=range(graph.number_of_nodes()), format="csr")
    indptr = torch.as_tensor(matrix.indptr.astype(np.int64), device=device)
    indices = torch.as_tensor(matrix.indices.astype(np.int64), device=device)
    return indptr, indices
