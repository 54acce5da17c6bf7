"""analysis.pruning against an independent recomputation from the checkpoint, on the arithmetic and MNIST fixtures.

The recomputation rebuilds the organism from `sim.organism` with the checkpoint's weights, computes effective weights,
layer inputs, task contributions and the metric by hand, and never calls into `analysis`. Choices (contributions, the
pure set, the exact ablation) are recomputed on the validation split, reported metrics on the test split.
"""

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analysis.common import jsonable, load_run
from analysis.pruning import DEFAULT_EXACT_MAX, PruningResult, analyse, main, prune
from sim.organism import Organism
from sim.particles import ParticleSpec
from sim.tasks import make_task

DRAWS = "10"


@dataclass
class Rebuilt:
    """A run rebuilt by hand: final weights, kinds, organism, test (held-out) and validation data."""

    weights: torch.Tensor  # [P, n]
    kinds: np.ndarray  # [P] kind names
    record_metric: float  # the record's last held-out metric
    sizes: list[int]
    spec: ParticleSpec
    organism: Organism
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    metric_name: str

    def metric(self, weights: torch.Tensor, split: str = "test") -> float:
        x, y = (self.test_x, self.test_y) if split == "test" else (self.val_x, self.val_y)
        with torch.no_grad():
            out = self.organism.forward(weights, x)
        if self.metric_name == "mae":
            return float((out - y).abs().mean())
        return float((out.argmax(dim=1) == y).double().mean())

    def without(self, ids: np.ndarray, split: str = "test") -> float:
        w = self.weights.clone()
        w[torch.as_tensor(np.asarray(ids, dtype=np.int64))] = 0
        return self.metric(w, split)

    def effective(self) -> np.ndarray:
        """`(W3 W2 W1)[k-1]` of every (linear) particle, `[P]`."""
        k, h = self.spec.weight_interface, self.spec.hidden
        w = self.weights.double()
        W1 = w[:, : k * h].reshape(-1, h, k)
        W2 = w[:, k * h : k * h + h * h].reshape(-1, h, h)
        W3 = w[:, k * h + h * h :].reshape(-1, 1, h)
        return (W3 @ W2 @ W1)[:, 0, k - 1].numpy()

    def relative_contribution(self) -> np.ndarray:
        """Mean |effective weight x input| on the validation split, as a share of the target neuron's total times
        fan-in."""
        a = self.effective()
        x = self.val_x.double().numpy()
        out, start = [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            A = a[start : start + n_in * n_out].reshape(n_out, n_in)  # particle ids run row-major over [out, in]
            carried = np.abs(A[None] * x[:, None, :]).mean(axis=0)  # [out, in]
            total = carried.sum(axis=1, keepdims=True)
            out.append((np.divide(carried, total, out=np.zeros_like(carried), where=total > 0) * n_in).ravel())
            x = x @ A.T
            start += n_in * n_out
        return np.concatenate(out)


def rebuild(run_dir: Path) -> Rebuilt:
    with h5py.File(run_dir / "run.h5", "r", swmr=True) as f:
        config = json.loads(f.attrs["config"])
        sizes = json.loads(f.attrs["layer_sizes"])
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["kind_names"]]
        kinds = np.array(names)[f["particles/kind"][-1]]
        record_metric = float(f["particles/held_out_metric"][-1])
        metric_name = f.attrs["metric_name"]
    # every metric in float64, on a float64 copy of the (float32) weights
    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["weights"].double()
    p = config["particle"]
    spec = ParticleSpec(p["weight_interface"], p["hidden"], p["activation"])
    t = config["task"]
    task = make_task(t["name"], config["seed"], "cpu", torch.float64, resize=t["resize"])
    organism = Organism(sizes, spec, residual=config["organism"]["residual"])
    return Rebuilt(weights, kinds, record_metric, sizes, spec, organism, task.test_x, task.test_y, task.val_x,
                   task.val_y, metric_name)  # fmt: skip


