"""The dense control (`mode: dense`): a bias-free MLP of the organism's sizes, trained like the organism."""

import h5py
import numpy as np
import torch

from sim.config import build_config
from sim.dense import NO_KIND, DenseModel, DenseNetwork
from sim.model import OrganismModel
from sim.organism import Organism
from sim.particles import ParticleSpec, effective_weights, init_weights
from sim.record import read_attrs

STEPS = 4


def arithmetic_config(mode: str, **extra):
    overrides = [("task.name", "arithmetic"), ("mode", mode), ("organism.hidden", [4, 3]), ("steps", STEPS),
                 ("record.log_every", 2), ("seed", 3), *extra.items()]  # fmt: skip
    return build_config(overrides=[(k.replace("__", "."), v) for k, v in overrides])


def test_the_dense_network_is_the_organism_fast_path_on_effective_weights():
    sizes = [3, 4, 4, 4, 4, 2]  # depth 5: the residual skip of the middle layers acts
    spec = ParticleSpec(5, 3)
    g = torch.Generator().manual_seed(0)
    for residual, activation in ((True, "tanh"), (False, "none")):
        organism = Organism(sizes, spec, residual, activation)
        bank = init_weights(organism.n_particles, spec, g, torch.device("cpu"), torch.float64)
        x = torch.randn(7, 3, generator=g, dtype=torch.float64)
        dense = DenseNetwork(sizes, residual, activation)
        torch.testing.assert_close(dense.forward(effective_weights(bank, spec), x), organism.forward(bank, x))


def test_the_dense_control_trains_as_torch_sgd_trains_a_bias_free_mlp_on_the_organisms_batches():
    config = arithmetic_config("dense")
    model = DenseModel(config)
    organism = OrganismModel(arithmetic_config("organism"), agents=False)
    # the same random stream after initialisation: both draw the same batches
    assert torch.equal(model.generator.get_state(), organism.generator.get_state())
    sizes = model.sizes
    assert sizes == [2, 4, 3, 1] and model.weights.shape == (4 * 2 + 3 * 4 + 3, 1)
    layers = [torch.nn.Linear(n_in, n_out, bias=False) for n_in, n_out in zip(sizes, sizes[1:])]
    with torch.no_grad():
        for layer, matrix in zip(layers, model.organism.matrices(model.weights.detach())):
            layer.weight.copy_(matrix)
            bound = 1 / layer.weight.shape[1] ** 0.5  # torch.nn.Linear's own initial range
            assert float(layer.weight.abs().max()) <= bound
    mlp = torch.nn.Sequential(*layers)
    sgd = torch.optim.SGD(mlp.parameters(), lr=config.train.lr, momentum=config.train.momentum)
    batches = torch.Generator().manual_seed(0)
    batches.set_state(model.generator.get_state())
    for _ in range(STEPS):
        model.step()
        x, y = model.task.sample_batch(config.task.batch_size, batches)
        sgd.zero_grad()
        torch.nn.functional.mse_loss(mlp(x), y).backward()
        sgd.step()
    for layer, matrix in zip(layers, model.organism.matrices(model.weights.detach())):
        torch.testing.assert_close(layer.weight.detach(), matrix)


def test_the_dense_record_has_the_organism_schema_without_kinds(tmp_path):
    model = DenseModel(arithmetic_config("dense"), run_dir=tmp_path)
    while model.running:
        model.step()
    model.close()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        attrs = read_attrs(f)
        assert attrs["mode"] == "dense" and attrs["layer_sizes"] == [2, 4, 3, 1]
        assert attrs["splits"] == {"train": 10000, "validation": 1000, "test": 1000}
        assert attrs["held_out_split"] == "test"
        weights = f["snapshots/weights"][-1]  # [P, 1]
        assert weights.shape == (23, 1)
        np.testing.assert_allclose(f["particles/effective_weight"][-1], weights[:, 0])
        assert (f["particles/kind"][()] == NO_KIND).all() and not f["particles/kind_counts"][()].any()
        assert np.isnan(f["particles/sr_loss"][()]).all() and not f["steps/sr_active"][()].any()
        assert np.isfinite(f["particles/held_out_metric"][()]).all()


def test_every_analysis_script_reads_a_dense_record(tmp_path, capsys):
    from analysis import connectivity, report, robustness, specialisation, trajectories

    (tmp_path / "run").mkdir()
    model = DenseModel(arithmetic_config("dense"), run_dir=tmp_path / "run")
    while model.running:
        model.step()
    model.close()
    for script in (specialisation, connectivity, robustness, trajectories):
        assert script.main([str(tmp_path / "run"), "--out", str(tmp_path / "fig")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the dense control" in err[0], err
    assert report.main([str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
