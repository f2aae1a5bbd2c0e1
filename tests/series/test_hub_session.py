"""A student's session on Chameleon's JupyterHub, as the hub runs it, against the twin: notebooks 00-04 and 08.

The kernel is the hub's (its Python has python-chi, not this project: tests/hub_standin.py), inside the
hub's limits: a 512 MB work volume holding Trovi's copy of the series and the key pair, 1 GiB of
memory, 0.49 CPU. Its environment is what the hub gives a server (twin/jupyterhub.py): CHI@UC's
Keystone, the first of the student's projects, an access-token sign-in. Its clock is the twin's, which
the test moves on: three hours of a session pass in a few minutes, with the hub renewing the student's
sign-in hourly as it does, which drops the expiry python-chi reads.

The session: 00 and 01 at the start, 01 left open; 02-04; an hour on the node; 01's last cell again
(Keystone's token has run out: python-chi signs in anew with the renewed state); another hour, and the
same cell again (where python-chi 1.2.10 alone fails); near the lease's end, 08 on a full hub (refused,
with the sizes and the ways that fit, nothing copied), then on a hub with room (archived, released).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from nbclient import NotebookClient
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

import hub_standin
from chi_helpers import network_guard as guard
from chi_helpers.series.quiet_kernel import QuietKernelManager
from chi_helpers.twin import control, keystone
from chi_helpers.twin import node_commands

KERNEL = "hub-limited"
QUIET = "chi_helpers.series.quiet_kernel.QuietKernelManager"
VARIANT = "amd"  # gpu_mi100 and ROCm: the variant whose provisioning no other test runs (tests/twin/test_chameleon_series.py)
NODE = "P3-GPU-010"
USER = "student1"
SAMPLE = {split: n * 11 for split, n in node_commands.SAMPLE_PER_CLASS.items()}  # the twin's small Food-11


class Hub:
    """The hub of one session: the twin, the limits, the kernel's Python, the student's copy."""

    def __init__(self, folder: Path):
        self.limits = hub_standin.HubLimits.make(folder / "limits")
        try:
            self.venv = folder / "venv"  # the hub image's Python: outside the work volume
            shutil.copytree(hub_standin.base_environment(), self.venv, symlinks=True)
            self.twin = control.start(folder / "twin", speed=600, end_speed=1, nodes=True)
        except BaseException:
            self.limits.remove()
            raise
        keystone.set_lifetimes(self.twin.world, keystone_token=3600)  # Keystone's default: an hour
        self.copy = hub_standin.fresh_copy(self.limits.work / "mlflow-chi")
        keys = self.limits.work / ".ssh"
        keys.mkdir()
        for name in ("id_rsa", "id_rsa.pub"):
            shutil.copy2(self.twin.world.state_dir / "keys" / name, keys / name)
        self.environment = self.twin.hub_sign_in(keys_folder=keys)
        self.jupyter = folder / "jupyter"
        hub_standin.install_kernel(self.venv / "bin" / "python", self.jupyter, KERNEL, self.limits,
                                   self.twin.world.clock.offset_file)
        self.folder = self.copy / "notebooks" / VARIANT

    def close(self) -> None:
        try:
            self.twin.stop()
        finally:
            self.limits.remove()

    @contextmanager
    def session(self):
        """This process's environment as the hub's server has it, while a notebook runs."""
        saved = dict(os.environ)
        ours = str(Path(sys.executable).parent)
        for key in list(os.environ):
            if key.startswith(("OS_", "MLFLOW_", "FOOD11_", "JUPYTERHUB_", "CHI_")) or key in ("PYTHONPATH", "VIRTUAL_ENV"):
                del os.environ[key]
        os.environ.update(self.environment)
        os.environ["PATH"] = os.pathsep.join(p for p in saved["PATH"].split(os.pathsep) if p != ours)
        os.environ["JUPYTER_PATH"] = str(self.jupyter)
        os.environ.update({k: v for k, v in guard.environment({}).items() if k in ("PYTHONPATH", guard.VARIABLE)})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def run(self, notebook: str, out: Path, **parameters):
        with self.session():
            return pm.execute_notebook(str(self.folder / notebook), str(out), parameters=parameters,
                                       cwd=str(self.folder), kernel_name=KERNEL, progress_bar=False,
                                       kernel_manager_class=QUIET)

    def lease(self) -> dict:
        leases = [lease for lease in self.twin.world.data["leases"].values() if lease["name"] == f"mlflow_{USER}"]
        assert len(leases) == 1, leases
        return leases[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, request):
    try:
        made = Hub(tmp_path_factory.mktemp("hub"))
    except hub_standin.Unavailable as why:
        request.config.hub_tests_note = f"hub session tests: not run, {why}"
        pytest.skip(str(why))
    request.config.hub_tests_note = ("hub session tests: ran in the hub's limits (512 MB volume, 1 GiB memory, "
                                     "0.49 CPU)")
    yield made
    request.config.hub_tests_note += f"; the kernels' peak memory {made.limits.peak_memory() / 2**20:.0f} MiB of 1024"
    made.close()


class KeptOpen:
    """A notebook run in a kernel that stays open, as a tab the student leaves open: its cells can be run
    again later, in the same kernel."""

    def __init__(self, hub: Hub, notebook: str, **parameters):
        self.hub = hub
        self.nb = parameterize_notebook(load_notebook_node(str(hub.folder / notebook)), parameters)
        self.client = NotebookClient(self.nb, kernel_name=KERNEL, timeout=900, kernel_manager_class=QuietKernelManager,
                                     resources={"metadata": {"path": str(hub.folder)}})

    def __enter__(self):
        self.context = self.hub.session()
        self.context.__enter__()
        self.kernel = self.client.setup_kernel()
        self.kernel.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self.kernel.__exit__(*exc)
        finally:
            self.context.__exit__(*exc)

    def run_all(self) -> None:
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == "code":
                self.run(index)

    def run(self, index: int) -> str:
        """Run cell `index` (again); what it printed. A failing cell raises nbclient's CellExecutionError."""
        cell = self.nb.cells[index]
        cell.outputs = []
        self.client.execute_cell(cell, index)
        return "".join(o.get("text", "") for o in cell.outputs)

    def last_code_cell(self) -> int:
        return max(i for i, cell in enumerate(self.nb.cells) if cell.cell_type == "code")


