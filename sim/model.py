"""The Mesa models: `ParticleModel` (what organisms and soups share) and `OrganismModel`.

One call of `step()` is one simulation step (docs/science.md §4): `n_sr` self-replication SGD steps over the whole
bank and a task SGD step (in the configured order), then population events, then classification and logging at their
intervals. All particle weights live in one tensor `weights [P, n]`; the agents are thin views into it, and the hot
path is batched tensor work with no Python loop over particles.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import mesa
import networkx as nx
import numpy as np
import pandas as pd
import torch
from mesa.discrete_space import Network

from sim.agents import ParticleAgent
from sim.config import DTYPES, Config, config_from_keywords, resolve_device
from sim.events import EVENT_NAMES, EVENT_PARAMS, population_events
from sim.organism import Organism, sgd_step_
from sim.particles import (
    KIND_NAMES,
    ParticleSpec,
    classify,
    effective_weights,
    init_weights,
    kernel_effective_weights,
    log_quantities,
    mean_sr_loss,
    sr_loss,
    sr_train_,
    uses_kernels,
)
from sim.record import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    RECORD_NAME,
    RecordError,
    RecordWriter,
    config_digest,
    git_commit,
    load_checkpoint,
    package_versions,
    save_checkpoint,
)
from sim.tasks import make_task
from sim.topology import (
    edges_csr,
    layer_sizes,
    neighbour_csr,
    organism_graph,
    particle_edges,
    particle_graph,
    particle_graph_size,
    particle_table,
)

# the record is flushed at most this often between snapshots: an HDF5 flush costs milliseconds, a log interval less
FLUSH_SECONDS = 1.0
# the record holds an organism's particle-graph edges up to this many; `/topology/edges` is empty for a larger one
# (784-32-32-10 already has 11 M)
RECORD_EDGES_LIMIT = 2_000_000


def _pack_pcg64(state: dict[str, Any]) -> torch.Tensor:
    """NumPy's PCG64 state as bytes `[37]` uint8: state and increment (128 bits each), then the buffered 32 bits
    (a flag byte and 4 bytes), all little-endian."""
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"cannot checkpoint NumPy's {state.get('bit_generator')} generator (PCG64 only)")
    raw = (state["state"]["state"].to_bytes(16, "little") + state["state"]["inc"].to_bytes(16, "little")
           + bytes([state["has_uint32"]]) + state["uinteger"].to_bytes(4, "little"))  # fmt: skip
    return torch.tensor(list(raw), dtype=torch.uint8)


def _unpack_pcg64(packed: torch.Tensor) -> dict[str, Any]:
    raw = bytes(packed.tolist())
    if len(raw) != 37:
        raise ValueError(f"NumPy generator state of {len(raw)} bytes, not 37")
    return {"bit_generator": "PCG64",
            "state": {"state": int.from_bytes(raw[:16], "little"), "inc": int.from_bytes(raw[16:32], "little")},
            "has_uint32": raw[32], "uinteger": int.from_bytes(raw[33:37], "little")}  # fmt: skip


class LogCollector(mesa.DataCollector):
    """Mesa's DataCollector for numbers that exist at log steps only: `collect` is called at those steps, and entry
    `i` of `model_vars[name]` holds the numbers as of step `i + 1` (the last logged ones; None before the first log),
    the one-entry-per-step layout that Mesa's `batch_run` and `get_model_vars_dataframe` read. A step between two logs
    costs nothing but one list slot per reporter."""

    def collect(self, model: mesa.Model) -> None:
        for values in self.model_vars.values():
            values.extend([values[-1] if values else None] * (model.steps - 1 - len(values)))
        super().collect(model)

    def get_model_vars_dataframe(self) -> pd.DataFrame:
        """One row per step, indexed by the step (from 1), so Mesa's plots put each number at its step. The rows that
        every reporter has: a page's plot reads this while another thread may be collecting."""
        columns = {name: list(values) for name, values in self.model_vars.items()}
        rows = min((len(values) for values in columns.values()), default=0)
        index = pd.RangeIndex(1, rows + 1, name="step")
        return pd.DataFrame({name: values[:rows] for name, values in columns.items()}, index=index)


def _logged(name: str, model: ParticleModel) -> float:
    return model.summary[name]


def _kind_count(kind: str, model: ParticleModel) -> int:
    return model.summary["kind_counts"][kind]


# the model reporters: the numbers every log step measures
REPORTERS = {
    **{kind: partial(_kind_count, kind) for kind in KIND_NAMES},
    "held_out_metric": partial(_logged, "held_out_metric"),
    "sr_loss": partial(_logged, "sr_loss"),
}


