"""The node's tracking stack in real containers: `docker/compose-tracking.yaml` as it is, with the CI
override swapping in only the images no registry can give here (the S3 endpoint, PostgreSQL).

`up --wait` ends healthy; PostgreSQL is not published and the S3 API only on loopback; MLflow asks
for a sign-in; a tracked training puts its rows in PostgreSQL and its files in the bucket; `down` then
`up` keeps runs, metric history, registered versions, accounts and artifacts.

The stack and its training are shared (`SHARED`) with test_tracking_stack_archive.py, which runs next
and archives what this module leaves: one `up` and one training fewer in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chi_helpers import credentials
from chi_helpers.containers import compose
from conftest import FAST_TRAINING, WORKSPACE
from tracking_history import account, http_status

PROJECT = "mlflow-ci-test"  # not the node's project name: a developer's own stack stays untouched
MLFLOW = "http://127.0.0.1:8000"
# The node's public address as the env file names it (TEST-NET-3, RFC 5737: reserved for examples). Nothing
# is sent there: requests go to the published port on 127.0.0.1 and name it in Host and Origin, as a
# browser that opened http://203.0.113.10:8000 would.
PUBLIC = "203.0.113.10"
MODEL = "food11-in-containers"  # registered by the restart test; the archive module makes it its champion
STUDENT = ("student2", "a-long-enough-password-2")  # the second account, made by the restart test
HERE = Path(__file__).resolve().parent


class SharedStack:
    """The one tracking stack, and its one tracked training, of this module and of
    test_tracking_stack_archive.py (which imports this module): a second `up` and a second training
    would cost about a minute of CI. Whichever module needs it first brings it up; after each module,
    `release` takes it down with its volumes unless a test still to run in this session uses it, so
    ports 8000/9000/9001 are free again for what follows (the twin's node listens on 8000)."""

    def __init__(self):
        self.project: compose.Project | None = None
        self.folder: Path | None = None  # its env files
        self.failed: str | None = None  # why it did not come up, so the next module does not try again
        self.run_id: str | None = None  # the tracked training's run, once there is one

    @property
    def values(self) -> dict:
        return credentials.read(self.project.env_file)  # the archive module swaps in new credentials

    def start(self, ci_base: str, request) -> compose.Project:
        if self.project:
            return self.project
        if self.failed:
            pytest.fail(f"the shared tracking stack did not come up earlier in this session: {self.failed}")
        for port in (8000, 9000, 9001):
            taken = compose.port_taken_by(port)
            if taken:
                pytest.fail(f"port {port} is taken, and the stack publishes it as on the node: stop what listens there\n{taken}")
        # Under /tmp, not pytest's folder: that one is root's alone, and the archive module runs the
        # node's commands as the node's user, who must read the env file.
        self.folder = Path(tempfile.mkdtemp(prefix="tracking-stack-"))
        env_file = self.folder / "mlflow-stack.env"
        credentials.write(env_file, PUBLIC)
        self.project = compose.Project(PROJECT, [compose.TRACKING_FILE, compose.CI_OVERRIDE], env_file)
        request.config.add_cleanup(self.stop)  # a session stopped early (-x, Ctrl-C) leaves nothing either
        try:
            self.project.down(volumes=True)  # what an interrupted earlier run may have left
            started = time.monotonic()
            self.project.build(f"BASE_IMAGE={ci_base}")
            built = time.monotonic()
            self.project.up()
        except BaseException as error:
            self.failed = f"{type(error).__name__}: {error}"
            self.stop()
            raise
        # Into the session's summary line: cold (images built) and warm (cached) runs tell apart by these.
        request.config.container_tests_note += (f"; images built in {built - started:.0f} s, "
                                                f"`up --wait` in {time.monotonic() - built:.0f} s")
        return self.project

    def release(self, request) -> None:
        """After a module's last test (`request`: its module-scoped fixture's): down, unless a test still
        to run in this session uses the stack."""
        items = request.session.items
        last = max((i for i, item in enumerate(items) if item.getparent(pytest.Module) is request.node), default=-1)
        later = [item for item in items[last + 1:] if "stack" in item.fixturenames and item.path.parent == HERE]
        if later and not (request.session.shouldstop or request.session.shouldfail) and self.project:
            self.project.clock.say(f"{PROJECT}: kept up for {later[0].path.name}")
            return
        self.stop()

    def stop(self) -> None:
        """Down with the volumes, whichever env file is in use now; nothing left behind."""
        try:
            if self.project:
                self.project.down(volumes=True)
        finally:
            self.project = None
            self.run_id = None
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None

    def train(self, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
        """The training script as a student runs it; needs a signed-in environment (`signed_in`)."""
        self.project.clock.say("training, tracked by the stack ...")
        return subprocess.run([sys.executable, str(WORKSPACE / "train_mlflow.py"), *FAST_TRAINING], cwd=cwd,
                              env={**os.environ, "FOOD11_DATA_DIR": str(data_dir)}, capture_output=True, text=True,
                              timeout=900)

    def trained(self, data_dir: Path, cwd: Path) -> str:
        """The shared training's run id: the training test's run, or a run made now where that test did
        not run in this session (a module run alone)."""
        if not self.run_id:
            import mlflow

            done = self.train(data_dir, cwd)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
            self.run_id = mlflow.search_runs(experiment_names=["food11-classifier"], output_format="list")[0].info.run_id
        return self.run_id


SHARED = SharedStack()


@pytest.fixture(scope="module")
def stack(docker_engine, ci_base, request):
    project = SHARED.start(ci_base, request)
    yield project, SHARED.values
    SHARED.release(request)


def client_settings(values: dict) -> dict[str, str]:
    """The environment of a client as in the node's Jupyter container: signed in, with the image's own
    MLflow settings (its presigned S3 URLs would name http://minio:9000, which a client off the Compose
    network cannot reach)."""
    settings = {"MLFLOW_TRACKING_URI": MLFLOW}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        settings[key] = values[key]
    dockerfile = (compose.REPO / "docker" / "Dockerfile.jupyter-mlflow-cuda").read_text()
    settings.update(re.findall(r"(MLFLOW_ENABLE_PROXY_MULTIPART_\w+)=(\S+)", dockerfile))
    return settings


def get(url: str, values: dict | None = None) -> int:
    return http_status(url, account(values) if values else None)


@pytest.fixture
def signed_in(stack, monkeypatch):
    project, values = stack
    for key, value in client_settings(values).items():
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
    # MinIO, archived and unpatched: its S3 API on loopback only, its console not published at all.
    assert published["minio"] == {("127.0.0.1", 9000)}
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


def ui_search(values: dict, address: str, origin: str | None = None) -> int:
    """What the MLflow UI's runs table asks (a POST, with the page's Origin), from a browser that opened
    http://<address>:8000."""
    return http_status(f"{MLFLOW}/ajax-api/2.0/mlflow/runs/search", account(values), {"experiment_ids": ["0"]},
                       {"Host": f"{address}:8000", "Origin": origin or f"http://{address}:8000"})


def test_the_ui_at_the_nodes_address_may_search_runs_and_nothing_else_may(stack):
    _, values = stack
    assert ui_search(values, PUBLIC) == 200
    assert ui_search(values, PUBLIC, origin="http://elsewhere.test") == 403  # another site's page
    assert ui_search(values, "elsewhere.test") == 403  # a Host it was not told (DNS rebinding)


def test_a_tracked_training_lands_in_postgres_and_the_bucket(signed_in, data_dir, tmp_path):
    import mlflow

    project, values = signed_in
    done = SHARED.train(data_dir, tmp_path)
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
    SHARED.run_id = run_id  # for the restart test, and the archive module's


def test_down_then_up_keeps_runs_history_versions_accounts_and_artifacts(signed_in, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    project, values = signed_in
    run_id = SHARED.run_id
    assert run_id, "runs after the training test, on the run it made"
    client = MlflowClient()
    model = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])[0]
    version = mlflow.register_model(model.model_uri, MODEL)
    AuthServiceClient(MLFLOW).create_user(*STUDENT)
    before = ([m.value for m in client.get_metric_history(run_id, "val_loss")],
              client.get_model_version(MODEL, version.version).run_id,
              open(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/gpu-info.txt", dst_path=str(tmp_path / "a"))).read())

    project.down()
    assert not [c for c in project.containers()], "down left containers"
    project.up()

    after = ([m.value for m in client.get_metric_history(run_id, "val_loss")],
             client.get_model_version(MODEL, version.version).run_id,
             open(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/gpu-info.txt", dst_path=str(tmp_path / "b"))).read())
    assert after == before and before[1] == run_id and before[0]
    assert AuthServiceClient(MLFLOW).get_user(STUDENT[0]).username == STUDENT[0]
    assert get(f"{MLFLOW}/api/2.0/mlflow/experiments/search?max_results=1") == 401


def test_a_new_address_is_followed_at_the_next_up(stack):
    """A node that comes back with another floating IP: `credentials.py write --address NEW` (notebook 04's
    first command) rewrites the address lines and keeps every secret, and `up` gives MLflow the new ones."""
    project, before = stack
    moved = "203.0.113.77"
    values, created = credentials.write(project.env_file, moved)
    assert not created and {k: v for k, v in values.items() if k not in credentials.ADDRESS_KEYS} == \
        {k: v for k, v in before.items() if k not in credentials.ADDRESS_KEYS}
    project.up()
    assert ui_search(values, moved) == 200 and ui_search(values, PUBLIC) == 403
