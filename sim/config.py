"""One typed, validated run configuration (dataclasses), loaded from YAML/TOML and `section.key=value` overrides.

Keys that default to `None` take a value that depends on the task or mode (e.g. the arithmetic organism is 2-3-3-1
with h=3 and batch 50, MNIST is 225-5-5-10 with h=5 and batch 2000); `resolve()` fills them in, and the resolved
config is what a run records.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from sim.events import EVENT_NAMES, EVENT_PARAMS, EVENTS
from sim.particles import ACTIVATIONS, MIN_WEIGHT_INTERFACE, ParticleSpec
from sim.safeyaml import TextFileError, load_yaml, parse_scalar, read_capped, short_repr
from sim.tasks import DEFAULT_RESIZE, RESIZE_MODES, TASK_TABLE

MODES = ("organism", "soup", "dense")
TASKS = tuple(TASK_TABLE)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")
ACTIVATION_NAMES = tuple(ACTIVATIONS)
NEIGHBOURHOOD_NAMES = ("shared_neuron", "same_target", "same_layer")
TRAIN_ORDERS = ("sr_first", "task_first")
SR_OPTIMIZERS = ("fresh", "persistent", "shared")
SOUP_GRAPHS = ("regular", "complete")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the value."""


def _f(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


@dataclass
class OrganismConfig:
    """Shape of the organism: `depth` layers of particles, hidden `width` (input/output sizes come from the task);
    `hidden`, a list of hidden widths (e.g. `[300, 100]` for LeNet-300-100), overrides both."""

    width: int | None = _f(None, lo=1)
    depth: int = _f(3, lo=1)
    hidden: list[int] | None = _f(None, lo=1)
    residual: bool = _f(True)  # a skip around every pair of middle layers, on as in the reference
    activation: str = _f("none", choices=ACTIVATION_NAMES)


_SPEC = ParticleSpec()


@dataclass
class ParticleConfig:
    """The config's side of `ParticleSpec` (its defaults and bounds), with `hidden` left to the task until resolved."""

    weight_interface: int = _f(_SPEC.weight_interface, lo=MIN_WEIGHT_INTERFACE)
    hidden: int | None = _f(None, lo=1)
    activation: str = _f(_SPEC.activation, choices=ACTIVATION_NAMES)

    def spec(self) -> ParticleSpec:
        """The particle shape these keys describe (after `resolve`, which fills `hidden`)."""
        return ParticleSpec(self.weight_interface, self.hidden, self.activation)


@dataclass
class TaskConfig:
    """The organism's task; `data_dir` points at the four MNIST IDX files (default: the embedded 5,000 samples)."""

    name: str = _f("mnist", choices=TASKS)
    batch_size: int | None = _f(None, lo=1)
    data_dir: str | None = _f(None)
    image_side: int = _f(15, lo=1, hi=28)  # MNIST images resized to side x side (the paper: 15; 28: no resize)
    # how: bilinear (the reference's torchvision Resize on tensors), bilinear_antialias, or area (pixel averages)
    resize: str = _f(DEFAULT_RESIZE, choices=RESIZE_MODES)


@dataclass
class TrainConfig:
    """Optimiser and the self-replication schedule (docs/science.md §4)."""

    lr: float = _f(0.004, lo=0.0)
    momentum: float = _f(0.9, lo=0.0, hi=1.0)
    n_sr: int = _f(10, lo=0)
    alpha: float = _f(1.0, lo=0.0)
    # self-training starts once the running train metric reaches this (accuracy >= t, MAE <= t); 0: from the start
    task_first_threshold: float | None = _f(None, lo=0.0)
    # ... decided every this many steps on the mean train metric of those steps (the reference: once per epoch)
    task_first_window: int = _f(10, lo=1)
    order: str = _f("sr_first", choices=TRAIN_ORDERS)
    # fresh: SR optimiser re-created every step (the reference); persistent: its own, kept; shared: the task's
    sr_optimizer: str = _f("fresh", choices=SR_OPTIMIZERS)


def _events_config() -> type:
    """The `events` section, derived from the event table `sim.events.EVENTS`: one rate per event type (a per-step,
    per-particle probability; None: 0 for organisms, the type's `soup_rate` in soups), every event parameter (None:
    its default, or its soup default in soups), and the organism's neighbourhood."""
    fields: list[tuple[str, Any, Any]] = [(e.name, float | None, _f(None, lo=0.0, hi=1.0)) for e in EVENTS]
    for p in EVENT_PARAMS.values():  # one with a soup default of its own is left at None until `resolve`
        typ, default = (type(p.default), p.default) if p.soup_default is None else (type(p.default) | None, None)
        fields.append((p.name, typ, _f(default, lo=p.lo, hi=p.hi)))
    fields.append(("neighbourhood", str, _f("shared_neuron", choices=NEIGHBOURHOOD_NAMES)))
    cls = dataclasses.make_dataclass("EventsConfig", fields)
    cls.__module__ = __name__  # pickled by reference, as the other sections
    cls.__doc__ = (
        "Population events (docs/science.md §6): a rate per event type of `sim.events.EVENTS`, and their parameters."
    )
    return cls


EventsConfig = _events_config()


@dataclass
class SoupConfig:
    """A soup: `size` free particles on a random `degree`-regular graph (`graph: regular`) or on the complete graph,
    where any particle meets any other (`graph: complete`; `degree` is unused then)."""

    size: int = _f(1000, lo=2)
    degree: int = _f(4, lo=1)
    graph: str = _f("regular", choices=SOUP_GRAPHS)


@dataclass
class RecordConfig:
    """What is written to the HDF5 record, and how often (in steps)."""

    log_every: int = _f(10, lo=1)
    snapshot_every: int = _f(500, lo=1)


@dataclass
class Config:
    """The whole run configuration."""

    mode: str = _f("organism", choices=MODES)
    steps: int = _f(10000, lo=0)
    seed: int = _f(0, lo=0, hi=2**64 - 1)
    device: str = _f("auto", choices=DEVICES)
    dtype: str = _f("float32", choices=tuple(DTYPES))
    threads: int | None = _f(None, lo=1)  # CPU threads; None: 1 for small banks, else the free cores (sim.threads)
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    particle: ParticleConfig = field(default_factory=ParticleConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    soup: SoupConfig = field(default_factory=SoupConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# the names of the config's sections (`train`, `events`, ...), the first part of a `section.key`
SECTIONS = frozenset(f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory))

# Task-dependent defaults (the paper's MNIST organism and arithmetic organism), from the task table.
TASK_DEFAULTS = {
    name: {"organism.width": entry.width, "particle.hidden": entry.hidden, "task.batch_size": entry.batch_size,
           "train.task_first_threshold": entry.gate_threshold}
    for name, entry in TASK_TABLE.items()
}  # fmt: skip
EVENT_RATES = EVENT_NAMES  # the events section's rate keys, one per event type
SOUP_EVENT_DEFAULTS = {event.name: event.soup_rate for event in EVENTS}


def resolve_device(name: str) -> torch.device:
    """The torch device a config's `device` names: `auto` picks CUDA when a GPU is present; `cuda` without one is a
    ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


INT_MAX = 2**63 - 1  # the largest integer a key takes unless its own range says otherwise (seed: 2**64-1)


def _bound_text(value: float) -> str:
    """`2**64-1` for a bound one below a power of two past a million, else the number."""
    if isinstance(value, int) and value > 10**6 and (value + 1) & value == 0:
        return f"2**{(value + 1).bit_length() - 1}-1"
    return repr(value)


def _coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Check `value` against the field's type and range; return it as that type. Integers state their range in the
    error (`seed must be an integer in 0..2**64-1`); numbers must be finite."""
    allowed = typing.get_args(f.type) if isinstance(f.type, types.UnionType) else (f.type,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be empty")
    base = next(t for t in allowed if t is not type(None))
    if typing.get_origin(base) is list:
        return _coerce_list(key, value, f)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {short_repr(value)}")
    elif base is int:
        meta = f.metadata
        lo = meta.get("lo") if meta.get("lo") is not None else -INT_MAX - 1
        hi = meta.get("hi") if meta.get("hi") is not None else INT_MAX
        span = f"an integer in {_bound_text(lo)}..{_bound_text(hi)}"
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 1e5 as a person writes it
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"{key} must be {span}, got {short_repr(value)}")
        return value
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {short_repr(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {short_repr(value)}")
    elif base is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {short_repr(value)}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}; got {short_repr(value)}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ConfigError(f"{key} must be >= {meta['lo']}, got {short_repr(value)}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ConfigError(f"{key} must be <= {meta['hi']}, got {short_repr(value)}")
    return value


def _coerce_list(key: str, value: Any, f: dataclasses.Field) -> list[int]:
    """A non-empty list of integers, each in the field's range (the only list-valued keys are lists of widths)."""
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key} must be a non-empty list of integers, got {short_repr(value)}")
    lo = f.metadata.get("lo")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{key} must be a list of integers, got {short_repr(value)}")
        if lo is not None and item < lo:
            raise ConfigError(f"{key} entries must be >= {lo}, got {short_repr(value)}")
    return list(value)


def all_keys() -> list[str]:
    """Every config key, top-level keys first, then `section.key` in the order of the dataclasses."""
    top, nested = [], []
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            nested += [f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)]
        else:
            top.append(f.name)
    return top + nested


def unknown_key(key: str) -> ConfigError:
    """The error for a key the config does not have, with the closest known keys as suggestions."""
    keys = all_keys()
    names = {k.rsplit(".", 1)[-1] for k in keys}
    # a typo in the whole key, or a (nearly) right key name in the wrong section or without its section
    near_names = difflib.get_close_matches(key.rsplit(".", 1)[-1], names, n=2, cutoff=0.8)
    close = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
    close = list(dict.fromkeys(close + [k for k in keys if k.rsplit(".", 1)[-1] in near_names]))[:3]
    hint = (
        f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else " (python -m sim.run --help lists them)"
    )
    return ConfigError(f"unknown config key {key!r}{hint}")


def _owner(config: Config, key: str) -> tuple[Any, str, Any]:
    """What holds `section.key` (or a top-level key): the config or its section, the field's name and its type;
    ConfigError naming the key (and the nearest known ones) if there is no such key."""
    parts = key.split(".")
    target: Any = config
    if len(parts) == 2 and parts[0] in SECTIONS:
        target = getattr(config, parts[0])
    elif len(parts) != 1 or parts[0] in SECTIONS:
        raise unknown_key(key)
    fields = _fields(type(target))
    if parts[-1] not in fields:
        raise unknown_key(key)
    return target, parts[-1], fields[parts[-1]]


def _default_text(key: str, default: Any) -> str:
    by_task = {task: values[key] for task, values in TASK_DEFAULTS.items() if key in values}
    if default is None and by_task:
        return "by task: " + ", ".join(f"{task} {value}" for task, value in by_task.items())
    if default is None and key.startswith("events.") and key.split(".")[1] in EVENT_RATES:
        return f"organism 0, soup {SOUP_EVENT_DEFAULTS[key.split('.')[1]]}"
    if default is None and key.startswith("events.") and key.split(".")[1] in EVENT_PARAMS:
        param = EVENT_PARAMS[key.split(".")[1]]
        return f"organism {str(param.default).lower()}, soup {str(param.soup_default).lower()}"
    if default is None:
        return "none"
    return str(default).lower() if isinstance(default, bool) else str(default)


def describe_keys() -> str:
    """Every config key with its type, allowed values and default, from the dataclasses' own metadata, one per line,
    grouped by section (for `--help`)."""
    config = Config()
    lines = []
    section = None
    for key in all_keys():
        target, name, f = _owner(config, key)
        here = key.split(".")[0] if "." in key else "top level"
        if here != section:
            section = here
            doc = (type(target).__doc__ or "").strip().splitlines()[0] if "." in key else "mode, length, seed, device"
            lines.append(f"{section}: {doc}")
        kinds = [a.__name__ for a in typing.get_args(f.type) if a is not type(None)] or [f.type.__name__]
        meta = f.metadata
        allowed = "|".join(map(str, meta["choices"])) if meta.get("choices") else kinds[0]
        if meta.get("lo") is not None or meta.get("hi") is not None:
            lo = "" if meta.get("lo") is None else f"{meta['lo']} <= "
            hi = "" if meta.get("hi") is None else f" <= {meta['hi']}"
            allowed = f"{kinds[0]}, {lo}x{hi}"
        lines.append(f"  {key:<28} {allowed:<40} default: {_default_text(key, getattr(target, name))}")
    return "\n".join(lines)


def check_key(key: str) -> None:
    """ConfigError unless `key` names a config key (`section.key` or a top-level key)."""
    _owner(Config(), key)


def list_valued(key: str) -> bool:
    """Whether the config key `key` holds a list (such as `organism.hidden`)."""
    _, _, f = _owner(Config(), key)
    allowed = typing.get_args(f.type) if isinstance(f.type, types.UnionType) else (f.type,)
    return any(typing.get_origin(t) is list for t in allowed)


def get_value(config: Config, key: str) -> Any:
    """The value of `section.key` (or a top-level key)."""
    target, name, _ = _owner(config, key)
    return getattr(target, name)


def set_value(config: Config, key: str, value: Any) -> None:
    """Set `section.key` (or a top-level key) to `value`, validated; raises ConfigError naming the key."""
    target, name, kind = _owner(config, key)
    setattr(target, name, _coerce(key, value, kind))


def parse_value(text: str) -> Any:
    """A `--set` value as a person writes it (`3`, `1_000`, `1e-3`, `.5`, `true`, `none`), else the text."""
    return parse_scalar(text)


def apply_mapping(config: Config, mapping: dict[str, Any], source: str = "config") -> None:
    """Apply a nested mapping `{section: {key: value}, key: value}` as read from a config file."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source} must be a mapping of config keys, got {type(mapping).__name__}")
    for name, value in mapping.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {name!r} must be a mapping, got {short_repr(value)}")
            for key, inner in value.items():
                set_value(config, f"{name}.{key}", inner)
        elif isinstance(value, dict) and value:  # a misspelt section: name its keys, so the suggestion can too
            check_key(f"{name}.{next(iter(value))}")
            set_value(config, str(name), value)
        else:
            set_value(config, str(name), value)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a mapping; ConfigError if unreadable or malformed."""
    path = Path(path)
    try:
        text = read_capped(path, "config file")
        data = tomllib.loads(text) if path.suffix == ".toml" else load_yaml(text)
    except TextFileError as exc:
        message = str(exc)
        raise ConfigError(message if str(path) in message else f"config file {str(path)!r}: {message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or type(exc).__name__
        if exc.context and exc.problem and exc.context_mark is not None:  # where the broken construct began
            what += f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        raise ConfigError(f"malformed config file {str(path)!r}{where}: {what}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError, RecursionError) as exc:  # TOML's message names line and column
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"malformed config file {str(path)!r}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of config keys")
    return data


def resolve(config: Config) -> Config:
    """Fill the task- and mode-dependent defaults (keys left at None) and check cross-key constraints; in place."""
    for key, value in TASK_DEFAULTS[config.task.name].items():
        section, name = key.split(".")
        if getattr(getattr(config, section), name) is None:
            setattr(getattr(config, section), name, value)
    for rate in EVENT_RATES:
        if getattr(config.events, rate) is None:
            setattr(config.events, rate, SOUP_EVENT_DEFAULTS[rate] if config.mode == "soup" else 0.0)
    for name, param in EVENT_PARAMS.items():
        if getattr(config.events, name) is None:
            soup = config.mode == "soup" and param.soup_default is not None
            setattr(config.events, name, param.soup_default if soup else param.default)
    if config.organism.hidden is not None:
        config.organism.depth = len(config.organism.hidden) + 1  # the recorded config then says what ran
    rates = [rate for rate in EVENT_RATES if getattr(config.events, rate)]
    if config.mode == "dense" and rates:
        raise ConfigError(f"events.{rates[0]} must be 0 in mode dense: the dense control has no particles")
    soup = config.soup
    if (
        config.mode == "soup"
        and soup.graph == "regular"
        and (soup.degree >= soup.size or (soup.size * soup.degree) % 2)
    ):
        raise ConfigError(
            f"soup.degree must be < soup.size with size*degree even, got size={soup.size} degree={soup.degree}"
        )
    return config


def build_config(file: str | Path | None = None, overrides: list[tuple[str, Any]] | None = None) -> Config:
    """Defaults, then a config file, then `(key, value)` overrides in order; resolved and validated."""
    config = Config()
    if file is not None:
        apply_mapping(config, load_file(file), source=str(file))
    for key, value in overrides or []:
        set_value(config, key, value)
    return resolve(config)


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from its `to_dict()` form (as stored in a record); validated."""
    config = Config()
    apply_mapping(config, data)
    return resolve(config)


def keyword_key(keyword: str) -> str:
    """The config key a keyword argument names: `section_key` (`task_name` -> `task.name`, `train_alpha` ->
    `train.alpha`) or a top-level key (`steps`, `seed`); TypeError for a keyword that names no key."""
    section, _, name = keyword.partition("_")
    key = f"{section}.{name}" if section in SECTIONS and name else keyword
    try:
        check_key(key)
    except ConfigError:
        message = f"unexpected keyword argument {keyword!r}: not a config key (steps, seed, task_name, ...)"
        raise TypeError(message) from None
    return key


def config_from_keywords(keywords: dict[str, Any], mode: str) -> Config:
    """The resolved config of a model built from keyword arguments (as Mesa's `batch_run` builds one): the defaults
    of `mode`, then every `section_key=value`, validated."""
    return build_config(None, [("mode", mode), *((keyword_key(k), v) for k, v in keywords.items())])
