"""The README and docs/ stay true to the repository: links resolve, headline numbers are the reports' own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) and ![alt](target), anchors dropped


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", t)]  # skip http:, mailto:


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_link_and_picture_resolves(path):
    missing = [t for t in _links(path) if not (path.parent / t).exists()]
    assert not missing, f"{path.name} links to files that do not exist: {missing}"


def test_readme_is_a_face_with_pictures():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "the README should fit in about 250 lines; details go to docs/"
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(pictures) >= 2, "the README shows at least the switch grid and the quickstart's image"
    assert "```bibtex" in text


def _results_rows() -> list[tuple[str, str, str]]:
    """(headline, bold value, linked report) for each row of the README's Results table."""
    text = README.read_text()
    table = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("headline", "---"):
            continue
        values = re.findall(r"\*\*(.+?)\*\*", cells[1])
        links = LINK.findall(cells[2])
        rows.append((cells[0], values, links))
    return rows


def test_results_table_quotes_its_reports():
    rows = _results_rows()
    assert 1 <= len(rows) <= 8, "a short results table: at most 8 headline numbers"
    for headline, values, links in rows:
        assert values and links, f"'{headline}': give the number in bold and link the report that measured it"
        report = "\n".join((ROOT / link).read_text() for link in links)
        for value in values:
            assert value in report, f"'{headline}': {value!r} does not appear in {links}"


def test_docs_speak_of_the_project_only():
    pattern = re.compile(r"working session|this session|the (next|last|previous) session", re.I)
    for path in [README, *DOCS]:
        assert not pattern.search(path.read_text()), f"{path.name} talks about how the work was organised"
