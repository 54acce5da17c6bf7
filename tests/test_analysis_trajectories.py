"""analysis.trajectories against numpy on the snapshot data read with h5py alone."""

import numpy as np
import pytest
from test_analysis_figures import edited_copy, one_line_error, pngs_exist, read_record, run_cli, truncate

from analysis.trajectories import main, pca


def explained_variance(rows: np.ndarray) -> np.ndarray:
    """Explained variance ratios from the eigenvalues of the covariance matrix, largest first."""
    eigenvalues = np.linalg.eigvalsh(np.cov(rows.astype(np.float64), rowvar=False))[::-1]
    return eigenvalues / eigenvalues.sum()


def test_pca_matches_the_covariance_eigenvalues():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1, 0.01]) + 7.0
    mean, components, ratio = pca(rows)
    np.testing.assert_allclose(ratio, explained_variance(rows), rtol=1e-8)
    np.testing.assert_allclose(mean, rows.mean(axis=0))
    np.testing.assert_allclose(components @ components.T, np.eye(6), atol=1e-10)
    assert np.all(pca(np.ones((5, 3)))[2] == 0)  # rows that do not vary explain nothing


def test_organism_numbers_match_numpy(arithmetic_run, tmp_path):
    numbers, out = run_cli(main, arithmetic_run, tmp_path)
    r = read_record(arithmetic_run)
    snapshots, layer = r["snapshots/weights"], r["topology/layer"]  # [S, P, n], [P]
    assert numbers["n_snapshots"] == len(snapshots) and numbers["snapshot_steps"] == r["snapshots/step"].tolist()
    assert set(numbers["layers"]) == {str(i) for i in np.unique(layer)}
    for index, entry in numbers["layers"].items():
        rows = snapshots[:, layer == int(index)].reshape(-1, snapshots.shape[2])
        expected = explained_variance(rows)
        ratio = np.array(entry["explained_variance_ratio"])
        np.testing.assert_allclose(ratio, expected[: len(ratio)], rtol=1e-4, atol=1e-9)
        assert entry["explained_variance_2d"] == pytest.approx(expected[:2].sum(), rel=1e-4)
        assert entry["n_particles"] == (layer == int(index)).sum() and entry["n_nonfinite"] == 0
    # path length per final kind: summed distance between consecutive snapshots, by hand
    kinds = np.array(r["kind_names"])[r["particles/kind"][-1]]
    for kind, mean in numbers["path_length"].items():
        ids = np.flatnonzero(kinds == kind)
        by_hand = [sum(np.linalg.norm(snapshots[s + 1, p].astype(np.float64) - snapshots[s, p])
                       for s in range(len(snapshots) - 1)) for p in ids]  # fmt: skip
        assert mean == pytest.approx(np.mean(by_hand), rel=1e-6)
    # the distance to the final weights, by hand: median per final kind at every snapshot
    for kind, median in numbers["distance_to_final"].items():
        ids = np.flatnonzero(kinds == kind)
        by_hand = np.median(np.linalg.norm(snapshots[:, ids].astype(np.float64) - snapshots[-1, ids], axis=2), axis=1)
        np.testing.assert_allclose(median, by_hand, rtol=1e-6)
        assert median[-1] == 0
    # the PCA panel is drawn only for the layers whose two components explain at least half of the variance
    for index, entry in numbers["layers"].items():
        trajectory = snapshots[:, layer == int(index)].astype(np.float64)  # [S, P_l, n]
        within = trajectory.var(axis=0).sum(axis=1).mean()
        total = trajectory.reshape(-1, trajectory.shape[2]).var(axis=0).sum()
        assert entry["movement_share"] == pytest.approx(within / total, rel=1e-9)
    drawn = [
        i for i, e in numbers["layers"].items() if e["explained_variance_2d"] >= 0.5 and e["movement_share"] >= 0.1
    ]
    assert numbers["pca_drawn"] == drawn
    names = {p.name for p in out.glob("*.png")}
    assert names == {"trajectories_distance.png", "trajectories_movement.png"} | (
        {"trajectories_2d.png"} if drawn else set()
    )
    pngs_exist(sorted(out.glob("*.png")))


def test_soup_is_one_panel_and_the_drawn_lines_are_capped(soup_run, tmp_path):
    numbers, out = run_cli(main, soup_run, tmp_path, "--max-lines", "3")
    r = read_record(soup_run)
    counts = np.bincount(r["particles/kind"][-1])
    snapshots = r["snapshots/weights"]
    assert list(numbers["layers"]) == ["all"]
    entry = numbers["layers"]["all"]
    assert entry["n_particles"] == snapshots.shape[1]
    assert entry["n_drawn"] == np.minimum(counts, 3).sum() < snapshots.shape[1]
    expected = explained_variance(snapshots.reshape(-1, snapshots.shape[2]))
    np.testing.assert_allclose(entry["explained_variance_ratio"][:3], expected[:3], rtol=1e-4)
    pngs_exist(sorted(out.glob("*.png")))


def test_non_finite_particles_are_left_out_and_counted(arithmetic_run, tmp_path):
    def poison(f):
        weights = f["snapshots/weights"]
        row = weights[2]
        row[0, 0] = np.nan  # particle 0 (layer 0) diverges at the third snapshot
        weights[2] = row

    copy = edited_copy(arithmetic_run, tmp_path / "run", poison)
    numbers, _ = run_cli(main, copy, tmp_path)
    assert numbers["layers"]["0"]["n_nonfinite"] == 1 and numbers["layers"]["1"]["n_nonfinite"] == 0
    r = read_record(copy)
    rows = r["snapshots/weights"][:, 1:6].reshape(-1, r["snapshots/weights"].shape[2])  # layer 0 without particle 0
    np.testing.assert_allclose(numbers["layers"]["0"]["explained_variance_ratio"][:3], explained_variance(rows)[:3],
                               rtol=1e-4)  # fmt: skip


def test_one_snapshot_gives_points_and_none_is_one_line_and_status_2(arithmetic_run, tmp_path, capsys):
    copy = edited_copy(arithmetic_run, tmp_path / "one", truncate("snapshots", 1))
    (copy / "checkpoint.pt").unlink()  # a record this early has no checkpoint yet (the run's counts 11 snapshots)
    numbers, out = run_cli(main, copy, tmp_path / "one-out")
    assert numbers["n_snapshots"] == 1 and numbers["movement_per_step_last"] == {}
    assert set(numbers["path_length"].values()) == {0.0}  # a single point has no length
    assert not {p.name for p in out.glob("*.png")} & {"trajectories_distance.png", "trajectories_movement.png"}
    copy = edited_copy(arithmetic_run, tmp_path / "none", truncate("snapshots", 0))
    one_line_error(capsys, main, [str(copy), "--out", str(tmp_path / "out")], "snapshots", "at least 1")


def test_bad_max_lines_is_one_line_and_status_2(arithmetic_run, tmp_path, capsys):
    one_line_error(capsys, main, [str(arithmetic_run), "--out", str(tmp_path), "--max-lines", "0"], "--max-lines", "0")
