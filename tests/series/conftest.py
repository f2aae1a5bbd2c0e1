"""The local series, run once for the package: its checks (test_series.py) and the walk through the MLflow
UI on its history (test_ui_walk.py) share it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from chi_helpers.local import processes
from chi_helpers.local import run as local_run
from chi_helpers.local import stack as local_stack
from chi_helpers.series import REPO_ROOT


def scripts_state() -> dict[str, str]:
    return {path.name: path.read_text() for path in (REPO_ROOT / "workspace_mlflow").glob("*.py")}


@pytest.fixture(scope="package")
def series(tmp_path_factory):
    """One run of the local build with its own sizes (the ones `make run` uses); the stack is kept for the
    checks, then stopped."""
    workdir = tmp_path_factory.mktemp("series")
    port = processes.free_port()
    before = scripts_state()
    report = local_run.run_series(
        workdir=workdir, output_dir=workdir / "out", port=port, keep_stack=True,
        parameters={"download_dir": str(workdir / "deployed")},
    )
    assert scripts_state() == before  # the students' edits went into the run's own copy, not this checkout
    stack = local_stack.read_state(workdir / "stack")
    yield report, MlflowClient(stack.url), workdir
    local_stack.down(workdir / "stack")
