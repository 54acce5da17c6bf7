"""The Mesa page (SolaraViz): watch an organism network or a soup specialise, or replay a recorded run.

Serve it with `solara run sim/app.py` (Mesa's convention) or `python -m sim.view`, which prints the address. Routes:
- `/`: a live organism (arithmetic by default; the task is a control), Mesa's step/play/reset controls and the model
  parameters in the sidebar; the topology layer by layer, kind counts, task metric and SR loss over time.
- `/soup`: the same for a soup of free particles on its random regular graph, with the soup's event rates.
- `/replay?run=PATH`: a finished (or running) `run.h5` scrubbed through its logged steps without re-running; PATH
  defaults to the `RUN_H5` environment variable and can be typed into the page.

Steps run the model's own batched `step()`. Mesa's "Render Interval" (default `DRAW_EVERY`) sets how many steps run
between two drawings, and every drawing classifies the bank in one batched call, so the 1,200-particle MNIST organism
stays responsive.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import solara

from sim.config import SOUP_EVENT_DEFAULTS, TASKS, Config, build_config
from sim.events import EVENT_NAMES, EVENTS
from sim.figures import (
    kind_counts_figure,
    kinds_text,
    model_layout,
    particle_state,
    series_figure,
    style_live_plot,
    topology_figure,
    weights_figure,
)
from sim.model import OrganismModel, ParticleModel
from sim.particles import KIND_COLOURS, KIND_NAMES
from sim.record import RecordError
from sim.replay import Replay, check_replay_path, load_replay
from sim.soup import SoupModel
from sim.view import REPLAY_ENV, incompatible_widgets

with warnings.catch_warnings():
    # Solara's hook check flags a `use_state` after an early return in Mesa's ComponentsView; that return is taken
    # only without components, and this page always has some, so the warning is noise in every server log.
    warnings.filterwarnings("ignore", message=".*ComponentsView: `use_state` found despite early return")
    from mesa.visualization import Slider, SolaraViz, make_plot_component

DRAW_EVERY = 5  # steps per click of Step and per drawn frame while playing (Mesa's render interval)
PAGE_STEPS = 10**9  # a live model runs until paused, not to a configured end


def _page_config(mode: str, overrides: list[tuple[str, Any]], rates: dict[str, float], n_sr: int, alpha: float,
                 seed: int) -> Config:  # fmt: skip
    """The run config of a page model: the defaults of its mode and task plus the page's controls.

    Every step is logged (`record.log_every=1`) because the plots show every step; logging is one batched
    classification of the bank. Nothing is written to disk.
    """
    settings = [("mode", mode), ("steps", PAGE_STEPS), ("seed", int(seed)), ("record.log_every", 1),
                ("train.n_sr", int(n_sr)), ("train.alpha", float(alpha)), *overrides]  # fmt: skip
    settings += [(f"events.{name}", float(rate)) for name, rate in rates.items()]
    return build_config(None, settings)


class _Watched:
    """The page's side of a live model: the layout it is drawn with. Its plots read the model's own DataCollector,
    which every step fills (the page logs every step)."""

    def _watch(self: Any) -> None:
        self.layout = model_layout(self)


def _rates(given: dict[str, Any], defaults: dict[str, float]) -> dict[str, float]:
    """The event rates of a page model: `defaults` with the given ones, one per event type; TypeError for a keyword
    that is no event type."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (event rates: {', '.join(defaults)})")
    return {**defaults, **given}


class LiveOrganism(_Watched, OrganismModel):
    """An organism network built from the page's controls (Mesa's reset re-creates it with their current values);
    `kwargs` are the event rates by event name (default 0)."""

    def __init__(self, task: str = "arithmetic", n_sr: int = 10, alpha: float = 1.0, seed: int = 0,
                 **kwargs: float) -> None:  # fmt: skip
        rates = _rates(kwargs, dict.fromkeys(EVENT_NAMES, 0.0))
        super().__init__(_page_config("organism", [("task.name", task)], rates, n_sr, alpha, seed))
        self._watch()


class LiveSoup(_Watched, SoupModel):
    """A soup of free particles built from the page's controls; `kwargs` are the event rates by event name (default:
    the soup's)."""

    def __init__(self, size: int = 200, n_sr: int = 10, alpha: float = 1.0, seed: int = 0, **kwargs: float) -> None:
        rates = _rates(kwargs, SOUP_EVENT_DEFAULTS)
        super().__init__(_page_config("soup", [("soup.size", int(size))], rates, n_sr, alpha, seed))
        self._watch()


def _rate_sliders(defaults: dict[str, float]) -> dict[str, Slider]:
    """Per-step, per-particle event probabilities as controls, one per event type, up to its `rate_max`."""
    return {e.name: Slider(f"{e.name} rate", float(defaults[e.name]), 0.0, e.rate_max, e.rate_max / 20) for e in EVENTS}


