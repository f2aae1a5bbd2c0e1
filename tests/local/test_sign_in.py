"""MLflow's sign-in (`stack up --auth`): the same auth app as the node's stack, on a real server.

Without credentials, or with wrong ones, the API, the UI and the artifact proxy answer 401; the
admin account from the env file logs a run (a real training script, signed in through the
environment), registers a model and downloads it. A user added later sees nothing, and the
password shows in no log, state file or output.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from chi_helpers import credentials
from chi_helpers.local import processes
from chi_helpers.local import stack as local_stack
from conftest import FAST_TRAINING, WORKSPACE


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("locked-stack")
    port = processes.free_port()
    up = subprocess.run([sys.executable, "-m", "chi_helpers", "stack", "up", "--auth", "--state-dir", str(state_dir),
                         "--port", str(port)], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    stack = local_stack.read_state(state_dir)
    yield stack, credentials.read(state_dir / local_stack.AUTH_ENV_FILE), up.stdout + up.stderr
    local_stack.down(state_dir)


def call(url: str, method: str = "GET", user: str | None = None, password: str | None = None,
         data: bytes | None = None) -> tuple[int, "email.message.Message", bytes]:
    request = urllib.request.Request(url, method=method, data=data)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def signed_in(locked, monkeypatch):
    stack, values, _ = locked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", values["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", values["MLFLOW_TRACKING_PASSWORD"])
    return stack, values


LOCKED_DOORS = [
    ("GET", "/api/2.0/mlflow/experiments/search?max_results=10"),  # the REST API
    ("GET", "/"),  # the UI
    ("GET", "/ajax-api/2.0/mlflow/runs/search"),  # what the UI's pages call
    ("GET", "/api/2.0/mlflow-artifacts/artifacts"),  # the artifact proxy: list
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/intruder/note.txt"),  # and store
]


@pytest.mark.parametrize("method,path", LOCKED_DOORS)
def test_no_or_wrong_credentials_get_401(locked, method, path):
    stack, values, _ = locked
    data = b"stored by a stranger" if method == "PUT" else None
    status, headers, _ = call(stack.url + path, method, data=data)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic"), "a browser would not ask for a sign-in"
    for user, password in ((values["MLFLOW_TRACKING_USERNAME"], "wrong-" + values["MLFLOW_TRACKING_PASSWORD"]),
                           ("nobody", values["MLFLOW_TRACKING_PASSWORD"])):
        assert call(stack.url + path, method, user, password, data=data)[0] == 401
    assert not (local_stack.Path(stack.artifacts_destination) / "intruder").exists()


def test_health_answers_without_sign_in(locked):
    """Compose's healthcheck and `stack up` ask /health, unsigned."""
    stack, _, _ = locked
    assert call(stack.health_url)[0] == 200


def test_the_training_script_signs_in_through_the_environment(signed_in, data_dir, tmp_path):
    import mlflow

    stack, values = signed_in
    done = subprocess.run([sys.executable, str(WORKSPACE / "train_mlflow.py"), *FAST_TRAINING],
                          cwd=tmp_path, env={**os.environ, "FOOD11_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["food11-classifier"], output_format="list")
    assert runs and runs[0].info.status == "FINISHED" and "test_accuracy" in runs[0].data.metrics
    assert values["MLFLOW_TRACKING_PASSWORD"] not in done.stdout + done.stderr


def test_the_admin_logs_registers_and_downloads_a_model(signed_in, tmp_path):
    import mlflow
    import mlflow.pyfunc

    stack, values = signed_in

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[float]) -> list[float]:
            return [2 * x for x in model_input]

    mlflow.set_experiment("sign-in-check")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_metric("loss", 0.5)
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    version = mlflow.register_model(info.model_uri, "signed-in-model")
    assert version.version == "1"
    local = mlflow.artifacts.download_artifacts(f"models:/signed-in-model/{version.version}", dst_path=str(tmp_path))
    assert os.path.exists(os.path.join(local, "MLmodel"))
    # The same files through the artifact proxy, signed in by hand.
    listing_url = f"{stack.url}/api/2.0/mlflow-artifacts/artifacts?path={run.info.experiment_id}"
    status, _, body = call(listing_url, user=values["MLFLOW_TRACKING_USERNAME"], password=values["MLFLOW_TRACKING_PASSWORD"])
    assert status == 200 and json.loads(body).get("files"), body
    assert call(listing_url)[0] == 401


def test_a_user_added_later_sees_nothing(signed_in):
    import mlflow
    from mlflow.server.auth.client import AuthServiceClient

    stack, values = signed_in
    experiment_id = mlflow.set_experiment("admins-only").experiment_id
    AuthServiceClient(stack.url).create_user("student2", "a-long-enough-password-2")
    status, _, _ = call(f"{stack.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                        user="student2", password="a-long-enough-password-2")
    assert status == 403
    status, _, _ = call(f"{stack.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
                        user=values["MLFLOW_TRACKING_USERNAME"], password=values["MLFLOW_TRACKING_PASSWORD"])
    assert status == 200


def test_the_password_is_in_no_log_or_state(locked):
    stack, values, output = locked
    password = values["MLFLOW_TRACKING_PASSWORD"]
    assert "sign in as admin" in output and local_stack.AUTH_ENV_FILE in output
    for path in local_stack.Path(stack.log).parent.iterdir():
        if path.is_file() and path.name != local_stack.AUTH_ENV_FILE and path.suffix != ".db":
            assert password not in path.read_text(errors="replace"), path
    assert oct(os.stat(stack.auth_file).st_mode & 0o777) == "0o600"
    status = subprocess.run([sys.executable, "-m", "chi_helpers", "stack", "status", "--state-dir",
                             os.path.dirname(stack.log), "--json"], capture_output=True, text=True)
    assert password not in status.stdout and json.loads(status.stdout)["auth_file"] == stack.auth_file


def test_an_open_server_is_not_reused_for_a_locked_one(mlflow_server):
    with pytest.raises(local_stack.StackError, match="runs without sign-in; stop it first"):
        local_stack.up(os.path.dirname(mlflow_server.log), port=mlflow_server.port, auth=True)
