"""The node's topology as processes: MLflow on a fresh PostgreSQL database, artifacts in an S3 bucket."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import mlflow
import psycopg
import pytest
from mlflow import MlflowClient

from chi_helpers.local import object_store as local_object_store
from chi_helpers.local import stack as local_stack
from chi_helpers.local import postgres
from chi_helpers.local import processes
from conftest import FAST_TRAINING, WORKSPACE

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    database = f"{PG}/mlflow_test_{secrets.token_hex(4)}"  # a fresh database for this session
    state_dir = tmp_path_factory.mktemp("production")
    options = dict(port=processes.free_port(), backend_store_uri=database, object_store=True)
    stack = local_stack.up(state_dir, **options)
    yield {"stack": stack, "state_dir": state_dir, "database": database, "options": options}
    local_stack.down(state_dir)
    postgres.drop_database(database)


@pytest.fixture(scope="module")
def trained(topology, data_dir, tmp_path_factory):
    """One tracked training through the stack, and its model registered through the API."""
    url = topology["stack"].url
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "FOOD11_DATA_DIR": str(data_dir)}
    done = subprocess.run([sys.executable, str(WORKSPACE / "train_mlflow.py"), *FAST_TRAINING],
                          cwd=tmp_path_factory.mktemp("train"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("food11-classifier")
    [run] = client.search_runs([experiment.experiment_id])
    mlflow.set_tracking_uri(url)
    try:
        version = mlflow.register_model(f"runs:/{run.info.run_id}/food11", "food11-staging")
    finally:
        mlflow.set_tracking_uri(None)
    return client, run, version


def bucket_keys(state_dir) -> list[str]:
    store = local_object_store.read_state(state_dir)
    return [o["Key"] for o in store.s3().list_objects_v2(Bucket=store.bucket).get("Contents", [])]


def test_runs_live_in_postgresql(topology, trained):
    _, run, _ = trained
    uri = topology["database"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(uri) as connection:
        rows = connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)).fetchall()
        params = connection.execute("SELECT count(*) FROM params WHERE run_uuid = %s", (run.info.run_id,)).fetchone()
    assert rows == [("FINISHED",)] and params[0] == len(run.data.params)


def test_artifacts_and_the_model_land_in_the_bucket(topology, trained):
    _, run, _ = trained
    keys = bucket_keys(topology["state_dir"])
    assert any(k.endswith(f"{run.info.run_id}/artifacts/gpu-info.txt") for k in keys)
    assert any(k.endswith("/artifacts/MLmodel") for k in keys)
    assert any(k.endswith("/artifacts/data/model.pth") for k in keys)
    assert not any((topology["state_dir"] / "artifacts").glob("**/*")), "nothing goes to local disk"


def test_registry_and_download_through_the_stack(topology, trained, tmp_path):
    client, run, version = trained
    assert version.version == "1" and version.run_id == run.info.run_id
    [found] = client.search_model_versions("name='food11-staging'")
    mlflow.set_tracking_uri(topology["stack"].url)
    try:
        local = mlflow.artifacts.download_artifacts(found.source, dst_path=str(tmp_path / "model"))
    finally:
        mlflow.set_tracking_uri(None)
    assert (tmp_path / "model" / "data" / "model.pth").stat().st_size > 1_000_000 and local


def test_everything_survives_a_restart_of_the_server(topology, trained, tmp_path):
    client, run, version = trained
    state_dir, old = topology["state_dir"], topology["stack"]
    store_before = local_object_store.read_state(state_dir)
    history_before = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]

    processes.stop_tree(old.pid)  # the MLflow server goes away; PostgreSQL and the bucket stay
    assert not processes.http_ok(old.health_url)
    new = local_stack.up(state_dir, **topology["options"])
    assert new.pid != old.pid
    assert local_object_store.read_state(state_dir).pid == store_before.pid  # same store, reused

    client = MlflowClient(new.url)
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.params == run.data.params
    assert again.data.metrics == run.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")] == history_before
    [kept] = client.search_model_versions("name='food11-staging'")
    assert kept.version == version.version and kept.run_id == run.info.run_id
    text = client.download_artifacts(run.info.run_id, "gpu-info.txt", str(tmp_path))
    assert open(text).read().strip()
    topology["stack"] = new


def test_down_stops_the_server_and_the_store(tmp_path):
    database = f"{PG}/mlflow_test_{secrets.token_hex(4)}"
    try:
        stack = local_stack.up(tmp_path, port=processes.free_port(), backend_store_uri=database, object_store=True)
        store = local_object_store.read_state(tmp_path)
        assert local_stack.down(tmp_path)
        assert not processes.is_running(stack.pid) and not processes.is_running(store.pid)
        assert local_object_store.read_state(tmp_path) is None
    finally:
        postgres.drop_database(database)


def test_an_unreachable_postgresql_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="cannot reach PostgreSQL"):
        local_stack.up(tmp_path, port=processes.free_port(),
                       backend_store_uri="postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    assert local_stack.read_state(tmp_path) is None
