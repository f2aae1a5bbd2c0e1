"""The twin's nodes over real SSH: Fabric and paramiko clients, as python-chi uses them, against `Nodes`.

Each test starts the twin's services (the `twin` fixture) and its own `Nodes`, puts an ACTIVE server
with a bound floating IP and the twin's key pair into the world, and talks to `<floating ip>:22`.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import fabric
import nbformat
import paramiko
import pytest
from invoke.exceptions import UnexpectedExit

from chi_helpers import credentials
from chi_helpers.chameleon import node_setup, node_stack, node_wait
from chi_helpers.series import REPO_ROOT
from chi_helpers.twin import node_commands
from chi_helpers.twin.node import Nodes
from chi_helpers.variants import VARIANTS

NOTEBOOKS = ["05_track_pytorch.ipynb", "06_lightning.ipynb", "07_registry.ipynb"]


def notebook_commands() -> dict[str, str]:
    """The commands the notebooks' sources write out themselves (`node.execute("...")`), by notebook."""
    found = {}
    for source in sorted((REPO_ROOT / "notebooks" / "source").glob("*.md")):
        for match in re.finditer(r"""\w+\.execute\((?P<literal>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\)""",
                                 source.read_text()):
            found[ast.literal_eval(match["literal"])] = source.stem
    return found




# --- a node in the world ---------------------------------------------------------------------------

class Node:
    """A server the test put in the world, reachable at `address` with the twin's key."""

    def __init__(self, twin, nodes: Nodes, node_name: str | None = "liqid01", image: str = "CC-Ubuntu24.04-CUDA",
                 flavor: str = "baremetal"):
        world = twin.world
        self.world, self.nodes = world, nodes
        self.key = str(twin.environment()["OS_KEYPAIR_PRIVATE_KEY"])
        public = Path(twin.environment()["OS_KEYPAIR_PUBLIC_KEY"]).read_text().strip()
        with world.lock:
            if node_name:  # bare metal: the Blazar host it landed on
                host = next(h["id"] for h in world.data["hosts"].values() if h.get("node_name") == node_name)
            else:  # a VM: a hypervisor the twin names for its reservation
                host = "kvm-0a1b2c3d"
            kind = next(f for f in world.data["flavors"].values() if f["name"] == flavor)
            picture = next(i for i in world.data["images"].values() if i["name"] == image)
            world.data["keypairs"]["twin-key"] = {"name": "twin-key", "public_key": public, "type": "ssh"}
            self.server_id = world.new_id()
            world.data["servers"][self.server_id] = {
                "id": self.server_id, "name": "node-mlflow-test", "status": "ACTIVE", "key_name": "twin-key",
                "flavor": {"original_name": flavor}, "image": {"id": picture["id"]}, "_host": host,
                "_flavor": dict(kind),
            }
            self.port_id = world.new_id()
            world.data["ports"][self.port_id] = {"id": self.port_id, "device_id": self.server_id}
            self.address = world.next_address()
            self.fip_id = world.new_id()
            world.data["floatingips"][self.fip_id] = {"id": self.fip_id, "floating_ip_address": self.address,
                                                      "port_id": self.port_id}
        nodes.sync()

    @property
    def node(self):
        return self.nodes.node(self.server_id)

    def connect(self, user: str = "cc", key: str | None = None) -> fabric.Connection:
        return fabric.Connection(self.address, user=user, connect_kwargs={
            "key_filename": key or self.key, "look_for_keys": False, "allow_agent": False})

    def run(self, command: str, warn: bool = False):
        with self.connect() as connection:
            return connection.run(command, hide=True, warn=warn, in_stream=False)

    def home(self, *parts: str) -> Path:
        return self.node.home.joinpath(*parts)


@pytest.fixture
def nodes(twin):
    started = Nodes(twin.world)
    yield started
    started.stop()


@pytest.fixture
def node(twin, nodes):
    return Node(twin, nodes)


