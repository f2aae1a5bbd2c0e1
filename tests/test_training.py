"""The three training scripts, run as a student runs them, checked through MlflowClient on a real server."""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow.artifacts
import mlflow.data
import mlflow.models
import pytest
from mlflow import MlflowClient

from conftest import FAST_TRAINING, REPO, WORKSPACE

sys.path.insert(0, str(WORKSPACE))
import food11_training  # noqa: E402

EPOCH_METRICS = ["epoch_time", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "trainable_params"]


def all_runs(client: MlflowClient) -> list:
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids) if experiment_ids else []


@pytest.fixture
def client(mlflow_server, monkeypatch) -> MlflowClient:
    # The fluent API in this process (mlflow.artifacts, runs:/ URIs) talks to the same server.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return MlflowClient(mlflow_server.url)


@pytest.fixture
def new_runs(client):
    """Call it after running a script: the runs that script created."""
    before = {r.info.run_id for r in all_runs(client)}
    return lambda: [r for r in all_runs(client) if r.info.run_id not in before]


def tool_path(tmp_path: Path, fake_tools: dict[str, str] | None = None) -> str:
    """A PATH holding only git (MLflow records the commit with it) and the given fake commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    git = shutil.which("git")
    if git:
        (bin_dir / "git").symlink_to(git)
    for name, script in (fake_tools or {}).items():
        (bin_dir / name).write_text("#!/bin/sh\n" + script)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


FAKE_NVIDIA_SMI = 'echo "NVIDIA-SMI 580.00  GPU 0: NVIDIA A100-PCIE-40GB  GPU 1: NVIDIA A100-PCIE-40GB"\n'


def head_commit() -> str | None:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def test_tracked_run_logs_everything_the_lesson_shows(run_script, new_runs, client, data_dir, tmp_path):
    # A huge fine-tuning rate makes validation loss worse after the first fine-tuning epoch,
    # so early stopping (patience 1) ends phase 2 at epoch 2 of 0..5.
    overrides = ["--initial_epochs", "1", "--total_epochs", "6", "--patience", "1", "--fine_tune_lr", "0.5"]
    done = run_script(
        "train_mlflow.py", "--image_size", "32", "--pretrained", "false", *overrides,
        env={"PATH": tool_path(tmp_path, {"nvidia-smi": FAKE_NVIDIA_SMI})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = new_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "food11-classifier"

    # Params: the whole config, with this run's overrides.
    expected = {**food11_training.CONFIG, "image_size": 32, "pretrained": False, "initial_epochs": 1,
                "total_epochs": 6, "patience": 1, "fine_tune_lr": 0.5, "data_dir": str(data_dir)}
    assert run.data.params == {k: str(v) for k, v in expected.items()}

    # Per-epoch metrics at step=epoch, up to the epoch early stopping ended on.
    stopped = run.data.metrics["early_stopping_epoch"]
    assert stopped == 2
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1, 2], name
    trainable = [m.value for m in client.get_metric_history(run.info.run_id, "trainable_params")]
    assert trainable[0] < trainable[1] == trainable[2], "phase 2 unfreezes the backbone"
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "epoch_time"))
    assert {"test_loss", "test_accuracy"} <= set(run.data.metrics)
    assert 0 <= run.data.metrics["test_accuracy"] <= 1

    # System metrics are on.
    assert "system/cpu_utilization_percentage" in run.data.metrics

    # gpu-info.txt holds what nvidia-smi said.
    gpu_info = client.download_artifacts(run.info.run_id, "gpu-info.txt", str(tmp_path))
    assert "NVIDIA A100-PCIE-40GB" in Path(gpu_info).read_text()

    # The model is logged once, at the end, with its signature (a batch of photos in, 11 scores out) and an
    # input example one photo big.
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'")
    assert [m.name for m in models] == ["food11"]
    model_dir = mlflow.artifacts.download_artifacts(models[0].model_uri, dst_path=str(tmp_path / "model"))
    signature = mlflow.models.Model.load(model_dir).signature
    [photo] = signature.inputs.inputs
    [scores] = signature.outputs.inputs
    assert photo.shape == (-1, 3, 32, 32) and scores.shape == (-1, 11) and str(photo.type) == "float32"
    example = json.loads((Path(model_dir) / "serving_input_example.json").read_text())
    assert len(example["inputs"]) == 1 and len(example["inputs"][0]) == 3

    # Each split is an input of the run: its name, the photos' digest, where they are, its context.
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["food11-evaluation", "food11-training", "food11-validation"]
    for split in food11_training.SPLITS:
        given = inputs[f"food11-{split}"]
        assert json.loads(given.dataset.source)["uri"].endswith(f"/{split}")
        assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == split
        listing, folder = food11_training.split_listing(str(data_dir), split)
        assert json.loads(given.dataset.profile)["num_rows"] == len(listing) > 0
        assert given.dataset.digest == mlflow.data.from_pandas(listing, source=folder).digest
    # The digest follows the photos: one photo fewer (or another size) is another digest.
    listing, folder = food11_training.split_listing(str(data_dir), "training")
    assert mlflow.data.from_pandas(listing.iloc[1:], source=folder).digest != inputs["food11-training"].dataset.digest
    resized = listing.assign(bytes=listing["bytes"] + ([1] + [0] * (len(listing) - 1)))
    assert mlflow.data.from_pandas(resized, source=folder).digest != inputs["food11-training"].dataset.digest

    commit = head_commit()
    if commit:  # a clone (as in CI) records its commit
        assert run.data.tags["mlflow.source.git.commit"] == commit


def test_without_a_gpu_tool_the_run_says_so(run_script, new_runs, client, tmp_path):
    done = run_script("train_mlflow.py", *FAST_TRAINING, env={"PATH": tool_path(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = new_runs()
    assert run.info.status == "FINISHED"
    assert "early_stopping_epoch" not in run.data.metrics  # 3 epochs, patience 5: it never stops early
    text = Path(client.download_artifacts(run.info.run_id, "gpu-info.txt", str(tmp_path))).read_text()
    assert text == food11_training.NO_GPU_NOTE


def test_baseline_trains_without_touching_mlflow(run_script, new_runs, tmp_path):
    # --initial_epochs 0, as the local target runs it: no frozen phase, the whole network learns from epoch 0.
    done = run_script("train.py", *FAST_TRAINING, "--initial_epochs", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert new_runs() == []
    assert (tmp_path / "food11.pth").stat().st_size > 1_000_000
    assert "test_accuracy" in done.stdout and done.stdout.count("epoch_time") == 3
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("trainable_params 2.238e+06" in line for line in epochs)


def test_the_training_scripts_stand_alone():
    # Students read and edit these files; they import nothing from the course's own package.
    for script in WORKSPACE.glob("*.py"):
        imported = [line for line in script.read_text().splitlines() if "chi_helpers" in line]
        assert imported == [], f"{script.name}: {imported}"


@pytest.mark.parametrize("baseline_script,tracked_script", [("train.py", "train_mlflow.py"),
                                                           ("train_lightning.py", "train_lightning_mlflow.py")])
def test_diff_of_baseline_and_tracked_script_is_only_tracking(baseline_script, tracked_script):
    # The notebooks show these diffs as the lesson: every line in them must be about tracking.
    baseline = (WORKSPACE / baseline_script).read_text().splitlines()
    tracked = (WORKSPACE / tracked_script).read_text().splitlines()
    docstring = len(baseline[: baseline.index('"""', 1) + 1])
    hunks = []
    matcher = difflib.SequenceMatcher(a=baseline, b=tracked, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal" or a1 <= docstring:
            continue
        removed, added = baseline[a0:a1], tracked[b0:b1]
        # A removed line may only come back re-indented (under the interrupt handler).
        for line in removed:
            assert any(new.strip() == line.strip() for new in added), f"baseline line dropped: {line!r}"
        hunks.append("\n".join(added))
    assert hunks, "the tracked script adds something"
    tracking_words = ("mlflow", "gpu_info", "run_ends_on_interrupt", "torchvision", "MODEL_REQUIREMENTS", "SPLITS",
                      "split_dataset")
    for hunk in hunks:
        assert any(word in hunk for word in tracking_words), f"not a tracking change:\n{hunk}"


def test_untracked_lightning_trains_without_touching_mlflow(run_script, new_runs):
    done = run_script("train_lightning.py", *FAST_TRAINING)
    assert done.returncode == 0, done.stderr[-3000:]
    assert new_runs() == [] and "test_accuracy" in done.stdout


def test_lightning_makes_exactly_one_run_with_train_val_and_test_metrics(run_script, new_runs, client, tmp_path):
    done = run_script("train_lightning_mlflow.py", *FAST_TRAINING)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = new_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    # As shipped, every parameter comes from autolog: the optimizer's settings and the epochs. The
    # log_params exercise adds the photo settings.
    assert run.data.params["optimizer_name"] == "Adam" and run.data.params["epochs"] == "3"
    assert "image_size" not in run.data.params and "fine_tune_lr" not in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gpu-info.txt", "model_summary.txt"} <= artifacts


TWO_PROCESSES = [*FAST_TRAINING[:-1], "2", "--devices", "2"]  # DDP over two CPU processes, as over two GPUs


def test_with_two_processes_the_shipped_script_makes_two_runs_and_the_solution_one(run_script, new_runs):
    done = run_script("train_lightning_mlflow.py", *TWO_PROCESSES)
    assert done.returncode == 0, done.stderr[-3000:]
    made = new_runs()
    assert len(made) == 2  # one training, two runs: what the rank check exercise fixes
    metrics = sorted((sorted(k for k in r.data.metrics if not k.startswith("system/")) for r in made), key=len)
    assert metrics[0] == [] and "val_loss" in metrics[1]  # the second rank's run: system metrics only
    assert all(any(k.startswith("system/") for k in r.data.metrics) for r in made)

    # The log_params solution (the rank check too): one run, with the photo settings autolog cannot see.
    solution = WORKSPACE / "solutions" / "log_params"
    done = run_script("train_lightning_mlflow.py", *TWO_PROCESSES, workspace=solution,
                      env={"PYTHONPATH": str(WORKSPACE)})
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = [r for r in new_runs() if r.info.run_id not in {m.info.run_id for m in made}]
    assert {"val_loss", "test_accuracy"} <= set(run.data.metrics)
    assert run.data.params["image_size"] == "32" and run.data.params["color_jitter_hue"] == "0.1"
    assert run.data.params["optimizer_name"] == "Adam"  # autolog's, still there


def wait_for_training(client: MlflowClient, new_runs, proc: subprocess.Popen, timeout: float = 120):
    """The run the process started, once it has logged its first epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        runs = new_runs()
        if runs and client.get_metric_history(runs[0].info.run_id, "epoch_time"):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("training did not log an epoch in time")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("script", ["train_mlflow.py", "train_lightning_mlflow.py"])
def test_an_interrupted_run_ends_killed_and_the_next_one_starts(
    script, signum, run_script, new_runs, client, mlflow_server, data_dir, tmp_path
):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "FOOD11_DATA_DIR": str(data_dir)}
    long_training = ["--image_size", "32", "--pretrained", "false", "--initial_epochs", "100", "--total_epochs", "200"]
    proc = subprocess.Popen(
        [sys.executable, str(WORKSPACE / script), *long_training],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        if script == "train_mlflow.py":
            run = wait_for_training(client, new_runs, proc)
        else:  # autologging sends metrics at epoch end too; wait for the run, then for an epoch
            run = wait_for_lightning(client, new_runs, proc)
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert len(new_runs()) == 1

    if signum == signal.SIGINT and script == "train_mlflow.py":
        done = run_script(script, *FAST_TRAINING)
        assert done.returncode == 0, done.stderr[-3000:]
        statuses = sorted(r.info.status for r in new_runs())
        assert statuses == ["FINISHED", "KILLED"]


def test_a_run_the_notebooks_stop_with_timeout_ends_killed(client, mlflow_server, data_dir, new_runs, tmp_path):
    # Notebooks 05 and 06 bound a run with `timeout N python ...`: when N runs out, SIGTERM to the
    # script, exit status 124 from timeout, and the run KILLED, never left RUNNING. timeout counts
    # with alarm(2), so SIGALRM makes it run out now, once the run has logged an epoch.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "FOOD11_DATA_DIR": str(data_dir)}
    long_training = ["--image_size", "32", "--pretrained", "false", "--initial_epochs", "100", "--total_epochs", "200"]
    proc = subprocess.Popen(["timeout", "600", sys.executable, str(WORKSPACE / "train_mlflow.py"), *long_training],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = wait_for_training(client, new_runs, proc)
        proc.send_signal(signal.SIGALRM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 124, stderr[-3000:]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert "interrupted: the MLflow run was ended as KILLED" in stderr


def wait_for_lightning(client, new_runs, proc, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        runs = new_runs()
        if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("Lightning training did not log an epoch in time")


def test_missing_imagenet_weights_say_how_to_run_without_them(run_script, new_runs, tmp_path):
    # A proxy that refuses every connection: the download fails here as it would offline.
    refuse = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "TORCH_HOME": str(tmp_path / "torch")}
    done = run_script("train_mlflow.py", "--image_size", "32", "--pretrained", "true", env=refuse)
    assert done.returncode != 0
    assert "could not fetch the ImageNet weights" in done.stderr
    assert "--pretrained false" in done.stderr and "checkpoints" in done.stderr
    assert [r.info.status for r in new_runs()] == ["FAILED"]  # ended, not left RUNNING


def test_a_bad_data_directory_stops_before_any_run(run_script, new_runs, tmp_path):
    (tmp_path / "Food-11" / "training").mkdir(parents=True)
    done = run_script("train_mlflow.py", *FAST_TRAINING, "--data_dir", str(tmp_path / "Food-11"))
    assert done.returncode != 0
    assert "no 'validation' split folder" in done.stderr
    assert "lacks class folder(s) class_00" in done.stderr
    assert "Run notebook 03 to get the data" in done.stderr
    assert new_runs() == []


def test_config_overrides_keep_types_and_reject_bad_values(capsys):
    config = food11_training.parse_config(
        food11_training.CONFIG, ["--pretrained", "no", "--lr", "3e-3", "--batch_size", "16", "--data_dir", "/data"]
    )
    assert config["pretrained"] is False and config["lr"] == 0.003 and config["batch_size"] == 16
    assert config["data_dir"] == "/data" and config["total_epochs"] == 20  # the rest stay the defaults
    # num_workers is the student's edit (notebook 05): until it is in CONFIG there is no such option.
    for bad in (["--pretrained", "maybe"], ["--batch_size", "big"], ["--initial_epochs", "30"], ["--epochs", "3"],
                ["--num_workers", "16"]):
        with pytest.raises(SystemExit):
            food11_training.parse_config(food11_training.CONFIG, bad)
    err = capsys.readouterr().err
    assert "expected true or false" in err and "cannot exceed --total_epochs" in err


def test_config_defaults_are_the_lessons_values():
    config = food11_training.CONFIG
    assert (config["initial_epochs"], config["total_epochs"], config["patience"], config["batch_size"]) == (5, 20, 5, 32)
    assert (config["lr"], config["fine_tune_lr"], config["image_size"], config["pretrained"]) == (1e-4, 1e-5, 224, True)


def test_the_num_workers_solution_gives_every_loader_the_workers(data_dir):
    path = WORKSPACE / "solutions" / "num_workers" / "food11_training.py"
    spec = importlib.util.spec_from_file_location("food11_training_solution", path)
    solution = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(solution)
    assert solution.CONFIG["num_workers"] == 16
    config = solution.parse_config(solution.CONFIG, ["--data_dir", str(data_dir), "--num_workers", "2"])
    assert [loader.num_workers for loader in solution.make_loaders(config)] == [2, 2, 2]
    # As shipped the loaders take no workers: the GPU waits while the main process prepares each batch.
    assert [loader.num_workers for loader in food11_training.make_loaders(config)] == [0, 0, 0]
