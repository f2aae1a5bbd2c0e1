"""The chameleon target end to end against the twin: the README's commands, run as an instructor would
rehearse a term, through the real python-chi, keystoneauth, the OpenStack clients, Fabric and papermill.

`twin up` starts the twin as a background process; `run --target chameleon ... --rc-file` executes
all nine notebooks (01-04 and 08 here, 05-07 over SSH on the twin's node, at small training sizes)
and writes the report; 08 archives the history to the hub side (and, with `--end-lease`, gives it all
back); a second lease brings the history back in 04 (`--restore`) and 07 adds to it on the node, or a
second run on the same lease makes nothing new; `release` leaves nothing behind. Every process here,
and every notebook kernel, is guarded: nothing may leave 127.0.0.0/8. (amd's provisioning runs in the
hub's own kernel: tests/series/test_hub_session.py; its node-side notebooks are nvidia's code.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest

from chi_helpers import credentials
from chi_helpers import network_guard as guard
from chi_helpers.twin import node_commands

REPO = Path(__file__).resolve().parents[2]
# The twin's node fills the data volume with a few photos per class, not Food-11's 16,643; the run is told.
SAMPLE = ",".join(f"{split}={n * 11}" for split, n in node_commands.SAMPLE_PER_CLASS.items())
# Look at a PENDING lease every few seconds: the twin here starts leases 600 times sooner than their dates
# say (a lease for the next full hour within 6 s; `twin up`'s own default, 60, is for rehearsals to watch).
TWIN_RUN = ["--expect-photos", SAMPLE, "--lease-poll", "3"]
TWIN_SPEED = "600"


def command(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CHI_RESOURCE", "MLFLOW_", "FOOD11_"))}
    return subprocess.run([sys.executable, "-m", "chi_helpers", *args], capture_output=True, text=True, cwd=REPO,
                          env=guard.environment(env), timeout=timeout)


@pytest.fixture(scope="module")
def twin_daemon(tmp_path_factory):
    state = tmp_path_factory.mktemp("twin-daemon")
    up = command("twin", "up", "--state-dir", str(state), "--speed", TWIN_SPEED, timeout=120)
    assert up.returncode == 0, up.stderr[-3000:]
    rc_file = up.stdout.strip().splitlines()[-1]  # the last line: the RC file's path (CHI@TACC's)
    assert Path(rc_file).is_file() and site_rc_file(rc_file, "vm").is_file()
    yield state, rc_file
    down = command("twin", "down", "--state-dir", str(state), timeout=120)
    assert down.returncode == 0, down.stderr[-3000:]
    # Nothing the twin started is left: not the twin, its nodes' MLflow servers, nor a notebook kernel.
    import psutil

    left = [p.info for p in psutil.process_iter(["pid", "cmdline"])
            if str(state) in " ".join(p.info["cmdline"] or [])]
    assert left == [], left


def site_rc_file(rc_file: str, variant: str) -> Path:
    """The RC file of the variant's site: each site has its own Keystone, and KVM@TACC (the vm variant's)
    knows none of CHI@TACC's credentials. The twin writes KVM@TACC's beside CHI@TACC's."""
    return Path(rc_file).with_name("twin-kvm-openrc.sh") if variant == "vm" else Path(rc_file)


def said_in(path: Path) -> str:
    return "".join(o.get("text", "") for c in nbformat.read(path, 4).cells for o in c.get("outputs", []))


def status(state: Path) -> dict:
    done = command("twin", "status", "--json", "--state-dir", str(state), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def chameleon_run(state, rc_file, out: Path, variant: str = "nvidia", node: str = "liqid01", user: str = "ci01",
                  *extra: str):
    args = ["run", "--target", "chameleon", "--gpu", variant, "--project", "CHI-000000", "--user", user,
            "--lease-name", f"mlflow_{user}", "--rc-file", str(site_rc_file(rc_file, variant)), "--output", str(out),
            *TWIN_RUN, *extra]
    if node:
        args += ["--node", node]
    return command(*args, timeout=1500)


def release(variant: str, user: str, rc_file: str) -> None:
    released = command("release", "--gpu", variant, "--lease-name", f"mlflow_{user}", "--user", user,
                       "--project", "CHI-000000", "--rc-file", str(site_rc_file(rc_file, variant)))
    assert released.returncode == 0, released.stderr[-3000:]


def archived_runs(out: Path) -> tuple[Path, set[str]]:
    """The archive notebook 08 brought back to the hub side, and the run ids in it."""
    archives = sorted((out / "archives").glob("mlflow-history-*.tar"))
    assert len(archives) == 1, archives
    with tarfile.open(archives[0]) as tar:
        rows = tar.extractfile("backend/runs.jsonl").read().decode().splitlines()
    return archives[0], {json.loads(row)["run_uuid"] for row in rows}


def passed(done: subprocess.CompletedProcess, out: Path, notebooks: int = 9) -> dict:
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-3000:], json.dumps(report)[:3000])
    assert report["passed"] and [nb["status"] for nb in report["notebooks"]] == ["passed"] * notebooks
    return report


