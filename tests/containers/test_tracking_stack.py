"""The node's tracking stack in real containers: `docker/compose-tracking.yaml` as it is, with the CI
override swapping in only the images no registry can give here (the S3 endpoint, PostgreSQL).

`up --wait` ends healthy; PostgreSQL is not published and the S3 API only on loopback; MLflow asks
for a sign-in; a tracked training puts its rows in PostgreSQL and its files in the bucket; `down` then
`up` keeps runs, metric history, registered versions, accounts and artifacts.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from chi_helpers import credentials
from chi_helpers.containers import compose
from conftest import FAST_TRAINING, WORKSPACE

PROJECT = "mlflow-ci-test"  # not the node's project name: a developer's own stack stays untouched
MLFLOW = "http://127.0.0.1:8000"
TRAINED: dict[str, str] = {}  # the training test's run, for the restart test after it


@pytest.fixture(scope="module")
def stack(docker_engine, ci_base, tmp_path_factory, request):
    for port in (8000, 9000, 9001):
        taken = compose.port_taken_by(port)
        if taken:
            pytest.fail(f"port {port} is taken, and the stack publishes it as on the node: stop what listens there\n{taken}")
    env_file = tmp_path_factory.mktemp("stack-env") / "mlflow-stack.env"
    credentials.write(env_file, "127.0.0.1")
    project = compose.Project(PROJECT, [compose.TRACKING_FILE, compose.CI_OVERRIDE], env_file)
    project.down(volumes=True)  # what an interrupted earlier run may have left
    started = time.monotonic()
    project.build(f"BASE_IMAGE={ci_base}")
    built = time.monotonic()
    project.up()
    # Into the session's summary line: cold (images built) and warm (cached) runs tell apart by these.
    request.config.container_tests_note += (f"; images built in {built - started:.0f} s, "
                                            f"`up --wait` in {time.monotonic() - built:.0f} s")
    yield project, credentials.read(env_file)
    project.down(volumes=True)


def get(url: str, values: dict | None = None) -> int:
    request = urllib.request.Request(url)
    if values:
        token = f"{values['MLFLOW_TRACKING_USERNAME']}:{values['MLFLOW_TRACKING_PASSWORD']}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def signed_in(stack, monkeypatch):
    """A client as in the node's Jupyter container: signed in, with the image's own MLflow settings (its
    presigned S3 URLs would name http://minio:9000, which a client off the Compose network cannot reach)."""
    project, values = stack
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, values[key])
    dockerfile = (compose.REPO / "docker" / "Dockerfile.jupyter-mlflow-cuda").read_text()
    for key, value in re.findall(r"(MLFLOW_ENABLE_PROXY_MULTIPART_\w+)=(\S+)", dockerfile):
        monkeypatch.setenv(key, value)
    return project, values


def s3_client(values: dict):
    import boto3

    return boto3.client("s3", endpoint_url="http://127.0.0.1:9000", aws_access_key_id=values["MINIO_ROOT_USER"],
                        aws_secret_access_key=values["MINIO_ROOT_PASSWORD"], region_name="us-east-1")


def psql(project: compose.Project, values: dict, query: str, database: str = "mlflowdb") -> str:
    return project.capture("exec", "-T", "postgres", "psql", "-U", values["POSTGRES_USER"], "-d", database,
                           "-tAc", query).strip()


def test_up_wait_ends_with_every_service_healthy(stack):
    project, _ = stack
    by_service = {c["Service"]: c for c in project.containers()}
    assert set(by_service) == {"minio", "minio-create-bucket", "postgres", "mlflow"}
    for service in ("minio", "postgres", "mlflow"):
        assert by_service[service]["State"] == "running" and by_service[service]["Health"] == "healthy", by_service[service]
    assert by_service["minio-create-bucket"]["State"] == "exited" and by_service["minio-create-bucket"]["ExitCode"] == 0


