"""The node's Compose files and Dockerfiles, parsed: pinned images, no default secrets, safe ports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from chi_helpers import credentials
from chi_helpers.chameleon import node_stack
from chi_helpers.variants import VARIANTS

DOCKER = Path(__file__).resolve().parent.parent / "docker"
REPO = DOCKER.parent


def load(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


TRACKING = load("compose-tracking.yaml")
DATA = load("compose-data.yaml")
ALL = {"compose-tracking.yaml": TRACKING, "compose-data.yaml": DATA}


def services():
    return [(f, n, s) for f, c in ALL.items() for n, s in c["services"].items()]


@pytest.mark.parametrize("file,name,service", services(), ids=[f"{f}:{n}" for f, n, _ in services()])
def test_every_image_is_pinned(file, name, service):
    image = service["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and tag and tag != "latest", f"{file}:{name} uses {image!r}: pin a version"
    assert re.search(r"\d", tag), f"{file}:{name}: the tag {tag!r} names no version"


# Docker reads a reference without a registry as Docker Hub's, and Docker Hub no longer serves every
# image it once did (MinIO removed minio/minio and minio/mc in September 2026): a pull would answer
# "pull access denied". So every image the node pulls names its registry.
def names_its_registry(image: str) -> bool:
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


@pytest.mark.parametrize("image", ["minio/minio:RELEASE.2025-09-07T16-13-09Z", "minio/mc:RELEASE.2025-08-13T08-35-41Z",
                                   "postgres:16.4", "rocm/pytorch:rocm6.4.1", "library/python:3.11"])
def test_a_reference_without_a_registry_is_refused(image):
    assert not names_its_registry(image)


def built_here(file: str) -> set[str]:
    """The images a Compose file builds on the node (`build:`, never pulled)."""
    return {s["image"] for s in ALL[file]["services"].values() if s.get("build") and s.get("pull_policy") == "never"}


def pulled_images() -> list[tuple[str, str]]:
    """(where, image) for every image the node pulls: Compose services whose image is not built here
    (by the service itself, or by another of the same file, as `archive` uses the server's), and each
    Dockerfile's production base."""
    found = [(f"{file}:{name}", service["image"]) for file, name, service in services()
             if not (service.get("pull_policy") == "never" and service["image"] in built_here(file))]
    for dockerfile in sorted(DOCKER.glob("Dockerfile.*")):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("ARG BASE_IMAGE="):
                found.append((dockerfile.name, line.split("=", 1)[1]))
            elif line.startswith("FROM ") and "${" not in line:
                found.append((dockerfile.name, line.split()[1]))
    return found


def test_every_pulled_image_names_its_registry():
    images = pulled_images()
    assert len(images) >= 7  # minio, mc, postgres, the data job, three Dockerfile bases
    for where, image in images:
        assert names_its_registry(image), f"{where}: {image!r} names no registry (write docker.io/..., quay.io/...)"
    assert {image for _, image in images} >= {"quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z",
                                               "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"}


def test_images_built_on_the_node_are_never_pulled():
    built = [(name, service) for _, name, service in services() if service.get("build")]
    assert built, "the MLflow server image is built from docker/Dockerfile.mlflow-server"
    for name, service in built:
        assert service.get("pull_policy") == "never", f"{name}: a missing image would be looked for in a registry"
    # A service that is never pulled and builds nothing runs an image another service of its file builds
    # (else `compose run` would answer "No such image").
    for file, name, service in services():
        if service.get("pull_policy") == "never" and not service.get("build"):
            assert service["image"] in built_here(file), f"{file}:{name}: {service['image']} is built by no service"


def test_secrets_come_only_from_required_variables():
    text = (DOCKER / "compose-tracking.yaml").read_text()
    for variable in credentials.REQUIRED:
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses, f"{variable} is not used"
        assert all(u.startswith(":?") for u in uses), f"{variable} has a default or may be empty: {uses}"
    for name, service in TRACKING["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|USER(NAME)?$|ACCESS_KEY", key):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}.{key} is not from a required variable"
    # No literal credential anywhere: every password-like assignment refers to a variable.
    assert not re.search(r"(PASSWORD|SECRET)[A-Z_]*: \"?[^$\s\"]", text)


