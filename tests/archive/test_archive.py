"""`stack archive` and `stack up --restore` against real MLflow servers, through the command line a
student types: SQLite and a folder on one side, PostgreSQL and an S3 endpoint on the other, with the
auth app on both. Compared through the MLflow API, field by field; refusals leave the target as it was.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from chi_helpers import credentials
from chi_helpers.local import postgres, processes
from chi_helpers.local import stack as local_stack
from tracking_history import SignedIn, account, history, http_status
from tracking_history import champion_predicts as predicts
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/{}"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chi_helpers", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def track_a_little(client) -> None:
    """Two runs of the experiment the series uses, with what its scripts log: params, a metric history
    (a NaN among it), the git commit tag, a text artifact, a logged model per run; the second
    registered with the alias `champion`."""
    import mlflow
    import torch

    mlflow.set_experiment("food11-classifier")
    for lr in (0.01, 0.003):
        with mlflow.start_run():
            mlflow.log_params({"lr": lr, "total_epochs": 3})
            mlflow.set_tag("mlflow.source.git.commit", "0123456789abcdef0123456789abcdef01234567")
            for step in range(3):
                mlflow.log_metrics({"val_loss": 1.0 / (step + 1) + lr, "val_accuracy": 0.3 + step / 10}, step=step)
            mlflow.log_metric("grad_norm", float("nan"), step=3)
            mlflow.log_text(f"trained with lr {lr}\n", "gpu-info.txt")
            torch.manual_seed(0)
            info = mlflow.pytorch.log_model(torch.nn.Linear(4, 3), name="food11", serialization_format="pickle",
                                            pip_requirements=["torch"])
    version = mlflow.register_model(info.model_uri, "food11")
    client.set_registered_model_alias("food11", "champion", version.version)


def champion_predicts(url: str) -> list[int]:
    import torch

    return predicts(url, "food11", torch.linspace(-1, 1, 20).reshape(5, 4))


def request_status(url: str, values: dict | None = None) -> int:
    return http_status(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", account(values) if values else None)


def up(state_dir: Path, *extra) -> subprocess.CompletedProcess:
    return cli("stack", "up", "--state-dir", state_dir, "--port", processes.free_port(), *extra)


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A stack as `make run` leaves one (SQLite, a folder of artifacts), asking for a sign-in, with a
    second account, two runs and a champion; and its archive."""
    from mlflow.server.auth.client import AuthServiceClient

    root = tmp_path_factory.mktemp("archive")
    state_dir = root / "origin"
    started = up(state_dir, "--auth")
    assert started.returncode == 0, started.stderr
    with SignedIn(state_dir) as client:
        track_a_little(client)
        AuthServiceClient(client.tracking_uri).create_user("student2", "a-long-enough-password-2")
        before = history(client)
        predictions = champion_predicts(client.tracking_uri)
    made = cli("stack", "archive", "--state-dir", state_dir, "--output", root / "history.tar")
    assert made.returncode == 0, made.stderr
    yield {"root": root, "state_dir": state_dir, "archive": root / "history.tar", "history": before,
           "predictions": predictions, "made": made.stdout}
    local_stack.down(state_dir)


@pytest.fixture
def stacks():
    """State folders (and PostgreSQL databases) the test makes, stopped and dropped after it."""
    made: list[tuple[Path, str | None]] = []
    yield made
    for state_dir, database in made:
        local_stack.down(state_dir)
        if database:
            postgres.drop_database(POSTGRES.format(database))


def test_the_archive_says_what_it_holds_and_prints_sizes_as_it_goes(origin):
    with tarfile.open(origin["archive"]) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names[-1] == "manifest.json"  # written last: its absence means a cut-short archive
    counts = manifest["counts"]
    assert (counts["runs"], counts["registered_versions"], counts["aliases"], counts["accounts"]) == (2, 1, 1, 2)
    assert counts["metric_points"] == 2 * (3 * 2 + 1)
    assert manifest["mlflow_version"] == "3.17.2" and manifest["schema"]["backend"] and manifest["schema"]["auth"]
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    with tarfile.open(origin["archive"]) as tar:
        accounts = tar.extractfile("auth/users.jsonl").read().decode()
    # Hashes (werkzeug's "method:params$salt$hash"), never passwords.
    assert "a-long-enough-password-2" not in accounts
    assert all(json.loads(line)["password_hash"].split(":")[0] in ("scrypt", "pbkdf2") for line in accounts.splitlines())
    # The size is said before the artifacts move (two runs' text files, two models of six files each).
    said = origin["made"]
    assert "artifacts: 14 files" in said
    assert said.index("the archive will be about") < said.index("artifacts: 14/14 files") < said.index("archive written:")


