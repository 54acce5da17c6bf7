"""Population events: each event's effect on a small bank against a per-event recomputation, rows, rates, ties."""

import dataclasses
from pathlib import Path

import networkx as nx
import pytest
import torch
from reference import ReferenceParticle, coordinate_rows

from sim.config import EVENT_RATES, SOUP_EVENT_DEFAULTS, ConfigError, EventsConfig, build_config
from sim.events import EVENT_CODES, EVENT_NAMES, EVENT_PARAMS, EVENTS, markdown_table, population_events
from sim.particles import (
    DIVERGENT,
    OTHER,
    SELF_REPLICATOR,
    ZERO,
    ParticleSpec,
    classify,
    init_weights,
    self_apply,
    sr_loss,
    unpack,
)
from sim.soup import SoupModel
from sim.topology import neighbour_csr, soup_graph

SPEC = ParticleSpec(weight_interface=5, hidden=3)  # n = 27
N = SPEC.n_weights
ATTACK, MELT, REPLICATE, RESPAWN, NOISE, LEARN_FROM = (
    EVENT_CODES[name] for name in ("attack", "melt", "replicate", "respawn", "noise", "learn_from")
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def csr(edges, n_nodes):
    graph = nx.Graph()
    graph.add_nodes_from(range(n_nodes))
    graph.add_edges_from(edges)
    return neighbour_csr(graph)


def pairs(n_pairs):
    """Disjoint pairs (0, 1), (2, 3), ...: every particle has exactly one neighbour, so draws are deterministic."""
    return csr([(2 * i, 2 * i + 1) for i in range(n_pairs)], 2 * n_pairs)


def random_bank(n_particles, seed=1):
    return init_weights(n_particles, SPEC, gen(seed), dtype=torch.float64)


def replicator(scale=2.0, extra=0.0, delta=0.0):
    """A linear particle with `W3 W2 W1 = (1 + delta) e_0`: an exact self-replicator for delta = 0, and within the
    kind tolerance (but with a small SR loss) for tiny delta."""
    w = torch.zeros(1, N, dtype=torch.float64)
    W1, W2, W3 = unpack(w, SPEC)
    W1[0, 0, 0] = scale
    W2[0, 0, 0] = 1.0
    W2[0, 0, 1] = extra  # hidden unit 1 gets no input, so this weight changes the particle but not its map
    W3[0, 0, 0] = (1.0 + delta) / scale
    return w[0]


def run(bank, indptr, indices, generator=None, **rates):
    params = {k: rates.pop(k) for k in EVENT_PARAMS if k in rates}
    return population_events(bank, SPEC, indptr, indices, rates, generator or gen(), params)


def rows(events):
    return [tuple(r) for r in events.tolist()]


def per_event(before, events, rule):
    """Plain recomputation: apply `rule(source_row, target_row)` event by event, reading the pre-step bank."""
    expected = before.clone()
    for _, s, t in events.tolist():
        expected[t] = rule(before[s : s + 1], before[t : t + 1])[0]
    return expected


def assert_untouched_except(bank, before, changed):
    keep = [i for i in range(len(bank)) if i not in set(changed)]
    assert torch.equal(bank[keep], before[keep])


# --- each event -----------------------------------------------------------------------------------------------------


def test_attack_rewrites_the_target_with_the_source_applied_to_it():
    bank = random_bank(6)
    before = bank.clone()
    events = run(bank, *pairs(3), attack=1.0)
    # rate 1: every particle attacks its only neighbour, all reading the bank as it was before the step
    assert rows(events) == [(ATTACK, i, i ^ 1) for i in range(6)]
    expected = per_event(before, events, lambda a, b: self_apply(b, SPEC, evaluator=a))
    torch.testing.assert_close(bank, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(bank, before)


def test_attack_on_a_path_graph_picks_neighbours_and_matches_the_recomputation():
    bank = random_bank(5)
    before = bank.clone()
    indptr, indices = neighbour_csr(nx.path_graph(5))
    events = run(bank, indptr, indices, gen(4), attack=1.0)
    sources, targets = events[:, 1], events[:, 2]
    assert torch.equal(events[:, 0], torch.full_like(sources, ATTACK))
    assert all(abs(s - t) == 1 for s, t in zip(sources.tolist(), targets.tolist()))
    assert len(set(targets.tolist())) == len(targets)  # one event per target
    assert sources.tolist() == sorted(sources.tolist()) and 0 in sources.tolist()  # particle 0 can only hit 1
    expected = per_event(before, events, lambda a, b: self_apply(b, SPEC, evaluator=a))
    torch.testing.assert_close(bank, expected, rtol=0, atol=1e-12)
    assert_untouched_except(bank, before, targets.tolist())


def test_melt_takes_exactly_half_of_the_positions_from_the_source():
    bank = random_bank(40)
    before = bank.clone()
    events = run(bank, *pairs(20), generator=gen(2), melt=1.0)
    assert rows(events) == [(MELT, i, i ^ 1) for i in range(40)]
    masks = []
    for _, s, t in rows(events):
        from_a = bank[t] == before[s]
        from_b = bank[t] == before[t]
        assert bool((from_a ^ from_b).all())  # every position is exactly one parent's (the values are distinct)
        assert int(from_a.sum()) == N // 2
        masks.append(from_a)
    assert len({tuple(m.tolist()) for m in masks}) > 1  # a fresh random half per event
    assert bool(torch.stack(masks).any(dim=0).all())  # over 40 events every position gets taken


def test_replicate_only_from_self_replicators_into_dead_or_worse_targets():
    other = random_bank(2, seed=5)
    noisy = replicator(scale=8.0, delta=1e-7)  # a self-replicator, but with a small SR loss
    bank = torch.stack([
        replicator(2.0), other[0],  # into a worse particle: yes
        torch.zeros(N, dtype=torch.float64), replicator(4.0, extra=3.0),  # into a zero particle: yes
        replicator(2.0), replicator(4.0, extra=3.0),  # between exact replicators (equal SR loss 0): no
        other[1], torch.full((N,), float("nan"), dtype=torch.float64),  # from a non-replicator: no
        replicator(2.0), noisy,  # exact into a noisy replicator (higher SR loss): yes; the reverse: no
    ])  # fmt: skip
    kinds = classify(bank, SPEC).tolist()
    assert kinds == [SELF_REPLICATOR, OTHER, ZERO, SELF_REPLICATOR, SELF_REPLICATOR, SELF_REPLICATOR, OTHER,
                     DIVERGENT, SELF_REPLICATOR, SELF_REPLICATOR]  # fmt: skip
    assert float(sr_loss(bank[9:10], SPEC)) > 0 == float(sr_loss(bank[8:9], SPEC))
    before = bank.clone()
    events = run(bank, *pairs(5), replicate=1.0, mutation_sigma=0.0)
    assert rows(events) == [(REPLICATE, 0, 1), (REPLICATE, 3, 2), (REPLICATE, 8, 9)]
    expected = per_event(before, events, lambda a, b: self_apply(a, SPEC))
    torch.testing.assert_close(bank, expected, rtol=0, atol=0, equal_nan=True)  # the divergent one stays
    assert torch.equal(bank[2], before[3]) and torch.equal(bank[9], before[8])  # exact copies of the replicators


def test_replicate_into_a_divergent_neighbour():
    bank = torch.stack([replicator(2.0), torch.full((N,), float("inf"), dtype=torch.float64)])
    events = run(bank, *pairs(1), replicate=1.0, mutation_sigma=0.0)
    assert rows(events) == [(REPLICATE, 0, 1)]
    assert torch.equal(bank[1], bank[0])


def test_replicate_mutation_is_gaussian_noise_of_the_given_sigma():
    n_pairs = 20
    bank = torch.cat([torch.stack([replicator(2.0), w]) for w in random_bank(n_pairs)])
    before = bank.clone()
    events = run(bank, *pairs(n_pairs), replicate=1.0, mutation_sigma=0.1)
    assert rows(events) == [(REPLICATE, 2 * i, 2 * i + 1) for i in range(n_pairs)]
    mutation = bank[1::2] - before[0::2]  # [20, n]
    assert bool((mutation != 0).all())
    assert float(mutation.std()) == pytest.approx(0.1, rel=0.15) and abs(float(mutation.mean())) < 0.02
    assert torch.equal(bank[0::2], before[0::2])


def test_respawn_reinitialises_only_divergent_particles():
    bank = random_bank(6)
    bank[1, 3] = float("nan")
    bank[4] = float("inf")
    before = bank.clone()
    events = run(bank, *pairs(3), respawn=1.0)
    assert rows(events) == [(RESPAWN, 1, 1), (RESPAWN, 4, 4)]
    assert bool(torch.isfinite(bank).all())
    assert_untouched_except(bank, before, [1, 4])
    assert float(bank[[1, 4]].abs().max()) <= (6 / (1 + 3)) ** 0.5  # inside the widest Xavier bound (W3)
    assert classify(bank[[1, 4]], SPEC).tolist() == [OTHER, OTHER]


def test_respawn_needs_no_neighbours():
    bank = torch.full((3, N), float("nan"), dtype=torch.float64)
    events = run(bank, *csr([], 3), respawn=1.0)
    assert rows(events) == [(RESPAWN, i, i) for i in range(3)]
    assert bool(torch.isfinite(bank).all())


def test_noise_perturbs_every_drawn_particle():
    bank = random_bank(40)
    before = bank.clone()
    events = run(bank, *pairs(20), noise=1.0, noise_sigma=0.05)
    assert rows(events) == [(NOISE, i, i) for i in range(40)]
    diff = bank - before
    assert bool((diff != 0).all()) and float(diff.std()) == pytest.approx(0.05, rel=0.1)
    quiet = before.clone()
    events = run(quiet, *pairs(20), noise=1.0, noise_sigma=0.0)
    assert len(events) == 40 and torch.equal(quiet, before)


# --- rates, draws, ties ---------------------------------------------------------------------------------------------


def test_zero_rates_change_nothing_and_draw_no_random_numbers():
    bank = random_bank(6)
    bank[2] = float("nan")
    before = bank.clone()
    g = gen(9)
    state = g.get_state()
    for rates in ({name: 0.0 for name in EVENT_NAMES}, {}, {"attack": None}):
        events = run(bank, *pairs(3), generator=g, **rates)
        assert events.shape == (0, 3) and events.dtype == torch.int64
    assert torch.equal(g.get_state(), state)
    assert torch.equal(bank.isnan(), before.isnan()) and torch.equal(bank.nan_to_num(), before.nan_to_num())


def test_sources_are_one_uniform_draw_per_particle():
    bank = random_bank(200)
    g = gen(11)
    expected = torch.nonzero(torch.rand(200, generator=gen(11)) < 0.3).squeeze(1)
    events = run(bank, *pairs(100), generator=g, noise=0.3)
    assert torch.equal(events[:, 1], expected) and 30 < len(expected) < 90


def test_sources_without_neighbours_are_dropped():
    bank = random_bank(4)
    before = bank.clone()
    events = run(bank, *csr([(1, 2)], 4), attack=1.0)  # 0 and 3 (the last id: its CSR row is past the end) alone
    assert rows(events) == [(ATTACK, 1, 2), (ATTACK, 2, 1)]
    assert_untouched_except(bank, before, [1, 2])


def test_one_event_per_target_the_lowest_source_wins():
    bank = random_bank(5)
    before = bank.clone()
    star = csr([(0, leaf) for leaf in range(1, 5)], 5)
    events = run(bank, *star, generator=gen(3), attack=1.0)
    # every leaf's only neighbour is the centre: only leaf 1 attacks it
    assert [r for r in rows(events) if r[2] == 0] == [(ATTACK, 1, 0)]
    assert len(events) == 2 and events[0, 1] == 0 and events[0, 2] in (1, 2, 3, 4)
    torch.testing.assert_close(bank[0], self_apply(before[0:1], SPEC, evaluator=before[1:2])[0], rtol=0, atol=1e-12)


def test_same_seed_same_events_and_types_in_order():
    rates = {"attack": 0.2, "melt": 0.2, "replicate": 0.5, "respawn": 1.0, "noise": 0.1}
    indptr, indices = neighbour_csr(soup_graph(30, 4, seed=0))
    results = []
    for seed in (5, 5, 6):
        bank = random_bank(30)
        bank[:10] = replicator(2.0)
        bank[25] = float("nan")
        results.append((bank, run(bank, indptr, indices, gen(seed), **rates)))
    (b1, e1), (b2, e2), (b3, e3) = results
    assert torch.equal(e1, e2) and torch.equal(b1, b2)
    assert not torch.equal(e1, e3)
    assert e1[:, 0].tolist() == sorted(e1[:, 0].tolist())
    assert set(e1[:, 0].tolist()) == set(range(5))
    assert (RESPAWN, 25, 25) in rows(e1)


def test_a_parameter_bank_is_updated_in_place_without_autograd_history():
    weights = torch.nn.Parameter(random_bank(6))
    storage = weights.data_ptr()
    before = weights.detach().clone()
    events = run(weights, *pairs(3), attack=1.0, noise=1.0)
    assert len(events) == 12 and weights.data_ptr() == storage
    assert weights.is_leaf and weights.requires_grad and weights.grad_fn is None
    assert not torch.equal(weights.detach(), before)


# --- learn-from and respawn of zero particles -----------------------------------------------------------------------


def reference_learn_from(before, events, spec, severity, lr):
    """Plain per-event re-implementation: a `ReferenceParticle` of B, `severity` torch.optim.SGD steps on the mean
    square of B on A's coordinate rows against A's weights."""
    expected = before.clone()
    for _, s, t in events.tolist():
        k, h = spec.weight_interface, spec.hidden
        learner = ReferenceParticle.from_row(before[t], k, h, spec.activation)
        targets = before[s].tolist()
        inputs = torch.tensor(coordinate_rows(targets, k, h), dtype=torch.float64)
        optimiser = torch.optim.SGD(learner.parameters(), lr=lr)
        for _ in range(severity):
            optimiser.zero_grad()
            loss = ((learner(inputs) - torch.tensor(targets, dtype=torch.float64)) ** 2).mean()
            loss.backward()
            optimiser.step()
        expected[t] = torch.tensor(learner.flat_weights(), dtype=torch.float64)
    return expected


@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_learn_from_equals_a_per_particle_sgd_loop(activation):
    spec = ParticleSpec(weight_interface=5, hidden=3, activation=activation)
    bank = init_weights(8, spec, gen(7), dtype=torch.float64)
    before = bank.clone()
    indptr, indices = neighbour_csr(nx.cycle_graph(8))
    params = {"learn_from_severity": 7, "learn_from_lr": 0.05}
    events = population_events(bank, spec, indptr, indices, {"learn_from": 0.6}, gen(3), params)
    assert len(events) >= 2 and set(events[:, 0].tolist()) == {LEARN_FROM}
    assert len(set(events[:, 2].tolist())) == len(events)  # one event per target
    expected = reference_learn_from(before, events, spec, 7, 0.05)
    torch.testing.assert_close(bank, expected, rtol=0, atol=1e-10)
    assert_untouched_except(bank, before, events[:, 2].tolist())


def test_learn_from_brings_the_learner_closer_to_its_teacher_and_severity_zero_changes_nothing():
    bank = random_bank(6)
    before = bank.clone()
    events = run(bank, *pairs(3), learn_from=1.0, learn_from_severity=200, learn_from_lr=0.1)
    assert rows(events) == [(LEARN_FROM, i, i ^ 1) for i in range(6)]
    for _, s, t in rows(events):  # B computes (nearly) A's weights from A's coordinates after learning
        gap_before = (self_apply(before[s : s + 1], SPEC, evaluator=before[t : t + 1]) - before[s]).abs().max()
        gap_after = (self_apply(before[s : s + 1], SPEC, evaluator=bank[t : t + 1]) - before[s]).abs().max()
        assert float(gap_after) < 0.1 * float(gap_before)
    still = before.clone()
    events = run(still, *pairs(3), learn_from=1.0, learn_from_severity=0)
    assert len(events) == 6 and torch.equal(still, before)


def test_respawn_zero_reinitialises_zero_particles_as_well_when_asked():
    bank = random_bank(6)
    bank[0] = 0.0
    bank[2] = 1e-7  # zero within the kind tolerance
    bank[4, 1] = float("nan")
    before = bank.clone()
    events = run(bank.clone(), *pairs(3), respawn=1.0)
    assert rows(events) == [(RESPAWN, 4, 4)]  # by default only divergent particles
    events = run(bank, *pairs(3), respawn=1.0, respawn_zero=True)
    assert rows(events) == [(RESPAWN, 0, 0), (RESPAWN, 2, 2), (RESPAWN, 4, 4)]
    assert classify(bank[[0, 2, 4]], SPEC).tolist() == [OTHER] * 3
    assert_untouched_except(bank, before, [0, 2, 4])


# --- the table: everything that lists event types derives from EVENTS ---------------------------------------------


def test_every_event_type_has_documented_functions_and_a_unique_name():
    assert len(set(EVENT_NAMES)) == len(EVENTS) and EVENT_NAMES[:5] == ("attack", "melt", "replicate", "respawn",
                                                                         "noise")  # fmt: skip
    for event in EVENTS:
        assert event.apply.__doc__ and (event.select is None or event.select.__doc__), event.name
        assert event.summary and 0 <= event.soup_rate <= event.rate_max <= 1, event.name
    assert len(EVENT_PARAMS) == sum(len(e.params) for e in EVENTS)  # parameter names are unique


def test_config_events_section_is_the_table():
    fields = {f.name: f for f in dataclasses.fields(EventsConfig)}
    assert list(fields) == [*EVENT_NAMES, *EVENT_PARAMS, "neighbourhood"]
    assert EVENT_RATES == EVENT_NAMES and {e.name: e.soup_rate for e in EVENTS} == SOUP_EVENT_DEFAULTS
    organism, soup = build_config(), build_config(overrides=[("mode", "soup")])
    for event in EVENTS:
        assert getattr(organism.events, event.name) == 0.0 and getattr(soup.events, event.name) == event.soup_rate
        with pytest.raises(ConfigError, match=f"events.{event.name}"):
            build_config(overrides=[(f"events.{event.name}", 1.5)])
    for name, param in EVENT_PARAMS.items():
        assert getattr(organism.events, name) == param.default and type(getattr(organism.events, name)) is type(
            param.default
        )
        if param.lo is not None:
            with pytest.raises(ConfigError, match=f"events.{name}"):
                build_config(overrides=[(f"events.{name}", param.lo - 1)])


def test_every_configured_rate_and_parameter_reaches_the_model():
    overrides = [("mode", "soup"), ("soup.size", 10), ("steps", 1)]
    overrides += [(f"events.{name}", 0.5 - 0.01 * i) for i, name in enumerate(EVENT_NAMES)]
    config = build_config(overrides=overrides)
    model = SoupModel(config, agents=False)
    assert model.rates == {name: getattr(config.events, name) for name in EVENT_NAMES}
    assert model.event_params == {name: getattr(config.events, name) for name in EVENT_PARAMS}
    assert all(rate > 0 for rate in model.rates.values())


@pytest.mark.parametrize("name", ["README.md", "docs/science.md"])
def test_the_documented_event_table_is_the_table(name):
    text = (Path(__file__).resolve().parents[1] / name).read_text()
    assert markdown_table() in text, f"{name}'s event table drifted from sim.events.EVENTS: paste python -m sim.events"
