"""The commands that run the tracking stack, the data job and the Jupyter container on a node.

Only strings: the notebooks show them and send them to the node (`node.execute`), and a dry run
prints them. The Compose files and Dockerfiles they use are in `docker/`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import PurePosixPath

from chi_helpers.variants import Variant

REMOTE_REPO = "~/mlflow-chi"  # where the node setup puts this repository
ENV_FILE = "~/mlflow-stack.env"  # the generated credentials; never leaves the node
TRACKING = f"docker compose --env-file {ENV_FILE} -f {REMOTE_REPO}/docker/compose-tracking.yaml"
DATA = f"docker compose -f {REMOTE_REPO}/docker/compose-data.yaml"
CONTAINER_SERIES = "/home/jovyan/work"  # where the Jupyter container sees REMOTE_REPO
SIGN_IN_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # what the MLflow client signs in with
SIGN_IN_LINES = "^MLFLOW_TRACKING_(USERNAME|PASSWORD)="  # those two lines of the env file


DATA_JOB = "fetch-food11"


def data_commands() -> list[str]:
    # `run --rm`, not `up`: `up` exits 0 when the job fails (docker/compose#683); `run` carries its exit code.
    return ["docker volume create food11", f"{DATA} run --rm {DATA_JOB}"]


def data_count_command() -> str:
    """Counts the photos per split in the volume, with the data job's own image and code."""
    return f"{DATA} run --rm {DATA_JOB} python /opt/food11.py verify /data/Food-11"


def photo_counts(output: str) -> dict[str, int]:
    """{split: photos} from what `food11.py verify` prints ("training  9866 photos in 11 classes")."""
    return {split: int(n) for split, n in re.findall(r"^(\w+)\s+(\d+) photos in \d+ classes$", output, re.M)}


def tracking_up_commands(address: str) -> list[str]:
    return [
        f"python3 {REMOTE_REPO}/chi_helpers/credentials.py write {ENV_FILE} --address {address}",
        f"{TRACKING} up -d --build --wait",
        f"{TRACKING} ps",
    ]


ARCHIVES = "mlflow-archives"  # in cc's home on the node: what `archive` writes and `restore` reads
CONTAINER_ARCHIVES = "/archives"  # the same folder inside the `archive` container


def archive_path(name: str) -> str:
    """An archive's place on the node, relative to cc's home (as SFTP and `my_server.upload` take it)."""
    return f"{ARCHIVES}/{name}"


def _archive_service(arguments: str) -> str:
    # The archive service runs the node's user's uid, so the file it writes in ~/mlflow-archives is cc's.
    return f'mkdir -p ~/{ARCHIVES} && {TRACKING} run --rm --user "$(id -u):$(id -g)" archive {arguments}'


def archive_command(name: str, runs_only: bool = False) -> str:
    """Writes the stack's whole history (databases, accounts, artifacts) to ~/mlflow-archives/<name>."""
    return _archive_service(f"make {CONTAINER_ARCHIVES}/{name}" + (" --runs-only" if runs_only else ""))


def download_link_command(name: str) -> str:
    """Shows the archive in the node's Jupyter file browser (the checkout is its folder there): a hard link,
    so it takes no more room on the node."""
    return f"ln -f ~/{ARCHIVES}/{name} {REMOTE_REPO}/{name}"


def restore_command(name: str, merge: bool = False) -> str:
    """Brings ~/mlflow-archives/<name> back into the running stack (refused where it holds runs, unless merged)."""
    return _archive_service(f"restore {CONTAINER_ARCHIVES}/{name}" + (" --merge" if merge else ""))


def sign_in_command() -> str:
    """Prints MLflow's sign-in (user and password): run it with its output hidden, or in a terminal."""
    return f"grep -E '{SIGN_IN_LINES}' {ENV_FILE}"


