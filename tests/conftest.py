"""Shared fixtures: a small data set and a real MLflow server started with chi_helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chi_helpers.containers import base_image, engine
from chi_helpers.local import processes
from chi_helpers.local import run as local_run
from chi_helpers.local import sample_data
from chi_helpers.local import stack as local_stack
from chi_helpers.series import REPO_ROOT

REPO = Path(__file__).resolve().parent.parent
WORKSPACE = REPO / "workspace_mlflow"

# Small and quick: 32-pixel photos, random weights (nothing to download), few epochs.
FAST_TRAINING = ["--image_size", "32", "--pretrained", "false", "--initial_epochs", "1", "--total_epochs", "3"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # this machine has no way out; don't try


@pytest.fixture(autouse=True)
def no_project_choice_left():
    """A hub session keeps the student's project choice at the top of the copy (login.CHOICE_FILE); one a test
    made in this checkout must not become the next test's default."""
    from chi_helpers.chameleon import login

    kept = login.CHOICE_FILE.read_text() if login.CHOICE_FILE.exists() else None
    yield
    if kept is None:
        login.CHOICE_FILE.unlink(missing_ok=True)
    else:
        login.CHOICE_FILE.write_text(kept)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("food11") / "Food-11"
    sample_data.make_sample_dataset(root, per_class={"training": 4, "validation": 2, "evaluation": 2}, image_size=32)
    return root


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One MLflow server for the session, on a free port, stopped (with its children) at the end."""
    state_dir = tmp_path_factory.mktemp("stack")
    stack = local_stack.up(state_dir, port=processes.free_port())
    yield stack
    local_stack.down(state_dir)
    assert not processes.is_running(stack.pid)


@pytest.fixture
def run_script(mlflow_server, data_dir, tmp_path):
    """Run a workspace script as a student would, in its own folder, against the session's server."""

    def run(script: str, *args: str, env: dict | None = None, timeout: float = 300,
            workspace: Path = WORKSPACE) -> subprocess.CompletedProcess:
        full_env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "FOOD11_DATA_DIR": str(data_dir),
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, str(workspace / script), *args],
            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout,
        )

    return run


# --- the local series, run once ---------------------------------------------------------------------

def scripts_state() -> dict[str, str]:
    return {path.name: path.read_text() for path in (REPO_ROOT / "workspace_mlflow").glob("*.py")}


@pytest.fixture(scope="session")
def series(tmp_path_factory):
    """One run of the local build with its own sizes (the ones `make run` uses), shared by its checks
    (tests/series/test_series.py) and the MLflow UI walk on its history (test_ui_walk.py); its stack is
    kept until the session ends."""
    workdir = tmp_path_factory.mktemp("series")
    port = processes.free_port()
    before = scripts_state()
    report = local_run.run_series(
        workdir=workdir, output_dir=workdir / "out", port=port, keep_stack=True,
        parameters={"download_dir": str(workdir / "deployed")},
    )
    assert scripts_state() == before  # the students' edits went into the run's own copy, not this checkout
    from mlflow import MlflowClient

    stack = local_stack.read_state(workdir / "stack")
    yield report, MlflowClient(stack.url), workdir
    local_stack.down(workdir / "stack")


# --- the node's Compose stack in real containers (tests/containers/), wherever an engine answers ----------
# Without one every container test is skipped, and the summary says so in one line.

@pytest.fixture(scope="session")
def docker_engine(request):
    version = engine.answers()
    compose = engine.compose_version() if version else None
    if not version or not compose:
        why = "no Docker engine answers" if not version else "Compose v2 (`docker compose`) is missing"
        request.config.container_tests_note = f"container tests: not run, {why} here (`make engine` sets one up)"
        pytest.skip(why)
    request.config.container_tests_note = f"container tests: ran against Docker engine {version} with Compose {compose}"
    return version


@pytest.fixture(scope="session")
def ci_base(docker_engine) -> str:
    """What the images build on: the base made here (made now if it can be), else the production one,
    for an engine that can pull it (a laptop)."""
    if base_image.exists(base_image.BASE_IMAGE) or shutil.which("mmdebstrap"):
        base_image.make()  # ~30 s when missing; `make engine` makes it ahead
        return base_image.BASE_IMAGE
    return base_image.PRODUCTION_BASE


# --- Debian's Chromium for the browser tests (the MLflow UI walk, the pages' widths) --------------------
# Installed when missing (apt-get, as root), as the Docker engine is; where it cannot be, the browser
# tests are skipped and the summary says so in one line.

@pytest.fixture(scope="session")
def chromium(request):
    from chi_helpers.ui_walk import browser

    try:
        binary = browser.install()
        with browser.chromium(binary):
            pass  # it starts
    except browser.BrowserError as failed:
        request.config.browser_tests_note = f"browser tests: not run, {str(failed).splitlines()[0]}"
        pytest.skip(str(failed))
    request.config.browser_tests_note = f"browser tests: ran in {browser.version(binary)}"
    return binary


def pytest_terminal_summary(terminalreporter, config):
    """One line each on the container and browser tests, ran or not: a machine without an engine or a
    browser never passes them silently."""
    for note in (getattr(config, "container_tests_note", None), getattr(config, "browser_tests_note", None),
                 getattr(config, "page_checks_note", None), getattr(config, "hub_tests_note", None)):
        if note:
            terminalreporter.write_line(note)
