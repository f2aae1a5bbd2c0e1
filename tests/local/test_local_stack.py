"""`stack up|status|down`: a real MLflow server process, reused, refused, and stopped with all its children."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from chi_helpers.local import stack as local_stack
from chi_helpers.local import processes


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_up_again_reuses_the_running_server(mlflow_server):
    state_dir = os.path.dirname(mlflow_server.log)
    again = local_stack.up(state_dir, port=mlflow_server.port)
    assert again.pid == mlflow_server.pid and again.url == mlflow_server.url


def test_status_reports_address_log_and_health(mlflow_server):
    state = local_stack.status(os.path.dirname(mlflow_server.log))
    assert state["running"] and state["healthy"]
    assert state["url"] == mlflow_server.url
    assert state["backend_store_uri"].startswith("sqlite:///") and state["log"].endswith("mlflow-server.log")


def test_status_and_down_with_nothing_recorded(tmp_path):
    assert local_stack.status(tmp_path)["running"] is False
    assert local_stack.down(tmp_path) is False


def test_a_taken_port_is_refused_with_a_clear_message(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(local_stack.StackError) as error:
            local_stack.up(tmp_path, port=port)
    assert f"Port {port} on 127.0.0.1 is already in use" in str(error.value)
    assert f"--port {port + 1}" in str(error.value)
    assert local_stack.read_state(tmp_path) is None


def test_a_server_that_cannot_start_shows_its_log(tmp_path):
    with pytest.raises(local_stack.StackError) as error:
        local_stack.up(tmp_path, port=processes.free_port(), backend_store_uri="nosuchdb://nowhere", timeout=60)
    message = str(error.value)
    assert "did not come up" in message and "exited with status" in message
    assert "Last lines of" in message and "nosuchdb" in message  # the server's own complaint
    assert local_stack.read_state(tmp_path) is None


def test_a_server_that_never_answers_is_given_up_on_and_stopped(tmp_path, monkeypatch):
    # A process that listens on nothing: /health never answers, so `up` times out and cleans up.
    monkeypatch.setattr(local_stack, "server_command", lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(local_stack.StackError, match="no answer from .* after 2 s"):
        local_stack.up(tmp_path, port=processes.free_port(), timeout=2)
    assert local_stack.read_state(tmp_path) is None
    sleepers = [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(600)" in " ".join(p.info["cmdline"] or [])]
    assert alive(sleepers) == []


@pytest.fixture
def own_stack(tmp_path):
    """A server of this test's own, with MLflow's job runner on so it starts its child processes too."""
    stack = local_stack.up(tmp_path, port=processes.free_port(), env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})
    yield tmp_path, stack
    local_stack.down(tmp_path)


def test_down_stops_the_server_and_every_child(own_stack):
    state_dir, stack = own_stack
    tree = processes.process_tree(stack.pid)
    assert len(tree) >= 2, "MLflow 3 runs its app in child processes"
    assert local_stack.down(state_dir) is True
    assert alive(tree) == []
    assert not processes.http_ok(stack.health_url)
    assert (state_dir / "mlflow.db").exists(), "down keeps the data"


def test_down_finds_children_whose_parent_already_died(own_stack):
    state_dir, stack = own_stack
    tree = processes.process_tree(stack.pid)
    os.kill(stack.pid, signal.SIGKILL)  # the parent dies; its children live on, re-parented
    try:
        psutil.Process(stack.pid).wait(timeout=10)
    except psutil.NoSuchProcess:
        pass
    assert alive(tree), "children outlive a killed parent"
    local_stack.down(state_dir)
    assert alive(tree) == []


def test_up_after_the_server_died_starts_a_new_one(own_stack):
    state_dir, stack = own_stack
    processes.stop_tree(stack.pid)
    assert local_stack.status(state_dir)["healthy"] is False
    fresh = local_stack.up(state_dir, port=stack.port)
    assert fresh.pid != stack.pid and processes.http_ok(fresh.health_url)


def test_cli_up_status_down(tmp_path):
    port = str(processes.free_port())

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "chi_helpers", "stack", *args, "--state-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=180)

    up = cli("up", "--port", port)
    assert up.returncode == 0, up.stderr
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in up.stdout
    status = cli("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["healthy"] is True
    assert cli("down").returncode == 0
    stopped = cli("status")
    assert stopped.returncode == 3 and "no MLflow server running" in stopped.stdout
