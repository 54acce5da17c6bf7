"""analysis.connectivity against the record, the topology and the MNIST data read independently."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_analysis_figures import edited_copy, pngs_exist, read_record, run_cli

from analysis.common import load_run
from analysis.connectivity import kind_mixing, main, pixel_map
from sim.particles import OTHER, SELF_REPLICATOR
from sim.run import main as sim_run
from sim.tasks import make_task


@pytest.fixture(scope="module")
def young_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-step MNIST organism (225-5-5-10): the real topology and data, cheap to make."""
    out = tmp_path_factory.mktemp("mnist") / "run"
    assert sim_run(["--quiet", "--out", str(out), "--steps", "5", "--set", "record.snapshot_every=5"]) == 0
    return out


def test_kind_mixing_on_a_path_graph():
    kinds = np.array([SELF_REPLICATOR, SELF_REPLICATOR, OTHER, OTHER])
    edges = np.array([[0, 1], [1, 2], [2, 3]])
    names = ["divergent", "zero", "self_replicator", "self_replicator_2nd", "other"]
    mixing = kind_mixing(kinds, edges, names)
    # neighbours of 0: {1}; of 1: {0, 2} -> 2 of 3 self-replicator neighbours are self-replicators; likewise for other
    assert mixing["self_replicator"].to_json() == {"neighbour_same_kind": pytest.approx(2 / 3), "overall_fraction": 0.5}
    assert mixing["other"].to_json() == {"neighbour_same_kind": pytest.approx(2 / 3), "overall_fraction": 0.5}


def test_organism_numbers_match_the_record(arithmetic_run, tmp_path):
    numbers, out = run_cli(main, arithmetic_run, tmp_path)
    r = read_record(arithmetic_run)
    kinds, layer, names = r["particles/kind"][-1], r["topology/layer"], r["kind_names"]
    assert numbers["kind_counts"] == dict(zip(names, r["particles/kind_counts"][-1].tolist()))
    for index, entry in numbers["per_layer"].items():
        assert entry["kind_counts"] == dict(zip(names, np.bincount(kinds[layer == int(index)], minlength=5).tolist()))
    edges = r["topology/edges"]
    for name, entry in numbers["kind_mixing"].items():
        code = names.index(name)
        neighbours = [b for a, b in np.concatenate([edges, edges[:, ::-1]]) if kinds[a] == code]
        assert entry["neighbour_same_kind"] == pytest.approx(np.mean(kinds[neighbours] == code))
    assert numbers["pixel_map"] is None  # not an MNIST run: no pixel figure
    assert [p.name for p in out.glob("*.png")] == ["connectivity_graph.png"]
    pngs_exist([out / "connectivity_graph.png"])


def test_soup_draws_its_neighbourhood_graph(soup_run, tmp_path):
    numbers, out = run_cli(main, soup_run, tmp_path)
    r = read_record(soup_run)
    assert numbers["per_layer"] is None and numbers["pixel_map"] is None
    assert numbers["kind_counts"] == dict(zip(r["kind_names"], r["particles/kind_counts"][-1].tolist()))
    pngs_exist([out / "connectivity_graph.png"])


def test_pixel_map_matches_the_data_and_the_topology(young_mnist):
    run = load_run(young_mnist)
    weights, _, _ = run.final_weights()
    r = read_record(young_mnist)
    side = r["config"]["task"]["image_side"]
    source, layer = r["topology/source"], r["topology/layer"]
    train_x = make_task("mnist", 0, "cpu", torch.float64).train_x.numpy()
    intensity = train_x.mean(axis=0)  # [side^2]
    # hand-made kinds: every input particle of the 40 darkest pixels, and one particle of the brightest, replicate
    dark = np.argsort(intensity)[:40]
    bright = int(np.argmax(intensity))
    kinds = np.full(len(layer), OTHER)
    kinds[(layer == 0) & np.isin(source, dark)] = SELF_REPLICATOR
    kinds[np.flatnonzero((layer == 0) & (source == bright))[0]] = SELF_REPLICATOR
    pixels = pixel_map(run, weights, kinds)
    fan_out = r["layer_sizes"][1]
    share = np.zeros(side * side)
    share[dark] = 1.0
    share[bright] = 1 / fan_out
    np.testing.assert_allclose(pixels.sr_share, share.reshape(side, side))
    np.testing.assert_allclose(pixels.mean_digit, intensity.reshape(side, side), rtol=1e-6)
    sr_reads = np.concatenate([np.repeat(intensity[dark], fan_out), [intensity[bright]]])
    others = np.concatenate([np.repeat(np.delete(intensity, np.append(dark, bright)), fan_out),
                             np.repeat(intensity[bright], fan_out - 1)])  # fmt: skip
    assert pixels.mean_intensity_self_replicators == pytest.approx(sr_reads.mean(), rel=1e-6)
    assert pixels.mean_intensity_others == pytest.approx(others.mean(), rel=1e-6)
    assert pixels.n_input_self_replicators == 40 * fan_out + 1
    assert pixels.pixels_all_self_replicators == 40
    assert pixels.pixels_without_self_replicators == side * side - 41
    # pixels that never light up in the held-out set carry nothing
    test_x = make_task("mnist", 0, "cpu", torch.float64).test_x.numpy()
    dead = (test_x == 0).all(axis=0)
    assert dead.any() and (pixels.task_contribution.ravel()[dead] == 0).all()
    assert (pixels.task_contribution.ravel()[~dead] > 0).all()


def test_mnist_run_draws_both_figures(young_mnist, tmp_path):
    def border_replicates(f):  # the record's final kinds: the input particles of the top image row replicate
        kinds = f["particles/kind"]
        row = kinds[-1]
        row[:75] = SELF_REPLICATOR  # particle ids run row-major over [out, in]: ids 0..74 read pixels 0..74 of neuron 0
        kinds[-1] = row

    copy = edited_copy(young_mnist, tmp_path / "run", border_replicates)
    numbers, out = run_cli(main, copy, tmp_path)
    pixels = numbers["pixel_map"]
    assert pixels["n_input_self_replicators"] == 75 and pixels["n_input_particles"] == 225 * 5
    assert np.array(pixels["sr_share"]).ravel()[:75] == pytest.approx(0.2)
    assert {p.name for p in out.glob("*.png")} == {"connectivity_graph.png", "connectivity_pixels.png"}
    pngs_exist(sorted(out.glob("*.png")))