def test_only_mlflow_is_published_beyond_loopback(stack):
    project, values = stack
    published = {c["Service"]: {(p.get("URL"), p.get("PublishedPort")) for p in c.get("Publishers") or []
                                if p.get("PublishedPort")}
                 for c in project.containers()}
    assert published["postgres"] == set()
    everywhere = lambda port: {("0.0.0.0", port), ("::", port)}  # the engine binds IPv6 too where it has it
    # MinIO, archived and unpatched: its API and console on loopback only (an SSH tunnel reaches them).
    assert published["minio"] == {("127.0.0.1", 9000), ("127.0.0.1", 9001)}
    assert ("0.0.0.0", 8000) in published["mlflow"] and published["mlflow"] <= everywhere(8000)
    buckets = [b["Name"] for b in s3_client(values).list_buckets()["Buckets"]]
    assert buckets == ["mlflow-artifacts"]  # made by the one-shot service


def test_mlflow_refuses_without_sign_in(stack):
    """The production Compose file and a generated env file: a stranger at the MLflow port gets 401."""
    _, values = stack
    assert get(f"{MLFLOW}/health") == 200
    for path in ("/", "/api/2.0/mlflow/experiments/search?max_results=1", "/api/2.0/mlflow-artifacts/artifacts"):
        assert get(MLFLOW + path) == 401, path
        assert get(MLFLOW + path, {**values, "MLFLOW_TRACKING_PASSWORD": "guess"}) == 401, path
        assert get(MLFLOW + path, values) == 200, path


def test_a_tracked_training_lands_in_postgres_and_the_bucket(signed_in, data_dir, tmp_path):
    import mlflow

    project, values = signed_in
    done = subprocess.run([sys.executable, str(WORKSPACE / "train_mlflow.py"), *FAST_TRAINING], cwd=tmp_path,
                          env={**os.environ, "FOOD11_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = mlflow.search_runs(experiment_names=["food11-classifier"], output_format="list")[0]
    run_id = run.info.run_id
    assert psql(project, values, f"select status from runs where run_uuid = '{run_id}'") == "FINISHED"
    assert int(psql(project, values, f"select count(*) from metrics where run_uuid = '{run_id}' and key = 'val_loss'")) >= 3
    keys = [o["Key"] for o in s3_client(values).list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]
    assert any(k.startswith(f"{run.info.experiment_id}/{run_id}/artifacts/") for k in keys), keys
    assert any(k.endswith("/MLmodel") for k in keys), keys  # the logged model's files
    # The auth app's accounts are in PostgreSQL too, in their own database.
    assert psql(project, values, "select username from users", database="mlflow_auth") == "admin"
    TRAINED["run_id"] = run_id


def test_down_then_up_keeps_runs_history_versions_accounts_and_artifacts(signed_in, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    project, values = signed_in
    run_id = TRAINED.get("run_id")
    assert run_id, "runs after the training test, on the run it made"
    client = MlflowClient()
    model = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])[0]
    version = mlflow.register_model(model.model_uri, "food11-in-containers")
    AuthServiceClient(MLFLOW).create_user("student2", "a-long-enough-password-2")
    before = ([m.value for m in client.get_metric_history(run_id, "val_loss")],
              client.get_model_version("food11-in-containers", version.version).run_id,
              open(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/gpu-info.txt", dst_path=str(tmp_path / "a"))).read())

    project.down()
    assert not [c for c in project.containers()], "down left containers"
    project.up()

    after = ([m.value for m in client.get_metric_history(run_id, "val_loss")],
             client.get_model_version("food11-in-containers", version.version).run_id,
             open(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/gpu-info.txt", dst_path=str(tmp_path / "b"))).read())
    assert after == before and before[1] == run_id and before[0]
    assert AuthServiceClient(MLFLOW).get_user("student2").username == "student2"
    assert get(f"{MLFLOW}/api/2.0/mlflow/experiments/search?max_results=1") == 401
