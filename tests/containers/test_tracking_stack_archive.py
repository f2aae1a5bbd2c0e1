"""The node's `archive` and `restore` commands on the production Compose stack, in real containers.

It goes on from test_tracking_stack.py's stack as that module leaves it (its `SHARED` stack, brought
up and trained here when this module runs alone): the tracked training, its registered version given
the alias `champion`, the second account given a permission. Then `node_stack.archive_command`
exactly as the node runs it through bash (only the Compose files, project and env file are this
test's), `down -v`, a fresh stack with new credentials, and `node_stack.restore_command`. What the
MLflow API shows afterwards is compared field by field with what it showed before; the champion loads
and predicts the same; the sign-in still holds. A tampered archive and a second restore into the
same stack are refused, and change nothing.

No bring-up of its own, only the fresh one: the module's tests run in order on shared state (`SEEN`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from chi_helpers import credentials
from chi_helpers.chameleon import node_stack
from chi_helpers.containers import compose
from conftest import FAST_TRAINING
from tracking_history import account, http_status

import test_tracking_stack as tracking  # its shared stack and training (tests/containers is on sys.path)

SHARED = tracking.SHARED
MLFLOW = tracking.MLFLOW
MODEL = tracking.MODEL  # the version test_tracking_stack registered, made the champion here
ARCHIVE = "food11-history.tar"
STUDENT = tracking.STUDENT
NODE_UID = 1000  # cc on a Chameleon node; a test run as root runs the node's commands as this uid
STACK_SERVICES = {"minio", "minio-create-bucket", "postgres", "mlflow"}
SEEN: dict = {}  # what the first stack showed, for the tests after the restore


class Node:
    """Runs node_stack's command strings as the node does: through bash, in a home of their own (where
    `~/mlflow-archives` is), as a user who is not root, against this test's Compose project."""

    def __init__(self, home: Path):
        self.home = home
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            # As root, `--user "$(id -u):$(id -g)"` would give 0:0 and a file owned by root either way;
            # as the node's cc the ownership check tells the flag's work from the image's own user.
            docker_group = Path("/var/run/docker.sock").stat().st_gid
            self.uid = self.gid = NODE_UID
            self.prefix = ["setpriv", f"--reuid={NODE_UID}", f"--regid={NODE_UID}", f"--groups={docker_group}"]
            os.chown(home, NODE_UID, NODE_UID)
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def own(self, path: Path) -> Path:
        """A file the node's user must read (its env file, an archive the test made)."""
        if self.prefix:
            os.chown(path, self.uid, self.gid)
        return path

    def local(self, command: str, project: compose.Project) -> str:
        """The node's command with this test's Compose invocation in place of the node's one."""
        assert command.count(node_stack.TRACKING) == 1, \
            f"node_stack's command no longer holds {node_stack.TRACKING!r} once; update this test: {command}"
        ours = shlex.join(["docker", "compose", "-p", project.name, "--env-file", str(project.env_file),
                           "-f", str(compose.TRACKING_FILE), "-f", str(compose.CI_OVERRIDE)])
        local = command.replace(node_stack.TRACKING, ours)
        assert node_stack.REMOTE_REPO not in local and node_stack.ENV_FILE not in local, local
        return local

    def run(self, command: str, project: compose.Project, timeout: float = 600) -> tuple[int, str]:
        """(exit status, output); each output line said with the elapsed time as it comes."""
        local = self.local(command, project)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ARCHIVE_DIR"}  # the node sets none
        env["HOME"] = str(self.home)
        project.clock.say(f"on the node: {local}")
        proc = subprocess.Popen([*self.prefix, "bash", "-c", local], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=self.home)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                project.clock.say(f"  {line.rstrip()}")
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = 124
        return status, "\n".join(lines)

    def archives(self) -> Path:
        return self.home / node_stack.ARCHIVES


@pytest.fixture(scope="module")
def stack(docker_engine, ci_base, request):
    """test_tracking_stack's stack, or brought up now; down after this module unless a later test uses it."""
    yield SHARED.start(ci_base, request)
    SHARED.release(request)


