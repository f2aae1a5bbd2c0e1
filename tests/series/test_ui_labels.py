"""The UI steps the node-side notebooks give match the MLflow UI of the version the series pins.

Every label a node-side notebook names in italics (*Compare*, *System metrics*, ...) must be a
label of the UI that ships inside the pinned MLflow wheel (its prebuilt JavaScript holds each label
as a quoted string). When MLflow moves and a label goes, this fails and names it.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest

from chi_helpers.series import NOTEBOOKS, REPO_ROOT

SOURCES = REPO_ROOT / "notebooks" / "source"
UI_BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
ITALIC = re.compile(r"(?<![*\w])\*(?!\*)([^*\n]+?)\*(?![*\w])")  # *label*, not **bold**


def node_side_labels() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for entry in NOTEBOOKS:
        if entry.side == "node":
            text = (SOURCES / f"{Path(entry.name).stem}.md").read_text()
            for label in ITALIC.findall(text):
                found.setdefault(label, set()).add(entry.name)
    return found


@pytest.fixture(scope="module")
def bundle() -> str:
    files = sorted(UI_BUNDLE.glob("*.js"))
    assert files, f"no UI bundle at {UI_BUNDLE}"
    return "\n".join(f.read_text(encoding="utf-8", errors="ignore") for f in files)


def test_the_node_side_notebooks_walk_through_the_ui():
    labels = node_side_labels()
    # The walk: the runs table, a run's tabs, the chart view, compare, registering, aliases.
    for label in ("Columns", "System metrics", "Source", "Chart view", "Compare", "Show diff only",
                  "Logged models", "Register model", "Edit aliases"):
        assert label in labels, f"no notebook names *{label}*"


def test_every_label_named_is_in_the_pinned_mlflow_ui(bundle):
    missing = {label: sorted(where) for label, where in node_side_labels().items() if f'"{label}"' not in bundle}
    assert not missing, f"labels the MLflow {mlflow.__version__} UI does not have: {missing}"


def test_the_check_would_catch_an_mlflow_2_step(bundle):
    # MLflow 2's model page had a "Register Model" button under the run's artifacts; 3.x has none of that name.
    assert '"Register Model"' not in bundle and '"Register model"' in bundle


def test_no_label_is_split_over_two_lines():
    # A label broken by a line wrap would slip past the check above.
    for entry in NOTEBOOKS:
        if entry.side != "node":
            continue
        in_code = False
        for number, line in enumerate((SOURCES / f"{Path(entry.name).stem}.md").read_text().splitlines(), 1):
            if line.startswith("```"):
                in_code = not in_code
                continue
            prose = re.sub(r"`[^`]*`", "", line.replace("**", "")).lstrip()
            prose = prose[2:] if prose.startswith("* ") else prose  # a bullet
            assert in_code or prose.count("*") % 2 == 0, f"{entry.name}:{number}: an italic runs over the line end"