def pruning_numbers(run_dir: Path, tmp_path: Path, *extra: str) -> dict:
    path = tmp_path / "pruning.json"
    assert main([str(run_dir), "--out", str(tmp_path / "figures"), "--json", str(path), "--draws", DRAWS, *extra]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def arithmetic(arithmetic_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pruning-arithmetic")
    return arithmetic_run, pruning_numbers(arithmetic_run, tmp), rebuild(arithmetic_run), tmp


@pytest.fixture(scope="module")
def mnist(mnist_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pruning-mnist")
    return mnist_run, pruning_numbers(mnist_run, tmp), rebuild(mnist_run), tmp


@pytest.fixture(params=["arithmetic", "mnist"])
def case(request):
    return request.getfixturevalue(request.param)


def plain_floor(r: Rebuilt) -> float:
    """float32 rounding of one output of the mean held-out target's size, for MAE; none for accuracy."""
    return float(np.finfo(np.float32).eps * r.test_y.abs().mean()) if r.metric_name == "mae" else 0.0


def test_full_metric_and_dropout_match_the_checkpoint(case):
    _, numbers, r, _ = case
    full = r.metric(r.weights)
    assert numbers["metric_full"] == pytest.approx(full, rel=1e-9, abs=1e-15)
    assert numbers["metric_dtype"] == "float64" and numbers["run_dtype"] == "float32"
    assert numbers["metric_floor"] == pytest.approx(plain_floor(r), rel=1e-12)
    # the same held-out split as in training: the record's last held-out metric (float32) is the full organism's up
    # to the float floor
    assert abs(numbers["metric_full"] - r.record_metric) <= max(numbers["metric_floor"], 1e-6)
    assert set(numbers["dropout"]) == set(np.unique(r.kinds))
    for kind, d in numbers["dropout"].items():
        ids = np.flatnonzero(r.kinds == kind)
        assert d["count"] == len(ids)
        assert d["metric"] == pytest.approx(r.without(ids), rel=1e-6, abs=1e-12)


def test_equal_sparsity_matches_baselines_recomputed(case):
    _, numbers, r, _ = case
    eq = numbers["equal_sparsity"]
    replicators = np.flatnonzero(r.kinds == "self_replicator")
    assert eq["count"] == len(replicators) and eq["fraction"] == pytest.approx(len(replicators) / len(r.kinds))
    assert eq["self_replicators"] == pytest.approx(r.without(replicators), rel=1e-6, abs=1e-12)
    particles = numbers["particles"]
    scores = {
        "l1": (particles["l1"], r.weights.double().abs().sum(dim=1).numpy()),
        "magnitude": (np.abs(particles["effective_weight"]), np.abs(r.effective())),
        "contribution": (particles["contribution_relative"], r.relative_contribution()),
    }
    for name, (reported, recomputed) in scores.items():
        # atol: a float32 contribution share times a fan-in of 225 carries ~1e-7 x 225 of rounding
        np.testing.assert_allclose(reported, recomputed, rtol=1e-4, atol=1e-6, err_msg=name)
        # rank by the reported scores: float32 and float64 may order near-ties differently
        ids = np.argsort(reported, kind="stable")[: len(replicators)]
        assert eq[name] == pytest.approx(r.without(ids), rel=1e-6, abs=1e-12), name
    assert numbers["random_draws"] == int(DRAWS) and eq["random_sd"] >= 0


def test_contributions_and_pure_self_replicators(case):
    _, numbers, r, _ = case
    relative = np.array(numbers["particles"]["contribution_relative"])
    np.testing.assert_allclose(
        relative, r.relative_contribution(), rtol=1e-4, atol=1e-6
    )  # float32 rounding x fan-in, as above
    np.testing.assert_allclose(numbers["particles"]["effective_weight"], r.effective(), rtol=1e-4, atol=1e-7)
    threshold = numbers["pure_threshold"]
    pure = np.flatnonzero((r.kinds == "self_replicator") & (r.relative_contribution() < threshold))
    eq, eqp = numbers["equal_sparsity"], numbers["equal_sparsity_pure"]
    assert eq["pure_count"] == eqp["count"] == len(pure)
    assert eq["pure_self_replicators"] == eqp["pure_self_replicators"]
    assert eqp["pure_self_replicators"] == pytest.approx(r.without(pure), rel=1e-6, abs=1e-12)
    full, up = numbers["metric_full"], numbers["higher_is_better"]
    margin = max(0.01 * abs(full), plain_floor(r))
    for table, key, metric in [("equal_sparsity_pure", "pure_self_replicators", eqp["pure_self_replicators"]),
                               ("equal_sparsity", "self_replicators", eq["self_replicators"]),
                               ("equal_sparsity", "magnitude", eq["magnitude"])]:  # fmt: skip
        within = metric >= full - margin if up else metric <= full + margin
        assert numbers["within_tolerance"][table][key] == within
    scan = numbers["threshold_scan"]
    for threshold, count, metric, validation in zip(*(scan[k] for k in ("threshold", "count", "metric",
                                                                        "validation_metric"))):  # fmt: skip
        ids = np.flatnonzero((r.kinds == "self_replicator") & (r.relative_contribution() < threshold))
        assert count == len(ids)
        assert metric == pytest.approx(r.without(ids), rel=1e-6, abs=1e-12)
        assert validation == pytest.approx(r.without(ids, "validation"), rel=1e-6, abs=1e-12)
    assert numbers["metric_full_validation"] == pytest.approx(r.metric(r.weights, "validation"), rel=1e-9, abs=1e-15)


def test_curve_runs_from_full_to_empty(case):
    _, numbers, r, _ = case
    curve = numbers["curve"]
    n = len(r.kinds)
    assert curve["count"][0] == 0 and curve["count"][-1] == n and curve["fraction"][-1] == 1.0
    assert len(curve["count"]) == min(n + 1, 51)
    empty = r.metric(torch.zeros_like(r.weights))
    for name in ("l1", "magnitude", "contribution", "random_mean"):
        assert curve[name][0] == pytest.approx(r.metric(r.weights), rel=1e-6, abs=1e-12)
        assert curve[name][-1] == pytest.approx(empty, rel=1e-6, abs=1e-12)
    # the draws agree exactly at both ends; their sd is 0 up to the rounding of their mean
    scale = max(abs(curve["random_mean"][0]), abs(curve["random_mean"][-1]), 1e-300)
    assert curve["random_sd"][0] <= 1e-12 * scale and curve["random_sd"][-1] <= 1e-12 * scale
    order = np.argsort(np.abs(numbers["particles"]["effective_weight"]), kind="stable")
    for count, metric in list(zip(curve["count"], curve["magnitude"]))[::5]:
        assert metric == pytest.approx(r.without(order[:count]), rel=1e-6, abs=1e-12)


def test_arithmetic_metrics_are_float64_not_float32(arithmetic):
    """The arithmetic MAE sits near the float32 floor: a float32 forward reads a visibly different number."""
    _, numbers, r, _ = arithmetic
    with torch.no_grad():
        single = (r.organism.forward(r.weights.float(), r.test_x.float()) - r.test_y.float()).abs().mean()
    assert numbers["metric_full"] == pytest.approx(r.metric(r.weights), rel=1e-9)
    assert abs(float(single) - numbers["metric_full"]) > 1e-6 * numbers["metric_full"]
    assert abs(float(single) - numbers["metric_full"]) <= numbers["metric_floor"]


def test_exact_single_particle_ablation_on_the_small_organism(arithmetic):
    _, numbers, r, _ = arithmetic
    full = r.metric(r.weights, "validation")
    expected = [r.without([p], "validation") - full for p in range(len(r.kinds))]
    np.testing.assert_allclose(numbers["particles"]["exact_metric_change"], expected, rtol=1e-5, atol=1e-9)


def test_arithmetic_self_replicators_carry_the_task(arithmetic):
    # docs/science.md §3: in the arithmetic organism every particle can end as an exact self-replicator with task weight
    _, numbers, r, _ = arithmetic
    if numbers["dropout"].get("self_replicator", {}).get("count", 0) < len(r.kinds):
        pytest.skip("not every particle of this fixture is a self-replicator")
    assert numbers["equal_sparsity"]["self_replicators"] > 100 * numbers["metric_full"]
    assert numbers["within_tolerance"]["equal_sparsity"]["self_replicators"] is False


def test_figures_written(case):
    _, _, _, tmp = case
    for name in ("dropout", "equal_sparsity", "curve", "contribution"):
        path = tmp / "figures" / f"pruning_{name}.png"
        assert path.stat().st_size > 10_000, path


def test_mnist_magnitude_and_random_at_equal_sparsity(mnist):
    # the fixture ends with ~200 self-replicators on silent pixels: random pruning at that sparsity hurts, the
    # self-replicators and the smallest contributions do not
    _, numbers, _, _ = mnist
    eq = numbers["equal_sparsity"]
    assert eq["count"] > 50
    assert eq["random_mean"] < eq["contribution"] - 0.1
    assert eq["contribution"] == pytest.approx(numbers["metric_full"], abs=0.005)


def test_bad_options_and_soup(soup_run, arithmetic_run, tmp_path, capsys):
    assert main([str(arithmetic_run), "--out", str(tmp_path), "--draws", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--draws must be at least 10, got 5" in err
    assert main([str(arithmetic_run), "--out", str(tmp_path), "--threshold", "-1"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main([str(soup_run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "soup run: pruning needs an organism with a task" in err
    assert not list(tmp_path.iterdir())


def test_the_json_says_which_split_each_number_used(case):
    _, numbers, r, _ = case
    assert numbers["selection_split"] == "validation" and numbers["reported_split"] == "test"
    assert numbers["split"]["validation"] == len(r.val_y) and numbers["split"]["test"] == len(r.test_y)
    # the two splits share no sample
    distance = torch.cdist(r.val_x.double(), r.test_x.double())
    assert float(distance.min()) > 0


def options(**given: object) -> argparse.Namespace:
    base = {"threshold": 0.01, "draws": 10, "exact_max": DEFAULT_EXACT_MAX, "seed": 0}
    return argparse.Namespace(**{**base, **given})


def with_split(run_dir: Path, split: str, images: torch.Tensor):
    """The run with the inputs of `split` replaced by `images` (the labels kept)."""
    run = load_run(run_dir)
    field = {"test": "test_x", "validation": "val_x"}[split]
    run.__dict__["task"] = dataclasses.replace(run.task, **{field: images})
    return run


def test_choices_read_the_validation_split_only(mnist_run):
    """Other test images change the reported metrics, not one choice; other validation images change the choices."""
    plain = prune(load_run(mnist_run), options())
    test_x = load_run(mnist_run).task.test_x
    g = torch.Generator().manual_seed(0)
    other = prune(with_split(mnist_run, "test", torch.rand(test_x.shape, generator=g, dtype=test_x.dtype)), options())
    assert len(plain.pure_ids) > 0
    np.testing.assert_array_equal(other.pure_ids, plain.pure_ids)
    np.testing.assert_array_equal(other.particles.contribution_relative, plain.particles.contribution_relative)
    assert other.threshold_scan.validation_metric == plain.threshold_scan.validation_metric
    assert other.metric_full_validation == plain.metric_full_validation
    assert other.metric_full != plain.metric_full and other.equal_sparsity.group != plain.equal_sparsity.group

    val_x = load_run(mnist_run).task.val_x
    moved = prune(with_split(mnist_run, "validation", val_x.flip(1)), options())  # the pixels mirrored
    assert not np.array_equal(moved.particles.contribution_relative, plain.particles.contribution_relative)
    assert moved.metric_full == plain.metric_full


def test_to_json_is_the_json_written(arithmetic_run, arithmetic, tmp_path):
    """The typed result's `to_json()` is what `--json` writes, key for key and in order."""
    _, numbers, _, _ = arithmetic
    result = analyse(load_run(arithmetic_run), tmp_path, options())
    assert isinstance(result, PruningResult) and len(result.figures) == 4
    written = json.loads(json.dumps(jsonable(result.to_json())))
    assert written == numbers and list(written) == list(numbers)
    assert list(numbers) == [
        "metric_name", "higher_is_better", "metric_full", "metric_full_validation", "final_step", "weights_source",
        "n_particles", "pure_threshold", "random_draws", "tolerance", "metric_floor", "metric_dtype", "run_dtype",
        "selection_split", "reported_split", "split", "dropout", "equal_sparsity", "equal_sparsity_pure",
        "within_tolerance", "threshold_scan", "curve", "particles",
    ]  # fmt: skip
    assert list(numbers["equal_sparsity"]) == [
        "count", "fraction", "l1", "magnitude", "contribution", "random_mean", "random_sd", "self_replicators",
        "pure_self_replicators", "pure_count", "pure_fraction",
    ]  # fmt: skip
    assert list(numbers["within_tolerance"]["equal_sparsity_pure"]) == [
        "pure_self_replicators", "l1", "magnitude", "contribution", "random_mean",
    ]  # fmt: skip
