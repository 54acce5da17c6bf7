"""The pruning study: every method's curve against an independent computation, the splits, fine-tuning, bad input."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.common import load_run
from analysis.prune_methods import (
    COMPRESSIONS,
    METHODS,
    Pruner,
    Trained,
    finetune,
    n_pruned,
    random_keep,
    relative_contributions,
    snip_scores,
    sparsity_of,
)
from analysis.pruning_study import main
from sim.config import build_config
from sim.particles import OTHER, SELF_REPLICATOR
from sim.runner import build_model, simulate, write_config

SEEDS = (0, 1)
BASE = [("organism.hidden", [6]), ("steps", 20), ("task.batch_size", 100), ("train.task_first_threshold", 0.0),
        ("record.log_every", 10), ("record.snapshot_every", 20)]  # fmt: skip
POINTS = {
    "mode=organism": [("mode", "organism")],
    "train.n_sr=0": [("train.n_sr", 0)],
    "mode=dense": [("mode", "dense")],
}


def train(run_dir, overrides):
    config = build_config(overrides=overrides)
    run_dir.mkdir(parents=True)
    model = build_model(config, run_dir, resume=False)
    write_config(config, run_dir)
    simulate(model, quiet=True)
    model.close()
    return run_dir


def write_index(sweep_dir, runs):
    entries = [{"point": p, "seed": s, "params": {}, "run_dir": f"{p}/s{s}", "status": "done", "error": None}
               for p, s in runs]  # fmt: skip
    (sweep_dir / "sweep.json").write_text(json.dumps({"runs": entries}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A small sweep directory, as `sim.sweep` writes it: organism, no-SR organism and dense control x 2 seeds."""
    root = tmp_path_factory.mktemp("sweep")
    runs = []
    for point, overrides in POINTS.items():
        for seed in SEEDS:
            train(root / point / f"s{seed}", [*BASE, *overrides, ("seed", seed)])
            runs.append((point, seed))
    write_index(root, runs)
    return root


