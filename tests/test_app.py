"""The Mesa page (`sim/app.py`): its live models and replay reader directly, then the served page in headless Chromium.

The browser tests start `python -m sim.view` on loopback and drive Debian's Chromium through Selenium with the system
chromedriver (Selenium Manager downloads nothing); they skip with the reason where Chromium or solara's page assets are
missing. The live test leaves a screenshot of the page in its pytest tmp dir (its path is a recorded test property).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sim.app import (
    ORGANISM_PARAMS,
    SOUP_PARAMS,
    KindCountsView,
    LiveOrganism,
    LiveSoup,
    MetricView,
    SRLossView,
    _settings_text,
    gate_progress,
)
from sim.events import EVENT_NAMES, EVENTS
from sim.figures import kinds_text, organism_layout
from sim.particles import KIND_COLOURS, KIND_NAMES
from sim.record import open_record, read_group
from sim.replay import load_replay
from sim.run import main as run_main
from sim.topology import particle_table
from sim.view import free_port, incompatible_widgets, missing_assets

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STATUS = re.compile(r"step: (\d+), kinds: (.*)")
REPO = Path(__file__).resolve().parents[1]


def parse_status(text: str) -> tuple[int, dict[str, int]]:
    """`... step: N, kinds: a=1, b=2, ...` -> (N, {a: 1, b: 2, ...})."""
    match = STATUS.search(text)
    assert match, f"no status line in {text!r}"
    counts = dict(item.split("=") for item in match.group(2).strip().split(", "))
    return int(match.group(1)), {name: int(value) for name, value in counts.items()}


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 40-step arithmetic run logged every 5 steps (made by the CLI's `main`, as a user would)."""
    out = tmp_path_factory.mktemp("replay") / "run"
    assert (
        run_main(["--task", "arithmetic", "--steps", "40", "--quiet", "--out", str(out), "--set", "record.log_every=5"])
        == 0
    )
    return out


# --- without a browser -------------------------------------------------------------------------------------------
def test_live_organism_collects_every_step() -> None:
    model = LiveOrganism(task="arithmetic", n_sr=2, seed=3)
    for _ in range(3):
        model.step()
    frame = model.datacollector.get_model_vars_dataframe()
    assert frame.index.tolist() == [1, 2, 3]  # the page logs every step (the initial state is the record's)
    assert frame.loc[3, list(KIND_NAMES)].sum() == model.n_particles == 18
    assert frame.loc[3, "sr_loss"] == model.summary["sr_loss"]
    assert model.layout.xy.shape == (18, 2)


def test_live_soup_is_drawn_as_its_graph() -> None:
    model = LiveSoup(size=20, n_sr=1)
    model.step()
    assert model.datacollector.get_model_vars_dataframe().index.tolist() == [1]
    assert model.layout.xy.shape == (20, 2) and model.layout.line_particle is None
    assert len(model.layout.lines) == model.graph.number_of_edges()


def test_the_live_plots_are_mesas_plots_of_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    import solara

    drawn = []
    show = solara.FigureMatplotlib
    monkeypatch.setattr(solara, "FigureMatplotlib", lambda figure, **kw: drawn.append(figure) or show(figure, **kw))
    model = LiveOrganism(task="arithmetic", n_sr=2, seed=3)
    for _ in range(4):
        model.step()
    frame = model.datacollector.get_model_vars_dataframe()

    @solara.component
    def Plots() -> None:
        KindCountsView(model)
        MetricView(model)
        SRLossView(model)

    solara.render(Plots(), handle_error=False)
    kinds, metric, loss = (figure.axes[0] for figure in drawn)
    assert [line.get_label() for line in kinds.lines] == list(KIND_NAMES)
    for line, name in zip(kinds.lines, KIND_NAMES, strict=True):
        assert line.get_color() == KIND_COLOURS[name]
        assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == frame[name].tolist()
    assert metric.get_title() == "held-out mae"
    assert list(metric.lines[0].get_ydata()) == frame["held_out_metric"].tolist()
    assert loss.get_title() == "mean SR loss" and loss.get_yscale() == "log"
    assert list(loss.lines[0].get_ydata()) == frame["sr_loss"].tolist()


