"""The interactive path, headless: with a user-and-password login and no project, notebook 01 shows
python-chi's project widget (a person is at the notebook), which lists the user's projects from
Keystone and picks the first; the lease is made in that project."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import papermill as pm

from chi_helpers.chameleon import openstack_rc
from chi_helpers.series import NOTEBOOKS, output_path
from chi_helpers import network_guard as guard


def test_the_project_widget_picks_from_keystone(twin, tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith(("OS_", "CHI_RESOURCE")):
            monkeypatch.delenv(key)
    for key, value in guard.environment({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JPY_SESSION_NAME", "01_reserve.ipynb")  # what Jupyter sets when a person opens it
    rc_file = Path(twin.rc_file).with_name("twin-password-openrc.sh")
    for key, value in openstack_rc.parse(rc_file.read_text()).items():  # the user's sign-in, in the kernel's environment
        monkeypatch.setenv(key, value)
    source = output_path(next(e for e in NOTEBOOKS if e.source.startswith("01_")), "nvidia")
    pm.execute_notebook(str(source), str(tmp_path / "out.ipynb"), cwd=str(source.parent), kernel_name="python3",
                        progress_bar=False, kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager",
                        parameters={"user": "ci05", "project": ""})
    cells = nbformat.read(tmp_path / "out.ipynb", 4).cells
    signed = next(c for c in cells if "login.use_project(" in c.source)
    shown = str(signed.outputs)
    assert "chosen with the widget below" in shown and "application/vnd.jupyter.widget-view+json" in shown
    [lease] = twin.world.data["leases"].values()
    project = next(p for p in twin.world.data["projects"].values() if p["name"] == "CHI-000000")
    assert lease["name"] == "mlflow_ci05" and lease["project_id"] == project["id"]
