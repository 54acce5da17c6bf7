"""The user-facing text: every link in README, LICENSE and docs/ stays inside the repository and resolves; nothing in
the repository cites text a user who clones it does not have; the package metadata is complete."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

import sim

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown links and images


def markdown_links(text: str) -> list[str]:
    return LINK.findall(text)


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in listed.splitlines() if (ROOT / line).is_file()]


def link_problem(md: Path, target: str, root: Path) -> str | None:
    """Why a link in `md` leaves `root` or is broken, or None when it resolves to a file inside `root`."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target):
        return f"{md.name} links outside the repository: {target}"
    path = (md.parent / target.split("#")[0]).resolve()
    if not path.is_relative_to(root.resolve()):
        return f"{md.name} links outside the repository: {target}"
    if not path.exists():
        return f"{md.name} links to a missing {target}"
    return None


@pytest.mark.parametrize("name", ["README.md", "docs/science.md", "docs/record.md"])
def test_links_stay_inside_the_repository(name):
    md = ROOT / name
    links = markdown_links(md.read_text())
    assert links, f"{name} links nothing (the test would check nothing)"
    problems = [p for p in (link_problem(md, t, ROOT) for t in links) if p]
    assert not problems


def test_link_check_catches_links_out(tmp_path):
    md = tmp_path / "repo" / "README.md"
    md.parent.mkdir()
    md.write_text("x")
    assert link_problem(md, "../shared/DESIGN.md", md.parent)
    assert link_problem(md, "https://example.org", md.parent)
    assert link_problem(md, "docs/missing.md", md.parent)
    assert link_problem(md, "README.md", md.parent) is None


def test_nothing_cites_notes_outside_the_repository():
    pattern = re.compile(r"DESIGN(\.md| \d)|\.\./shared|issue notes|runs/notes")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in tracked_files()
        if path.suffix in (".py", ".md", ".toml", ".yaml", ".cfg", ".txt")
        and path.name not in ("test_docs.py", "test_report_page.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits


def test_science_sections_cited_by_the_code_exist():
    headings = set(re.findall(r"^## §(\d+) ", (ROOT / "docs/science.md").read_text(), flags=re.M))
    cited = {
        n
        for path in tracked_files()
        if path.suffix == ".py"
        for n in re.findall(r"science\.md §(\d+)", path.read_text())
    }
    assert cited and cited <= headings


def test_package_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    meta, dynamic = project["project"], project["tool"]["setuptools"]["dynamic"]
    assert "version" in meta["dynamic"] and dynamic["version"] == {"attr": "sim.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", sim.__version__)
    assert meta["license"] == {"text": "MIT"} and "MIT License" in (ROOT / "LICENSE").read_text()
    assert meta["authors"] and all(a.get("name") for a in meta["authors"])
    assert "License :: OSI Approved :: MIT License" in meta["classifiers"]