def test_restored_into_postgres_and_an_s3_bucket_then_back_into_sqlite(origin, tmp_path, stacks):
    # (SQLite to SQLite at the series' real sizes: tests/series/test_series.py.)
    database = f"archive_{os.getpid()}"
    target = tmp_path / "pg"
    stacks.append((target, database))
    restored = up(target, "--auth", "--object-store", "--backend-store-uri", POSTGRES.format(database),
                  "--restore", origin["archive"])
    assert restored.returncode == 0, restored.stderr
    with SignedIn(target) as client:
        assert history(client) == origin["history"]
        assert champion_predicts(client.tracking_uri) == origin["predictions"]
        # PostgreSQL's id counter was moved past the restored experiments.
        assert int(client.create_experiment("next-week")) > max(int(e[0]) for e in origin["history"]["experiments"])
        from mlflow.server.auth.client import AuthServiceClient

        assert AuthServiceClient(client.tracking_uri).get_user("student2").username == "student2"
    stack = local_stack.read_state(target)
    assert request_status(stack.url) == 401  # still asks for a sign-in
    assert request_status(stack.url, credentials.read(stack.auth_file)) == 200  # with this stack's own password
    # And back: this stack archived, restored into SQLite, is still the same.
    again = cli("stack", "archive", "--state-dir", target, "--output", tmp_path / "from-postgres.tar")
    assert again.returncode == 0, again.stderr
    sqlite_side = tmp_path / "back"
    stacks.append((sqlite_side, None))
    assert up(sqlite_side, "--auth", "--restore", tmp_path / "from-postgres.tar").returncode == 0
    with SignedIn(sqlite_side) as client:
        back = history(client)
    assert back["runs"] == origin["history"]["runs"] and back["versions"] == origin["history"]["versions"]


def test_runs_only_leaves_out_the_unregistered_model_and_keeps_the_champion(origin, tmp_path, stacks):
    smaller = tmp_path / "runs-only.tar"
    made = cli("stack", "archive", "--state-dir", origin["state_dir"], "--output", smaller, "--runs-only")
    assert made.returncode == 0, made.stderr
    assert "leaving out 1 logged model(s)" in made.stdout
    assert smaller.stat().st_size < origin["archive"].stat().st_size
    target = tmp_path / "restored"
    stacks.append((target, None))
    assert up(target, "--auth", "--restore", smaller).returncode == 0
    with SignedIn(target) as client:
        restored = history(client)
        assert champion_predicts(client.tracking_uri) == origin["predictions"]
    assert restored["runs"] == origin["history"]["runs"] and restored["aliases"] == origin["history"]["aliases"]
    assert len(restored["models"]) == len(origin["history"]["models"]) - 1


def _rewritten(archive: Path, out: Path, change) -> Path:
    """A copy of the archive with one member's bytes changed by `change(name, data)`, the rest as it was."""
    with tarfile.open(archive) as source, tarfile.open(out, "w") as copy:
        for member in source:
            data = source.extractfile(member).read()
            data = change(member.name, data)
            member.size = len(data)
            copy.addfile(member, io.BytesIO(data))
    return out


def _untouched(state_dir: Path) -> dict:
    stack = local_stack.read_state(state_dir)
    with SignedIn(state_dir) as client:
        return {"runs": len(client.search_runs([e.experiment_id for e in client.search_experiments()])),
                "files": sorted(p.relative_to(state_dir).as_posix() for p in (state_dir / "artifacts").rglob("*")),
                "url": stack.url}


