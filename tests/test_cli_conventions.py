"""The command-line conventions: console scripts, --version, --print-config, config keys in --help, did-you-mean,
YAML errors with their place, progress lines on a non-terminal stderr, run directory names."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest
import yaml

import sim
from sim import run
from sim.config import Config, all_keys, build_config, get_value, resolve
from sim.record import git_commit

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_console_scripts_are_the_python_m_commands():
    assert set(SCRIPTS) == {"organism-run", "organism-report", "organism-sweep", "organism-view"}
    for name, target in SCRIPTS.items():
        module, function = target.split(":")
        assert callable(getattr(import_module(module), function)), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_console_script_takes_the_same_flags(name):
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert path, f"{name} is not installed: pip install -e . installs it"
    done = subprocess.run([path, "--version"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"organism-networks {sim.__version__} (commit {git_commit()})"
    module = SCRIPTS[name].split(":")[0]
    by_module = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=ENV,
                               timeout=120, cwd=ROOT)  # fmt: skip
    by_script = subprocess.run([path, "--help"], capture_output=True, text=True, env=ENV, timeout=120, cwd=ROOT)
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout


@pytest.mark.parametrize("module", ["sim.run", "sim.sweep", "analysis.report", "analysis.runs", "analysis.export"])
def test_version_names_the_package_version_and_the_commit(module, capsys):
    with pytest.raises(SystemExit) as done:
        import_module(module).main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"organism-networks {sim.__version__} (commit {git_commit()})"
    assert re.search(r"commit ([0-9a-f]{40}(-dirty)?|unknown)\)$", out)


def test_print_config_round_trips_through_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--task", "arithmetic", "--steps", "123", "--set", "train.alpha=0.25", "--set", "events.noise=0.5"]
    assert run.main([*args, "--print-config"]) == 0
    printed = capsys.readouterr().out
    expected = build_config(None, [("task.name", "arithmetic"), ("steps", 123), ("train.alpha", 0.25),
                                   ("events.noise", 0.5)])  # fmt: skip
    assert yaml.safe_load(printed) == expected.to_dict()
    (tmp_path / "printed.yaml").write_text(printed)
    assert build_config(tmp_path / "printed.yaml") == expected
    assert run.main(["--config", "printed.yaml", "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert list(tmp_path.iterdir()) == [tmp_path / "printed.yaml"]  # nothing run, nothing written


def test_help_lists_every_config_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    defaults = Config()
    for key in all_keys():
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [key]), None)
        assert line is not None, f"--help does not list {key}"
        default = get_value(defaults, key)
        if default is not None:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert line.rstrip().endswith(f"default: {shown}"), line
    assert "organism.width" in text and "by task: mnist 5, arithmetic 3" in text
    for section in (f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)):
        assert re.search(rf"^{section}: ", text, re.M), section


@pytest.mark.parametrize("key, suggestion", [("train.lrr", "train.lr"), ("alpha", "train.alpha"),
                                             ("organism.hiden", "organism.hidden"),
                                             ("evnts.attack", "events.attack")])  # fmt: skip
def test_unknown_key_suggests_the_nearest(key, suggestion, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run.main(["--set", f"{key}=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown config key {key!r}; did you mean " in err
    assert repr(suggestion) in err.split("did you mean ")[1]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({key.split(".")[0]: {key.split(".")[-1]: 1}} if "." in key
                                                    else {key: 1}))  # fmt: skip
    assert run.main(["--config", "c.yaml"]) == 2
    assert repr(suggestion) in capsys.readouterr().err.split("did you mean ")[1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, where", [
    ("train:\n  lr: [1, 2\n  alpha: 3\n", "line 3, column 8"),
    ("train:\n\tlr: 1\n", "line 2, column 1"),
    ("steps: 10\nsteps 20\nseed: 1\n", "line 3, column 1: could not find expected ':' (while scanning a simple key at "
                                       "line 2, column 1)"),
])  # fmt: skip
def test_malformed_yaml_names_line_and_column(text, where, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert run.main(["--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"malformed config file {str(path)!r} at {where}" in err


@pytest.mark.slow
def test_progress_lines_on_a_non_terminal_stderr(tmp_path):
    out = tmp_path / "r"
    command = [sys.executable, "-m", "sim.run", "--task", "arithmetic", "--steps", "50", "--out", str(out),
               "--set", "record.log_every=10"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [int(re.match(r"step (\d+)/50 ", ln).group(1)) for ln in lines] == [10, 20, 30, 40, 50]
    for line in lines:
        assert re.search(r"  [0-9.e+]+ steps/s  held-out mae [0-9.e+-]+  SR loss [0-9.e+-]+  kinds (\w+=\d+ ?)+", line)
    quiet = subprocess.run([*command[:-3], str(tmp_path / "q"), "--quiet"], capture_output=True, text=True, env=ENV,
                           cwd=ROOT, timeout=300)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_progress_line_shows_the_gate(tmp_path):
    command = [sys.executable, "-m", "sim.run", "--steps", "10", "--out", str(tmp_path / "m"),
               "--set", "record.log_every=5", "--set", "train.task_first_threshold=0.99"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2
    assert all(re.search(r"self-training starts at train accuracy 0\.99: now 0\.\d+$", ln) for ln in lines)


def test_run_directory_names_hold_the_changed_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--task", "arithmetic", "--steps", "5", "--set", "train.alpha=0.5", "--set", "train.n_sr=10",
            "--set", "particle.activation=tanh", "--set", "task.data_dir=/x y"]  # fmt: skip
    assert run.main(args) == 0
    (made,) = (tmp_path / "runs").iterdir()
    # n_sr=10 is the default: left out; activation is a key of two sections: kept whole; '/' and ' ' made safe
    assert re.fullmatch(r"\d{8}-\d{6}-arithmetic-s0-alpha=0\.5-particle\.activation=tanh-data_dir=_x_y", made.name)
    assert run.main(["--task", "arithmetic", "--steps", "5", "--name", "baseline"]) == 0
    assert any(re.fullmatch(r"\d{8}-\d{6}-baseline", p.name) for p in (tmp_path / "runs").iterdir())
    assert run.main(["--task", "arithmetic", "--steps", "5", "--name", "../up"]) == 2


def test_long_changed_keys_are_cut_with_a_hash():
    config = resolve(Config())
    config.task.data_dir = "d" * 200
    name = run.changed_keys(config, ["task.data_dir"])
    assert len(name) == run.NAME_CHARS and re.fullmatch(r"data_dir=d+-[0-9a-f]{8}", name)
    config.task.data_dir = "e" * 200
    assert run.changed_keys(config, ["task.data_dir"]) != name
