"""The run configuration: defaults, files, overrides and validation."""

import pytest

from sim.config import Config, ConfigError, build_config, from_dict, load_file, parse_value


def test_defaults_are_the_papers_mnist_organism():
    config = build_config()
    assert (config.mode, config.task.name, config.steps) == ("organism", "mnist", 10000)
    assert (config.organism.width, config.organism.depth) == (5, 3)
    assert (config.particle.weight_interface, config.particle.hidden) == (5, 5)
    assert (config.train.lr, config.train.momentum, config.task.batch_size) == (0.004, 0.9, 2000)
    assert config.train.task_first_threshold > 0
    assert all(getattr(config.events, r) == 0 for r in ("attack", "melt", "replicate", "respawn", "noise"))


def test_arithmetic_defaults_and_soup_event_rates():
    config = build_config(overrides=[("task.name", "arithmetic")])
    assert (config.organism.width, config.particle.hidden, config.task.batch_size) == (3, 3, 50)
    soup = build_config(overrides=[("mode", "soup")])
    assert soup.events.attack > 0 and soup.events.replicate > 0


def test_explicit_values_win_over_task_defaults():
    config = build_config(overrides=[("task.name", "arithmetic"), ("organism.width", 7), ("events.attack", 0.5)])
    assert config.organism.width == 7 and config.events.attack == 0.5


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("steps", -1, "steps must be an integer in 0.."),
        ("steps", 1.5, "steps must be an integer"),
        ("organism.width", 0, "organism.width must be an integer in 1.."),
        ("events.attack", -0.1, "events.attack must be >= 0"),
        ("events.melt", 2.0, "events.melt must be <= 1"),
        ("train.lr", "fast", "train.lr must be a number"),
        ("organism.residual", 3, "organism.residual must be true or false"),
        ("task.name", "cifar", "task.name must be one of"),
        ("nope.key", 1, "unknown config key 'nope.key'"),
        ("organism", 1, "unknown config key 'organism'"),
        ("train.nope", 1, "unknown config key 'train.nope'"),
        ("organism.hidden", 300, "organism.hidden must be a non-empty list of integers"),
        ("organism.hidden", [], "organism.hidden must be a non-empty list of integers"),
        ("organism.hidden", [300, 0], "organism.hidden entries must be >= 1"),
        ("organism.hidden", [300, 1.5], "organism.hidden must be a list of integers"),
    ],
)
def test_bad_values_name_the_key(key, value, words):
    with pytest.raises(ConfigError, match=words):
        build_config(overrides=[(key, value)])


def test_yaml_and_toml_files(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 12\ntask:\n  name: arithmetic\ntrain:\n  n_sr: 3\n")
    (tmp_path / "c.toml").write_text('steps = 12\n[task]\nname = "arithmetic"\n[train]\nn_sr = 3\n')
    for name in ("c.yaml", "c.toml"):
        config = build_config(tmp_path / name, [("train.n_sr", 4)])
        assert (config.steps, config.task.name, config.train.n_sr) == (12, "arithmetic", 4)


def test_malformed_and_unreadable_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    (tmp_path / "bad.toml").write_text("steps = = 3\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="malformed config file"):
        load_file(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="malformed config file"):
        load_file(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_file(tmp_path / "missing.yaml")


def test_parse_value_and_round_trip():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("none") is None and parse_value("tanh") == "tanh"
    config = build_config(overrides=[("task.name", "arithmetic"), ("seed", 4)])
    assert from_dict(config.to_dict()) == config
    assert isinstance(config, Config)


def test_soup_degree_must_fit_size():
    with pytest.raises(ConfigError, match="soup.degree"):
        build_config(overrides=[("mode", "soup"), ("soup.size", 5), ("soup.degree", 3)])


def test_hidden_widths_override_width_and_depth_and_round_trip(tmp_path):
    config = build_config(overrides=[("organism.hidden", parse_value("[300,100]")), ("organism.width", 7)])
    assert config.organism.hidden == [300, 100] and config.organism.depth == 3
    assert from_dict(config.to_dict()) == config
    (tmp_path / "c.yaml").write_text("organism:\n  hidden: [4, 3, 2]\n")
    assert build_config(tmp_path / "c.yaml").organism.depth == 4


def test_the_dense_control_has_no_population_events():
    assert build_config(overrides=[("mode", "dense")]).mode == "dense"
    with pytest.raises(ConfigError, match="events.attack must be 0 in mode dense"):
        build_config(overrides=[("mode", "dense"), ("events.attack", 0.1)])


def test_a_complete_soup_ignores_the_degree():
    config = build_config(
        overrides=[("mode", "soup"), ("soup.size", 5), ("soup.degree", 3), ("soup.graph", "complete")]
    )
    assert config.soup.graph == "complete"
    with pytest.raises(ConfigError, match="soup.graph"):
        build_config(overrides=[("soup.graph", "ring")])