def run_on_node(state: Path, rc_file: str, notebook: str, out: Path, variant: str = "nvidia") -> str:
    """What the runner does for a node-side notebook: papermill in the node's Jupyter container, over SSH
    with the key the RC file names; the executed copy comes back to `out`. Returns what its cells printed."""
    from fabric import Connection

    from chi_helpers.chameleon import node_stack, openstack_rc

    address = bound_address(state)
    key = openstack_rc.parse(Path(rc_file).read_text())["OS_KEYPAIR_PRIVATE_KEY"]
    with Connection(address, user="cc", connect_kwargs={"key_filename": key}) as connection:
        for command in node_stack.node_notebook_commands(variant, notebook):
            connection.run(command, hide=True, in_stream=False)
        connection.get(node_stack.executed_path(variant, notebook).replace("~/", ""), str(out / notebook))
    return said_in(out / notebook)


def bound_address(state: Path) -> str:
    """The one floating IP bound to a server (the twin's project also holds a classmate's unbound one)."""
    [address] = [ip["address"] for ip in status(state)["floating_ips"] if ip["port_id"]]
    return address


def node_registry(state: Path) -> dict[str, str]:
    """{version: run id} of 07's registered model on the node's MLflow, signed in as the admin."""
    from mlflow import MlflowClient

    # The node of this lease: the twin keeps the folders of deleted servers' nodes, for the record.
    env_file = max(Path(state).rglob("mlflow-stack.env"), key=lambda path: path.stat().st_mtime)
    values = credentials.read(env_file)
    address = bound_address(state)
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({key: values[key] for key in saved})
    try:
        found = MlflowClient(f"http://{address}:8000").search_model_versions("name='food11-staging'")
        return {version.version: version.run_id for version in found}
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


# nvidia: a host by name at CHI@TACC; vm: a flavor at KVM@TACC behind security groups, where a rerun adds
# nothing Nova or Neutron would refuse (a security group the server has already: 400).
@pytest.mark.parametrize("variant,node,user", [("nvidia", "liqid01", "ci01"), ("vm", "", "civm")])
def test_the_readme_rehearsal_runs_twice_and_releases(twin_daemon, tmp_path, variant, node, user):
    state, rc_file = twin_daemon
    first = chameleon_run(state, rc_file, tmp_path / "first", variant, node, user,
                          *(["--end-lease"] if variant == "nvidia" else []))
    report = passed(first, tmp_path / "first")
    assert any(nb["runs"] for nb in report["notebooks"] if nb["name"].startswith("05"))  # runs on the node's MLflow
    for name in ("05_track_pytorch.ipynb", "06_lightning.ipynb", "07_registry.ipynb"):
        assert (tmp_path / "first" / name).stat().st_size > 0  # came back over SSH
    archive, first_runs = archived_runs(tmp_path / "first")
    tracked = {r["run_id"] for nb in report["notebooks"] for r in nb["runs"]}
    assert tracked and tracked <= first_runs  # 08 archived every run of 05-07 before the release

    if variant == "nvidia":
        # The node's MLflow asked for a sign-in all along (the report's runs were read signed in), and its
        # password shows in no notebook output, report or log line.
        env_files = list(Path(state).rglob("mlflow-stack.env"))
        assert len(env_files) == 1, env_files
        password = credentials.read(env_files[0])["MLFLOW_TRACKING_PASSWORD"]
        assert password not in first.stdout + first.stderr
        for path in (tmp_path / "first").rglob("*"):
            if path.is_file():
                assert password not in path.read_text(errors="replace"), path
        for path in Path(state).rglob("*.log"):
            assert password not in path.read_text(errors="replace"), path
        # --end-lease: 08 gave everything back after archiving it; `release` again finds nothing, and says so.
        assert status(state) == {"leases": [], "servers": [], "floating_ips": []}
        release(variant, user, rc_file)
        # A second lease brings the history back in notebook 04, and 07 adds to it on the node.
        second = passed(chameleon_run(state, rc_file, tmp_path / "second", variant, node, user, "--restore",
                                      str(archive), "--until", "04"), tmp_path / "second", notebooks=5)
        assert "restored:" in said_in(tmp_path / "second" / "04_stack.ipynb")
        restored = node_registry(state)
        assert restored and set(restored.values()) <= first_runs  # 07's versions of the first lease, as they were
        printed = run_on_node(state, rc_file, "07_registry.ipynb", tmp_path / "second")
        now = node_registry(state)
        added = {version: run for version, run in now.items() if version not in restored}
        assert {version: now[version] for version in restored} == restored  # the restored versions, untouched
        assert added and min(int(v) for v in added) > max(int(v) for v in restored), (restored, now)
        assert f"registered food11-staging version {max(added, key=int)}" in printed
    else:
        # A rerun on the same lease makes nothing new. 00-04 are where a rerun meets what the first run made
        # (the lease, server, address, security groups, the node's setup and stack); 05-08 ran in the first.
        second = passed(chameleon_run(state, rc_file, tmp_path / "second", variant, node, user, "--until", "04"),
                        tmp_path / "second", notebooks=5)
        assert [nb["name"] for nb in second["notebooks"]][-1] == "04_stack.ipynb"
    now = status(state)
    assert [lease["name"] for lease in now["leases"]] == [f"mlflow_{user}"]
    assert [server["name"] for server in now["servers"]] == [f"node-mlflow-{user}"]
    assert len(now["floating_ips"]) == 1

    release(variant, user, rc_file)
    assert status(state) == {"leases": [], "servers": [], "floating_ips": []}