COMMON_PARAMS = {
    "n_sr": Slider("n_sr (self-replication steps per step)", 10, 0, 20, 1),
    "alpha": Slider("alpha (weight of the SR loss)", 1.0, 0.0, 2.0, 0.05),
    "seed": Slider("seed", 0, 0, 99, 1),
}
ORGANISM_PARAMS = {
    "task": {"type": "Select", "value": "arithmetic", "values": list(TASKS), "label": "task"},
    **COMMON_PARAMS,
    **_rate_sliders(dict.fromkeys(EVENT_NAMES, 0.0)),
}
SOUP_PARAMS = {
    "size": Slider("particles", 200, 20, 1000, 20),
    **COMMON_PARAMS,
    **_rate_sliders(SOUP_EVENT_DEFAULTS),
}


def _settings_text(model: ParticleModel) -> str:
    """The controls the model was built with (Mesa's sliders show their values only while dragged), and that a changed
    control takes effect only when RESET rebuilds the model with it."""
    config = model.config
    what = f"task {config.task.name}" if config.mode == "organism" else "soup"
    rates = ", ".join(f"{name}={getattr(config.events, name):g}" for name in EVENT_NAMES)
    return (f"This model: {what}, {model.n_particles} particles, n_sr={config.train.n_sr}, "
            f"alpha={config.train.alpha:g}, seed={config.seed}; event rates: {rates}. A changed control (task, "
            f"n_sr, alpha, seed, rates) applies when RESET rebuilds the model.")  # fmt: skip


def gate_progress(model: ParticleModel) -> tuple[str, float]:
    """The train-task-first gate as a line and a progress fraction in [0, 1]: MNIST trains the task alone until its
    running train accuracy reaches the threshold, so for hundreds of steps nothing specialises, and the page says why
    ("self-training starts at train accuracy 0.85: now 0.71"); ("self-training on", 1) once it runs."""
    if model.sr_active:
        return "self-training on", 1.0
    line = model.gate_status()
    threshold = model.config.train.task_first_threshold or 0.0
    if line is None:
        name = model.task.metric_info.short
        return f"self-training starts at train {name} {threshold:.3g}: no step yet", 0.0
    now = float(model.summary["train_metric"])
    higher = getattr(model.task, "higher_is_better", True)
    fraction = now / threshold if higher else threshold / now if now > 0 else 1.0
    return line, min(max(fraction, 0.0), 1.0)


def GateView(model: ParticleModel) -> None:
    """The gate's progress line above the topology, while it holds self-training back."""
    line, fraction = gate_progress(model)
    if fraction < 1:
        with solara.Column(classes=["gate-view"]):
            solara.Text(line, classes=["gate-status"])
            solara.ProgressLinear(value=100 * fraction)


def TopologyView(model: ParticleModel) -> None:
    """The live topology, with the parseable status line `step: N, kinds: ...` above it."""
    kinds, effective = particle_state(model)
    counts = dict(zip(KIND_NAMES, np.bincount(kinds.astype(int), minlength=len(KIND_NAMES)).tolist(), strict=True))
    with solara.Column(classes=["topology-view"]):
        solara.Text(f"step: {model.steps}, kinds: {kinds_text(counts)}", classes=["live-status"])
        GateView(model)
        solara.Text(_settings_text(model), style={"font-size": "small"}, classes=["settings-line"])
        solara.FigureMatplotlib(topology_figure(model.layout, kinds, effective), format="png")


def _collector_plot(model: ParticleModel, css_class: str, measure: str | dict[str, str], title: str,
                    log: bool = False, ylabel: str = "") -> None:  # fmt: skip
    """Mesa's plot (`make_plot_component`) of the model's DataCollector columns `measure` over the logged steps, in a
    column of class `css_class`."""
    style = partial(style_live_plot, title=title, log=log, ylabel=ylabel)
    plot, _page = make_plot_component(measure, post_process=style)
    with solara.Column(classes=[css_class]):
        plot(model)


def KindCountsView(model: ParticleModel) -> None:
    """Particles of each kind over the logged steps, in the kinds' colours."""
    _collector_plot(model, "kind-counts-view", dict(KIND_COLOURS), "kind counts", ylabel="particles")


def MetricView(model: ParticleModel) -> None:
    """The task metric on held-out data over the logged steps."""
    name = getattr(getattr(model, "task", None), "metric_name", "task metric")
    _collector_plot(model, "metric-view", "held_out_metric", f"held-out {name}")


def SRLossView(model: ParticleModel) -> None:
    """The mean self-replication loss over the logged steps."""
    _collector_plot(model, "sr-loss-view", "sr_loss", "mean SR loss", log=True)


