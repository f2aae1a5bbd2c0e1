"""`python -m chi_helpers run --target chameleon ...`: the series on a real node, headless.

The testbed-side notebooks run here with papermill (`target = "chameleon"`); between reserving and
launching, the run waits for the lease to turn ACTIVE. The node-side notebooks run with papermill
inside the node's Jupyter container, over SSH, and their executed copies come back into the same
report as the local target's. `--dry-run` (chameleon_plan) prints all of it instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat

from chi_helpers import network_guard
from chi_helpers.chameleon import floating_ip, login, openstack_rc
from chi_helpers.chameleon import server as node_server
from chi_helpers.chameleon import node_stack
from chi_helpers.chameleon import reservation
from chi_helpers.local.target import DEFAULT_WORKDIR
from chi_helpers.progress import Clock
from chi_helpers.series import notebooks_for
from chi_helpers.series.run import NotebookResult, finish, run_notebook, step
from chi_helpers.variants import Variant


def wait_for_active(lease_name: str, timeout: float, poll: float = 60, clock: Clock | None = None,
                    sleep=time.sleep):
    """The lease, once ACTIVE; a line per poll says when a PENDING one starts; ERROR raises."""
    clock = clock or Clock()
    deadline = clock.elapsed() + timeout
    while True:
        lease = reservation.existing_lease(lease_name)
        if lease is None:
            raise reservation.ReservationError(f"no lease named {lease_name}: run the reservation step first")
        if lease.status == "ACTIVE":
            clock.say(reservation.describe(lease))
            return lease
        clock.say(reservation.describe(lease))  # raises for ERROR
        if clock.elapsed() >= deadline:
            raise reservation.ReservationError(
                f"lease {lease_name} is still {lease.status} after {timeout / 60:.0f} min of waiting. Run the "
                "same command again once it has started: every step before this one is safe to repeat."
            )
        sleep(poll)


def notebook_failure(path: Path) -> tuple[int | None, str | None]:
    """The execution count and error of the first cell of an executed notebook that raised."""
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return cell.get("execution_count"), f"{output.get('ename')}: {output.get('evalue')}"
    return None, None


def run_node_notebook(node, variant: str, notebook: str, out_dir: Path) -> NotebookResult:
    """Run one node-side notebook in the node's Jupyter container and fetch its executed copy."""
    from invoke.exceptions import UnexpectedExit

    result = NotebookResult(notebook, "node", output=str(out_dir / notebook))
    start = time.monotonic()
    try:
        for command in node_stack.node_notebook_commands(variant, notebook):
            node.execute(command)
        result.status = "passed"
    except UnexpectedExit as failure:
        result.status = "failed"
        output = (failure.result.stdout or "") + (failure.result.stderr or "")
        result.error = "\n".join(output.strip().splitlines()[-5:]) or f"exit status {failure.result.exited}"
    except Exception as error:  # the connection, not the notebook: SSH dropped, the node unreachable
        result.status = "failed"
        result.error = (f"could not run {notebook} on the node over SSH ({type(error).__name__}: {error}). Check "
                        "that the server is ACTIVE and port 22 answers, then run the same command again.")
        result.seconds = time.monotonic() - start
        return result
    result.seconds = time.monotonic() - start
    try:
        with node.ssh_connection() as connection:
            connection.get(node_stack.executed_path(variant, notebook).replace("~/", ""), str(out_dir / notebook))
    except Exception as error:  # the notebook may not have been written at all
        result.output = None
        result.error = (result.error or "") + f"\n(could not fetch the executed notebook: {error})"
        return result
    if result.status == "failed":
        cell, error = notebook_failure(out_dir / notebook)
        result.failing_cell, result.error = cell, error or result.error
    return result


def allowed_networks(rc_file: str) -> str:
    """The networks this run may reach, where the credentials ask for a limit: the RC file's
    CHI_SERIES_ALLOWED_NETWORKS, or the environment's ("" on Chameleon: no limit)."""
    path = Path(rc_file).expanduser() if rc_file else None
    if path and path.is_file():
        found = openstack_rc.parse(path.read_text()).get(network_guard.VARIABLE)
        if found:
            return found
    return os.environ.get(network_guard.VARIABLE, "")


_STEP = {"01": "waiting for the lease", "04": "reaching the node's MLflow server", "07": "the registry check"}


def connect(user: str):
    """The series' server (already up after notebook 02), as a python-chi Server."""
    import chi.server
    from novaclient.exceptions import NotFound

    from chi.exception import ResourceError

    try:
        server = chi.server.get_server(node_server.server_name(user))  # raises for a missing server
    except NotFound:
        raise node_server.ServerError(f"there is no server {node_server.server_name(user)}: run the server "
                                      "notebook (02) again") from None
    except ResourceError as error:  # two servers of that name
        raise node_server.ServerError(f"{error}: delete the extra one (dashboard: Compute > Instances), "
                                      "then run this again") from None
    if server.get_floating_ip() is None:
        raise node_server.ServerError(f"{node_server.server_name(user)} is not up with a public address: "
                                      "run the server notebook (02) again")
    return server