def test_the_gate_is_a_progress_line_until_self_training_starts() -> None:
    model = LiveOrganism(task="mnist", n_sr=1)
    assert gate_progress(model) == ("self-training starts at train accuracy 0.85: no step yet", 0.0)
    for _ in range(2):
        model.step()
    line, fraction = gate_progress(model)
    running = model.summary["train_metric"]
    assert line == f"self-training starts at train accuracy 0.85: now {running:.3g}"
    assert fraction == pytest.approx(running / 0.85) and 0 < fraction < 1
    model.sr_active = True  # what the gate does once the running train accuracy reaches 0.85
    assert gate_progress(model) == ("self-training on", 1.0)
    assert gate_progress(LiveOrganism(task="arithmetic")) == ("self-training on", 1.0)  # no gate


def test_the_page_says_that_reset_applies_a_changed_control() -> None:
    model = LiveOrganism(task="arithmetic", n_sr=4, alpha=0.5, seed=2)
    text = _settings_text(model)
    assert "task arithmetic, 18 particles, n_sr=4, alpha=0.5, seed=2" in text
    assert "applies when RESET rebuilds the model" in text
    rebuilt = LiveOrganism(task="mnist", n_sr=4, alpha=0.5, seed=2)  # what RESET does with the changed task
    assert rebuilt.n_particles == 1200 and "task mnist, 1200 particles" in _settings_text(rebuilt)


def test_page_rates_are_the_event_table() -> None:
    for params, page in ((ORGANISM_PARAMS, LiveOrganism), (SOUP_PARAMS, LiveSoup)):
        sliders = [name for name in params if name in EVENT_NAMES]
        assert sliders == list(EVENT_NAMES)
        for event in EVENTS:
            assert params[event.name].max == event.rate_max
        rates = {name: 0.001 * (i + 1) for i, name in enumerate(EVENT_NAMES)}
        extra = {"size": 10} if page is LiveSoup else {}
        model = page(n_sr=0, **extra, **rates)
        assert {name: getattr(model.config.events, name) for name in EVENT_NAMES} == pytest.approx(rates)
        with pytest.raises(TypeError, match="'attak'"):
            page(attak=0.1)
    assert {name: SOUP_PARAMS[name].value for name in EVENT_NAMES} == {e.name: e.soup_rate for e in EVENTS}
    assert all(ORGANISM_PARAMS[name].value == 0 for name in EVENT_NAMES)


def test_organism_layout_puts_each_particle_between_its_neurons() -> None:
    sizes = [2, 3, 3, 1]
    table = particle_table(sizes)
    layout = organism_layout(sizes, table.layer, table.source, table.target)
    assert layout.xy.shape == (18, 2) and layout.nodes.shape == (9, 2)
    assert np.all((layout.xy[:, 0] > table.layer) & (layout.xy[:, 0] < table.layer + 1))
    assert np.allclose(layout.lines[:, 0, 0], table.layer) and np.allclose(layout.lines[:, 1, 0], table.layer + 1)


def test_replay_reads_the_record(record: Path) -> None:
    replay = load_replay(record)
    with open_record(record) as f:
        particles = read_group(f, "particles")
    assert replay.steps.tolist() == list(range(0, 41, 5))  # from the initial state at step 0
    np.testing.assert_array_equal(replay.kind_counts, particles["kind_counts"])
    assert replay.row(27) == replay.row(25) == 5 and replay.row(0) == 0
    step, weights, kinds = replay.snapshot(40)
    assert step == 40 and weights.shape[0] == 18
    np.testing.assert_array_equal(kinds, particles["kind"][-1])  # the snapshot's kinds, re-classified, match the log


