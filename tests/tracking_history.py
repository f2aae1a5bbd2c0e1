"""A tracking stack's history as a student sees it through the MLflow API, in a form that compares:
what an archive must bring back, field by field."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from chi_helpers import credentials
from chi_helpers.local import stack as local_stack

SIGN_IN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@contextmanager
def tracking_uri(url: str):
    """MLflow's fluent API pointed at `url` for a while. `mlflow.set_tracking_uri` keeps a global that
    outranks MLFLOW_TRACKING_URI, so it is cleared after: tests later in the session read the environment."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


class SignedIn:
    """The MLflow client for one local stack, signed in with its env file when it asks for a sign-in."""

    def __init__(self, state_dir: Path):
        self.stack = local_stack.read_state(state_dir)
        self.values = credentials.read(self.stack.auth_file) if self.stack.auth_file else {}

    def __enter__(self):
        from mlflow import MlflowClient

        self.saved = {k: os.environ.get(k) for k in SIGN_IN}
        for key in SIGN_IN:
            os.environ.pop(key, None)
        os.environ.update({k: self.values[k] for k in SIGN_IN if k in self.values})
        self.uri = tracking_uri(self.stack.url)
        self.uri.__enter__()
        return MlflowClient(self.stack.url)

    def __exit__(self, *_):
        self.uri.__exit__(None, None, None)
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _files(client, run_id: str, path: str | None = None) -> dict[str, str]:
    """Every artifact file of a run (folders walked), with its SHA-256, downloaded through the server."""
    import mlflow

    found = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.update(_files(client, run_id, item.path))
        else:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=item.path,
                                                        tracking_uri=client.tracking_uri)
            found[item.path] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    return found


def history(client) -> dict:
    experiments = sorted((e.experiment_id, e.name, e.artifact_location) for e in client.search_experiments())
    runs = {}
    for run in client.search_runs([e[0] for e in experiments]):
        metrics = {key: [(m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run.info.run_id, key)]
                   for key in run.data.metrics}
        runs[run.info.run_id] = {"experiment": run.info.experiment_id, "name": run.info.run_name,
                                 "status": run.info.status, "start": run.info.start_time, "end": run.info.end_time,
                                 "params": run.data.params, "tags": run.data.tags, "metrics": metrics,
                                 "files": _files(client, run.info.run_id)}
    registered = client.search_registered_models()
    versions = sorted((v.name, v.version, v.run_id, v.source, v.status, v.creation_timestamp)
                      for m in registered for v in client.search_model_versions(f"name='{m.name}'"))
    aliases = {m.name: dict(m.aliases) for m in registered}
    models = sorted((m.model_id, m.name, m.source_run_id, m.artifact_location)
                    for e in experiments for m in client.search_logged_models(experiment_ids=[e[0]]))
    return {"experiments": experiments, "runs": runs, "versions": versions, "aliases": aliases, "models": models}


WORKSPACE = Path(__file__).resolve().parent.parent / "workspace_mlflow"


def champion_predicts(url: str, name: str, inputs) -> list[int]:
    """The classes `models:/<name>@champion` predicts for `inputs`, loaded as a deployment job would:
    with the training scripts importable, since a Lightning model is pickled with its module's class
    (notebook 07 does the same). Which run is the champion depends on the training's luck."""
    import sys

    import mlflow
    import torch

    sys.path.insert(0, str(WORKSPACE))
    try:
        with tracking_uri(url):
            model = mlflow.pytorch.load_model(f"models:/{name}@champion", map_location="cpu")
    finally:
        sys.path.remove(str(WORKSPACE))
    model.eval()
    with torch.no_grad():
        return model(inputs).argmax(dim=1).tolist()


def account(values: dict) -> tuple[str, str]:
    """(user, password) from an env file's values."""
    return values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"]


def http_status(url: str, user: tuple[str, str] | None = None, body: dict | None = None,
                headers: dict | None = None) -> int:
    """The HTTP status a GET of `url` (a POST of `body`) gets, signed in with basic auth as `user` (or not at
    all), with `headers` besides (a browser's Host and Origin)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
