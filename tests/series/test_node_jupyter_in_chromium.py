"""The node's Jupyter as a student's browser meets it: at the node's public address, through the URL notebook 04
prints, with Jupyter's own host, origin and XSRF checks.

The node runs `quay.io/jupyter/pytorch-notebook`'s own command: JupyterLab, user jovyan, started in
/home/jovyan with the series checked out at work/, and the image's server config
(docker-stacks `images/base-notebook/jupyter_server_config.py`: `ip = ""`, `open_browser = False`).
Here the same JupyterLab runs with that config and that layout, but listens on 127.0.0.1 rather than
every interface; `allow_remote_access` is what `ip = ""` implies there (jupyter_server `serverapp.py`
`_default_allow_remote`), so the server judges Host and Origin as the node's does. Chromium opens
`http://node.test:<port>/...` (a name mapped onto the loopback listener inside the browser): the token in
the URL signs it in, the notebook opens, its kernel starts over a websocket from that origin, and a cell
runs and prints the container's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chi_helpers.chameleon import node_stack
from chi_helpers.local import processes
from chi_helpers.series import REPO_ROOT
from chi_helpers.ui_walk import browser

NODE = "node.test"
VARIANT = "nvidia"
NOTEBOOK = "05_track_pytorch.ipynb"
# The image's /etc/jupyter/jupyter_server_config.py, but for where it listens (see above) and who runs it.
IMAGE_CONFIG = """import os
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.allow_remote_access = True  # what ip = "" gives the image's server
c.ServerApp.open_browser = False
c.FileContentsManager.delete_to_trash = False
c.ServerApp.allow_root = os.geteuid() == 0  # the image's server runs as jovyan; a test may run as root
"""


@pytest.fixture
def node_jupyter(tmp_path):
    """JupyterLab as the node's container runs it; yields (its `jupyter server list --json`, its log)."""
    home = tmp_path / "home" / "jovyan"
    notebooks = home / "work" / "workspace_mlflow" / VARIANT
    notebooks.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "workspace_mlflow" / VARIANT / NOTEBOOK, notebooks / NOTEBOOK)
    shutil.copytree(REPO_ROOT / "docs" / "screens", home / "work" / "docs" / "screens")  # its figures
    config = tmp_path / "etc-jupyter"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(IMAGE_CONFIG)
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_PORT": str(processes.free_port()),
           # What notebook 04's `docker run` gives the container (the sign-in aside).
           "MLFLOW_TRACKING_URI": f"http://{NODE}:8000/", "FOOD11_DATA_DIR": "/mnt/Food-11"}
    log = tmp_path / "jupyter.log"
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab"], cwd=home, env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT)
    try:
        listing, deadline = "", time.monotonic() + 90
        while not node_stack.jupyter_url(listing, NODE, VARIANT):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
            # What notebook 04 runs on the node (`docker exec jupyter jupyter server list --json`); inside the
            # container this folder is /home/jovyan.
            listing = subprocess.run([sys.executable, "-m", "jupyter_server", "list", "--json"], env=env, cwd=home,
                                     capture_output=True, text=True, timeout=60).stdout.replace(str(home), "/home/jovyan")
        yield listing, log
    finally:
        processes.stop_tree(server.pid)


def test_the_address_04_prints_opens_notebook_05_and_runs_a_cell(chromium, node_jupyter):
    listing, log = node_jupyter
    url = node_stack.jupyter_url(listing, NODE, VARIANT)
    assert url.startswith(f"http://{NODE}:") and f"/lab/tree/work/workspace_mlflow/{VARIANT}/{NOTEBOOK}?token=" in url
    port = json.loads(listing.splitlines()[0])["port"]
    with browser.chromium(chromium, hosts={NODE: "127.0.0.1"}) as opened:
        refused: list[str] = []
        context = browser.guarded_context(opened, refused, viewport={"width": 1366, "height": 900})
        context.set_default_timeout(60_000)  # JupyterLab's first load on two busy cores
        page = context.new_page()
        page.goto(url)
        page.locator(".jp-NotebookPanel").first.wait_for()
        # The kernel takes no request before it has started (jupyterlab#15420): wait until the status bar says
        # it is idle (it reads "Initializing" first, while the websocket from this origin is being set up).
        page.locator("#jp-main-statusbar").filter(has_text="Idle").wait_for()
        cells = page.locator(".jp-CodeCell")
        # The parameters cell, then the cell that shows the container's settings, as a student runs them.
        for cell in (cells.filter(has_text="expected_gpus = ").first, cells.filter(has_text="MLFLOW_TRACKING_URI").first):
            cell.locator(".cm-content").click()
            page.keyboard.press("Shift+Enter")
        printing = cells.filter(has_text="MLFLOW_TRACKING_URI").first
        output = printing.locator(".jp-OutputArea-output").first
        output.wait_for()
        assert f"http://{NODE}:8000/" in output.inner_text()
        assert refused == [], refused
        cookies = {cookie["name"] for cookie in context.cookies(f"http://{NODE}:{port}/")}
    assert "_xsrf" in cookies  # Jupyter's XSRF cookie, set for the node's address
    said = log.read_text()
    assert "Blocking request" not in said and "403" not in said, said[-3000:]