@pytest.fixture(scope="module")
def study(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main([str(sweep), "--finetune", "2", "--out", str(out), "--json", str(out / "copy.json")]) == 0
    return json.loads((out / "study.json").read_text()), out


def trained_runs(sweep, point):
    return [Trained.from_run(load_run(sweep / point / f"s{seed}")) for seed in SEEDS]


def dense_forward(matrices, x):
    """A hand-written bias-free linear MLP (the study's configs have no activation and no skips)."""
    for w in matrices:
        x = x @ w.T
    return x


def matrices_of(weights, sizes):
    out, start = [], 0
    for n_in, n_out in zip(sizes, sizes[1:]):
        out.append(weights[start : start + n_in * n_out].view(n_out, n_in))
        start += n_in * n_out
    return out


def accuracy(trained, weights):
    x, y = trained.task.test_x, trained.task.test_y
    return float((dense_forward(matrices_of(weights, trained.run.sizes), x).argmax(1) == y).double().mean())


def test_a_subset_of_methods_runs_without_the_paper_figure(sweep, tmp_path):
    """`--methods` without L1 and magnitude: every asked-for curve, no seed-paper figure (it needs both)."""
    assert main([str(sweep), "--methods", "random,snip", "--draws", "10", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "study.json").read_text())
    assert all(set(m["curves"]) == {"random", "snip"} for m in doc["models"].values())
    assert "paper_figure" not in doc["models"]["organism"]
    assert not (tmp_path / "study_paper_figure.png").exists()


@pytest.mark.slow  # the whole study over a sweep of six runs
def test_the_json_contract(study):
    doc, out = study
    assert doc["selection_split"] == "validation" and doc["split"] == {"train": 3500, "validation": 500, "test": 1000}
    assert set(doc["models"]) == {"organism", "organism_no_sr", "dense"}
    for name, model in doc["models"].items():
        assert model["mode"] == ("dense" if name == "dense" else "organism")
        assert model["n_sr"] == (10 if name == "organism" else 0)
        assert set(model["full"]) >= {"mean", "lo", "hi", "n"} and model["full"]["n"] == len(SEEDS)
        assert model["full"]["lo"] <= model["full"]["mean"] <= model["full"]["hi"]
        for method in METHODS:
            curve = model["curves"][method]
            assert [p["compression"] for p in curve] == list(COMPRESSIONS)
            assert all(set(p) >= {"compression", "mean", "lo", "hi", "n"} for p in curve)
            assert model["max_compression_within_1pt"][method] in COMPRESSIONS
            assert len(model["finetuned"]["curves"][method]) == len(COMPRESSIONS)
        # compression 1 prunes nothing
        assert all(model["curves"][m][0]["mean"] == pytest.approx(model["full"]["mean"]) for m in METHODS)
        if model["mode"] == "organism":
            assert set(model["sr_point"]) >= {"sparsity", "mean", "lo", "hi", "n"}
        else:
            assert "sr_point" not in model
    assert json.loads((out / "copy.json").read_text()) == doc
    assert (out / "study.md").read_text().count("## Answers") == 1
    assert all((out / name).stat().st_size > 0 for name in ("study_curves.png", "study_curves_finetuned.png"))


@pytest.mark.slow  # the whole study over a sweep of six runs
def test_global_magnitude_is_torch_prune_and_an_independent_sort(study, sweep):
    doc, _ = study
    for point, name in (("mode=dense", "dense"), ("mode=organism", "organism")):
        group = trained_runs(sweep, point)
        for i, c in enumerate(COMPRESSIONS):
            values = []
            for trained in group:
                w = trained.connection_weights().detach()
                k = n_pruned(len(w), sparsity_of(c))
                pruned = np.argsort(w.abs().numpy(), kind="stable")[:k]  # [k] smallest |w|, by hand
                keep = torch.ones(len(w), dtype=torch.bool)
                keep[torch.as_tensor(pruned)] = False
                assert torch.equal(Pruner(trained, 0).keep("magnitude", sparsity_of(c)), keep)
                values.append(accuracy(trained, w * keep))
            assert doc["models"][name]["curves"]["magnitude"][i]["mean"] == pytest.approx(np.mean(values), abs=1e-6)


def test_layerwise_magnitude_prunes_the_same_fraction_of_every_layer(sweep):
    trained = trained_runs(sweep, "mode=dense")[0]
    keep = Pruner(trained, 0).keep("magnitude_layerwise", sparsity_of(4))
    w = trained.connection_weights().detach()
    start = 0
    for n_in, n_out in zip(trained.run.sizes, trained.run.sizes[1:]):
        layer_w, layer_keep = w[start : start + n_in * n_out], keep[start : start + n_in * n_out]
        assert int((~layer_keep).sum()) == n_pruned(n_in * n_out, 0.75)
        assert float(layer_w[~layer_keep].abs().max()) <= float(layer_w[layer_keep].abs().min())
        start += n_in * n_out


@pytest.mark.slow  # the whole study over a sweep of six runs
def test_snip_is_the_hand_written_autograd_product_on_validation(study, sweep):
    doc, _ = study
    for point, name in (("mode=organism", "organism"), ("mode=dense", "dense")):
        values = []
        for trained in trained_runs(sweep, point):
            w = trained.connection_weights().detach().clone().requires_grad_(True)
            logits = dense_forward(matrices_of(w, trained.run.sizes), trained.task.val_x)
            F.cross_entropy(logits, trained.task.val_y).backward()
            scores = (w * w.grad).abs().detach()
            torch.testing.assert_close(snip_scores(trained), scores)
            k = n_pruned(len(w), sparsity_of(4))
            keep = torch.ones(len(w), dtype=torch.bool)
            keep[torch.as_tensor(np.argsort(scores.numpy(), kind="stable")[:k])] = False
            values.append(accuracy(trained, w.detach() * keep))
        assert doc["models"][name]["curves"]["snip"][2]["mean"] == pytest.approx(np.mean(values), abs=1e-6)


@pytest.mark.slow  # the whole study over a sweep of six runs
def test_random_is_reproducible_by_seed_and_its_curve_averages_the_draws(study, sweep):
    doc, _ = study
    a, b = random_keep(100, 30, seed=4, draw=2), random_keep(100, 30, seed=4, draw=2)
    assert torch.equal(a, b) and int((~a).sum()) == 30
    assert not torch.equal(a, random_keep(100, 30, seed=4, draw=3))
    assert not torch.equal(a, random_keep(100, 30, seed=5, draw=2))
    values = []
    for trained in trained_runs(sweep, "mode=organism"):
        w = trained.connection_weights().detach()
        k = n_pruned(len(w), sparsity_of(8))
        draws = []
        for draw in range(10):
            keep = torch.ones(len(w), dtype=torch.bool)
            keep[torch.as_tensor(np.random.default_rng([trained.run.config.seed, draw]).permutation(len(w))[:k])] = (
                False
            )
            draws.append(accuracy(trained, w * keep))
        values.append(np.mean(draws))
    assert doc["models"]["organism"]["curves"]["random"][3]["mean"] == pytest.approx(np.mean(values), abs=1e-6)


def test_contribution_l1_and_the_dense_view_of_an_organism(sweep):
    trained = trained_runs(sweep, "mode=organism")[0]
    bank = trained.bank
    # L1 of the particle's own weights, and contribution = |w| x mean |input| as a share x fan-in, on validation
    pruner = Pruner(trained, 0)
    torch.testing.assert_close(pruner.scores["l1"], bank.abs().sum(dim=1))
    w = trained.connection_weights().detach()
    first = w[: 225 * 6].view(6, 225).abs() * trained.task.val_x.abs().mean(dim=0)
    torch.testing.assert_close(
        relative_contributions(trained)[: 225 * 6], (first / first.sum(1, keepdim=True) * 225).reshape(-1)
    )
    # zeroing the pruned particles' weight vectors is the dense view with those connections removed
    keep = pruner.keep("contribution", 0.5)
    zeroed = bank.clone()
    zeroed[~keep] = 0.0
    organism_metric = float(
        trained.task.metric(trained.run.organism.forward(zeroed, trained.task.test_x), trained.task.test_y)
    )
    assert trained.evaluate(keep) == pytest.approx(organism_metric, abs=1e-12)


def test_self_replicator_pruning_zeroes_the_srs_and_the_pure_ones_carry_least(sweep):
    trained = trained_runs(sweep, "mode=organism")[0]
    kinds = np.full(trained.n_connections, OTHER)
    kinds[::3] = SELF_REPLICATOR
    trained.kinds = kinds
    pruner = Pruner(trained, 0)
    keeps = pruner.sr_keeps()
    assert torch.equal(keeps["all"], torch.as_tensor(kinds != SELF_REPLICATOR))
    pure = ~keeps["pure"]
    assert bool((torch.as_tensor(kinds)[pure] == SELF_REPLICATOR).all())
    assert bool((pruner.scores["contribution"][pure] < 0.01).all())
    assert not bool(keeps["other"][torch.as_tensor(kinds == OTHER)].any())


def test_validation_and_test_sets_are_disjoint(sweep):
    task = trained_runs(sweep, "mode=dense")[0].task
    rows = {split: {bytes(r.numpy().tobytes()) for r in x} for split, x in
            (("train", task.train_x), ("validation", task.val_x), ("test", task.test_x))}  # fmt: skip
    assert not rows["validation"] & rows["test"] and not rows["validation"] & rows["train"]
    assert not rows["test"] & rows["train"]


@pytest.mark.parametrize("point", ["mode=organism", "mode=dense"])
def test_finetuned_pruned_weights_stay_exactly_zero(sweep, point):
    trained = trained_runs(sweep, point)[0]
    keep = Pruner(trained, 0).keep("magnitude", 0.75)
    tuned = finetune(trained, keep, 3)
    assert bool((tuned[~keep] == 0).all())
    assert not torch.equal(tuned[keep], trained.bank[keep])  # the kept weights did train


def test_magnitude_beats_random_at_compression_4_on_a_trained_dense_control(tmp_path):
    run_dir = train(tmp_path / "dense", [*BASE, ("mode", "dense"), ("steps", 150), ("train.lr", 0.05)])
    trained = Trained.from_run(load_run(run_dir))
    assert trained.evaluate() > 0.8
    pruner = Pruner(trained, 0)
    magnitude = trained.evaluate(pruner.keep("magnitude", sparsity_of(4)))
    random = np.mean([trained.evaluate(pruner.keep("random", sparsity_of(4), d)) for d in range(10)])
    assert magnitude > random + 0.05


def test_bad_input_is_one_line_exit_2(sweep, tmp_path, capsys):
    without_dense = tmp_path / "no_dense"
    without_dense.mkdir()
    (without_dense / "mode=organism").symlink_to(sweep / "mode=organism")
    write_index(without_dense, [("mode=organism", s) for s in SEEDS])
    without_organism = tmp_path / "no_organism"
    without_organism.mkdir()
    (without_organism / "mode=dense").symlink_to(sweep / "mode=dense")
    write_index(without_organism, [("mode=dense", s) for s in SEEDS])
    cases = [
        ([str(without_dense)], "no finished run of a dense control"),
        ([str(without_organism)], "no finished run of an organism model"),
        ([str(sweep), "--finetune", "-1"], "--finetune must be >= 0"),
        ([str(sweep), "--methods", "magnitude,bogus"], "unknown pruning method 'bogus'"),
        ([str(sweep), "--draws", "3"], "--draws must be >= 10"),
        ([str(tmp_path)], "not a sweep directory"),
    ]
    for argv, words in cases:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()


def first_nonfinite_step(run_dir):
    with h5py.File(run_dir / "run.h5", "r") as f:
        loss, steps = f["steps/task_loss"][:], f["steps/step"][:]
    return int(steps[np.flatnonzero(~np.isfinite(loss))[0]])


def test_diverged_runs_are_left_out_of_every_number_and_named(sweep, tmp_path, capsys):
    """Organism seed 2 and no-SR seed 0 trained at lr 1000 (their task loss turns NaN): each model's numbers are its
    good seeds', the organism - no-SR difference pairs the seeds both kept, and study.md names every left-out run."""
    mixed = tmp_path / "mixed"
    good = [("mode=organism", 0), ("mode=organism", 1), ("train.n_sr=0", 1), ("mode=dense", 0), ("mode=dense", 1)]
    for point, seed in good:
        (mixed / point).mkdir(parents=True, exist_ok=True)
        (mixed / point / f"s{seed}").symlink_to(sweep / point / f"s{seed}")
    bad = [("mode=organism", 2), ("train.n_sr=0", 0)]
    for point, seed in bad:
        train(mixed / point / f"s{seed}", [*BASE, *POINTS[point], ("seed", seed), ("train.lr", 1000.0)])
    write_index(mixed, good + bad)
    out = tmp_path / "out"
    assert main([str(mixed), "--methods", "magnitude,l1", "--out", str(out)]) == 0
    doc = json.loads((out / "study.json").read_text())

    expected = [("organism", 2), ("organism_no_sr", 0)]
    assert sorted((d["model"], d["seed"]) for d in doc["diverged"]) == expected
    for d in doc["diverged"]:
        point = "mode=organism" if d["model"] == "organism" else "train.n_sr=0"
        assert d["step"] == first_nonfinite_step(mixed / point / f"s{d['seed']}")
    models = doc["models"]
    assert models["organism"]["seeds"] == [0, 1] and models["organism_no_sr"]["seeds"] == [1]

    def full(point, seed):
        return Trained.from_run(load_run(mixed / point / f"s{seed}")).evaluate()

    assert models["organism"]["full"]["mean"] == pytest.approx(np.mean([full("mode=organism", s) for s in (0, 1)]))
    assert models["organism"]["full"]["n"] == 2 and models["organism_no_sr"]["full"]["n"] == 1
    diff = full("mode=organism", 1) - full("train.n_sr=0", 1)
    text = (out / "study.md").read_text()
    assert f"paired by seed: {diff:.3f} [{diff:.3f}, {diff:.3f}]" in text
    assert "Diverged, left out of every number" in text
    assert all(f"{model} seed {seed} (step " in text for model, seed in expected)
    assert capsys.readouterr().out.count("diverged, left out:") == 2


def test_a_study_whose_every_dense_run_diverged_is_refused(sweep, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "mode=organism").mkdir(parents=True)
    for seed in SEEDS:
        (broken / "mode=organism" / f"s{seed}").symlink_to(sweep / "mode=organism" / f"s{seed}")
    train(broken / "mode=dense" / "s0", [*BASE, ("mode", "dense"), ("seed", 0), ("train.lr", 1e6)])
    write_index(broken, [*[("mode=organism", s) for s in SEEDS], ("mode=dense", 0)])
    assert main([str(broken), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no finished run of a dense control (mode: dense) that did not diverge" in err[0], err
    assert not (tmp_path / "out").exists()
