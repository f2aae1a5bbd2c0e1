"""The reader-facing pages: every relative link in the README and docs/ leads to a file (and heading)
that exists, the figure is well-formed SVG, and the README names the two commands."""

from __future__ import annotations

import re
import xml.dom.minidom
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#+\s+(.*)$", page.read_text(), re.M):
        found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower())))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#") and not target[1:]:
            continue  # a web address
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def test_the_figure_is_well_formed_svg():
    svg = xml.dom.minidom.parse(str(REPO / "docs" / "system.svg")).documentElement
    assert svg.tagName == "svg" and svg.getElementsByTagName("text")


def test_the_readme_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def understanding_questions() -> list[tuple[str, str]]:
    """(notebook, question) for each *Check your understanding* question in the notebooks' source."""
    found = []
    for source in sorted((REPO / "notebooks" / "source").glob("*.md")):
        for block in re.findall(r"\*\*Check your understanding:\*\*(.*?)(?:\n\n|\Z)", source.read_text(), re.S):
            text = " ".join(block.split())
            found += [(source.stem, q.strip()) for q in re.findall(r"[^?]+\?", text)]
    return found


def test_every_check_your_understanding_question_has_its_answer_for_instructors():
    def plain(text: str) -> str:  # emphasis and line breaks aside, as a reader sees it
        return " ".join(text.replace("*", "").split()).lower()

    answers = plain((REPO / "docs" / "instructors.md").read_text())
    questions = understanding_questions()
    assert len(questions) >= 20  # every notebook asks at least one; most ask two
    unanswered = [f"{notebook}: {q}" for notebook, q in questions if plain(q) not in answers]
    assert not unanswered, "docs/instructors.md has no answer quoting:\n" + "\n".join(unanswered)
