"""Numbers as people write them, finite values where they must be, integer ranges, and config files read safely."""

from pathlib import Path

import pytest

from sim.config import ConfigError, build_config, load_file, parse_value
from sim.run import main
from sim.safeyaml import MAX_YAML_NODES, load_yaml, parse_scalar


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 0.001), ("1E5", 100000.0), (".5", 0.5), ("-.5e2", -50.0), ("1_000", 1000), ("3", 3), ("-2", -2),
     ("0.004", 0.004), ("true", True), ("none", None), ("", None), ("relu", "relu"), ("1e", "1e")],
)  # fmt: skip
def test_set_values_parse_as_people_write_them(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_config_files_read_numbers_as_people_write_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 1E3\ntrain:\n  lr: 1e-3\n  alpha: .5\nsoup:\n  size: 1_000\n")
    config = build_config(path)
    assert (config.steps, config.train.lr, config.train.alpha, config.soup.size) == (1000, 0.001, 0.5, 1000)
    assert load_yaml("a: 0.1\nb: 2\nc: .inf\nd: text") == {"a": 0.1, "b": 2, "c": float("inf"), "d": "text"}


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [("train.lr", "nan", "train.lr must be a finite number, got nan"),
     ("train.lr", "inf", "train.lr must be a finite number, got inf"),
     ("events.noise_sigma", "-inf", "must be a finite number"),
     ("train.task_first_threshold", "nan", "train.task_first_threshold must be a finite number"),
     ("seed", "18446744073709551616", "seed must be an integer in 0..2**64-1, got 18446744073709551616"),
     ("seed", "-1", "seed must be an integer in 0..2**64-1"),
     ("steps", "1.5", "steps must be an integer in 0..2**63-1, got 1.5"),
     ("train.n_sr", "1e40", "train.n_sr must be an integer in 0..2**63-1")],
)  # fmt: skip
def test_non_finite_and_out_of_range_values_are_refused_naming_the_key(key, text, words):
    with pytest.raises(ConfigError, match=words.replace("*", r"\*").replace(".", r"\.")):
        build_config(None, [(key, parse_value(text))])


def test_the_largest_seed_runs(tmp_path):
    out = tmp_path / "run"
    assert main(["--task", "arithmetic", "--steps", "3", "--quiet", "--seed", str(2**64 - 1), "--out", str(out)]) == 0


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_in_a_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9))
    assert len(path.read_bytes()) < 600
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert "alias" in str(info.value) and len(str(info.value)) < 200 and str(path) in str(info.value)
    assert load_yaml(_bomb(3))["a2"][0][0][0] == "lol"  # a few aliases are fine
    assert MAX_YAML_NODES < 9**9


@pytest.mark.parametrize("name", ["/dev/zero", "big.yaml", "dir"])
def test_config_files_that_are_not_small_regular_files_are_refused(tmp_path, name, capsys):
    if name == "big.yaml":
        (tmp_path / name).write_text("steps: 1\n" + "# padding\n" * 200_000)
    if name == "dir":
        (tmp_path / name).mkdir()
    path = name if name.startswith("/") else str(tmp_path / name)
    assert main(["--config", path, "--task", "arithmetic", "--steps", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and len(err[0]) < 300
    assert not (tmp_path / "r").exists()


def test_cli_integers_take_underscores_and_exponents(tmp_path):
    out = tmp_path / "run"
    assert main(["--task", "arithmetic", "--steps", "1e1", "--seed", "1_0", "--quiet", "--out", str(out)]) == 0
    assert parse_scalar("1_0") == 10
    assert Path(out / "run.h5").is_file()