def jupyter_run_command(profile: Variant, address: str) -> str:
    # Safe to run again (a rerun of notebook 04): a container of that name already running is kept,
    # where a second `docker run --name jupyter` would fail with "name already in use".
    return (
        "docker ps -q --filter name=^jupyter$ | grep -q . || "
        # --pull never: the image is built on the node; were it missing, Docker would look for it on
        # Docker Hub and answer "pull access denied", which says nothing of the build.
        "docker run -d --rm --pull never --name jupyter -p 8888:8888 --shm-size 16G "
        f"{profile.docker_gpu_flags} "
        # The node's git checkout of the series, whole: the helpers beside the notebooks, and the
        # history, so MLflow records the commit of the code each run ran.
        f"-v {REMOTE_REPO}:{CONTAINER_SERIES} -v food11:/mnt -e PYTHONPATH={CONTAINER_SERIES} "
        f"-e MLFLOW_TRACKING_URI=http://{address}:8000/ -e FOOD11_DATA_DIR=/mnt/Food-11 "
        # MLflow's sign-in, the two lines of the env file the client reads, and none of the others.
        f"--env-file <({sign_in_command()}) "
        "jupyter-mlflow"
    )


def jupyter_url_command() -> str:
    """Prints the running Jupyter server (address, token, root folder) as JSON, one line per server."""
    return "docker exec jupyter jupyter server list --json"


def jupyter_url(listing: str, address: str, variant: str, notebook: str = "05_track_pytorch.ipynb") -> str | None:
    """The address to open `notebook` in the node's Jupyter, from `jupyter server list --json`: the node's
    public address in place of the container's own name, the notebook's path as the file browser shows
    it (relative to the server's root folder), and the token. None while no server is listed."""
    for line in listing.splitlines():
        try:
            server = json.loads(line)
        except ValueError:
            continue
        if not server.get("token"):
            continue
        root = PurePosixPath(server.get("root_dir") or CONTAINER_SERIES)
        path = PurePosixPath(CONTAINER_SERIES, "workspace_mlflow", variant, notebook)
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        return f"http://{address}:{server.get('port', 8888)}/lab/tree/{shown}?token={server['token']}"
    return None


EXECUTED = ".executed"  # at the top of the checkout: hidden, so a student's file browser does not show it


def executed_folder(variant: str) -> str:
    """Where a headless run leaves the node-side notebooks' executed copies."""
    return f"{REMOTE_REPO}/{EXECUTED}/{variant}"


def executed_path(variant: str, notebook: str) -> str:
    """Where a node-side notebook's executed copy lands on the node."""
    return f"{executed_folder(variant)}/{notebook}"


def executed_folder_command(variant: str) -> str:
    """Makes the folder for the executed copies (papermill does not make its output's folder)."""
    return f"mkdir -p {executed_folder(variant)}"


def node_notebook_command(variant: str, notebook: str) -> str:
    """Runs a node-side notebook with papermill inside the Jupyter container, as a student would run it there;
    with nobody at the keyboard, its check cells make the students' edits (the reference solutions)."""
    return (f"docker exec -w {CONTAINER_SERIES}/workspace_mlflow/{variant} jupyter papermill {notebook} "
            f"../../{EXECUTED}/{variant}/{notebook} -p apply_solution True")


def node_notebook_commands(variant: str, notebook: str) -> list[str]:
    """A headless run of a node-side notebook, in order: its output's folder, then the notebook."""
    return [executed_folder_command(variant), node_notebook_command(variant, notebook)]


def stop_commands() -> list[str]:
    return ["docker stop jupyter || true", f"{TRACKING} down"]


def ssh_command(address: str, key_file: str, remote: str = "", options: str = "") -> str:
    """What to type in a terminal to run `remote` on the node: python-chi's key, the node's address, and
    the remote command quoted, so that `~` and `$` mean the node's and not this computer's."""
    words = ["ssh", "-i", shlex.quote(key_file), *shlex.split(options), f"cc@{address}"]
    return " ".join(words + ([shlex.quote(remote)] if remote else []))


def password_command(address: str, key_file: str) -> str:
    """Prints MLflow's admin password: for a terminal, never a notebook's output."""
    return ssh_command(address, key_file, f"grep MLFLOW_TRACKING_PASSWORD {ENV_FILE}")