def test_mlflow_asks_for_a_sign_in_with_the_generated_admin():
    mlflow = TRACKING["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"].startswith("${MLFLOW_TRACKING_USERNAME:?")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SERVER_SECRET_KEY:?")
    # The auth database: named in the image's config, made by PostgreSQL's first start, and
    # signed in to with the stack's PostgreSQL account.
    config = (DOCKER / "mlflow-auth.ini").read_text()
    settings = dict(re.findall(r"^(\w+) = (.+)$", config, re.M))
    assert settings["default_permission"] == "NO_PERMISSIONS"
    assert int(settings["auth_cache_ttl_seconds"]) > 0  # else a PBKDF2 check per request: 0.44 s each here
    assert settings["database_uri"] == "postgresql+psycopg://postgres:5432/mlflow_auth"
    assert not re.search(r"admin_password|://[^/]*@", config), "no secret in a committed file"
    init = TRACKING["services"]["postgres"]["volumes"]
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in init
    assert "CREATE DATABASE mlflow_auth;" in (DOCKER / "postgres-init" / "mlflow-auth-database.sql").read_text()
    assert env["PGUSER"].startswith("${POSTGRES_USER:?") and env["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    server = (DOCKER / "Dockerfile.mlflow-server").read_text()
    assert "COPY docker/mlflow-auth.ini /etc/mlflow/auth.ini" in server
    assert "ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/auth.ini" in server
    # The build context is the repository: only that file goes in.
    assert (REPO / ".dockerignore").read_text().split("\n")[-3:] == ["*", "!docker/mlflow-auth.ini", ""]


PRODUCTION_BASES = {
    "Dockerfile.mlflow-server": "docker.io/library/python:3.11.9-slim-bookworm",
    "Dockerfile.jupyter-mlflow-cuda": "quay.io/jupyter/pytorch-notebook:cuda12-2025-08-18",
    "Dockerfile.jupyter-mlflow-rocm": "docker.io/rocm/pytorch:rocm6.4.1_ubuntu24.04_py3.12_pytorch_release_2.6.0",
}


@pytest.mark.parametrize("dockerfile", sorted(PRODUCTION_BASES))
def test_every_dockerfile_takes_its_base_as_an_argument_defaulting_to_production(dockerfile):
    lines = [line for line in (DOCKER / dockerfile).read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == f"ARG BASE_IMAGE={PRODUCTION_BASES[dockerfile]}"
    assert lines[1] == "FROM ${BASE_IMAGE}"
    assert sum(line.startswith("FROM") for line in lines) == 1


def test_only_mlflow_faces_the_internet():
    """PostgreSQL is not published; MinIO, archived and unpatched, only its S3 API on the node's loopback (its
    console nowhere); MLflow, behind its sign-in, is the one public port."""
    assert "ports" not in TRACKING["services"]["postgres"]
    assert TRACKING["services"]["minio"]["ports"] == ["127.0.0.1:9000:9000"]
    public = [(name, port) for name, service in TRACKING["services"].items() for port in service.get("ports", [])
              if not str(port).startswith("127.0.0.1:")]
    assert public == [("mlflow", "8000:8000")]


def test_mlflow_allows_only_the_hosts_and_the_origin_it_is_given():
    command = " ".join(TRACKING["services"]["mlflow"]["command"])
    assert "--allowed-hosts=${MLFLOW_ALLOWED_HOSTS:?" in command
    assert "--cors-allowed-origins=${MLFLOW_CORS_ALLOWED_ORIGINS:?" in command
    assert "*" not in credentials.allowed_hosts("129.114.1.2") and "*" not in credentials.cors_origins("129.114.1.2")
    assert "--serve-artifacts" in command and "--artifacts-destination=s3://mlflow-artifacts/" in command
    env = TRACKING["services"]["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://") and env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflowdb")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_long_running_services_have_healthchecks_and_restart_policies():
    for name, service in TRACKING["services"].items():
        if service.get("restart") == "no":
            continue  # a one-shot job
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service["restart"] in {"unless-stopped", "always", "on-failure"}


def test_dependencies_wait_for_health_or_completion():
    deps = TRACKING["services"]["mlflow"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["minio-create-bucket"]["condition"] == "service_completed_successfully"
    bucket = TRACKING["services"]["minio-create-bucket"]
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing store/mlflow-artifacts" in " ".join(bucket["command"])


# The one host folder a container writes to: where `archive` puts the archives it makes (cc's own,
# ~/mlflow-archives on the node; MLFLOW_ARCHIVE_DIR names another).
ARCHIVES_MOUNT = f"${{MLFLOW_ARCHIVE_DIR:-~/{node_stack.ARCHIVES}}}:{node_stack.CONTAINER_ARCHIVES}"


def mount_source(mount: str) -> str:
    """A short-syntax mount's source, a `${VAR:-default}` whole (its `:-` is not the separator)."""
    return re.match(r"(\$\{[^}]*\}|[^:]*)", mount)[1]


def test_volumes_are_named():
    for file, compose in ALL.items():
        declared = set(compose.get("volumes") or {})
        for name, service in compose["services"].items():
            for mount in service.get("volumes", []):
                source = mount_source(mount)
                if (file, name, mount) == ("compose-tracking.yaml", "archive", ARCHIVES_MOUNT):
                    continue  # held to its place in test_the_archive_service_is_a_one_shot_job_like_the_server
                if source.startswith((".", "/", "~", "$")):
                    assert mount.endswith(":ro"), f"{file}:{name} mounts {source} writable"
                else:
                    assert source in declared, f"{file}:{name} uses undeclared volume {source}"


def test_a_mount_source_with_a_default_is_read_whole():
    assert mount_source(ARCHIVES_MOUNT) == "${MLFLOW_ARCHIVE_DIR:-~/mlflow-archives}"
    assert mount_source("minio-data:/data") == "minio-data" and mount_source("..:/series:ro") == ".."


def test_the_archive_service_is_a_one_shot_job_like_the_server():
    """`archive` is not started by `up` (a profile), runs once (`compose run --rm`), with the server's
    image and its way to the databases and the bucket; the series' code read-only, the archives folder
    the node's commands name."""
    archive, server = TRACKING["services"]["archive"], TRACKING["services"]["mlflow"]
    assert archive["profiles"] == ["archive"] and archive["restart"] == "no"
    assert "ports" not in archive and "healthcheck" not in archive
    assert archive["image"] == server["image"] and archive["pull_policy"] == "never"
    env, server_env = archive["environment"], server["environment"]
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "PGUSER", "PGPASSWORD"):
        assert env[key] == server_env[key], key
    assert f"--artifacts-destination={env['MLFLOW_ARTIFACTS_DESTINATION']}" in server["command"]
    assert {name: d["condition"] for name, d in archive["depends_on"].items()} == \
        {"postgres": "service_healthy", "minio": "service_healthy"}
    assert archive["entrypoint"] == ["python", "-m", "chi_helpers.archive"]
    assert env["PYTHONPATH"] == "/series" and "..:/series:ro" in archive["volumes"]
    assert (REPO / "chi_helpers" / "archive" / "__main__.py").is_file()
    assert ARCHIVES_MOUNT in archive["volumes"] and len(archive["volumes"]) == 2
    # The node's commands: the service's own folder, and the file owned by the user who ran them.
    for command in (node_stack.archive_command("h.tar"), node_stack.restore_command("h.tar")):
        assert command.startswith(f"mkdir -p ~/{node_stack.ARCHIVES} && {node_stack.TRACKING} run --rm ")
        assert '--user "$(id -u):$(id -g)" archive ' in command and f" {node_stack.CONTAINER_ARCHIVES}/h.tar" in command


def test_the_data_job_runs_the_organizer_code_and_is_idempotent():
    job = DATA["services"]["fetch-food11"]
    assert "../chi_helpers/food11.py:/opt/food11.py:ro" in job["volumes"]
    assert job["command"] == ["python", "/opt/food11.py", "fetch", "/data/Food-11"]
    assert job["restart"] == "no" and DATA["volumes"]["food11"]["external"] is True
    # fetch does nothing when the volume is complete: tested on real files in test_food11.py.
    assert (REPO / "chi_helpers" / "food11.py").exists()


def pinned_mlflow(text: str) -> set[str]:
    return set(re.findall(r"mlflow(?:\[[\w,]+\])?==([\d.]+)", text))


def test_one_mlflow_version_everywhere():
    versions = pinned_mlflow((REPO / "requirements.txt").read_text())
    assert len(versions) == 1
    for dockerfile in ("Dockerfile.mlflow-server", "Dockerfile.jupyter-mlflow-cuda", "Dockerfile.jupyter-mlflow-rocm"):
        assert pinned_mlflow((DOCKER / dockerfile).read_text()) == versions, dockerfile
    # What a notebook's setup cell installs where a kernel lacks MLflow: the same client.
    from chi_helpers.kernel_setup import PROVIDERS
    assert pinned_mlflow(PROVIDERS["mlflow"]) == versions
    assert TRACKING["services"]["mlflow"]["image"] == f"mlflow-server:{versions.pop()}"


def test_server_image_carries_its_drivers_and_jupyter_images_their_gpu_library():
    server = (DOCKER / "Dockerfile.mlflow-server").read_text()
    assert "psycopg[binary]==" in server and "boto3==" in server
    cuda = (DOCKER / "Dockerfile.jupyter-mlflow-cuda").read_text()
    rocm = (DOCKER / "Dockerfile.jupyter-mlflow-rocm").read_text()
    assert "nvidia-ml-py==" in cuda and "lightning==" in cuda
    assert "pyrsmi==" in rocm and "ENV NCCL_P2P_DISABLE=1" in rocm and "lightning==" in rocm


def test_each_variant_points_at_a_dockerfile_that_exists():
    for profile in VARIANTS.values():
        assert (REPO / profile.jupyter_dockerfile).exists(), profile.jupyter_dockerfile


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_jupyter_run_command_per_variant(variant):
    profile = VARIANTS[variant]
    command = node_stack.jupyter_run_command(profile, "129.114.1.2")
    assert "--shm-size 16G" in command and "-p 8888:8888" in command
    # The node's git checkout, whole: the helpers beside the notebooks (one version, none baked into the
    # image) and the history MLflow reads each run's commit from.
    assert "-v ~/mlflow-chi:/home/jovyan/work" in command and "-v food11:/mnt" in command
    assert "-e MLFLOW_TRACKING_URI=http://129.114.1.2:8000/" in command
    assert "-e FOOD11_DATA_DIR=/mnt/Food-11" in command
    assert "-e PYTHONPATH=/home/jovyan/work" in command and "chi_helpers:" not in command
    # MLflow's sign-in, and nothing else from the stack's secrets.
    assert "--env-file <(grep -E '^MLFLOW_TRACKING_(USERNAME|PASSWORD)=' ~/mlflow-stack.env)" in command
    if variant == "amd":
        assert "--device=/dev/kfd --device=/dev/dri --group-add video" in command
        assert "--group-add $(getent group render | cut -d: -f3)" in command  # the host's render gid
        assert "--gpus" not in command
    else:
        assert "--gpus all" in command and "/dev/kfd" not in command


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.jupyter-mlflow-cuda", "docker/Dockerfile.jupyter-mlflow-rocm"])
def test_the_jupyter_images_let_git_read_the_node_users_checkout(dockerfile):
    # Without it git, and MLflow through GitPython, refuse a repository another user owns, and runs
    # would silently record no commit.
    assert "ENV GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0=*" in (REPO / dockerfile).read_text()


def test_tracking_commands_use_the_env_file():
    up = node_stack.tracking_up_commands("129.114.1.2")
    assert up[0].endswith("credentials.py write ~/mlflow-stack.env --address 129.114.1.2")
    assert all("--env-file ~/mlflow-stack.env" in c for c in up[1:])
    assert "--env-file ~/mlflow-stack.env" in node_stack.stop_commands()[1]


def test_the_ci_override_swaps_images_and_nothing_else():
    """CI runs the production file with docker/ci/compose-ci.yaml on top: only `image` (and how to
    build the stand-in) may differ, so what CI checks is what the node runs."""
    override = load("ci/compose-ci.yaml")
    assert set(override) == {"services"}
    assert set(override["services"]) == {"minio", "minio-create-bucket", "postgres"}
    for name, service in override["services"].items():
        assert set(service) <= {"image", "build"}, f"{name} overrides {set(service) - {'image', 'build'}}"
        assert service["image"].startswith("mlflow-ci/") and service["image"] != TRACKING["services"][name]["image"]
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file()  # from docker/
    # The stand-in Dockerfiles build on the base made here, as the production ones can.
    for dockerfile in ("Dockerfile.s3", "Dockerfile.postgres"):
        lines = [l for l in (DOCKER / "ci" / dockerfile).read_text().splitlines() if l and not l.startswith("#")]
        assert lines[:2] == ["ARG BASE_IMAGE=mlflow-ci/python:bookworm", "FROM ${BASE_IMAGE}"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.jupyter-mlflow-cuda", "Dockerfile.jupyter-mlflow-rocm"])
def test_jupyter_clients_take_artifacts_through_the_server(dockerfile):
    """With S3 behind it, the server offers presigned URLs naming http://minio:9000, which a container
    outside the Compose network cannot reach (tests/containers/ shows the download that needs this)."""
    env = dict(re.findall(r"(MLFLOW_ENABLE_PROXY_MULTIPART_\w+)=(\S+)", (DOCKER / dockerfile).read_text()))
    assert env == {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.jupyter-mlflow-cuda", "Dockerfile.jupyter-mlflow-rocm"])
def test_the_jupyter_images_run_as_the_nodes_user_id(dockerfile):
    """The container writes into the node's checkout (git objects, the edited script, checkpoints): as uid
    1000, the node's `cc`, so that the next `git fetch` of notebook 02 there still works. The CUDA base runs
    as jovyan (1000) already; ROCm's runs as root unless told."""
    lines = [line for line in (DOCKER / dockerfile).read_text().splitlines() if line.startswith("USER ")]
    assert lines in ([], ["USER 1000"]) and ("rocm" not in dockerfile or lines == ["USER 1000"])


def test_installs_over_the_rocm_base_keep_its_torch():
    text = (DOCKER / "Dockerfile.jupyter-mlflow-rocm").read_text()
    keep = re.search(r"print\(f'torch==\{torch.__version__\}.*numpy==\{numpy.__version__\}'\)\" > (\S+)", text)
    assert keep, "the base's torch, torchvision and numpy versions are written to a constraints file"
    assert f"pip install --no-cache-dir -c {keep[1]} " in text and f"ENV PIP_CONSTRAINT={keep[1]}" in text
