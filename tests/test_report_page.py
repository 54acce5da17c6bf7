"""The report as a lab-notebook page: no key dumps, no dropped rows, one number format, every figure captioned, no
link out of the report, the figure format chosen by --format."""

import json
import re
from pathlib import Path

import pytest

from analysis import report

DRAWS = ["--draws", "10", "--repeats", "2", "--max-steps", "50"]
DOTTED_KEY = re.compile(r"\b[a-z_]+(\.[a-z0-9_]+){2,}\b")  # specialisation.per_layer.0.kind_counts.other
LINK = re.compile(r"\]\(([^)\s]+)\)")


# the MNIST report (1,200 particles) is the costly one: in the full suite only
MNIST = pytest.param("mnist", marks=pytest.mark.slow)


class _Reports(dict):
    """The one-run reports of the fixture runs by name, each written when a test first asks for it; `svg`: one
    analysis of the arithmetic run with `--format svg`."""

    def __init__(self, runs: dict[str, Path], root: Path) -> None:
        super().__init__()
        self.runs, self.root = runs, root

    def __missing__(self, name: str) -> Path:
        out = self.root / name
        if name == "svg":
            args = [str(self.runs["arithmetic"]), "--only", "specialisation", "--format", "svg"]
        else:
            args = [str(self.runs[name]), *DRAWS]
        assert report.main([*args, "--out", str(out)]) == 0
        self[name] = out
        return out


@pytest.fixture(scope="module")
def reports(arithmetic_run, mnist_run, soup_run, tmp_path_factory):
    runs = {"arithmetic": arithmetic_run, "mnist": mnist_run, "soup": soup_run}
    return _Reports(runs, tmp_path_factory.mktemp("reports"))


def table_rows(md: str, header_start: str) -> list[str]:
    """The body rows of the markdown table whose header row starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("name", ["arithmetic", MNIST, "soup"])
def test_no_key_dumps_and_one_number_format(reports, name):
    md = (reports[name] / "report.md").read_text()
    for line in md.splitlines():
        assert not (len(line) > 200 and DOTTED_KEY.search(line)), line[:120]
        assert not (line.startswith("| `") and DOTTED_KEY.search(line)), line  # a table of raw keys
    prose = re.sub(r"`[^`]*`|\([^)]*\.(json|csv|png|svg)\)", "", md)  # paths and code aside
    for whole, fraction in re.findall(r"(?<![\w.])(\d+)\.(\d+)(?![\d.]*e|\w)", prose):
        assert len((whole + fraction).lstrip("0")) <= 3, f"{whole}.{fraction} has more than 3 significant digits"
    assert "±" not in md  # intervals are [lo, hi], spreads (sd s)


@pytest.mark.parametrize("name", ["arithmetic", MNIST, "soup"])
def test_every_figure_has_a_caption_and_every_link_stays_in_the_report(reports, name):
    out = reports[name]
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert {Path(LINK.search(lines[i]).group(1)).name for i in images} == {p.name for p in out.rglob("*.png")}
    for i in images:
        caption = lines[i + 2]
        assert lines[i + 1] == "" and re.fullmatch(r"\*[A-Z].{20,}\.\*", caption), (lines[i], caption)
    for target in LINK.findall(md):
        assert not re.match(r"[a-z]+:", target) and not target.startswith("/"), target
        path = (out / target).resolve()
        assert path.is_relative_to(out.resolve()) and path.exists(), target


@pytest.mark.parametrize("name", ["arithmetic", MNIST])
def test_no_table_row_is_dropped(reports, name):
    out = reports[name]
    md = (out / "report.md").read_text()
    robustness = json.loads((out / "robustness.json").read_text())
    assert len(table_rows(md, "| noise s |")) == len(robustness["levels"])
    pruning = json.loads((out / "pruning.json").read_text())
    assert len(table_rows(md, "| threshold |")) == len(pruning["threshold_scan"]["threshold"])
    assert len(table_rows(md, "| kind zeroed |")) == len(pruning["dropout"])
    specialisation = json.loads((out / "specialisation.json").read_text())
    assert len(table_rows(md, "| layer | particles |")) == len(specialisation["per_layer"])
    connectivity = json.loads((out / "connectivity.json").read_text())
    assert len(table_rows(md, "| kind | share of all particles |")) == len(connectivity["kind_mixing"])


def test_a_long_table_goes_to_csv_whole(arithmetic_run, tmp_path):
    exponents = [str(e) for e in range(1, 31)]
    out = tmp_path / "many"
    assert report.main([str(arithmetic_run), "--out", str(out), "--only", "robustness", "--noise-exponents",
                        *exponents, "--repeats", "1", "--max-steps", "20"]) == 0  # fmt: skip
    md = (out / "report.md").read_text()
    assert "| noise s |" not in md and "[robustness_levels.csv](robustness_levels.csv)" in md
    levels = json.loads((out / "robustness.json").read_text())["levels"]
    rows = (out / "robustness_levels.csv").read_text().splitlines()
    assert len(rows) == 1 + len(levels) == 32


def test_findings_cover_every_analysis(reports):
    md = (reports["arithmetic"] / "report.md").read_text()
    findings = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    for title in ("Specialisation", "Connectivity", "Weight trajectories", "Robustness of the self-replicators"):
        assert f"**{title}.**" in findings
    assert "Dropping all" in findings
    soup = (reports["soup"] / "report.md").read_text()
    assert re.search(r"Population events over the \d+ steps: (\w+ \d+, )*\w+ \d+ \(\d+ in all\)", soup)


def test_figure_format_svg(reports):
    out = reports["svg"]
    assert not list(out.rglob("*.png")) and list(out.rglob("*.svg"))
    md = (out / "report.md").read_text()
    assert all(link.endswith(".svg") for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))


@pytest.mark.parametrize("name", ["arithmetic", MNIST, "soup"])
def test_the_readme_and_reports_name_commands_not_notes(reports, name):
    md = (reports[name] / "report.md").read_text()
    assert "DESIGN" not in md and "../shared" not in md
