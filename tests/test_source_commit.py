"""Every run leads back to its code: a run made from a git checkout of the workspace records its commit.

The node gets the series the way notebook 02 sends it (`pack_checkout`, then the setup step's own
command, run here in bash with the node's paths swapped for temporary ones), and a tracked training
runs from that checkout against a real MLflow server, as the Jupyter container runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from chi_helpers.chameleon import node_setup
from conftest import FAST_TRAINING, WORKSPACE

GIT = ["-c", "user.name=student", "-c", "user.email=student@localhost", "-c", "commit.gpgsign=false"]


def git(repo: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *GIT, *arguments], capture_output=True, text=True,
                          check=True).stdout.strip()


def copy_of_the_series(folder: Path) -> Path:
    """The workspace's scripts in a folder of their own (what the series copy holds of them)."""
    (folder / "workspace_mlflow").mkdir(parents=True)
    for script in WORKSPACE.glob("*.py"):
        shutil.copy2(script, folder / "workspace_mlflow" / script.name)
    return folder


def onto_the_node(source: Path, tmp_path: Path) -> Path:
    """notebook 02: pack this copy, upload it, run the setup step; returns the node's checkout."""
    bundle = node_setup.pack_checkout(str(tmp_path / "series.bundle"), source)
    uploaded = tmp_path / "uploaded.bundle"
    shutil.copy(bundle, uploaded)  # what python-chi's upload does
    checkout = tmp_path / "node-home" / "mlflow-chi"
    [step] = node_setup.materials(archive=bundle)
    command = step.command.replace(node_setup.REMOTE_REPO, str(checkout)).replace(node_setup.BUNDLE, str(uploaded))
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return checkout


def tracked_run(run_script, checkout: Path, *args: str) -> mlflow.entities.Run:
    done = run_script("train_mlflow.py", *FAST_TRAINING, *args, workspace=checkout / "workspace_mlflow")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["food11-classifier"], order_by=["start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0]


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)


def test_a_run_on_the_node_records_the_commit_it_was_uploaded_at_then_the_students_next_one(
        tmp_path, run_script, tracking):
    source = copy_of_the_series(tmp_path / "series")
    subprocess.run(["git", "init", "--quiet", str(source)], check=True)
    git(source, "add", ".")
    git(source, "commit", "--quiet", "-m", "the series")
    checkout = onto_the_node(source, tmp_path)

    first = tracked_run(run_script, checkout)
    assert first.data.tags["mlflow.source.git.commit"] == git(source, "rev-parse", "HEAD")  # the same commit as here

    # The lesson's loop on the node: change the training code, commit, run; the run names the new commit.
    # (the student's edit of food11_training.py is its reference solution here; one worker on this machine)
    shutil.copy(WORKSPACE / "solutions" / "num_workers" / "food11_training.py", checkout / "workspace_mlflow")
    git(checkout, "commit", "--quiet", "-am", "Increase the number of data loader workers")
    second = tracked_run(run_script, checkout, "--num_workers", "1")
    assert second.data.tags["mlflow.source.git.commit"] == git(checkout, "rev-parse", "HEAD")
    assert second.data.tags["mlflow.source.git.commit"] != first.data.tags["mlflow.source.git.commit"]
    assert second.data.params["num_workers"] == "1" and "num_workers" not in first.data.params


def test_a_copy_that_is_not_a_git_checkout_starts_a_history_on_the_node(tmp_path, run_script, tracking):
    source = copy_of_the_series(tmp_path / "series")  # a download, or a Trovi copy without .git
    checkout = onto_the_node(source, tmp_path)
    assert git(checkout, "log", "--format=%s") == "the series as copied"
    assert not (source / ".git").exists()  # the copy itself is left as it was
    run = tracked_run(run_script, checkout)
    assert run.data.tags["mlflow.source.git.commit"] == git(checkout, "rev-parse", "HEAD")