class ParticleModel(mesa.Model):
    """A population of particles on a graph: the bank, self-training, population events, classification and record.

    `run_dir` given: the model writes `run.h5` and checkpoints there; `resume=True` continues from its checkpoint.
    `graph=None`: the particle graph is built (`_build_graph`) when first needed: by the record's topology, by
    population events, by the agents (an organism computes its record edges and its neighbours from its layer sizes
    instead). `agents=True`: `model.agents` and `model.grid` give Mesa agents on a Mesa Network over the graph, built
    when first asked for (no run reads them); `agents=False` has no agents and builds the graph only for events, so that
    otherwise every particle is without neighbours. `datacollector` collects `REPORTERS` at every log step.
    """

    mode = "particles"

    def __init__(
        self,
        config: Config,
        n_particles: int,
        graph: nx.Graph | None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        agents: bool = True,
    ) -> None:
        super().__init__(seed=config.seed)
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.spec = config.particle.spec()
        self._graph = graph
        self._with_agents = agents
        self._grid: Network | None = None
        self._csr: tuple[torch.Tensor, torch.Tensor] | None = None
        self.weights = self._initial_weights(n_particles)  # [P, n]
        self.weights.requires_grad_(True)
        self.task_momentum = torch.zeros_like(self.weights.detach())  # [P, n]
        self.sr_momentum = torch.zeros_like(self.weights.detach())  # [P, n]
        self.rates = {name: getattr(config.events, name) for name in EVENT_NAMES}
        self.event_params = {name: getattr(config.events, name) for name in EVENT_PARAMS}
        self.event_counts = torch.zeros(len(EVENT_NAMES), dtype=torch.int64, device=self.device)  # since step 0
        self.sr_active = self._gate_threshold() == 0
        self._metric_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._metric_count = 0
        # the gate's own accumulator: its window is `train.task_first_window` steps, whatever the record settings
        self._gate_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._gate_count = 0
        self.summary: dict[str, Any] = {}  # the latest logged numbers, for progress displays
        self.datacollector = LogCollector(model_reporters=REPORTERS)

        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_id = uuid.uuid4().hex  # which run a checkpoint belongs to (a resumed run keeps its own)
        self.record: RecordWriter | None = None
        if self.run_dir is not None:
            rows = self._load(self.run_dir / CHECKPOINT_NAME) if resume else None
            self.record = RecordWriter(
                self.run_dir / RECORD_NAME, self._record_attrs(), n_particles, self.weights.shape[1],
                self._topology(), resume_rows=rows,
            )  # fmt: skip
            if not resume:
                # the initial state is step 0: a run of 0 steps is a complete record of it
                self._log(0)
                self._snapshot(0)

    @property
    def n_particles(self) -> int:
        return self.weights.shape[0]

    # --- the graph, the Mesa space and the agents, built on first use ----------------------------------------------
    @property
    def graph(self) -> nx.Graph | None:
        """The particle graph (networkx, nodes are particle ids); None for a model without agents or events."""
        if self._graph is None and (self._with_agents or any(self.rates.values())):
            self._graph = self._build_graph()
        return self._graph

    def _build_graph(self) -> nx.Graph | None:
        return None

    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The particle graph in CSR form on the device, `(indptr [P + 1], indices)`; no neighbours without a graph."""
        if self._csr is None:
            if self.graph is not None:
                self._csr = neighbour_csr(self.graph, self.device)
            else:
                empty = torch.zeros(0, dtype=torch.int64, device=self.device)
                self._csr = (torch.zeros(self.n_particles + 1, dtype=torch.int64, device=self.device), empty)
        return self._csr

    @property
    def grid(self) -> Network:
        """The Mesa Network over the particle graph, one agent (a `ParticleAgent`) on each particle's cell."""
        if self._grid is None:
            if not self._with_agents or self.graph is None:
                raise ValueError("this model was built with agents=False: it has no Mesa space or agents")
            self._grid = Network(self.graph, capacity=1, random=self.random)
            for index in range(self.n_particles):
                ParticleAgent(self, index, self._grid[index])
        return self._grid

    @property
    def agents(self) -> mesa.agent.AgentSet:
        """The Mesa agents, one per particle: thin views into the bank, placed on `grid`."""
        if self._with_agents:
            self.grid  # noqa: B018  (builds the agents on first use)
        return super().agents

    # --- what subclasses provide -------------------------------------------------------------------------------------
    def _initial_weights(self, n_particles: int) -> torch.Tensor:
        """The bank at step 0, `[P, n]`, drawn from the model's generator."""
        return init_weights(n_particles, self.spec, self.generator, self.device, self.dtype)

    def _particle_state(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a log row holds per particle: kind code (int8), SR loss and effective weight, each `[P]`."""
        if uses_kernels(weights, self.spec):  # all three in one pass over the bank
            return log_quantities(weights, self.spec)
        return classify(weights, self.spec), sr_loss(weights, self.spec), effective_weights(weights, self.spec)

    def _gate_threshold(self) -> float:
        return 0.0

    def gate_status(self) -> str | None:
        """While the gate holds self-training back, how far the task is from opening it ("self-training starts at
        train accuracy 0.85: now 0.71", the running train metric of the last log interval); None once it runs."""
        if self.sr_active or not self.summary:
            return None
        name = self.task.metric_info.short
        return (
            f"self-training starts at train {name} {self._gate_threshold():.3g}: now {self.summary['train_metric']:.3g}"
        )

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One task SGD step; returns (task loss, train metric) as 0-d device tensors."""
        nan = torch.full((), float("nan"), device=self.device)
        return nan, nan

    def held_out_metric(self, weights: torch.Tensor | None = None) -> float:
        """The task metric on held-out data (NaN without a task)."""
        return float("nan")

    def _topology(self) -> dict[str, np.ndarray]:
        n = self.n_particles
        edges = np.array(self.graph.edges() if self.graph is not None else [], dtype=np.int64).reshape(-1, 2)
        return {"layer": np.full(n, -1), "source": np.full(n, -1), "target": np.full(n, -1), "edges": edges}

    def _extra_attrs(self) -> dict[str, Any]:
        return {"task": "none", "metric_name": "none", "layer_sizes": "[]"}

    # --- one simulation step -----------------------------------------------------------------------------------------
    def _self_train(self) -> torch.Tensor:
        """`n_sr` SGD steps on `alpha * sum_p SR-loss(p)`; returns the mean SR loss before them."""
        train = self.config.train
        if not self.sr_active or train.n_sr == 0:
            return mean_sr_loss(self.weights, self.spec)
        buffer = self.task_momentum if train.sr_optimizer == "shared" else self.sr_momentum
        if train.sr_optimizer == "fresh":
            buffer.zero_()  # the reference re-creates its SR optimiser every batch
        return sr_train_(self.weights, buffer, self.spec, train.n_sr, train.lr, train.momentum, train.alpha)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training phases of one step, self-training and the task step in the configured order (no events, no
        logging); returns the task loss, the train metric and the mean SR loss before the SR updates (0-d tensors)."""
        if self.config.train.order == "sr_first":
            mean_sr = self._self_train()
            task_loss, metric = self._task_step()
        else:
            task_loss, metric = self._task_step()
            mean_sr = self._self_train()
        return task_loss, metric, mean_sr

    def step(self) -> None:
        """One simulation step (docs/science.md §4); Mesa has already advanced `self.steps` to this step's number."""
        started = time.perf_counter()
        step = self.steps
        sr_active = self.sr_active  # the gate may open during this step, for the next
        task_loss, metric, mean_sr = self.train_step()
        self._metric_sum += metric.detach().double()
        self._metric_count += 1
        if not self.sr_active:
            self._update_gate(step, metric.detach())
        events = self._events()
        if events.numel():
            self.event_counts += torch.bincount(events[:, 0], minlength=len(EVENT_NAMES))
        if self.record is not None:
            self.record.add_step(step, task_loss.detach(), mean_sr, metric.detach(), sr_active,
                                 time.perf_counter() - started)  # fmt: skip
            self.record.add_events(step, events)
        last = step >= self.config.steps
        # the last step logs and snapshots whatever the intervals, but leaves the state as a longer run has it there,
        # so that the run extends (`--resume --steps`) exactly as if it had been started with more steps
        logs = step % self.config.record.log_every == 0
        if logs or last:
            self._log(step, restart=logs)
        if step % self.config.record.snapshot_every == 0 or last:
            self._snapshot(step)
        if last:
            self.running = False

    def _events(self) -> torch.Tensor:
        """The population events of this step (docs/science.md §6), applied to the bank; rows `[E, 3]`."""
        if not any(self.rates.values()):
            # no event can fire: population_events would return no rows; the neighbours (the graph) are not needed
            return torch.zeros(0, 3, dtype=torch.int64, device=self.device)
        indptr, indices = self._neighbours()
        return population_events(
            self.weights, self.spec, indptr, indices, self.rates, self.generator, self.event_params
        )

    def _update_gate(self, step: int, metric: torch.Tensor) -> None:
        """The train-task-first gate (docs/science.md §4): at every step that is a multiple of
        `train.task_first_window`, it opens for good if the mean train metric of the window's steps reached the
        threshold. It reads nothing of the record settings, so logging cannot move it; the host reads the metric
        once per window."""
        self._gate_sum += metric.double()
        self._gate_count += 1
        if step % self.config.train.task_first_window:
            return
        mean = float(self._gate_sum) / self._gate_count
        self._gate_sum.zero_()
        self._gate_count = 0
        self.sr_active = self.task.gate_open(mean, self._gate_threshold())

    def _log(self, step: int, restart: bool = True) -> None:
        """Classify, log per-particle state, flush the record; with `restart`, the running train metric starts over
        (a log of the last step off the log interval keeps it running, as a longer run does)."""
        with torch.no_grad():
            kind, losses, effective = self._particle_state(self.weights.detach())  # [P] each
        held_out = self.held_out_metric()
        # the mean train metric since the last log (NaN at step 0, before any training)
        running = float(self._metric_sum) / self._metric_count if self._metric_count else float("nan")
        if restart:
            self._metric_sum.zero_()
            self._metric_count = 0
        counts = torch.bincount(kind[kind >= 0].long(), minlength=len(KIND_NAMES)).tolist()  # -1: no kind
        self.summary = {"step": step, "held_out_metric": held_out, "train_metric": running,
                        "sr_loss": float(losses.mean()), "kind_counts": dict(zip(KIND_NAMES, counts)),
                        "sr_active": self.sr_active,
                        "event_counts": dict(zip(EVENT_NAMES, self.event_counts.tolist()))}  # fmt: skip
        if step > 0:  # the collector's entry i is step i + 1 (Mesa's layout); the initial state lives in the record
            self.datacollector.collect(self)
        if self.record is not None:
            self.record.add_particles(step, held_out, kind, losses, effective, len(KIND_NAMES))
            self.record.flush(every=FLUSH_SECONDS)

    def _snapshot(self, step: int) -> None:
        """Write the bank to the record and save a checkpoint (after the record, so it never points past it)."""
        if self.record is None:
            return
        self.record.flush()
        self.record.add_snapshot(step, self.weights)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the record and save a checkpoint of this step (what a clean stop between snapshots does too)."""
        if self.record is None:
            return
        self.record.flush()
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())

    # --- checkpoints -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-identically, as tensors, numbers and strings only (what
        `torch.load(weights_only=True)` reads), with the run's identity: seed, run id, config digest, record rows."""
        version, mt_state, gauss = self.random.getstate()
        config = self.config.to_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.steps,
            "seed": self.config.seed,
            "run_id": self.run_id,
            "config": config,
            "config_digest": config_digest(config),
            "weights": self.weights.detach().cpu().clone(),
            "task_momentum": self.task_momentum.cpu().clone(),
            "sr_momentum": self.sr_momentum.cpu().clone(),
            "generator": self.generator.get_state(),
            "python_random": torch.tensor([version, *mt_state], dtype=torch.int64),  # [626]
            "python_random_gauss": gauss,
            "numpy_rng": _pack_pcg64(self.rng.bit_generator.state),  # [37] uint8
            "sr_active": bool(self.sr_active),
            "event_counts": self.event_counts.cpu().clone(),
            "metric_sum": float(self._metric_sum),
            "metric_count": self._metric_count,
            "gate_sum": float(self._gate_sum),
            "gate_count": self._gate_count,
            "record_rows": self.record.rows() if self.record is not None else {},
        }

    def load_state(self, path: str | Path) -> None:
        """Continue from the checkpoint at `path` (weights, optimiser buffers, random streams, gate); no record."""
        self._load(Path(path))

    def _load(self, path: Path) -> dict[str, int]:
        state = load_checkpoint(path)
        if tuple(state["weights"].shape) != tuple(self.weights.shape):
            raise RecordError(
                f"checkpoint {str(path)!r} holds a bank of shape {tuple(state['weights'].shape)}, the config makes "
                f"{tuple(self.weights.shape)}"
            )
        try:
            with torch.no_grad():
                self.weights.copy_(state["weights"].to(self.device, self.dtype))
            self.task_momentum.copy_(state["task_momentum"].to(self.device, self.dtype))
            self.sr_momentum.copy_(state["sr_momentum"].to(self.device, self.dtype))
            self.generator.set_state(state["generator"])
            mt = state["python_random"].tolist()
            self.random.setstate((mt[0], tuple(mt[1:]), state["python_random_gauss"]))
            self.rng.bit_generator.state = _unpack_pcg64(state["numpy_rng"])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise RecordError(f"checkpoint {str(path)!r} holds unusable state ({exc})") from None
        self.sr_active = state["sr_active"]
        if "event_counts" in state:  # checkpoints written before the counts were kept
            self.event_counts.copy_(state["event_counts"].to(self.device))
        self._metric_sum.fill_(state["metric_sum"])
        self._metric_count = state["metric_count"]
        self._gate_sum.fill_(state["gate_sum"])
        self._gate_count = state["gate_count"]
        self.steps = state["step"]
        self.run_id = state["run_id"]
        return state["record_rows"]

    def _record_attrs(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "seed": self.config.seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "kind_names": list(KIND_NAMES),
            "event_names": list(EVENT_NAMES),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": self.mode,
            "device": str(self.device),
            "checkpoint": CHECKPOINT_NAME,
            "run_id": self.run_id,
            **self._extra_attrs(),
        }

    def close(self) -> None:
        """Flush and close the record."""
        if self.record is not None:
            self.record.close()


def model_config(config: Config | None, keys: dict[str, Any], mode: str) -> Config:
    """The config a model is built from: `config` as given, or one built from config keys given as keywords."""
    if config is None:
        return config_from_keywords(keys, mode)
    if keys:
        raise TypeError(f"config keys as keywords ({', '.join(keys)}) build a config; they cannot amend a given one")
    return config


class OrganismModel(ParticleModel):
    """An organism network on a task: every connection weight is a particle (docs/science.md §3)."""

    mode = "organism"

    def __init__(
        self,
        config: Config | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        agents: bool = True,
        **keys: Any,
    ) -> None:
        """An organism of `config`, or of config keys given as keywords (`steps=20, task_name="arithmetic",
        train_alpha=0.5`, as Mesa's `batch_run` passes its parameters) on top of the defaults."""
        config = model_config(config, keys, self.mode)
        dtype = DTYPES[config.dtype]
        device = resolve_device(config.device)
        t = config.task
        self.task = make_task(t.name, config.seed, device, dtype, t.data_dir, t.image_side, t.resize)
        o = config.organism
        self.sizes = layer_sizes(self.task.d_in, o.width, o.depth, self.task.d_out, o.hidden)
        self.organism = self._network(config, config.particle.spec())
        super().__init__(config, self.organism.n_particles, None, run_dir, resume, agents)

    def _network(self, config: Config, spec: ParticleSpec) -> Organism:
        """The network the bank drives, over `self.sizes`."""
        return Organism(self.sizes, spec, config.organism.residual, config.organism.activation)

    def _gate_threshold(self) -> float:
        return self.config.train.task_first_threshold

    def _build_graph(self) -> nx.Graph:
        return particle_graph(organism_graph(self.sizes), self.config.events.neighbourhood)

    def _task_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.task.sample_batch(self.config.task.batch_size, self.generator)
        train = self.config.train
        loss, output = sgd_step_(
            self.organism, self.weights, self.task_momentum, x, lambda out: self.task.loss(out, y), train.lr,
            train.momentum,
        )  # fmt: skip
        return loss, self.task.metric(output, y)

    @torch.no_grad()
    def held_out_metric(self, weights: torch.Tensor | None = None) -> float:
        weights = self.weights.detach() if weights is None else weights
        if isinstance(self.organism, Organism) and uses_kernels(weights, self.spec):
            output = self.organism.forward_effective(kernel_effective_weights(weights, self.spec), self.task.test_x)
        else:
            output = self.organism.forward(weights, self.task.test_x)
        return float(self.task.metric(output, self.task.test_y))

    def _neighbours(self) -> tuple[torch.Tensor, torch.Tensor]:
        # the CSR straight from the layer sizes: the same arrays as the networkx graph's, without building it
        if self._csr is None:
            edges = particle_edges(self.sizes, self.config.events.neighbourhood)
            self._csr = edges_csr(edges, self.n_particles, self.device)
        return self._csr

    def _topology(self) -> dict[str, np.ndarray]:
        table = particle_table(self.sizes)
        neighbourhood = self.config.events.neighbourhood
        if particle_graph_size(self.sizes, neighbourhood) > RECORD_EDGES_LIMIT:
            edges = np.zeros((0, 2), dtype=np.int64)  # the record leaves out a line graph of this size
        else:
            edges = particle_edges(self.sizes, neighbourhood)
        return {"layer": table.layer, "source": table.source, "target": table.target, "edges": edges}

    def _extra_attrs(self) -> dict[str, Any]:
        return {"task": self.task.name, "metric_name": self.task.metric_name,
                "higher_is_better": self.task.higher_is_better, "layer_sizes": json.dumps(self.sizes),
                "splits": json.dumps(self.task.split_sizes()), "held_out_split": "test"}  # fmt: skip