LIVE_VIEWS = [TopologyView, KindCountsView, MetricView, SRLossView]


@solara.component
def OrganismPage() -> None:
    """A live organism network with Mesa's controls."""
    model = solara.use_memo(LiveOrganism, [])  # one model per browser session, not one shared by all
    if incompatible_widgets():
        solara.Error(incompatible_widgets())
        return
    SolaraViz(model, components=LIVE_VIEWS, model_params=ORGANISM_PARAMS, name="Organism network",
              render_interval=DRAW_EVERY)  # fmt: skip


@solara.component
def SoupPage() -> None:
    """A live soup with Mesa's controls."""
    model = solara.use_memo(LiveSoup, [])
    if incompatible_widgets():
        solara.Error(incompatible_widgets())
        return
    SolaraViz(model, components=LIVE_VIEWS, model_params=SOUP_PARAMS, name="Particle soup", render_interval=DRAW_EVERY)


def _open_replay(path: str) -> tuple[Replay | None, str | None]:
    """The record at `path` read for replay, or the reason it cannot be."""
    if not path.strip():
        return None, None
    try:
        return load_replay(check_replay_path(path.strip())), None
    except (RecordError, OSError, KeyError, ValueError) as exc:
        return None, str(exc)


@solara.component
def ReplayView(replay: Replay, row: int) -> None:
    """One logged step of a record: its status line, the topology as recorded, the time series and a snapshot."""
    step = int(replay.steps[row])
    counts = dict(zip(replay.attrs["kind_names"], replay.kind_counts[row].tolist(), strict=True))
    snapshot = solara.use_memo(lambda: replay.snapshot(step), [replay, step])
    solara.Text(f"replay step: {step}, kinds: {kinds_text(counts)}", classes=["replay-status"])
    solara.Text(f"(logged row {row + 1} of {len(replay.steps)}; held-out {replay.metric_name} "
                f"{replay.held_out_metric[row]:.4g}; {replay.path})")  # fmt: skip
    with solara.ColumnsResponsive(12, large=6):
        with solara.Column(classes=["topology-view"]):
            figure = topology_figure(replay.layout, replay.kind[row], replay.effective_weight[row])
            solara.FigureMatplotlib(figure, format="png")
        with solara.Column(classes=["kind-counts-view"]):
            solara.FigureMatplotlib(kind_counts_figure(replay.steps, replay.kind_counts, at=step), format="png")
        solara.FigureMatplotlib(series_figure(replay.steps, replay.held_out_metric, f"held-out {replay.metric_name}",
                                              at=step), format="png")  # fmt: skip
        solara.FigureMatplotlib(series_figure(replay.steps, replay.sr_loss, "mean SR loss", at=step, log=True),
                                format="png")  # fmt: skip
        if snapshot is not None:
            snapshot_step, weights, kinds = snapshot
            solara.FigureMatplotlib(weights_figure(weights, kinds, snapshot_step), format="png")
        else:
            solara.Info(f"no snapshot at or before step {step}")


@solara.component
def ReplayPage() -> None:
    """Scrub through a recorded run: the record's path, a slider over its logged steps, previous/next buttons."""
    router = solara.use_router()
    initial = parse_qs(router.search or "").get("run", [os.environ.get(REPLAY_ENV, "")])[0]
    path = solara.use_reactive(initial)
    row = solara.use_reactive(-1)  # -1: the last logged step, where a finished run ends
    replay, error = solara.use_memo(lambda: _open_replay(path.value), [path.value])
    solara.AppBarTitle("Replay of a recorded run")
    last = len(replay.steps) - 1 if replay is not None else 0
    current = last if row.value < 0 or row.value > last else row.value
    with solara.Sidebar(), solara.Column():
        with solara.Card("Record"):
            solara.InputText("run.h5 or run directory", value=path, on_value=lambda _: row.set(-1))
            if error:
                solara.Error(error)
        if replay is not None:
            with solara.Card("Time"):
                solara.SliderInt(f"logged row (step {int(replay.steps[current])})", value=current, min=0, max=last,
                                 on_value=row.set)  # fmt: skip
                with solara.Row():
                    solara.Button("previous", on_click=lambda: row.set(max(current - 1, 0)), classes=["replay-prev"])
                    solara.Button("next", on_click=lambda: row.set(min(current + 1, last)), classes=["replay-next"])
    if replay is None:
        solara.Info(f"Type the path of a run.h5 (or its run directory) in the sidebar, or open /replay?run=PATH, "
                    f"or set {REPLAY_ENV}.")  # fmt: skip
        return
    ReplayView(replay, current)


routes = [
    solara.Route("/", component=OrganismPage),
    solara.Route("soup", component=SoupPage),
    solara.Route("replay", component=ReplayPage),
]