def read_sign_in(node) -> dict[str, str]:
    """MLflow's sign-in from the node's env file, read with the output hidden: it goes into no log."""
    with node.ssh_connection() as connection:
        lines = connection.run(node_stack.sign_in_command(), hide=True, in_stream=False).stdout
    return {key: value for key, _, value in (line.partition("=") for line in lines.split())
            if key in node_stack.SIGN_IN_KEYS}


def run_chameleon(profile: Variant, lease_name: str, node_name: str | None, project: str, site: str, user: str,
                  rc_file: str = "", repo: str = "", ref: str = "main", output_dir: str | os.PathLike | None = None,
                  lease_timeout: float = 3600, mlflow_port: int = 8000, end_lease: bool = False,
                  lease_poll: float = 60, expected_photos: dict[str, int] | None = None,
                  restore_from: str | os.PathLike | None = None, until: str | None = None) -> dict:
    """Run the whole series on Chameleon, or up to the notebook numbered `until` (e.g. "04": a quicker
    rehearsal of the provisioning on a lease the series ran on); the report has the local target's shape."""
    from mlflow import MlflowClient

    clock = Clock()
    out_dir = Path(output_dir or DEFAULT_WORKDIR / "output" / f"chameleon-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Only what a notebook declares reaches it. The credentials are in this process's environment (signed in
    # below), which every kernel inherits. By default the run leaves lease, server and address for a
    # rerun; `release` ends them.
    parameters = {"variant": profile.name, "project": project, "site": site, "user": user, "lease_name": lease_name,
                  "node_name": node_name, "repo": repo, "ref": ref, "delete_everything": end_lease,
                  # 08's archive of the history lands with the report, not in the notebooks' folder.
                  "archive_folder": str(out_dir / "archives")}
    if restore_from:  # an earlier run's archive, which notebook 04 brings back into the new stack
        parameters["restore_from"] = str(Path(restore_from).resolve())
    if expected_photos:  # a smaller copy of Food-11 than the real one (a mirror, a rehearsal)
        parameters["expected_photos"] = dict(expected_photos)
    entries = notebooks_for("chameleon")
    if until:
        numbers = [entry.source[:2] for entry in entries]
        if until not in numbers:
            raise ValueError(f"--until {until!r}: name a notebook by its number, one of {', '.join(numbers)}")
        entries = entries[:numbers.index(until) + 1]
    results: list[NotebookResult] = []
    node = client = url = None
    networks = allowed_networks(rc_file)
    if networks:
        # The credentials limit where this run may go: here, and in every notebook kernel it starts.
        network_guard.install(networks)
        os.environ.update(network_guard.environment(networks=networks))
    # This process asks python-chi too (waiting for the lease, finding the node): it signs in as the
    # notebooks do, before its first call, and a failure is reported like a notebook's.
    try:
        clock.say("signing in to Chameleon ...")
        login.sign_in(rc_file, project, site, need_key_pair=True, say=clock.say)
    except login.LoginError as error:
        failed = NotebookResult("sign-in", "testbed", status="failed", error=f"LoginError: {error}")
        return finish(clock, "chameleon", profile.name, None, False, out_dir,
                      [failed, *[NotebookResult(e.name, e.side) for e in entries]], len(entries) + 1)
    for number, entry in enumerate(entries, 1):
        if results and results[-1].status != "passed":
            results.append(NotebookResult(entry.name, entry.side))
            continue
        if entry.side == "testbed":
            result = step(clock, number, len(entries), entry, client,
                          lambda: run_notebook(entry, profile.name, out_dir, parameters))
        else:
            result = step(clock, number, len(entries), entry, client,
                          lambda: run_node_notebook(node, profile.name, entry.name, out_dir))
        results.append(result)
        if result.status != "passed":
            continue
        try:
            if entry.source.startswith("01_"):
                wait_for_active(lease_name, lease_timeout, poll=lease_poll, clock=clock)
            elif entry.source.startswith("04_"):
                node = connect(user)
                url = f"http://{node.get_floating_ip()}:{mlflow_port}"
                os.environ.update(read_sign_in(node))
                client = MlflowClient(url)
            elif entry.source.startswith("07_"):
                client = None  # the release notebook deletes the server: nothing left to ask
                for key in node_stack.SIGN_IN_KEYS:
                    os.environ.pop(key, None)
        except (reservation.ReservationError, node_server.ServerError, floating_ip.FloatingIPError) as error:
            result.status, result.error = "failed", str(error)
        except Exception as error:  # Keystone, Blazar, Nova, SSH: say which step, and what to do
            result.status = "failed"
            result.error = (f"after {entry.name}, {_STEP.get(entry.source[:2], 'the next step')} failed: "
                            f"{type(error).__name__}: {error}. Run the same command again: every step is safe "
                            "to repeat, and the report shows where it stopped.")
    return finish(clock, "chameleon", profile.name, url, False, out_dir, results, len(entries))
