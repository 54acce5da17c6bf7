"""analysis.specialisation against the record read with h5py alone, on the arithmetic and soup fixtures."""

import numpy as np
import pytest
from test_analysis_figures import edited_copy, one_line_error, pngs_exist, read_record, run_cli, truncate

from analysis.specialisation import main
from sim.particles import SELF_REPLICATOR


def test_organism_numbers_match_the_record(arithmetic_run, tmp_path):
    numbers, out = run_cli(main, arithmetic_run, tmp_path)
    r = read_record(arithmetic_run)
    names, steps, kinds = r["kind_names"], r["particles/step"], r["particles/kind"]
    last = r["particles/kind_counts"][-1]
    assert numbers["kind_counts"] == dict(zip(names, last.tolist()))
    assert numbers["kind_counts"] == dict(zip(names, np.bincount(kinds[-1], minlength=len(names)).tolist()))
    assert sum(numbers["kind_fractions"].values()) == pytest.approx(1.0)
    assert numbers["final_step"] == steps[-1]
    # the fixture ends with self-replicators, so their first step exists; the row before it has none
    first = numbers["first_self_replicator_step"]
    row = int(np.flatnonzero(steps == first)[0])
    assert (kinds[row] == SELF_REPLICATOR).any() and not (kinds[:row] == SELF_REPLICATOR).any()
    assert numbers["final_metric"] == pytest.approx(r["particles/held_out_metric"][-1])
    assert numbers["best_metric"] == pytest.approx(r["particles/held_out_metric"].min())  # MAE: lower is better
    losses = r["particles/sr_loss"][-1].astype(np.float64)
    assert numbers["final_sr_loss_mean"] == pytest.approx(losses[np.isfinite(losses)].mean())
    assert numbers["final_sr_loss_median"] == pytest.approx(np.median(losses[np.isfinite(losses)]))
    gate = r["steps/step"][r["steps/sr_active"].astype(bool)]
    assert numbers["sr_active_step"] == (gate[0] if len(gate) else None)
    layer = r["topology/layer"]
    for index, entry in numbers["per_layer"].items():
        mine = kinds[-1][layer == int(index)]
        assert entry["n_particles"] == len(mine)
        assert entry["kind_counts"] == dict(zip(names, np.bincount(mine, minlength=len(names)).tolist()))
    assert sum(e["n_particles"] for e in numbers["per_layer"].values()) == len(layer)
    np.testing.assert_array_equal(numbers["series"]["kind_counts"]["self_replicator"],
                                  r["particles/kind_counts"][:, SELF_REPLICATOR])  # fmt: skip
    pngs_exist(sorted(out.glob("*.png")))
    assert {p.name for p in out.glob("*.png")} == {"specialisation_kinds.png", "specialisation_training.png",
                                                   "specialisation_layers.png"}  # fmt: skip


def test_soup_has_no_metric_and_no_layers(soup_run, tmp_path):
    numbers, out = run_cli(main, soup_run, tmp_path)
    r = read_record(soup_run)
    assert numbers["kind_counts"] == dict(zip(r["kind_names"], r["particles/kind_counts"][-1].tolist()))
    assert numbers["final_metric"] is None and numbers["per_layer"] is None
    assert {p.name for p in out.glob("*.png")} == {"specialisation_kinds.png", "specialisation_training.png"}
    pngs_exist(sorted(out.glob("*.png")))


def test_a_record_still_being_written_is_cut_to_its_rows(arithmetic_run, tmp_path):
    """The last rows of a record whose writer is still running: the numbers are those of the last row present."""
    copy = edited_copy(arithmetic_run, tmp_path / "run", truncate("particles", 7))
    numbers, _ = run_cli(main, copy, tmp_path)
    r = read_record(copy)
    assert numbers["final_step"] == r["particles/step"][6]
    assert numbers["kind_counts"] == dict(zip(r["kind_names"], r["particles/kind_counts"][6].tolist()))


def test_a_record_without_particle_rows_is_one_line_and_status_2(arithmetic_run, tmp_path, capsys):
    copy = edited_copy(arithmetic_run, tmp_path / "run", truncate("particles", 0))
    one_line_error(capsys, main, [str(copy), "--out", str(tmp_path / "out")], "/particles", "specialisation")
