"""The series: its notebooks in order, where each runs, which targets have it, and where the built copies go.

Two kinds of build come from the same sources. A student on Chameleon opens one per GPU variant
(`notebooks/<variant>/`, `workspace_mlflow/<variant>/`), with nothing of the local target in it; the
local target (this machine plays the node) has its own, `notebooks/local/` and `workspace_mlflow/local/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE_DIR = REPO_ROOT / "notebooks" / "source"
LOCAL_BUILD = "local"  # the name of the local target's build (a folder next to the variants')


@dataclass(frozen=True)
class Entry:
    source: str  # file name in notebooks/source/
    title: str
    side: str  # "testbed": Chameleon's JupyterHub (or this machine); "node": the node's Jupyter container
    targets: tuple[str, ...] = ("chameleon", "local")

    @property
    def name(self) -> str:
        return self.source.removesuffix(".md") + ".ipynb"


NOTEBOOKS = [
    Entry("00_introduction.md", "Introduction: why track experiments, and the plan", "testbed"),
    Entry("01_reserve.md", "Reserve the GPU host", "testbed", ("chameleon",)),
    Entry("02_server.md", "Bring up the server and set it up", "testbed", ("chameleon",)),
    Entry("03_data.md", "Prepare the Food-11 data", "testbed"),
    Entry("04_stack.md", "Start the tracking stack and the Jupyter container", "testbed"),
    Entry("05_track_pytorch.md", "Track a PyTorch training job", "node"),
    Entry("06_lightning.md", "Lightning with autologging", "node"),
    Entry("07_registry.md", "The model registry through the API", "node"),
    Entry("08_release.md", "Save your results, then release everything", "testbed"),
]


def notebooks_for(target: str) -> list[Entry]:
    """The notebooks a target's build has, in order."""
    return [entry for entry in NOTEBOOKS if target in entry.targets]


def build_name(target: str, variant: str) -> str:
    """The folder name of the build a run of `target` uses: the variant's on Chameleon, `local` here."""
    return LOCAL_BUILD if target == "local" else variant


def output_path(entry: Entry, build: str) -> Path:
    """Where the built notebook of `entry` lives in `build` (a variant's name, or `local`)."""
    folder = "notebooks" if entry.side == "testbed" else "workspace_mlflow"
    return REPO_ROOT / folder / build / entry.name
