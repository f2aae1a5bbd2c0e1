"""A kernel like the one Chameleon's JupyterHub gives, in a fresh copy, for the notebooks' setup cells.

The stand-in kernel's Python has only what the hub has (tests/hub_standin.py: Jupyter's kernel,
ipywidgets, python-chi with Chameleon's Blazar client): not this project, not MLflow, not PyTorch. It is
registered as its own Jupyter kernel, and notebooks run in it from a copy of the repository's files, as
Trovi's launch makes one: the local edition's hub-side notebooks, whose setup cell must make the helpers
importable and install what the local target needs; and a chameleon one, which without credentials stops
at its sign-in cell with what to set. (The chameleon notebooks in a session as the hub runs it, within
its limits, against the twin: test_hub_session.py.)

Each session works on a copy of the hub's base environment, so the notebooks' own installs are
exercised every time. Every install comes from the wheels `make install` keeps in .venv/wheelhouse,
never from a package index, and the kernels run behind the network guard: a test sends nothing beyond
this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

import hub_standin
from chi_helpers import network_guard as guard
from chi_helpers.kernel_setup import NEEDS, PROVIDERS
from chi_helpers.local import processes
from chi_helpers.series import LOCAL_BUILD, notebooks_for

HUB_PACKAGES = hub_standin.HUB_PACKAGES
KERNEL = "hub-standin"
REQUIREMENTS = Path(__file__).with_name("hub-kernel.txt")
WHEELHOUSE = hub_standin.WHEELHOUSE
QUIET = "chi_helpers.series.quiet_kernel.QuietKernelManager"
LOCAL_TESTBED = [entry for entry in notebooks_for("local") if entry.side == "testbed"]


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """(python, JUPYTER_PATH entry) of a fresh stand-in kernel, registered under the name KERNEL."""
    root = tmp_path_factory.mktemp("hub")
    venv = root / "venv"
    try:
        shutil.copytree(hub_standin.base_environment(), venv, symlinks=True)
    except hub_standin.Unavailable as why:
        pytest.fail(str(why))
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "ipykernel", "install", "--prefix", str(root / "jupyter"), "--name", KERNEL],
                   check=True, capture_output=True)
    return python, root / "jupyter" / "share" / "jupyter"


@pytest.fixture(scope="session")
def fresh_copy(tmp_path_factory) -> Path:
    """The repository's files (tracked and new, not ignored) in a folder of their own, as Trovi checks out."""
    return hub_standin.fresh_copy(tmp_path_factory.mktemp("trovi") / "series")


@pytest.fixture
def hub_env(hub, monkeypatch):
    """This process's environment as the hub's would be: no venv of ours, no series settings."""
    _, jupyter_path = hub
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    ours = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != ours))
    for key in list(os.environ):
        if key.startswith(("OS_", "MLFLOW_", "FOOD11_")) or key in ("PYTHONPATH", "VIRTUAL_ENV", "JPY_SESSION_NAME"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # The setup cells' pip takes the wheels on this disk; every kernel (and what it starts) is guarded.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(WHEELHOUSE))
    guarded = guard.environment({})
    for key in ("PYTHONPATH", guard.VARIABLE):
        monkeypatch.setenv(key, guarded[key])


def run(copy: Path, folder: str, notebook: str, out: Path, parameters: dict):
    source = copy / folder / notebook
    return pm.execute_notebook(str(source), str(out), parameters=parameters, cwd=str(source.parent),
                               kernel_name=KERNEL, progress_bar=False, kernel_manager_class=QUIET)


def test_the_wheelhouse_holds_what_the_hub_kernel_and_its_setup_cells_install():
    listed = {line.strip() for line in REQUIREMENTS.read_text().splitlines() if line.strip() and line[0] != "#"}
    setup_installs = {PROVIDERS[name] for (side, _), names in NEEDS.items() if side == "testbed" for name in names}
    assert set(HUB_PACKAGES) | setup_installs <= listed


def test_the_stand_in_kernel_has_only_what_the_hub_has(hub):
    python, _ = hub
    probe = ("import importlib.util as u, json; print(json.dumps({n: u.find_spec(n) is not None for n in "
             "['chi', 'blazarclient', 'ipykernel', 'ipywidgets', 'chi_helpers', 'mlflow', 'torch']}))")
    found = json.loads(subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True,
                                      cwd="/", env={"PATH": "/usr/bin:/bin"}).stdout)
    assert found == {"chi": True, "blazarclient": True, "ipykernel": True, "ipywidgets": True,
                     "chi_helpers": False, "mlflow": False, "torch": False}  # (Pillow comes with python-chi)


def test_the_local_editions_hub_side_notebooks_run_from_a_fresh_copy(hub, hub_env, fresh_copy, tmp_path, capfd):
    workdir = tmp_path / "local-target"
    port = processes.free_port()
    given = {"mlflow_port": port, "local_workdir": str(workdir), "data_dir": str(workdir / "Food-11")}
    folder = f"notebooks/{LOCAL_BUILD}"
    try:
        for entry in LOCAL_TESTBED:
            declared = pm.inspect_notebook(str(fresh_copy / folder / entry.name))
            run(fresh_copy, folder, entry.name, tmp_path / entry.name, {k: v for k, v in given.items() if k in declared})
    finally:
        subprocess.run([str(hub[0]), "-m", "chi_helpers", "stack", "down", "--state-dir", str(workdir / "stack")],
                       cwd=fresh_copy, capture_output=True)
    setup = [c for c in nbformat.read(tmp_path / LOCAL_TESTBED[0].name, 4).cells if "setup" in c.metadata.get("tags", [])]
    said = "".join(o.get("text", "") for o in setup[0].outputs)
    assert f"series at {fresh_copy}" in said  # the copy's helpers, not this checkout's
    # The data set and the stack were made by the notebooks, in the kernel's own environment.
    assert (workdir / "Food-11" / "training").is_dir()
    assert "without encryption" not in capfd.readouterr().err


def test_a_second_setup_installs_nothing(hub, hub_env, fresh_copy, tmp_path):
    said = []
    for attempt in ("first", "second"):
        run(fresh_copy, f"notebooks/{LOCAL_BUILD}", "00_introduction.ipynb", tmp_path / f"{attempt}.ipynb", {})
        setup = next(c for c in nbformat.read(tmp_path / f"{attempt}.ipynb", 4).cells
                     if "setup" in c.metadata.get("tags", []))
        said.append("".join(o.get("text", "") for o in setup.outputs))
    assert "nothing to install" in said[1] and "installing" not in said[1]


def failing_cell(path: Path):
    return next(c for c in nbformat.read(path, 4).cells
                if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs))


def test_a_chameleon_notebook_without_credentials_says_what_to_set(hub, hub_env, fresh_copy, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as error:
        run(fresh_copy, "notebooks/nvidia", "01_reserve.ipynb", tmp_path / "out.ipynb", {"user": "student1"})
    assert error.value.ename == "LoginError"
    assert "no Chameleon credentials" in error.value.evalue and "--rc-file" in error.value.evalue
    assert "login.use_project(" in failing_cell(tmp_path / "out.ipynb").source  # the sign-in cell
