"""Pruning methods at equal sparsity, on organisms and on the dense control: the engine of `analysis.pruning_study`.

A trained model is seen through its *dense view*: one weight per connection, in particle-id order (layer by layer,
row-major over `[out, in]`). For an organism of linear particles that weight is the particle's effective weight, and
the dense network on the effective weights is exactly the organism (docs/science.md §3); pruning a connection zeroes
its particle's whole weight vector, so it carries nothing and self-trains as a zero fixpoint. The dense control's
connection weights are its own.

Sparsity is the fraction of connections removed: `round(sparsity * P)` of them. Every choice is made on the validation
split (SNIP gradients, task contributions, the pure self-replicators); `evaluate` measures the test split.

- `random`: uniformly random connections, reproducible from `(seed, draw)`.
- `magnitude`: smallest |weight| over the whole network (`torch.nn.utils.prune.global_unstructured`, L1).
- `magnitude_layerwise`: smallest |weight| of every layer, the same fraction per layer (`prune.l1_unstructured`).
- `snip`: smallest |w * dL/dw| (Lee et al. 2019), the task loss on the validation split at the trained weights.
- `contribution`: smallest relative task contribution on the validation inputs (share of its target neuron's input x
  fan-in, as in `analysis.common.Contributions`).
- `l1`: smallest L1 norm of the particle's own weight vector (for the dense control: |w|, the magnitude).
- self-replicator pruning at its natural sparsity: all `self_replicator` particles, and the pure ones (relative
  contribution on validation below `PURE_THRESHOLD`).

`finetune` trains K steps with the mask fixed: the pruned weights (and their optimiser buffers) are reset to exactly 0
after every step, and an organism keeps self-training as it did at the end of its run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils import prune

from analysis.common import PURE_THRESHOLD, AnalysisError, Run
from sim.dense import DenseModel, DenseNetwork
from sim.model import OrganismModel
from sim.particles import OTHER, SELF_REPLICATOR, effective_weights
from sim.tasks import Task

METHODS = ("random", "magnitude", "magnitude_layerwise", "snip", "contribution", "l1")
DATA_METHODS = ("snip", "contribution")  # the methods whose scores read data: the validation split
COMPRESSIONS = (1, 2, 4, 8, 16, 32, 64)  # compression ratio c keeps 1/c of the connections


def sparsity_of(compression: float) -> float:
    """The fraction of connections removed at compression ratio `compression` (1 - 1/c)."""
    return 1.0 - 1.0 / compression


def n_pruned(n_connections: int, sparsity: float) -> int:
    """How many of `n_connections` a sparsity removes."""
    return int(round(sparsity * n_connections))


@dataclass
class Trained:
    """A trained model at its final weights: the bank `[P, n]` (n = 1 for the dense control), its dense view and
    its task (with the train / validation / test splits of the run)."""

    run: Run
    bank: torch.Tensor  # [P, n]
    network: DenseNetwork
    task: Task
    kinds: np.ndarray | None  # [P] final kind codes; None for the dense control

    @classmethod
    def from_run(cls, run: Run) -> Trained:
        """The final weights of an organism or dense run (from the checkpoint the record names)."""
        if not (run.is_organism or run.is_dense) or not run.sizes:
            raise AnalysisError(f"{str(run.run_dir)!r} is a {run.mode} run: pruning needs an organism or a dense model")
        if run.is_organism and not run.spec.linear:
            raise AnalysisError(f"{str(run.run_dir)!r} has nonlinear particles: the pruning study prunes effective "
                                "weights, exact only for linear particles (particle.activation none)")  # fmt: skip
        bank, _, _ = run.final_weights()
        bank = bank.double()  # every metric in float64, as `Run.task`'s data
        o = run.config.organism
        network = DenseNetwork(run.sizes, o.residual, o.activation)
        kinds = run.final_kinds() if run.is_organism else None
        return cls(run, bank, network, run.task, kinds)

    @property
    def is_organism(self) -> bool:
        return self.kinds is not None

    @property
    def n_connections(self) -> int:
        return self.bank.shape[0]

    def connection_weights(self, bank: torch.Tensor | None = None) -> torch.Tensor:
        """The dense view `[P]`: effective weights of an organism's particles, or the dense control's weights."""
        bank = self.bank if bank is None else bank
        return effective_weights(bank, self.run.spec) if self.is_organism else bank[:, 0]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x, y)` of the split `validation` or `test`."""
        t = self.task
        return {"validation": (t.val_x, t.val_y), "test": (t.test_x, t.test_y)}[name]

    @torch.no_grad()
    def evaluate(
        self, keep: torch.Tensor | None = None, split: str = "test", bank: torch.Tensor | None = None
    ) -> float:
        """The task metric on `split` with the connections where `keep [P]` is False removed."""
        weights = self.connection_weights(bank)
        if keep is not None:
            weights = weights * keep
        x, y = self.split(split)
        return float(self.task.metric(self.network.forward(weights, x), y))


