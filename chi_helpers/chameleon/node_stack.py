"""The commands that run the tracking stack, the data job and the Jupyter container on a node.

Only strings: the notebooks show them and send them to the node (`node.execute`), and a dry run
prints them. The Compose files and Dockerfiles they use are in `docker/`.
"""

from __future__ import annotations

from chi_helpers.variants import Variant

REMOTE_REPO = "~/mlflow-chi"  # where the node setup puts this repository
ENV_FILE = "~/mlflow-stack.env"  # the generated credentials; never leaves the node
TRACKING = f"docker compose --env-file {ENV_FILE} -f {REMOTE_REPO}/docker/compose-tracking.yaml"
DATA = f"docker compose -f {REMOTE_REPO}/docker/compose-data.yaml"
CONTAINER_SERIES = "/home/jovyan/work"  # where the Jupyter container sees REMOTE_REPO
SIGN_IN_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # what the MLflow client signs in with
SIGN_IN_LINES = "^MLFLOW_TRACKING_(USERNAME|PASSWORD)="  # those two lines of the env file


def data_commands() -> list[str]:
    return ["docker volume create food11", f"{DATA} up"]


def tracking_up_commands(address: str) -> list[str]:
    return [
        f"python3 {REMOTE_REPO}/chi_helpers/credentials.py write {ENV_FILE} --address {address}",
        f"{TRACKING} up -d --build --wait",
        f"{TRACKING} ps",
    ]


def console_credentials_command() -> str:
    """Prints the object store console's user and password (they live only in the env file)."""
    return f"python3 {REMOTE_REPO}/chi_helpers/credentials.py show-console {ENV_FILE}"


def sign_in_command() -> str:
    """Prints MLflow's sign-in (user and password): run it with its output hidden, or in a terminal."""
    return f"grep -E '{SIGN_IN_LINES}' {ENV_FILE}"


def jupyter_run_command(profile: Variant, address: str) -> str:
    # Safe to run again (a rerun of notebook 04): a container of that name already running is kept,
    # where a second `docker run --name jupyter` would fail with "name already in use".
    return (
        "docker ps -q --filter name=^jupyter$ | grep -q . || "
        "docker run -d --rm --name jupyter -p 8888:8888 --shm-size 16G "
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
    """Prints the Jupyter server's address with its access token."""
    return "docker exec jupyter jupyter server list"


def executed_path(variant: str, notebook: str) -> str:
    """Where a node-side notebook's executed copy lands on the node."""
    return f"{REMOTE_REPO}/workspace_mlflow/{variant}/executed/{notebook}"


def node_notebook_command(variant: str, notebook: str) -> str:
    """Runs a node-side notebook with papermill inside the Jupyter container, as a student would run it there."""
    return (f"docker exec -w {CONTAINER_SERIES}/workspace_mlflow/{variant} jupyter papermill {notebook} executed/{notebook} "
            f"-p variant {variant} -p target chameleon")


def stop_commands() -> list[str]:
    return ["docker stop jupyter || true", f"{TRACKING} down"]


def ssh_tunnel(address: str) -> str:
    """For those who want nothing but SSH open: the three UIs on this computer's localhost."""
    return f"ssh -L 8000:127.0.0.1:8000 -L 8888:127.0.0.1:8888 -L 9001:127.0.0.1:9001 cc@{address}"