def said(path: Path) -> str:
    return "".join(o.get("text", "") for c in nbformat.read(path, 4).cells if c.cell_type == "code" for o in c.outputs)


def test_a_three_hour_session_runs_in_the_hubs_limits(hub, tmp_path):
    # Whatever the hour it is, the session starts at five past one: 01's block "from the next full hour"
    # is then most of an hour away, never a few seconds (the twin's speed starts it at once all the same).
    now = hub.twin.world.now()
    hub.twin.pass_time((((5 - now.minute) % 60) * 60 - now.second) % 3600, browser_every=None)
    hub.run("00_introduction.ipynb", tmp_path / "00.ipynb")
    with KeptOpen(hub, "01_reserve.ipynb", user=USER, node_name=NODE) as reserve:
        reserve.run_all()
        opened = datetime.now(timezone.utc)
        lease = hub.lease()
        # The hub named CHI@UC; the notebooks work at the variant's site, and say who pays.
        first = "".join(o.get("text", "") for c in reserve.nb.cells if c.cell_type == "code" for o in c.outputs)
        assert "Now using CHI@TACC" in first and "project CHI-000000 pays" in first and "your only project" in first
        deadline = time.monotonic() + 60
        while hub.lease()["status"] != "ACTIVE":  # the twin starts leases 600 times sooner than their dates
            assert time.monotonic() < deadline, hub.lease()
            reserve.run(reserve.last_code_cell())  # "Rerun the cell below to see where it stands"
            time.sleep(2)
        hub.run("02_server.ipynb", tmp_path / "02.ipynb", user=USER)
        hub.run("03_data.ipynb", tmp_path / "03.ipynb", user=USER, expected_photos=SAMPLE)
        hub.run("04_stack.ipynb", tmp_path / "04.ipynb", user=USER, image_wait_minutes=2)
        assert "open notebook 05: http://" in said(tmp_path / "04.ipynb")

        # An hour on the node: the hub renews the student's sign-in (no expiry in its answer any more),
        # and the kernel's Keystone token has run out. 01's last cell, again: a new sign-in, on the renewed state.
        hub.twin.pass_time(65 * 60)
        assert "expires_at" not in hub.twin.world.data["hub_users"][hub.environment["JUPYTERHUB_USER"]]["auth_state"]
        status = reserve.run(reserve.last_code_cell())
        assert "ACTIVE" in status and "reads the expiry from the token" in status
        # Another hour: python-chi alone would fail here (None - time.time()); the series' sign-in mended it.
        hub.twin.pass_time(65 * 60)
        assert "ACTIVE" in reserve.run(reserve.last_code_cell())

    # Near the lease's end (whatever the hour it started), the release notebook, first on a full hub.
    end = datetime.fromisoformat(str(lease["end_date"]).replace(" ", "T")).replace(tzinfo=timezone.utc)
    hub.twin.pass_time(max(0.0, (end - hub.twin.world.now() - timedelta(minutes=20)).total_seconds()))
    archives = hub.folder / "archives"
    filler = hub.limits.work / "filler"
    with open(filler, "wb") as fill:
        os.posix_fallocate(fill.fileno(), 0, hub.limits.free_bytes() - 20 * 10**6)
    with pytest.raises(pm.PapermillExecutionError) as refused:
        hub.run("08_release.ipynb", tmp_path / "08-full.ipynb", user=USER, delete_everything=True)
    message = refused.value.evalue
    assert refused.value.ename == "NoRoom" and "does not fit" in message and "MB free" in message
    assert "runs_only = True" in message and "(fits)" not in message  # 20 MB free: not even that fits
    assert "Download" in message and "Nothing was copied" in message
    assert not archives.exists() or not any(archives.iterdir())  # no archive, no part of one
    [node] = hub.twin.nodes.nodes.values()
    assert list(node.path("~/mlflow-chi").glob("mlflow-history-*.tar")), "not linked where the node's Jupyter shows it"
    assert [lease["name"] for lease in control.summary(hub.twin.world)["leases"]] == [f"mlflow_{USER}"]  # nothing released

    # A copy that runs out of room on the way (the volume filled after the check): nothing half-written is left.
    from fabric import Connection

    from chi_helpers.chameleon import hub_storage

    node.path("~/mlflow-archives/mlflow-history-big.tar").write_bytes(os.urandom(30 * 10**6))
    with Connection(node.address, user="cc", connect_kwargs={"key_filename": hub.environment["OS_KEYPAIR_PRIVATE_KEY"]}) \
            as connection, pytest.raises(OSError, match="No space left"):
        hub_storage.copy_to_hub(connection, "mlflow-history-big.tar", archives, runs_only=True, spare=-10**8)
    assert not list(archives.glob("*"))

    filler.unlink()
    hub.run("08_release.ipynb", tmp_path / "08.ipynb", user=USER, delete_everything=True)
    kept = sorted(archives.glob("mlflow-history-*.tar"))
    assert len(kept) == 1 and not list(archives.glob("*.part")), list(archives.iterdir())
    assert control.summary(hub.twin.world) == {"leases": [], "servers": [], "floating_ips": []}
    assert hub.twin.world.now() - opened >= timedelta(hours=2, minutes=10)
    assert 0 < hub.limits.peak_memory() < hub_standin.MEMORY_BYTES