@pytest.mark.parametrize("damage,message", [
    ("missing", "no such archive"),
    ("truncated", "cut short"),
    ("tampered", "checksum differs"),
    ("newer", "newer than this stack's"),
])
def test_a_damaged_or_newer_archive_is_refused_and_changes_nothing(origin, tmp_path, stacks, damage, message):
    archive = origin["archive"]
    if damage == "missing":
        archive = tmp_path / "nowhere.tar"
    elif damage == "truncated":
        archive = tmp_path / "cut.tar"
        archive.write_bytes(origin["archive"].read_bytes()[: origin["archive"].stat().st_size // 2])
    elif damage == "tampered":
        def flip(name, data):
            return data.replace(b"lr 0.01", b"lr 0.02") if name.endswith("gpu-info.txt") else data
        archive = _rewritten(origin["archive"], tmp_path / "tampered.tar", flip)
    else:
        def newer(name, data):
            if name != "manifest.json":
                return data
            manifest = json.loads(data)
            manifest["schema"]["backend"], manifest["mlflow_version"] = "ffffffffffff", "9.0.0"
            return json.dumps(manifest).encode()
        archive = _rewritten(origin["archive"], tmp_path / "newer.tar", newer)
    # Into a new state dir: refused before a server is even started there.
    fresh = tmp_path / "fresh"
    stacks.append((fresh, None))
    refused = up(fresh, "--auth", "--restore", archive)
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not (fresh / "mlflow.db").exists()
    # Into the running origin (merge asked, so only the archive's fault can refuse): nothing changes.
    before = _untouched(origin["state_dir"])
    refused = up(origin["state_dir"], "--auth", "--restore", archive, "--merge")
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert _untouched(origin["state_dir"]) == before


def test_a_stack_that_holds_runs_is_refused_and_merging_reports_clashes_without_overwriting(origin, tmp_path, stacks):
    target = tmp_path / "busy"
    stacks.append((target, None))
    assert up(target, "--auth").returncode == 0
    with SignedIn(target) as client:
        track_a_little(client)  # this week's runs, and a `food11` of its own
        own = history(client)
    refused = up(target, "--auth", "--restore", origin["archive"])
    assert refused.returncode == 2 and "already holds 2 runs" in refused.stderr and "--merge" in refused.stderr
    with SignedIn(target) as client:
        assert history(client) == own
    merged = up(target, "--auth", "--restore", origin["archive"], "--merge")
    assert merged.returncode == 0, merged.stderr
    assert "CLASHED" in merged.stdout and "registered_models" in merged.stdout
    with SignedIn(target) as client:
        after = history(client)
    # Last week's runs beside this week's, in the same experiment (same id, same name); the registered
    # model of this stack kept as it was, the archive's reported and skipped.
    assert set(after["runs"]) == set(own["runs"]) | set(origin["history"]["runs"])
    assert all(after["runs"][r] == origin["history"]["runs"][r] for r in origin["history"]["runs"])
    assert after["versions"] == own["versions"] and after["aliases"] == own["aliases"]
    # Merging again adds nothing: everything is there already.
    again = up(target, "--auth", "--restore", origin["archive"], "--merge")
    assert "restored: 0 experiment(s), 0 run(s), 0 metric points" in again.stdout


def test_an_archive_is_never_written_over_a_file_or_onto_a_full_disk(origin, tmp_path):
    existing = tmp_path / "kept.tar"
    existing.write_text("a student's own file")
    refused = cli("stack", "archive", "--state-dir", origin["state_dir"], "--output", existing)
    assert refused.returncode == 2 and "exists already" in refused.stderr
    assert existing.read_text() == "a student's own file"
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"this test makes a 256 KB disk with tmpfs (as root): {mounted.stderr}"
    try:
        refused = cli("stack", "archive", "--state-dir", origin["state_dir"], "--output", small / "history.tar")
        assert refused.returncode == 2 and "not enough space" in refused.stderr, refused.stderr
        assert list(small.iterdir()) == []  # checked before writing: not even a partial file
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_no_history_to_archive_is_said_plainly(tmp_path):
    refused = cli("stack", "archive", "--state-dir", tmp_path / "empty", "--output", tmp_path / "x.tar")
    assert refused.returncode == 2 and "no tracking history" in refused.stderr
    refused = cli("stack", "archive", "--state-dir", tmp_path / "empty")
    assert refused.returncode == 2 and "--output" in refused.stderr
