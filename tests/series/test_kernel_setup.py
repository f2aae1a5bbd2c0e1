"""The setup cell's work: this copy's helpers importable, and only what the kernel lacks installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chi_helpers import kernel_setup

REPO = Path(__file__).resolve().parents[2]


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[=<>\[]", line, maxsplit=1)[0]
            # Extras left out: the kernels need the client (MLflow's `auth` extra is for the server).
            pins[name.lower()] = re.sub(r"\[[\w,]+\]", "", line)
    return pins


def test_what_the_setup_cell_installs_agrees_with_requirements_txt():
    pins = requirement_pins()
    for requirement in kernel_setup.PROVIDERS.values():
        name = re.split(r"[=<>]", requirement, maxsplit=1)[0].lower()
        assert name in pins, f"{requirement} is not in requirements.txt"
        if "==" in requirement or "==" in pins[name]:
            assert pins[name] == requirement, (pins[name], requirement)


def test_every_needed_name_has_a_provider():
    for needs in kernel_setup.NEEDS.values():
        assert set(needs) <= set(kernel_setup.PROVIDERS)
    # On the JupyterHub with the chameleon target, python-chi with the client it is written for.
    assert kernel_setup.NEEDS[("testbed", "chameleon")] == ["chi", "blazarclient"]
    assert kernel_setup.PROVIDERS["blazarclient"].startswith("chameleon-blazarclient==")


def test_missing_looks_without_importing():
    # In a fresh interpreter: python-chi reads its settings when first imported, so looking must not import it.
    code = ("import sys; from chi_helpers import kernel_setup; "
            "print(kernel_setup.missing(['chi', 'json', 'no_such_module_here']), 'chi.context' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "['no_such_module_here'] False"


def test_prepare_with_everything_present_installs_nothing_and_sets_the_paths(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "")
    said = []
    assert kernel_setup.prepare("local", side="testbed", say=said.append) == []
    assert "nothing to install" in said[-1]
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(kernel_setup.SERIES_ROOT)
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # A second run changes nothing (no growing PATH).
    kernel_setup.prepare("local", side="testbed", say=said.append)
    assert os.environ["PATH"].split(os.pathsep).count(str(Path(sys.executable).parent)) == 1


def test_an_unknown_target_installs_nothing(monkeypatch):
    monkeypatch.setattr(kernel_setup, "install", lambda *a, **k: pytest.fail("installed for an unknown target"))
    assert kernel_setup.prepare("cloud", say=lambda _: None) == []


def test_a_failing_install_says_what_pip_said(tmp_path):
    # A real pip run in a scratch virtual environment, asked for a package no index has.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from chi_helpers import kernel_setup\n"
            "try:\n    kernel_setup.install(['no-such-package-chi-series==0.0.1'])\n"
            "except kernel_setup.SetupError as e:\n    print('SETUP-ERROR', e)\n") % str(REPO)
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120)
    assert "SETUP-ERROR pip could not install no-such-package-chi-series==0.0.1" in done.stdout


@pytest.mark.parametrize("absent", [["torch"], ["torchvision"], ["torch", "torchvision"]])
def test_the_node_setup_cell_never_installs_pypis_torch_over_a_vendor_build(monkeypatch, absent):
    """On the node, PyTorch comes with the Jupyter image, built for its GPUs (ROCm's is not PyPI's): a kernel
    without it is the wrong kernel, and the cell says so instead of installing PyPI's build."""
    for name in absent:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec then finds nothing, as in a kernel without it
    installed = []
    monkeypatch.setattr(kernel_setup, "install", lambda requirements, say=print: installed.append(requirements))
    with pytest.raises(kernel_setup.SetupError, match="jupyter-mlflow container"):
        kernel_setup.prepare("chameleon", side="node", say=lambda _: None)
    assert installed == []
    # The local target has no vendor build to protect: there the cell installs what is missing (and, the
    # install being a stand-in here, finds it still missing afterwards).
    with pytest.raises(kernel_setup.SetupError, match="still cannot be imported"):
        kernel_setup.prepare("local", side="node", say=lambda _: None)
    assert installed and all(r.startswith(tuple(absent)) for r in installed[0])


def test_a_notebook_started_elsewhere_runs_from_its_own_folder(tmp_path, monkeypatch):
    # papermill --cwd /elsewhere: the node-side cells name ../train.py, so the kernel moves to the notebook's folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "")
    said = []
    kernel_setup.prepare("local", side="node", folder="workspace_mlflow/amd", say=said.append)
    assert Path.cwd() == REPO / "workspace_mlflow" / "amd" and (Path("..") / "train.py").is_file()
    assert any("working folder:" in line for line in said)


def test_a_folder_that_has_the_scripts_is_left_alone(tmp_path, monkeypatch):
    # The local target's own copy of the scripts (a git repository of its own) is where they run.
    (tmp_path / "train.py").write_text("")
    (tmp_path / "local").mkdir()
    monkeypatch.chdir(tmp_path / "local")
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTHONPATH", "")
    kernel_setup.prepare("local", side="node", folder="workspace_mlflow/local", say=lambda _: None)
    assert Path.cwd() == tmp_path / "local"
