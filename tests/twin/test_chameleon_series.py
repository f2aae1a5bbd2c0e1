"""The chameleon target end to end against the twin: the README's commands, run as an instructor would
rehearse a term, through the real python-chi, keystoneauth, the OpenStack clients, Fabric and papermill.

`twin up` starts the twin as a background process; `run --target chameleon ... --rc-file` executes
all nine notebooks (01-04 and 08 here, 05-07 over SSH on the twin's node, at small training sizes)
and writes the report; 08 archives the history to the hub side; a second lease brings it back in 04
(`--restore`), or a second run on the same lease makes nothing new; `release` leaves nothing behind. Every
process here, and every notebook kernel, is guarded: nothing may leave 127.0.0.0/8.
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


# nvidia: a host by name at CHI@TACC; vm: a flavor at KVM@TACC behind security groups, where a rerun adds
# nothing Nova or Neutron would refuse (a security group the server has already: 400).
@pytest.mark.parametrize("variant,node,user", [("nvidia", "liqid01", "ci01"), ("vm", "", "civm")])
def test_the_readme_rehearsal_runs_twice_and_releases(twin_daemon, tmp_path, variant, node, user):
    state, rc_file = twin_daemon
    first = chameleon_run(state, rc_file, tmp_path / "first", variant, node, user)
    report = passed(first, tmp_path / "first")
    assert any(nb["runs"] for nb in report["notebooks"] if nb["name"].startswith("05"))  # runs on the node's MLflow
    for name in ("05_track_pytorch.ipynb", "06_lightning.ipynb", "07_registry.ipynb"):
        assert (tmp_path / "first" / name).stat().st_size > 0  # came back over SSH
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

    archive, first_runs = archived_runs(tmp_path / "first")
    tracked = {r["run_id"] for nb in report["notebooks"] for r in nb["runs"]}
    assert tracked and tracked <= first_runs  # 08 archived every run of 05-07 before the release

    if variant == "nvidia":
        # The lease ends; a second lease brings the history back in notebook 04, and 05-07 add to it.
        release(variant, user, rc_file)
        assert status(state) == {"leases": [], "servers": [], "floating_ips": []}
        second = passed(chameleon_run(state, rc_file, tmp_path / "second", variant, node, user,
                                      "--restore", str(archive)), tmp_path / "second")
        assert "restored:" in said_in(tmp_path / "second" / "04_stack.ipynb")
        _, second_runs = archived_runs(tmp_path / "second")
        added = {r["run_id"] for nb in second["notebooks"] for r in nb["runs"]}
        assert first_runs <= second_runs and added <= second_runs and not added & first_runs
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


@pytest.mark.parametrize("variant,node", [("amd", "P3-GPU-010")])
def test_the_other_variants_run_and_end_their_lease(twin_daemon, tmp_path, variant, node):
    # amd: a gpu_mi100 host reserved by name, ROCm setup; notebook 08 ends what it made.
    state, rc_file = twin_daemon
    user = f"ci{variant}"
    args = ["run", "--target", "chameleon", "--gpu", variant, "--user", user, "--lease-name", f"mlflow_{user}",
            "--rc-file", str(site_rc_file(rc_file, variant)), "--output", str(tmp_path), "--end-lease", *TWIN_RUN]
    done = command(*(args + (["--node", node] if node else [])), timeout=1500)
    assert (tmp_path / "report.json").exists(), (done.stdout[-3000:], done.stderr[-3000:])
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0 and report["passed"], (done.stdout[-4000:], json.dumps(report)[:3000])
    left = status(state)
    assert not [x for kind in ("leases", "servers") for x in left[kind] if user in x["name"]]  # 08 ended them