@pytest.fixture(scope="module")
def stage(stack, request):
    # Under /tmp, not pytest's folder: that one is root's alone, and the node's user must reach its home.
    home = Path(tempfile.mkdtemp(prefix="archive-node-home-"))
    node = Node(home)
    # The node's user reads the env file, as cc reads ~/mlflow-stack.env on the node.
    node.own(SHARED.folder)
    node.own(stack.env_file)
    timings: dict[str, float] = {}
    try:
        yield {"project": stack, "node": node, "timings": timings}
    finally:
        shutil.rmtree(home, ignore_errors=True)  # the stack itself goes down with SHARED's release
        # Into the session's summary line, beside test_tracking_stack's.
        shared = "" if "training" in timings else " (on test_tracking_stack's training)"
        request.config.container_tests_note += f"; archive/restore{shared}: " + ", ".join(
            f"{what} {seconds:.0f} s" for what, seconds in timings.items())


def sign_in(monkeypatch, env_file: Path) -> None:
    """The MLflow client as in the node's Jupyter container, signed in as the admin of `env_file`."""
    for key, value in tracking.client_settings(credentials.read(env_file)).items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def signed_in(stage, monkeypatch):
    sign_in(monkeypatch, stage["project"].env_file)  # the stack running now
    return stage


@pytest.fixture
def trained(signed_in, data_dir, tmp_path) -> str:
    """test_tracking_stack's training run, or one made now where that module did not run."""
    started, shared = time.monotonic(), SHARED.run_id
    run_id = SHARED.trained(data_dir, tmp_path)
    if not shared:
        signed_in["timings"]["training"] = time.monotonic() - started
    return run_id


def status_of(path: str, user: tuple[str, str] | None = None) -> int:
    return http_status(MLFLOW + path, user)


def admin(env_file: Path) -> tuple[str, str]:
    return account(credentials.read(env_file))


def digests(folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def unordered(value):
    """A message as a dict, its repeated fields as sets: a database returns rows in no set order (the
    latest metrics of a run, its tags), and a restored one in another order than the original."""
    if isinstance(value, dict):
        return {k: unordered(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = [unordered(v) for v in value]
        keys = [v.get("key") for v in items]
        if None not in keys and len(set(keys)) == len(keys):
            return {f"key={k}": v for k, v in zip(keys, items)}  # tags, params, latest metrics: by name
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def history(where: Path) -> dict:
    """Everything the API shows of the stack's history, each entity with every field of its message,
    and every artifact file (runs' and logged models') with its SHA-256."""
    import mlflow
    from google.protobuf.json_format import MessageToDict
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient()
    fields = lambda entity: unordered(MessageToDict(entity.to_proto()))
    experiments = {}
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        shown = fields(experiment)
        if experiment.name == "Default":
            # Every new stack makes its own Default experiment; restore keeps it (same id and name), so
            # its times are the new stack's.
            shown = {k: v for k, v in shown.items() if k not in ("creationTime", "lastUpdateTime")}
        experiments[experiment.experiment_id] = shown
    runs = {}
    for run in client.search_runs(list(experiments), run_view_type=ViewType.ALL):
        run_id = run.info.run_id
        runs[run_id] = {
            "run": fields(run),
            "metric histories": {key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
                                 for key in sorted(run.data.metrics)},
            "artifacts": digests(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(where / run_id))),
        }
    models = {}
    for model in client.search_logged_models(experiment_ids=list(experiments)):
        files = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                    dst_path=str(where / model.model_id))
        models[model.model_id] = {"model": fields(model), "artifacts": digests(files)}
    registered = {}
    for entry in client.search_registered_models():
        versions = client.search_model_versions(f"name='{entry.name}'")
        registered[entry.name] = {
            "model": fields(client.get_registered_model(entry.name)),
            "versions": {v.version: fields(client.get_model_version(entry.name, v.version)) for v in versions},
        }
    return {"experiments": experiments, "runs": runs, "logged models": models, "registered models": registered}


def differences(before, after, where: str = "") -> list[str]:
    """Each place where two nested values differ, as `path: before != after`."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in sorted(set(before) | set(after), key=str)
                for line in differences(before.get(key, "(absent)"), after.get(key, "(absent)"), f"{where}/{key}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [line for i, (b, a) in enumerate(zip(before, after)) for line in differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


def champion_predicts():
    """The champion's scores and classes for a fixed batch of 32-pixel photos."""
    import mlflow.pytorch
    import torch

    model = mlflow.pytorch.load_model(f"models:/{MODEL}@champion", map_location="cpu").eval()
    photos = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = model(photos)
    return scores, scores.argmax(dim=1).tolist()


def holdings() -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL)
    return {
        "experiments": len(experiments),
        "runs": len(runs),
        "metric points": sum(len(client.get_metric_history(r.info.run_id, k)) for r in runs for k in r.data.metrics),
        "logged models": len(client.search_logged_models(experiment_ids=experiments)),
        "registered versions": len(client.search_model_versions()),
    }


