"""The chameleon target's runner: waiting for the lease, node-side notebooks over SSH, the report."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from unittest import mock

import nbformat
import pytest
from invoke.exceptions import UnexpectedExit
from invoke.runners import Result

from chi_helpers.chameleon import run as chameleon_run
from chi_helpers.chameleon import reservation
from chi_helpers.series import run as series_run
from chi_helpers.progress import Clock
from chi_helpers.series import NOTEBOOKS
from chi_helpers.variants import VARIANTS


def fake_lease(status: str):
    lease = mock.Mock(status=status, start_date="2026-11-24 15:00", end_date="2026-11-24 17:50")
    lease.name = "mlflow_abc123"
    return lease


def test_waits_with_a_line_per_poll_until_active(capsys):
    statuses = iter(["PENDING", "PENDING", "ACTIVE"])
    sleeps = []
    with mock.patch.object(reservation, "existing_lease", side_effect=lambda name: fake_lease(next(statuses))):
        lease = chameleon_run.wait_for_active("mlflow_abc123", timeout=3600, poll=60, sleep=sleeps.append)
    assert lease.status == "ACTIVE" and sleeps == [60, 60]
    out = capsys.readouterr().out
    assert out.count("is PENDING: it starts at 2026-11-24 15:00 UTC") == 2 and "ACTIVE until" in out


def test_gives_up_after_the_timeout_saying_what_to_do():
    with mock.patch.object(reservation, "existing_lease", return_value=fake_lease("PENDING")):
        with pytest.raises(reservation.ReservationError, match="still PENDING after 0 min.*safe to repeat"):
            chameleon_run.wait_for_active("mlflow_abc123", timeout=0, sleep=lambda s: None)


@pytest.mark.parametrize("found,message", [(None, "no lease named"), ("ERROR", "is in ERROR")])
def test_missing_or_failed_leases_stop_the_wait(found, message):
    with mock.patch.object(reservation, "existing_lease", return_value=found and fake_lease(found)):
        with pytest.raises(reservation.ReservationError, match=message):
            chameleon_run.wait_for_active("mlflow_abc123", timeout=3600, sleep=lambda s: None)


def executed_notebook(path: Path, error: bool) -> None:
    nb = nbformat.v4.new_notebook()
    ok = nbformat.v4.new_code_cell("print(1)", execution_count=1, outputs=[nbformat.v4.new_output("stream", text="1\n")])
    nb.cells.append(ok)
    if error:
        nb.cells.append(nbformat.v4.new_code_cell("boom()", execution_count=2, outputs=[
            nbformat.v4.new_output("error", ename="NameError", evalue="name 'boom' is not defined", traceback=[])]))
    nbformat.write(nb, path)


class FakeNode:
    """A node whose container 'runs' papermill by leaving an executed notebook to fetch."""

    def __init__(self, tmp_path: Path, fail: bool = False):
        self.commands, self.fetched, self.fail, self.tmp = [], [], fail, tmp_path

    def execute(self, command):
        self.commands.append(command)
        if self.fail:
            raise UnexpectedExit(Result(stdout="...\nPapermillExecutionError\n", stderr="", exited=1, command=command))

    def get_floating_ip(self):
        return "127.0.0.1"

    @contextlib.contextmanager
    def ssh_connection(self):
        def get(remote, local):
            self.fetched.append(remote)
            executed_notebook(Path(local), self.fail)
        yield mock.Mock(get=get)


def test_a_node_notebook_runs_in_the_container_and_comes_back(tmp_path):
    node = FakeNode(tmp_path)
    result = chameleon_run.run_node_notebook(node, "amd", "06_lightning.ipynb", tmp_path)
    assert node.commands == ["docker exec -w /home/jovyan/work/amd jupyter papermill 06_lightning.ipynb "
                             "executed/06_lightning.ipynb -p variant amd -p target chameleon"]
    assert node.fetched == ["mlflow-chi/workspace_mlflow/amd/executed/06_lightning.ipynb"]
    assert result.status == "passed" and (tmp_path / "06_lightning.ipynb").exists()


def test_a_failing_node_notebook_reports_its_cell(tmp_path):
    result = chameleon_run.run_node_notebook(FakeNode(tmp_path, fail=True), "nvidia", "07_registry.ipynb", tmp_path)
    assert result.status == "failed" and result.failing_cell == 2
    assert result.error == "NameError: name 'boom' is not defined"


def test_the_whole_run_in_order_with_one_report(tmp_path, mlflow_server):
    ran = []

    def testbed(entry, variant, out_dir, parameters):
        ran.append(("here", entry.name, parameters["target"], parameters["lease_name"]))
        return series_run.NotebookResult(entry.name, entry.side, status="passed", seconds=0.1)

    node = FakeNode(tmp_path)
    waited = []
    with mock.patch.object(chameleon_run, "run_notebook", side_effect=testbed), \
         mock.patch.object(chameleon_run, "wait_for_active", side_effect=lambda *a, **k: waited.append(len(ran))), \
         mock.patch.object(chameleon_run, "connect", return_value=node):
        report = chameleon_run.run_chameleon(VARIANTS["nvidia"], "mlflow_abc123", "liqid01", "CHI-1", "CHI@TACC",
                                             "abc123", output_dir=tmp_path / "out", mlflow_port=mlflow_server.port)
    assert report["passed"] and report["target"] == "chameleon"
    assert [n["name"] for n in report["notebooks"]] == [e.name for e in NOTEBOOKS]
    assert waited == [2]  # right after 01_reserve
    assert [r[1] for r in ran] == ["00_introduction.ipynb", "01_reserve.ipynb", "02_server.ipynb", "03_data.ipynb",
                                   "04_stack.ipynb", "08_release.ipynb"]
    assert all(r[2] == "chameleon" and r[3] == "mlflow_abc123" for r in ran)
    assert [c.split()[6] for c in node.commands] == ["05_track_pytorch.ipynb", "06_lightning.ipynb", "07_registry.ipynb"]
    assert report["mlflow_url"] == f"http://127.0.0.1:{mlflow_server.port}"
    assert (tmp_path / "out" / "report.md").exists()


def test_a_lease_that_never_starts_fails_the_run_there(tmp_path):
    with mock.patch.object(chameleon_run, "run_notebook",
                           side_effect=lambda e, *a: series_run.NotebookResult(e.name, e.side, status="passed")), \
         mock.patch.object(chameleon_run, "wait_for_active",
                           side_effect=reservation.ReservationError("lease mlflow_abc123 is still PENDING")):
        report = chameleon_run.run_chameleon(VARIANTS["nvidia"], "mlflow_abc123", "liqid01", "CHI-1", "CHI@TACC",
                                             "abc123", output_dir=tmp_path)
    statuses = [n["status"] for n in report["notebooks"]]
    assert statuses[:2] == ["passed", "failed"] and set(statuses[2:]) == {"not run"}
    assert "still PENDING" in report["notebooks"][1]["error"] and report["passed"] is False