# --- in the browser ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium through Selenium; skipped where it (or the page's offline assets) is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"Debian's Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
                    "chromium-driver")  # fmt: skip
    if incompatible_widgets():
        pytest.fail(incompatible_widgets())
    if missing_assets():
        pytest.skip(f"solara's page assets are not installed ({', '.join(missing_assets())}) and no CDN can be "
                    "assumed: run `python -m sim.view --install-assets` once")  # fmt: skip
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(browser: object, record: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m sim.view` on a free loopback port, replaying `record`; yields the address it prints."""
    port = free_port()
    logs = tmp_path_factory.mktemp("server")
    command = [sys.executable, "-m", "sim.view", "--host", "127.0.0.1", "--port", str(port), "--replay", str(record)]
    # output goes to files, not pipes: nobody reads a pipe once the address is found, and a full one blocks the server
    with (logs / "stdout.log").open("w") as stdout, (logs / "stderr.log").open("w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        found = None
        while found is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            found = re.search(r"organism-networks page: (http://\S+/)", (logs / "stdout.log").read_text())
        assert found and found.group(1) == f"http://127.0.0.1:{port}/", (
            f"python -m sim.view printed no address (exit {process.poll()}); "
            f"stderr: {(logs / 'stderr.log').read_text()[-2000:]}"
        )
        yield found.group(1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (start_new_session above)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_text(driver: object, selector: str, pattern: str, timeout: float = 60) -> str:
    """The text of the element `selector` once it matches `pattern`."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(d: object) -> str | bool:
        try:
            found = [e.text for e in d.find_elements(By.CSS_SELECTOR, selector)]
        except StaleElementReferenceException:  # the page re-rendered under us: look again
            return False
        return next((t for t in found if re.search(pattern, t)), False)

    try:
        return WebDriverWait(driver, timeout).until(text)
    except TimeoutException:
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"{selector} never showed {pattern!r}; the page says: {body[:1500]!r}") from None


def _image(driver: object, selector: str) -> bytes:
    """What the figure inside `selector` looks like on screen (PNG of the element)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def png(d: object) -> bytes | bool:
        try:
            element = d.find_element(By.CSS_SELECTOR, f"{selector} img")
            d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            return element.screenshot_as_png
        except StaleElementReferenceException:  # the figure was redrawn between finding it and taking its picture
            return False

    return WebDriverWait(driver, 30).until(png)


@pytest.mark.slow
def test_live_page_steps_the_model(browser: object, server: str, tmp_path: Path, record_property) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server)
    step, counts = parse_status(_wait_text(browser, ".live-status", r"^step: 0,"))
    assert step == 0 and sum(counts.values()) == 18 and list(counts) == list(KIND_NAMES)
    graph, plot = _image(browser, ".topology-view"), _image(browser, ".kind-counts-view")
    for clicks in range(1, 4):
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Step']").click()
        step, counts = parse_status(_wait_text(browser, ".live-status", rf"^step: {5 * clicks},"))
    assert step == 15 and sum(counts.values()) == 18  # Step runs Mesa's render interval: 5 steps a click
    _wait_text(browser, "body", r"Step: 15")  # Mesa's own step counter
    assert _image(browser, ".topology-view") != graph, "the graph did not change after 15 steps"
    assert _image(browser, ".kind-counts-view") != plot, "the kind-count plot did not change after 15 steps"
    screenshot = tmp_path / "live_page.png"
    browser.save_screenshot(str(screenshot))
    record_property("screenshot", str(screenshot))
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_replay_page_shows_the_recorded_kind_counts(browser: object, server: str, record: Path) -> None:
    from selenium.webdriver.common.by import By

    with open_record(record) as f:
        particles = read_group(f, "particles")
    recorded = {int(s): dict(zip(KIND_NAMES, c.tolist(), strict=True)) for s, c in zip(particles["step"],
                                                                                        particles["kind_counts"],
                                                                                        strict=True)}  # fmt: skip
    browser.get(server + "replay")
    step, counts = parse_status(_wait_text(browser, ".replay-status", r"^replay step: 40,"))
    assert counts == recorded[40], kinds_text(recorded[40])
    graph = _image(browser, ".topology-view")
    for expected in (35, 30, 25):
        browser.find_element(By.CSS_SELECTOR, "button.replay-prev").click()
        step, counts = parse_status(_wait_text(browser, ".replay-status", rf"^replay step: {expected},"))
        assert counts == recorded[step], f"step {step}: page {counts}, record {recorded[step]}"
    assert _image(browser, ".topology-view") != graph, "the recorded graph did not change between steps 40 and 25"