# --- scores and masks ------------------------------------------------------------------------------------------------


def keep_lowest_pruned(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The keep mask `[P]` that removes the `k` connections of smallest score (ties: the lower id first)."""
    order = torch.as_tensor(np.argsort(scores.detach().cpu().double().numpy(), kind="stable"))
    keep = torch.ones(len(scores), dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def random_keep(n_connections: int, k: int, seed: int, draw: int) -> torch.Tensor:
    """A keep mask removing `k` uniformly random connections, the same for the same `(seed, draw)`."""
    order = np.random.default_rng([seed, draw]).permutation(n_connections)
    keep = torch.ones(n_connections, dtype=torch.bool)
    keep[torch.as_tensor(order[:k])] = False
    return keep


def _linear_views(network: DenseNetwork, weights: torch.Tensor) -> list[torch.nn.Linear]:
    """One bias-free `torch.nn.Linear` per layer holding `weights [P]`, for `torch.nn.utils.prune`."""
    modules = []
    for matrix in network.matrices(weights.detach()):
        module = torch.nn.Linear(matrix.shape[1], matrix.shape[0], bias=False, dtype=matrix.dtype)
        with torch.no_grad():
            module.weight.copy_(matrix)
        modules.append(module)
    return modules


def magnitude_keep(network: DenseNetwork, weights: torch.Tensor, k: int) -> torch.Tensor:
    """Global magnitude pruning of `k` connections with `torch.nn.utils.prune.global_unstructured` (L1)."""
    modules = _linear_views(network, weights)
    if k > 0:
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=k)
        return torch.cat([m.weight_mask.reshape(-1) for m in modules]).bool()
    return torch.ones(len(weights), dtype=torch.bool)


def magnitude_layerwise_keep(network: DenseNetwork, weights: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Magnitude pruning of the same fraction of every layer (`torch.nn.utils.prune.l1_unstructured`)."""
    masks = []
    for module in _linear_views(network, weights):
        k = n_pruned(module.weight.numel(), sparsity)
        if k > 0:
            prune.l1_unstructured(module, "weight", amount=k)
            masks.append(module.weight_mask.reshape(-1).bool())
        else:
            masks.append(torch.ones(module.weight.numel(), dtype=torch.bool))
    return torch.cat(masks)


def snip_scores(trained: Trained) -> torch.Tensor:
    """|w * dL/dw| of every connection `[P]`: L the task loss on the validation split, at the trained weights."""
    weights = trained.connection_weights().detach().clone().requires_grad_(True)
    x, y = trained.split("validation")
    loss = trained.task.loss(trained.network.forward(weights, x), y)
    (grad,) = torch.autograd.grad(loss, weights)
    return (weights * grad).abs().detach()


@torch.no_grad()
def relative_contributions(trained: Trained, split: str = "validation") -> torch.Tensor:
    """Relative task contribution `[P]` of every connection on the inputs of `split`: the mean |w x input| it carries,
    as a share of its target neuron's total, times the neuron's fan-in (1 = an average connection of that neuron)."""
    network = trained.network
    weights = trained.connection_weights()
    inputs: list[torch.Tensor] = []
    network.forward(weights, trained.split(split)[0], layer_inputs=inputs)
    out = []
    for layer, x in enumerate(inputs):
        matrix = network.matrices(weights)[layer]  # [n_out, n_in]
        carried = matrix.abs() * x.abs().mean(dim=0)  # [n_out, n_in]: |w| x mean |input| (one sign per input column)
        totals = carried.sum(dim=1, keepdim=True)  # [n_out, 1]
        share = torch.where(totals > 0, carried / totals.clamp_min(torch.finfo(carried.dtype).tiny), 0.0)
        out.append((share * matrix.shape[1]).reshape(-1))
    return torch.cat(out)


def l1_scores(trained: Trained) -> torch.Tensor:
    """L1 norm of every particle's own weight vector `[P]` (for the dense control: |w|)."""
    return trained.bank.abs().sum(dim=1)


class Pruner:
    """The keep masks of every method for one trained model, with the data-dependent scores computed once."""

    def __init__(self, trained: Trained, seed: int) -> None:
        self.trained = trained
        self.seed = seed
        self.weights = trained.connection_weights().detach()  # [P]
        self.scores = {"snip": snip_scores(trained), "contribution": relative_contributions(trained),
                       "l1": l1_scores(trained)}  # fmt: skip

    def keep(self, method: str, sparsity: float, draw: int = 0) -> torch.Tensor:
        """The keep mask `[P]` of `method` at `sparsity` (`draw` numbers the random draws)."""
        P = self.trained.n_connections
        k = n_pruned(P, sparsity)
        if method == "random":
            return random_keep(P, k, self.seed, draw)
        if method == "magnitude":
            return magnitude_keep(self.trained.network, self.weights, k)
        if method == "magnitude_layerwise":
            return magnitude_layerwise_keep(self.trained.network, self.weights, sparsity)
        if method in self.scores:
            return keep_lowest_pruned(self.scores[method], k)
        raise ValueError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")

    def sr_keeps(self) -> dict[str, torch.Tensor]:
        """Keep masks of self-replicator pruning at its natural sparsity (organisms only): `all` the self-replicators,
        the `pure` ones (relative contribution on validation below `PURE_THRESHOLD`), and all `other` particles."""
        kinds = torch.as_tensor(self.trained.kinds)
        sr = kinds == SELF_REPLICATOR
        pure = sr & (self.scores["contribution"] < PURE_THRESHOLD)
        return {"all": ~sr, "pure": ~pure, "other": kinds != OTHER}


# --- fine-tuning -----------------------------------------------------------------------------------------------------


def finetune(trained: Trained, keep: torch.Tensor, steps: int) -> torch.Tensor:
    """The bank after `steps` training steps from the run's final checkpoint with the connections `~keep` removed:
    their weights and optimiser buffers are exactly 0 after every step. An organism goes on self-training as at the end
    of its run (the gate state comes from the checkpoint); batches continue the run's own random stream."""
    run = trained.run
    checkpoint = run.run_dir / str(run.attrs.get("checkpoint", "checkpoint.pt"))
    if not checkpoint.is_file():
        raise AnalysisError(f"{str(run.run_dir)!r} has no checkpoint: fine-tuning continues training from it")
    config = copy.deepcopy(run.config)
    config.device = "cpu"
    model = DenseModel(config) if run.is_dense else OrganismModel(config, agents=False)
    model.load_state(checkpoint)
    pruned = torch.nonzero(~keep).squeeze(1).to(model.device)  # [n_pruned]: index_fill_ beats a mask ~2x

    def clear() -> None:
        with torch.no_grad():
            for bank in (model.weights, model.task_momentum, model.sr_momentum):
                bank.index_fill_(0, pruned, 0.0)

    clear()
    for _ in range(steps):
        model.train_step()
        clear()
    return model.weights.detach().to(trained.bank.dtype)