def bundle_head(bundle: Path) -> str:
    return subprocess.run(["git", "bundle", "list-heads", str(bundle)], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def set_up(node: Node, tmp_path: Path, variant: str = "nvidia") -> str:
    """Notebook 02 on the node: every setup step of the variant, the series uploaded (as python-chi's
    upload does) as notebook 02 packs a copy that is not a git checkout: this checkout's files as they
    are now, committed changes or not. Returns the commit the node's checkout is at."""
    bundle = Path(node_setup.pack_snapshot(str(tmp_path / "series.bundle"), REPO_ROOT))
    commit = bundle_head(bundle)
    for step in node_setup.steps(VARIANTS[variant], archive=str(bundle)):
        with node.connect() as connection:
            if step.upload:
                connection.put(step.upload, node_setup.BUNDLE)
            connection.run(step.command, hide=True, in_stream=False)
    return commit


# --- every command the helpers send has an answer ----------------------------------------------------

def helper_commands() -> list[tuple[str, str]]:
    """(command, the twin's answer for it) for every command the helpers and notebooks send a node."""
    expected = []
    address = "127.100.1.10"
    for profile in VARIANTS.values():
        for repo in (None, "https://github.com/example/mlflow-chi.git"):
            for step in node_setup.steps(profile, repo=repo, archive="/tmp/x.bundle"):
                expected.append((step.command, step.title))
        expected.append((node_stack.jupyter_run_command(profile, address), "start the Jupyter container"))
        for notebook in NOTEBOOKS:
            expected.append((node_stack.node_notebook_command(profile.name, notebook), "docker exec"))
        expected.append((node_stack.executed_folder_command(profile.name), "mkdir -p"))
    expected.append((node_setup.image_build_check().command, "where the image build stands"))
    expected.append((f"tail -n 20 {node_setup.BUILD_LOG} 2>/dev/null", "the end of a file, if there"))
    expected.append(("docker logs --tail 20 jupyter 2>&1", "docker logs"))
    expected += [(c, a) for c, a in zip(node_stack.data_commands(), ["docker volume create", "the data job"])]
    expected.append((node_stack.data_count_command(), "the data job"))
    expected += [(c, a) for c, a in zip(node_stack.tracking_up_commands(address),
                                        ["credentials.py", "the tracking stack", "the tracking stack"])]
    for name in ("history.tar", "mlflow-history-20250101-1200.tar"):
        expected += [(node_stack.archive_command(name), "the archive service"),
                     (node_stack.archive_command(name, runs_only=True), "the archive service"),
                     (node_stack.restore_command(name), "the archive service"),
                     (node_stack.restore_command(name, merge=True), "the archive service")]
    # Notebook 04 writes this one as an f-string, which notebook_commands() does not read.
    expected.append((f"mkdir -p ~/{node_stack.ARCHIVES}", "mkdir -p"))
    expected.append((node_stack.sign_in_command(), "grep"))
    expected.append((node_stack.jupyter_url_command(), "docker exec"))
    expected += [(c, a) for c, a in zip(node_stack.stop_commands(), ["docker stop", "the tracking stack"])]
    literal_answers = {"tail": "tail"}
    for command in notebook_commands():
        meant = next((a for start, a in literal_answers.items() if command.startswith(start)),
                     "a new command in a notebook: give the twin's node an answer for it")
        expected.append((command, meant))
    return expected


STEP_ANSWERS = {  # node_setup's step titles -> the twin's answer
    "Docker": "install Docker", "you in the docker group": "cc in the docker group",
    "apt waits for the package lock (unattended-upgrades holds it after boot)": "apt's lock timeout",
    "the NVIDIA container toolkit's package signing key": "the NVIDIA signing key",
    "the NVIDIA container toolkit's apt repository": "the NVIDIA apt repository",
    "the toolkit, jq and nvtop": "apt-get install", "Docker's NVIDIA runtime": "Docker's NVIDIA runtime",
    "Docker's cgroupfs driver": "merge into Docker's daemon.json", "Docker restarted with both": "restart Docker",
    "what nvtop needs to build": "apt-get install", "nvtop with AMD support": "build nvtop with AMD support",
    "the Jupyter image build, started in the background": "start the Jupyter image build",
}


def test_every_command_the_helpers_send_has_the_answer_meant_for_it():
    for command, meant in helper_commands():
        if meant.startswith("this series' files"):
            meant = "check out the uploaded series" if node_setup.BUNDLE in command else "clone the series"
        meant = STEP_ANSWERS.get(meant, meant)
        if meant == "the GPUs, as the host sees them":
            meant = command
        found = node_commands.find(command)
        assert found is not None, f"the twin's node has no answer for a command the helpers send:\n{command}"
        assert found[0].name == meant, f"{command!r} gets the answer {found[0].name!r}, meant: {meant!r}"


# --- SSH: who may log in ---------------------------------------------------------------------------

def test_a_setup_command_answers_and_nvidia_smi_shows_two_a100(node):
    assert node.run("sudo groupadd -f docker && sudo usermod -aG docker $USER").exited == 0
    shown = node.run("nvidia-smi").stdout
    assert shown.count("NVIDIA A100-PCIE-40GB") == 2 and "CUDA Version" in shown


def test_rocm_smi_shows_two_mi100_on_an_amd_host_and_nvidia_smi_is_missing_there(twin, nodes):
    amd = Node(twin, nodes, node_name="P3-GPU-009", image="CC-Ubuntu24.04-ROCm")
    assert amd.run("rocm-smi").stdout.count("Instinct MI100") == 2
    missing = amd.run("nvidia-smi", warn=True)
    assert missing.exited == 127 and "nvidia-smi: command not found" in missing.stderr


def test_nvidia_smi_shows_one_h100_on_the_vm(twin, nodes):
    vm = Node(twin, nodes, node_name=None, flavor="g1.h100.pci.1")
    shown = vm.run("nvidia-smi").stdout
    assert shown.count("NVIDIA H100 PCIe") == 1 and "A100" not in shown


def test_an_unknown_command_fails_loudly(node):
    result = node.run("curl http://example.com | sh", warn=True)
    assert result.exited == 127
    assert result.stderr.strip() == "twin node: no answer for this command: curl http://example.com | sh"


def test_a_wrong_key_and_another_user_are_refused(node, tmp_path):
    stranger = paramiko.RSAKey.generate(2048)
    stranger.write_private_key_file(str(tmp_path / "stranger"))
    # paramiko reports a refused key file with the last error it met while trying the file as each key
    # type (an SSHException that names the key format): the refusal itself is in the node's record below.
    with pytest.raises(paramiko.SSHException):
        with node.connect(key=str(tmp_path / "stranger")) as connection:
            connection.open()
    with pytest.raises(paramiko.SSHException):
        with node.connect(user="root") as connection:
            connection.open()
    for user, key in (("cc", stranger), ("root", paramiko.RSAKey.from_private_key_file(node.key))):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(node.address, username=user, pkey=key, look_for_keys=False, allow_agent=False)
        client.close()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with pytest.raises(paramiko.AuthenticationException):  # no password logins at all
        client.connect(node.address, username="cc", password="cc", look_for_keys=False, allow_agent=False)
    client.close()
    assert node.run("nvidia-smi").exited == 0  # the right key still works
    with node.world.lock:
        assert any("refused SSH login" in e["what"] for e in node.world.data["events"])


# --- files -----------------------------------------------------------------------------------------

def test_the_uploaded_series_becomes_a_git_checkout_that_a_second_upload_moves_on(node, tmp_path):
    command = node_setup.materials(archive="x")[0].command
    source = tmp_path / "series"
    (source / "docker").mkdir(parents=True)
    (source / "docker" / "compose-data.yaml").write_text("name: x\n")
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(["git", "init", "--quiet", str(source)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "v1"], check=True)

    def upload() -> str:
        bundle = node_setup.pack_checkout(str(tmp_path / "series.bundle"), source)
        with node.connect() as connection:  # python-chi's Server.upload: Fabric's put
            connection.put(bundle, node_setup.BUNDLE)
        return bundle_head(Path(bundle))

    first = upload()
    assert node.run(command).exited == 0
    assert node.home("mlflow-chi", "docker", "compose-data.yaml").read_text() == "name: x\n"
    checkout = node.home("mlflow-chi")
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    branch = subprocess.run(["git", "-C", str(checkout), "branch", "--show-current"], capture_output=True, text=True).stdout
    assert head == first and branch.strip() == "series"  # a branch to commit on, not a detached HEAD
    assert not (node.node.root / "tmp" / "mlflow-chi.bundle").exists()  # `&& rm` ran

    (source / "README.md").write_text("v2\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "v2"], check=True)
    second = upload()
    assert node.run(command).exited == 0  # the second upload fast-forwards the node's copy
    assert node.home("mlflow-chi", "README.md").read_text() == "v2\n"
    assert subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() == second

    # A commit made on the node, then another upload that does not contain it: the node's work is kept.
    (checkout / "notes.txt").write_text("tried lr 1e-3\n")
    node_git = ["git", "-C", str(checkout)]
    subprocess.run([*node_git, "add", "notes.txt"], check=True)
    subprocess.run([*node_git, "commit", "--quiet", "-m", "on the node"], check=True)
    (source / "README.md").write_text("v3\n")
    subprocess.run([*git, "commit", "--quiet", "-am", "v3"], check=True)
    upload()
    kept = node.run(command)
    assert kept.exited == 0 and "kept as it is" in kept.stdout
    assert (checkout / "notes.txt").is_file() and node.home("mlflow-chi", "README.md").read_text() == "v2\n"



def test_sftp_get_works_and_stays_inside_the_node(node, tmp_path):
    node.home("notes").mkdir()
    node.home("notes", "a.txt").write_text("from the node\n")
    with node.connect() as connection:
        connection.get("notes/a.txt", str(tmp_path / "a.txt"))  # relative to /home/cc, as run.py fetches
        connection.get("/home/cc/notes/a.txt", str(tmp_path / "b.txt"))
        with pytest.raises(FileNotFoundError):
            connection.get("/etc/hostname", str(tmp_path / "c.txt"))  # the node's /etc, not this machine's
        with pytest.raises(FileNotFoundError):
            connection.get("../../../../../../../../etc/hostname", str(tmp_path / "d.txt"))
        sftp = connection.sftp()
        assert sftp.normalize(".") == "/home/cc"
        assert sftp.normalize("../../..") == "/"
        sftp.mkdir("/tmp/made")
        assert sorted(sftp.listdir("/")) == ["home", "tmp"]
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text() == "from the node\n"
    assert (node.node.root / "tmp" / "made").is_dir()


# --- faults and the world ----------------------------------------------------------------------------

def test_ssh_drops_drops_one_connection_and_the_next_works(node):
    node.world.inject("ssh-drops")
    with pytest.raises((paramiko.SSHException, EOFError, ConnectionError)):
        node.run("nvidia-smi")
    assert node.run("nvidia-smi").exited == 0
    with node.world.lock:
        assert any("fault ssh-drops" in e["what"] for e in node.world.data["events"])


def test_the_listener_follows_the_floating_ip_and_the_server(node):
    assert node.run("nvidia-smi").exited == 0
    with node.world.lock:
        node.world.data["floatingips"][node.fip_id]["port_id"] = None
    node.nodes.sync()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((node.address, 22), timeout=2).close()
    with node.world.lock:
        node.world.data["floatingips"][node.fip_id]["port_id"] = node.port_id
    node.nodes.sync()
    assert node.run("nvidia-smi").exited == 0
    with node.world.lock:
        del node.world.data["servers"][node.server_id]
    node.nodes.sync()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((node.address, 22), timeout=2).close()
    assert node.nodes.node(node.server_id).gone


def twin_threads() -> list[threading.Thread]:
    """The nodes' threads still alive: listeners, connections, commands, and server-side SSH transports."""
    return [t for t in threading.enumerate() if t.is_alive() and (
        t.name.startswith(("twin-ssh", "twin-node")) or (isinstance(t, paramiko.Transport) and t.server_mode))]


def test_stop_leaves_no_listener_and_no_thread(node):
    with node.connect() as connection:
        connection.run("nvidia-smi", hide=True, in_stream=False)
        open_one = node.connect()
        open_one.open()  # a client that stays connected through the stop
        assert twin_threads()
        node.nodes.stop()
        open_one.close()
    assert not twin_threads()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((node.address, 22), timeout=2).close()
    node.nodes.sync()  # a sync after stop (the twin's thread may be mid-way) starts nothing
    assert not node.nodes.listeners and not twin_threads()


def test_commands_are_recorded_in_order(node):
    sent = ["nvidia-smi", "sudo groupadd -f docker && sudo usermod -aG docker $USER", "no such thing"]
    for command in sent:
        node.run(command, warn=True)
    record = node.nodes.commands(node.server_id)
    assert [entry["command"] for entry in record] == sent
    assert [entry["exit_status"] for entry in record] == [0, 0, 127]
    log = (node.node.folder / "commands.log").read_text()
    assert [line.split(" $ ", 1)[1] for line in log.splitlines() if " $ " in line] == sent
    assert node.nodes.status()[0]["listening"] == [node.address]


def test_release_stops_the_stack_over_ssh_with_python_chis_key(node, chi, monkeypatch):
    from chi_helpers.chameleon import release

    nothing = open(os.devnull)
    monkeypatch.setattr("sys.stdin", nothing)  # Fabric forwards stdin; pytest's own cannot be read
    first, then = node_stack.stop_commands()
    release._ssh_run(node.address, first)  # `|| true`: fine without Docker
    with pytest.raises(UnexpectedExit) as failure:  # compose is another matter: no Docker on this node yet
        release._ssh_run(node.address, then)
    nothing.close()
    assert failure.value.result.exited == 127 and "docker: command not found" in failure.value.result.stderr
    assert [entry["command"] for entry in node.nodes.commands(node.server_id)] == node_stack.stop_commands()


def test_a_step_out_of_order_fails_as_on_the_node(node):
    result = node.run("sudo nvidia-ctk runtime configure --runtime=docker", warn=True)
    assert result.exited == 1 and "nvidia-ctk: command not found" in result.stderr  # the toolkit is not installed
    clone = node.run(node_setup.materials(repo="https://github.com/example/mlflow-chi.git")[0].command, warn=True)
    assert clone.exited == 128 and "Could not resolve host: github.com" in clone.stderr
    assert node.run(node_stack.data_commands()[0], warn=True).exited == 127  # no Docker yet


# --- the data, the tracking stack, the Jupyter container ---------------------------------------------------

def test_data_job_then_the_tracking_stack_then_its_stop(node, tmp_path):
    set_up(node, tmp_path)
    first = [node.run(command) for command in node_stack.data_commands()]
    assert "organized:" in first[1].stdout
    again = node.run(node_stack.data_commands()[1]).stdout
    assert "nothing to do" in again and "organized:" not in again
    counts = node_stack.photo_counts(node.run(node_stack.data_count_command()).stdout)
    assert counts == {"training": 44, "validation": 22, "evaluation": 22}

    said = ""
    for command in node_stack.tracking_up_commands(node.address):
        result = node.run(command)
        said += result.stdout + result.stderr
    assert "mlflow-tracking-mlflow-1" in result.stdout and "Up" in result.stdout  # `ps`
    # The `archive` service has a profile: `up` neither starts nor waits for it, and `ps` does not list it.
    assert "archive" not in said and "mlflow-tracking-minio-1" in said
    assert (node.home("mlflow-stack.env").stat().st_mode & 0o777) == 0o600
    with urllib.request.urlopen(f"http://{node.address}:8000/health", timeout=10) as answer:
        assert answer.status == 200
    # The Compose file runs MLflow's auth app: nothing without the env file's admin account.
    values = credentials.read(node.home("mlflow-stack.env"))
    search = f"http://{node.address}:8000/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(search, timeout=10)
    assert refused.value.code == 401
    signed = urllib.request.Request(search, headers={"Authorization": "Basic " + base64.b64encode(
        f"{values['MLFLOW_TRACKING_USERNAME']}:{values['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()})
    with urllib.request.urlopen(signed, timeout=10) as answer:
        assert answer.status == 200
    assert "MLflow sign-in: user admin" in said and values["MLFLOW_TRACKING_PASSWORD"] not in said

    for command in node_stack.stop_commands():
        assert node.run(command).exited == 0  # no Jupyter container: `|| true`
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{node.address}:8000/health", timeout=5)
    assert "mlflow-tracking-mlflow-1" not in node.run(node_stack.tracking_up_commands(node.address)[2]).stdout


# --- the archive service: the stack's history to a file, and back to a new node ----------------------------

def signed_in(node: Node, monkeypatch):
    """An MLflow client of `node`'s stack, signed in with the account its env file holds."""
    from mlflow import MlflowClient

    values = credentials.read(node.home("mlflow-stack.env"))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", values["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", values["MLFLOW_TRACKING_PASSWORD"])
    return MlflowClient(f"http://{node.address}:8000")


def test_an_archive_of_the_stack_comes_back_on_the_next_leases_node_with_the_same_ids(twin, nodes, node, tmp_path,
                                                                                      monkeypatch):
    """Notebook 08: the archive command, the file fetched over SFTP; notebook 04 on a new node: the file put
    there over SFTP, then the restore command."""
    set_up(node, tmp_path)
    for command in node_stack.tracking_up_commands(node.address):
        node.run(command)
    client = signed_in(node, monkeypatch)
    run = client.create_run(client.create_experiment("kept"))
    run_id = run.info.run_id
    client.log_param(run_id, "lr", "0.003")
    for step in range(3):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
    client.log_text(run_id, "trained on the first lease", "notes/why.txt")
    client.set_terminated(run_id)

    made = node.run(node_stack.archive_command("history.tar"))
    assert "Container mlflow-tracking-postgres-1  Running" in made.stderr  # the stack is up: nothing started
    assert "archive written: /archives/history.tar" in made.stdout  # the container's own path
    kept = tmp_path / "history.tar"
    with node.connect() as connection:  # notebook 08: SFTP from cc's home
        connection.get(node_stack.archive_path("history.tar"), local=str(kept))
    with tarfile.open(kept) as tar:
        counts = json.load(tar.extractfile("manifest.json"))["counts"]
    experiments = client.search_experiments()
    assert counts["experiments"] == len(experiments) == 2  # Default and "kept"
    assert counts["runs"] == len(client.search_runs([e.experiment_id for e in experiments])) == 1
    assert counts["metric_points"] == len(client.get_metric_history(run_id, "loss")) == 3
    assert (counts["params"], counts["artifact_files"], counts["accounts"]) == (1, 1, 1)
    again = node.run(node_stack.archive_command("history.tar"), warn=True)
    assert again.exited == 2 and again.stderr.splitlines()[-1].startswith("error: /archives/history.tar exists already")
    # /archives is what the Compose file's volume line mounts: MLFLOW_ARCHIVE_DIR when the env file sets it.
    env = node.home("mlflow-stack.env")
    values = env.read_text()
    env.write_text(values + "MLFLOW_ARCHIVE_DIR=~/kept\n")
    refused = node.run(node_stack.archive_command("elsewhere.tar"), warn=True)  # docker made ~/kept, as root
    assert refused.exited == 1 and "PermissionError: [Errno 13] Permission denied" in refused.stderr
    env.write_text(values + "MLFLOW_ARCHIVE_DIR=~/mlflow-chi/kept\n")
    node.run("mkdir -p ~/mlflow-chi/kept")
    node.run(node_stack.archive_command("elsewhere.tar"))
    assert node.home("mlflow-chi", "kept", "elsewhere.tar").is_file() and not node.home("mlflow-archives", "elsewhere.tar").exists()
    env.write_text(values)

    # After `down`, `compose run` starts PostgreSQL and MinIO again (not the server) and archives what they kept.
    node.run(node_stack.stop_commands()[1])
    stopped = node.run(node_stack.archive_command("after-down.tar"))
    assert "Container mlflow-tracking-postgres-1  Started" in stopped.stderr and "1 run(s)" in stopped.stdout
    shown = node.run(node_stack.tracking_up_commands(node.address)[2]).stdout  # `ps`
    assert "mlflow-tracking-minio-1" in shown and "mlflow-tracking-mlflow-1" not in shown
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{node.address}:8000/health", timeout=5)
    down = node.run(node_stack.stop_commands()[1])
    assert "Container mlflow-tracking-postgres-1  Removed" in down.stderr
    assert "mlflow-tracking-minio-1" not in node.run(node_stack.tracking_up_commands(node.address)[2]).stdout

    # The next lease's node: set up, its own stack and password, the archive put where `restore` reads it.
    fresh = Node(twin, nodes)
    (tmp_path / "next").mkdir()
    set_up(fresh, tmp_path / "next")
    for command in node_stack.tracking_up_commands(fresh.address):
        fresh.run(command)
    fresh.run(f"mkdir -p ~/{node_stack.ARCHIVES}")  # notebook 04, before the upload
    with fresh.connect() as connection:  # python-chi's Server.upload: Fabric's put
        connection.put(str(kept), node_stack.archive_path("history.tar"))
    restored = fresh.run(node_stack.restore_command("history.tar"))
    assert "checked" in restored.stdout and "restored: 1 experiment(s), 1 run(s), 3 metric points" in restored.stdout
    client = signed_in(fresh, monkeypatch)  # the new stack's own account still signs in
    back = client.get_run(run_id)
    assert back.data.params == {"lr": "0.003"} and back.info.experiment_id == run.info.experiment_id
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    fetched = client.download_artifacts(run_id, "notes/why.txt", str(tmp_path))
    assert Path(fetched).read_text() == "trained on the first lease"

    twice = fresh.run(node_stack.restore_command("history.tar"), warn=True)
    assert twice.exited == 2 and "error: this stack already holds 1 run" in twice.stderr
    assert len(client.search_runs([run.info.experiment_id])) == 1  # nothing changed


def test_the_archive_command_fails_as_compose_does_before_the_stack_was_ever_up(node, tmp_path):
    set_up(node, tmp_path)
    archive, up = node_stack.archive_command("early.tar"), node_stack.tracking_up_commands(node.address)[1]
    no_env, up_without = node.run(archive, warn=True), node.run(up, warn=True)
    assert no_env.exited == up_without.exited == 1 and no_env.stderr == up_without.stderr
    assert "Failed to load /home/cc/mlflow-stack.env" in no_env.stderr
    node.run(node_stack.tracking_up_commands(node.address)[0])  # the env file
    env = node.home("mlflow-stack.env")
    values = env.read_text()
    env.write_text("".join(line for line in values.splitlines(True) if not line.startswith("POSTGRES_PASSWORD=")))
    missing = node.run(archive, warn=True)
    assert missing.exited == 1 and missing.stderr == node.run(up, warn=True).stderr
    assert "required variable POSTGRES_PASSWORD is missing a value" in missing.stderr
    env.write_text(values)
    # The server's image is made by `up --build`, and the archive service never looks for it in a registry.
    early = node.run(archive, warn=True)
    assert early.exited == 1 and early.stderr.splitlines()[-1] == "Error response from daemon: No such image: mlflow-server:3.17.2"
    assert node.home("mlflow-archives").is_dir() and not node.home("mlflow-archives", "early.tar").exists()
    shown = node.run(node_stack.tracking_up_commands(node.address)[2]).stdout  # `compose run` started its dependencies
    assert "mlflow-tracking-postgres-1" in shown and "mlflow-tracking-minio-1" in shown


class FabricServer:
    """What `run.run_node_notebook` uses of python-chi's Server (`execute`, `ssh_connection`), as python-chi does it."""

    def __init__(self, node: Node):
        self.node = node

    def ssh_connection(self) -> fabric.Connection:
        return self.node.connect()

    def execute(self, command: str):
        with self.ssh_connection() as connection:
            return connection.run(command)


def test_a_node_side_notebook_runs_in_the_jupyter_container(node, tmp_path, monkeypatch, capsys):
    """04, then run.py's node-side step for 05 and 07, as the series sends them (05 trains three small runs: a minute)."""
    from chi_helpers.chameleon.run import run_node_notebook

    nothing = open(os.devnull)
    monkeypatch.setattr("sys.stdin", nothing)  # Fabric forwards stdin; pytest's own cannot be read
    server, out = FabricServer(node), tmp_path / "out"
    out.mkdir()
    commit = set_up(node, tmp_path)
    for command in [*node_stack.data_commands(), *node_stack.tracking_up_commands(node.address)]:
        node.run(command)
    early = run_node_notebook(server, "nvidia", "05_track_pytorch.ipynb", out)
    assert early.status == "failed" and "No such container: jupyter" in early.error and early.output is None
    node_wait.wait_for_image(server, 1, poll_seconds=0.5)
    node.run(node_stack.jupyter_run_command(VARIANTS["nvidia"], node.address))
    assert node.run(node_stack.jupyter_run_command(VARIANTS["nvidia"], node.address)).exited == 0  # kept, not run twice
    url = node_wait.wait_for_jupyter(server, node.address, "nvidia", poll_seconds=0.5)
    assert url.startswith(f"http://{node.address}:8888/lab/tree/workspace_mlflow/nvidia/05_track_pytorch.ipynb?token=")

    assert not node.home("mlflow-chi", "workspace_mlflow", "nvidia", "executed").exists()  # nothing for CI in the student's folder
    start = time.monotonic()
    capsys.readouterr()
    result = run_node_notebook(server, "nvidia", "05_track_pytorch.ipynb", out)
    streamed = capsys.readouterr()
    assert result.status == "passed", (result.error, streamed.err[-3000:])
    assert "Input Notebook:  05_track_pytorch.ipynb" in streamed.err  # papermill's own words, passed on by Fabric
    cells = nbformat.read(out / "05_track_pytorch.ipynb", 4).cells  # fetched by run.py over SFTP
    parameters = next(c for c in cells if "injected-parameters" in c.metadata.get("tags", []))
    assert '"image_size": 32' in parameters.source and "fast_num_workers = 2" in parameters.source
    shown = json.dumps([c.get("outputs") for c in cells])
    assert f"http://{node.address}:8000/" in shown  # the container's MLFLOW_TRACKING_URI
    from mlflow import MlflowClient

    # The container signed in with the env file's two MLflow lines; the password shows nowhere.
    values = credentials.read(node.home("mlflow-stack.env"))
    assert values["MLFLOW_TRACKING_PASSWORD"] not in shown + streamed.out + streamed.err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", values["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", values["MLFLOW_TRACKING_PASSWORD"])
    client = MlflowClient(f"http://{node.address}:8000")
    runs = client.search_runs([client.get_experiment_by_name("food11-classifier").experiment_id])
    # Before the students' edit the config has no num_workers (the DataLoader's default, 0); after it, 2.
    assert sorted(r.data.params.get("num_workers", "0 (default)") for r in runs) == ["0 (default)", "2"]
    # Each run leads back to its code: the slow run to the commit uploaded; the edit was committed on the
    # node's checkout first (notebook 05's check cell, headless: the reference solution), so the fast run
    # names that new commit, whose parent is the upload.
    by_workers = {r.data.params.get("num_workers", "0"): r.data.tags.get("mlflow.source.git.commit") for r in runs}
    checkout = node.home("mlflow-chi")
    log = subprocess.run(["git", "-C", str(checkout), "log", "-2", "--format=%H %s"], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert by_workers["0"] == commit and log[1].split()[0] == commit
    assert by_workers["2"] == log[0].split()[0] and "Reference solution: DataLoader workers" in log[0]
    registry = run_node_notebook(server, "nvidia", "07_registry.ipynb", out)  # registers 05's best run
    assert registry.status == "passed", registry.error
    versions = client.search_model_versions("name='food11-staging'")  # 05's best run and its runner-up
    assert len(versions) == 2 and {v.run_id for v in versions} <= {r.info.run_id for r in runs}
    assert client.get_model_version_by_alias("food11-staging", "champion").run_id in {r.info.run_id for r in runs}
    assert node.home("mlflow-chi", "workspace_mlflow", "nvidia", "deployed_model").is_dir()
    assert time.monotonic() - start < 240

    assert node.run(node_stack.stop_commands()[0]).stdout.strip() == "jupyter"
    gone = node.run(node_stack.node_notebook_command("nvidia", "05_track_pytorch.ipynb"), warn=True)
    assert gone.exited == 1 and "No such container: jupyter" in gone.stderr
    nothing.close()

    node.nodes.stop()  # the tracking stack is still up: stopping the nodes stops it too
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{node.address}:8000/health", timeout=5)
    assert not node.node.processes and not twin_threads()


# --- what a real node does that our commands must wait for, or see fail --------------------------------

def test_the_jupyter_container_waits_for_the_image_build(twin, node, tmp_path, monkeypatch):
    """The build that 02 starts takes minutes on a node; `docker run` before it ends must not reach for a
    registry, and the wait says where the build is."""
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    twin.world.image_build_seconds = 4
    set_up(node, tmp_path)
    early = node.run(node_stack.jupyter_run_command(VARIANTS["nvidia"], node.address), warn=True)
    assert early.exited == 125 and "No such image: jupyter-mlflow" in early.stderr  # --pull never: no registry
    said = []
    node_wait.wait_for_image(FabricServer(node), 1, poll_seconds=1, say=said.append)
    assert "still building" in said[0] and said[-1].endswith("jupyter-mlflow is built")
    assert node.run(node_stack.jupyter_run_command(VARIANTS["nvidia"], node.address)).exited == 0


def test_a_build_still_running_past_the_limit_stops_the_wait_with_what_to_do(twin, node, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    twin.world.image_build_seconds = 600
    set_up(node, tmp_path)
    with pytest.raises(node_wait.ImageNotReady) as stopped:
        node_wait.wait_for_image(FabricServer(node), 0.02, poll_seconds=0.5, say=lambda _: None)
    assert "still building after" in str(stopped.value) and "run this cell again to keep waiting" in str(stopped.value)
    assert "load metadata for" in str(stopped.value)  # the end of the build's log so far


def test_a_failed_image_build_stops_the_wait_with_its_log(node, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    set_up(node, tmp_path)
    node.home("jupyter-build.status").write_text("1\n")  # what a build that failed leaves
    node.home("jupyter-build.log").write_text("#7 ERROR: failed to solve: no space left on device\n")
    node.node.state["images"].pop("jupyter-mlflow")
    with pytest.raises(node_wait.ImageNotReady) as stopped:
        node_wait.wait_for_image(FabricServer(node), 1, poll_seconds=0.5)
    assert "failed (exit status 1)" in str(stopped.value) and "no space left on device" in str(stopped.value)
    # 02's setup, run again, starts the build anew.
    node.run(node_setup.image_build(VARIANTS["nvidia"]).command)
    assert node.home("jupyter-build.status").read_text().strip() == "building"


def test_a_data_job_that_fails_fails_the_command(node, tmp_path):
    set_up(node, tmp_path)
    node.run(node_stack.data_commands()[0])
    node.run(node_stack.data_commands()[1])
    next(node.node.path("/var/lib/docker/volumes/food11/_data/Food-11/training").glob("class_03")).rename(
        node.node.path("/var/lib/docker/volumes/food11/_data/Food-11/training/stray"))
    check = node.run(node_stack.data_count_command(), warn=True)
    assert check.exited == 2 and "error:" in check.stderr


def test_the_setup_sets_apts_lock_timeout_before_the_first_apt_step():
    steps = node_setup.steps(VARIANTS["nvidia"])
    first_apt = next(i for i, step in enumerate(steps) if "apt-get" in step.command or "get.docker.com" in step.command)
    assert any("DPkg::Lock::Timeout" in step.command for step in steps[:first_apt])
    for step in steps:
        if "curl" in step.command and "|" in step.command:
            assert step.command.startswith("set -o pipefail; "), step.command


def test_every_checkout_of_the_series_on_the_node_has_a_git_identity():
    for repo in (None, "https://github.com/example/mlflow-chi.git"):
        command = node_setup.materials(repo=repo)[0].command
        assert 'config user.name "$USER"' in command and 'config user.email "$USER@$(hostname)"' in command


def test_notebook_02_finds_the_lease_as_01_and_release_do():
    # python-chi's get_lease(name) fails when an ended lease shares today's name (tests/twin/test_findings.py).
    source = (REPO_ROOT / "notebooks" / "source" / "02_server.md").read_text()
    assert "lease.get_lease(lease_name)" not in source and "reservation.existing_lease(lease_name)" in source


def test_the_commands_a_student_is_told_to_type_work_as_typed(node, tmp_path):
    """Notebook 04 prints a command for a terminal on the hub: it names the key python-chi made the server
    with and the node's address, and quotes what runs there, so `~` is the node's home. Run here through
    bash and OpenSSH's own client, against the node."""
    set_up(node, tmp_path)
    node.run(node_stack.tracking_up_commands(node.address)[0])  # the env file, as 04 writes it
    home = tmp_path / "hub-home"
    (home / ".ssh").mkdir(parents=True)
    # The first connection to a new host asks to confirm its key; a person answers yes once.
    (home / ".ssh" / "config").write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                                          "  BatchMode yes\n  LogLevel ERROR\n")
    # OpenSSH reads the config of the passwd entry's home, not $HOME: a shim on PATH hands it this one.
    (home / "bin").mkdir()
    (home / "bin" / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {home / ".ssh" / "config"} "$@"\n')
    (home / "bin" / "ssh").chmod(0o755)
    key = tmp_path / "id_rsa"  # a copy: OpenSSH refuses a key others may read
    key.write_bytes(Path(node.key).read_bytes())
    key.chmod(0o600)
    env = {"HOME": str(home), "PATH": f"{home / 'bin'}:/usr/bin:/bin"}
    done = subprocess.run(["bash", "-c", node_stack.password_command(node.address, str(key))], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    values = credentials.read(node.home("mlflow-stack.env"))
    assert done.stdout.strip() == f"MLFLOW_TRACKING_PASSWORD={values['MLFLOW_TRACKING_PASSWORD']}"


def test_a_container_without_the_gpu_flags_stops_the_training_notebook_at_once(twin, node, tmp_path, monkeypatch):
    """Without `--gpus all` PyTorch in the container sees no GPU, and a training would run on the CPU for hours:
    05 stops at its GPU check, naming the flags."""
    from chi_helpers.chameleon.run import run_node_notebook

    monkeypatch.setattr("sys.stdin", open(os.devnull))
    server, out = FabricServer(node), tmp_path / "out"
    out.mkdir()
    set_up(node, tmp_path)
    for command in [*node_stack.data_commands(), *node_stack.tracking_up_commands(node.address)]:
        node.run(command)
    node_wait.wait_for_image(server, 1, poll_seconds=0.5)
    without_gpus = node_stack.jupyter_run_command(VARIANTS["nvidia"], node.address).replace(" --gpus all", "")
    assert node.run(without_gpus).exited == 0
    result = run_node_notebook(server, "nvidia", "05_track_pytorch.ipynb", out)
    assert result.status == "failed" and "sees 0 GPU(s), not 2" in result.error and "--gpus all" in result.error
    cells = nbformat.read(out / "05_track_pytorch.ipynb", 4).cells
    assert not any("train.py" in "".join(cell.source) for cell in cells if cell.get("execution_count"))  # nothing trained


def test_apt_right_after_boot_waits_for_the_lock_only_when_told(twin, nodes):
    """unattended-upgrades holds apt's lock after boot: apt fails at once, unless DPkg::Lock::Timeout is set,
    which the setup's first step does."""
    twin.world.apt_lock_seconds = 30
    fresh = Node(twin, nodes)
    install = "sudo apt-get update -q && sudo apt-get install -yq jq"
    refused = fresh.run(install, warn=True)
    assert refused.exited == 100 and "Could not get lock /var/lib/dpkg/lock-frontend" in refused.stderr
    twin.world.apt_lock_seconds = 3
    fresh.node.booted = time.monotonic()
    steps = node_setup.steps(VARIANTS["nvidia"])
    lock_step = next(step for step in steps if "DPkg::Lock::Timeout" in step.command)
    fresh.run(lock_step.command)
    waited = fresh.run(install)
    assert waited.exited == 0 and "Waiting for cache lock" in waited.stderr
