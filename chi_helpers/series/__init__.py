"""The series: its notebooks in order, which side each runs on, and where the built copies go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE_DIR = REPO_ROOT / "notebooks" / "source"


@dataclass(frozen=True)
class Entry:
    source: str  # file name in notebooks/source/
    title: str
    side: str  # "testbed": Chameleon's JupyterHub (or here); "node": the node's Jupyter container

    @property
    def name(self) -> str:
        return self.source.removesuffix(".md") + ".ipynb"


NOTEBOOKS = [
    Entry("00_introduction.md", "Introduction: the series and choosing a GPU variant", "testbed"),
    Entry("01_reserve.md", "Reserve the named GPU host", "testbed"),
    Entry("02_server.md", "Bring up the server and set it up", "testbed"),
    Entry("03_data.md", "Prepare the Food-11 data", "testbed"),
    Entry("04_stack.md", "Start the tracking stack and the Jupyter container", "testbed"),
    Entry("05_track_pytorch.md", "Track a PyTorch training job", "node"),
    Entry("06_lightning.md", "Lightning with autologging", "node"),
    Entry("07_registry.md", "The model registry through the API", "node"),
    Entry("08_release.md", "Stop and release everything", "testbed"),
]


def output_path(entry: Entry, variant: str) -> Path:
    """Where the built notebook of `entry` for `variant` lives."""
    folder = "notebooks" if entry.side == "testbed" else "workspace_mlflow"
    return REPO_ROOT / folder / variant / entry.name