def manifest_of(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile("manifest.json"))


def test_the_node_archive_command_writes_the_whole_history(signed_in, trained, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import RestException
    from mlflow.server.auth.client import AuthServiceClient

    project, node, timings = signed_in["project"], signed_in["node"], signed_in["timings"]
    client = MlflowClient()
    run = client.get_run(trained)
    experiment_id = run.info.experiment_id
    # test_tracking_stack's restart test registered the run's model and made the second account; a
    # module run alone makes them here.
    versions = client.search_model_versions(f"name='{MODEL}'")
    if not versions:
        best = max(client.search_logged_models(experiment_ids=[experiment_id]), key=lambda m: m.creation_timestamp)
        versions = [mlflow.register_model(best.model_uri, MODEL)]
    (version,) = versions
    assert version.run_id == trained, f"{MODEL} v{version.version} is not the shared training's model"
    client.set_registered_model_alias(MODEL, "champion", version.version)
    accounts = AuthServiceClient(MLFLOW)
    try:
        accounts.get_user(STUDENT[0])
    except RestException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        accounts.create_user(*STUDENT)
    accounts.grant_user_permission(STUDENT[0], "experiment", experiment_id, "READ")

    before = history(tmp_path / "before")
    # Something to compare: the training's history, its files, the registered champion.
    (recorded,) = before["runs"].values()
    epochs = int(FAST_TRAINING[FAST_TRAINING.index("--total_epochs") + 1])
    assert len(recorded["metric histories"]["val_loss"]) == epochs and "gpu-info.txt" in recorded["artifacts"]
    assert any(m["artifacts"].get("MLmodel") for m in before["logged models"].values())
    assert before["registered models"][MODEL]["model"]["aliases"] == [{"alias": "champion", "version": version.version}]
    assert len(recorded["run"]["data"]["params"]) >= 5 and "key=val_loss" in recorded["run"]["data"]["metrics"]
    SEEN.update(history=before, predicts=champion_predicts(), admin=admin(project.env_file),
                experiment_id=experiment_id, holdings=holdings(),
                git_commit=run.data.tags.get("mlflow.source.git.commit"))

    started = time.monotonic()
    status, output = node.run(node_stack.archive_command(ARCHIVE), project)
    timings["archive"] = time.monotonic() - started
    assert status == 0, output
    archive = node.home / node_stack.archive_path(ARCHIVE)
    assert archive.is_file(), f"no {archive} after the archive command:\n{output}"
    # The file is the node user's: the image runs as `nobody` unless `--user "$(id -u):$(id -g)"` says so.
    image = yaml.safe_load(compose.TRACKING_FILE.read_text())["services"]["archive"]["image"]
    image_user = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}}", image],
                                capture_output=True, text=True, check=True).stdout.strip()
    assert image_user == "nobody"
    assert (archive.stat().st_uid, archive.stat().st_gid) == (node.uid, node.gid)
    # Nothing else left beside it: no `.partial` file, no scratch folder.
    assert sorted(p.name for p in node.archives().iterdir()) == [ARCHIVE]
    counts = manifest_of(archive)["counts"]
    artifact_files = sum(len(r["artifacts"]) for r in before["runs"].values()) + \
        sum(len(m["artifacts"]) for m in before["logged models"].values())
    assert counts == {**counts, "runs": 1, "registered_versions": 1, "aliases": 1, "accounts": 2,
                      "logged_models": len(before["logged models"]), "artifact_files": artifact_files}
    # `run --rm`: the one-shot container is gone, the stack's own are as they were.
    assert {c["Service"] for c in project.containers()} == STACK_SERVICES
    SEEN["archive"] = archive


def test_a_fresh_stack_with_new_credentials_takes_the_archive_back(stage, monkeypatch, tmp_path):
    assert "archive" in SEEN, "runs after the archive test, on the archive it wrote"
    project, node, timings = stage["project"], stage["node"], stage["timings"]
    project.down(volumes=True)
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project.name}"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert volumes == [], "down -v left the stack's volumes"

    second = SHARED.folder / "second-stack.env"  # where SHARED's stop finds it, after this module
    credentials.write(second, "127.0.0.1")
    assert credentials.read(second)["MLFLOW_TRACKING_PASSWORD"] != SEEN["admin"][1]
    project.env_file = node.own(second)
    started = time.monotonic()
    project.up()
    timings["fresh up"] = time.monotonic() - started
    sign_in(monkeypatch, second)
    empty = holdings()
    assert empty == {"experiments": 1, "runs": 0, "metric points": 0, "logged models": 0, "registered versions": 0}

    # One byte flipped inside an artifact's data (the largest: the model's weights) is refused.
    tampered = node.archives() / f"tampered-{ARCHIVE}"
    shutil.copyfile(SEEN["archive"], tampered)
    with tarfile.open(tampered) as tar:
        member = max((m for m in tar if m.name.startswith("artifacts/")), key=lambda m: m.size)
    with open(tampered, "r+b") as file:
        file.seek(member.offset_data + member.size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    node.own(tampered)
    status, output = node.run(node_stack.restore_command(tampered.name), project)
    assert status != 0 and "checksum" in output and member.name in output, output
    assert holdings() == empty, "a refused restore changed the stack"

    started = time.monotonic()
    status, output = node.run(node_stack.restore_command(ARCHIVE), project)
    timings["restore"] = time.monotonic() - started
    assert status == 0, output
    after = history(tmp_path / "after")
    before = SEEN["history"]
    changed = differences(before, after)
    assert not changed, "the restored history differs:\n" + "\n".join(changed[:40])
    if SEEN["git_commit"]:  # the commit the training ran, where the checkout is a git repository
        (run,) = after["runs"].values()
        assert run["run"]["data"]["tags"]["key=mlflow.source.git.commit"]["value"] == SEEN["git_commit"]
    SEEN["restored"] = True


def test_the_restored_champion_loads_and_predicts_the_same(signed_in):
    import torch

    assert SEEN.get("restored"), "runs after the restore test"
    scores, classes = champion_predicts()
    assert classes == SEEN["predicts"][1]
    assert torch.equal(scores, SEEN["predicts"][0])  # the same weights, bit for bit


def test_the_restored_stack_keeps_its_own_admin_and_the_archived_accounts(signed_in):
    from mlflow.server.auth.client import AuthServiceClient

    assert SEEN.get("restored"), "runs after the restore test"
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    new_admin = admin(signed_in["project"].env_file)
    assert status_of(search) == 401  # no sign-in, no answer
    assert status_of(search, new_admin) == 200  # the new env file's password: the stack's own admin kept
    assert status_of(search, SEEN["admin"]) == 401  # the archived admin's password did not come back
    # The second account, with its password and its permission on the training's experiment.
    assert AuthServiceClient(MLFLOW).get_user(STUDENT[0]).username == STUDENT[0]
    assert status_of(search, STUDENT) == 200
    assert status_of(search, (STUDENT[0], "not-the-password")) == 401
    assert AuthServiceClient(MLFLOW).get_user_permission(STUDENT[0], "experiment", SEEN["experiment_id"]).permission \
        == "READ"
    assert status_of(f"/api/2.0/mlflow/experiments/get?experiment_id={SEEN['experiment_id']}", STUDENT) == 200
    assert status_of("/api/2.0/mlflow/experiments/get?experiment_id=0", STUDENT) == 403  # NO_PERMISSIONS elsewhere


def test_restoring_the_same_archive_again_is_refused_and_changes_nothing(signed_in):
    from mlflow import MlflowClient

    assert SEEN.get("restored"), "runs after the restore test"
    project, node = signed_in["project"], signed_in["node"]
    held = holdings()
    assert held == SEEN["holdings"]
    status, output = node.run(node_stack.restore_command(ARCHIVE), project)
    # restore.check's refusal names everything the stack holds beyond its Default experiment.
    logged = SEEN["holdings"]["logged models"]
    held_line = f"already holds 1 run, 1 experiment, 1 registered model, {logged} logged model{'s' * (logged != 1)}:"
    assert status != 0 and held_line in output and "Nothing was changed." in output, output
    assert holdings() == held
    assert {c["Service"] for c in project.containers()} == STACK_SERVICES
    # The restored stack goes on tracking: a new experiment gets an id past the restored ones (PostgreSQL's
    # counter was moved past the ids the restore inserted).
    new_id = MlflowClient().create_experiment("after-restore")
    assert int(new_id) > max(int(i) for i in SEEN["history"]["experiments"])
