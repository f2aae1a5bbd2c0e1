"""The students' edits in the node-side notebooks, run headless: a check cell stops a notebook whose edit is
missing and says what is missing (with `apply_solution` the same cell makes the edit and commits it: the
whole local series runs so, in tests/series/test_series.py). Run on the local build, in a fresh copy of the scripts (a git repository of its own, as
`make run` makes), against a real MLflow server; the trainings are a few seconds each."""

from __future__ import annotations

import os
import subprocess

import nbformat
import papermill as pm
import pytest

from mlflow import MlflowClient

from chi_helpers import exercises
from chi_helpers.local import processes
from chi_helpers.local import stack as local_stack
from chi_helpers.local.run import fresh_workspace

TINY = {"image_size": 32, "initial_epochs": 0, "total_epochs": 1, "pretrained": False}


@pytest.fixture
def copy(tmp_path, mlflow_server, data_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("FOOD11_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    return fresh_workspace(tmp_path)


def run(copy, notebook: str, out, **parameters):
    return pm.execute_notebook(str(copy / notebook), str(out), cwd=str(copy), kernel_name="python3",
                               progress_bar=False, kernel_manager_class="chi_helpers.series.quiet_kernel.QuietKernelManager",
                               parameters={"training_overrides": TINY, **parameters})


def failed_cell(path):
    return next(c for c in nbformat.read(path, 4).cells
                if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.outputs))


def head_subject(copy) -> str:
    return subprocess.run(["git", "-C", str(copy.parent), "log", "-1", "--format=%s"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_notebook_05_stops_at_the_missing_edit(copy, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as error:
        run(copy, "05_track_pytorch.ipynb", tmp_path / "05.ipynb", baseline_minutes=0.1)
    assert error.value.ename == "ExerciseNotDone"
    assert 'CONFIG has no "num_workers" greater than 0' in error.value.evalue
    assert 'exercises.check("num_workers", apply_solution)' in failed_cell(tmp_path / "05.ipynb").source
    assert head_subject(copy) == "The series' training scripts"  # nothing was changed for the student
    # With `apply_solution` the same cell commits the solution and 05 goes on: the whole local series
    # runs so (tests/series/test_series.py checks its commits).


def test_notebook_06_stops_at_the_missing_rank_check(copy, tmp_path):
    exercises.check("num_workers", apply_solution=True, scripts=copy.parent)  # notebook 05's edit, made
    with pytest.raises(pm.PapermillExecutionError) as error:
        run(copy, "06_lightning.ipynb", tmp_path / "06.ipynb", untracked_minutes=0.1, every_rank_minutes=1)
    assert error.value.ename == "ExerciseNotDone"
    assert "mlflow.start_run(...) is not inside `if trainer.global_rank == 0:`" in error.value.evalue
    assert 'exercises.check("rank_check", apply_solution)' in failed_cell(tmp_path / "06.ipynb").source


# --- a notebook run before the one it needs says which to run --------------------------------------

def test_notebook_06_without_05s_edit_says_to_finish_05_before_any_training(copy, tmp_path):
    # The local build passes --num_workers, which food11_training.py only knows once 05's edit is in.
    with pytest.raises(pm.PapermillExecutionError) as error:
        run(copy, "06_lightning.ipynb", tmp_path / "06.ipynb", untracked_minutes=0.1, every_rank_minutes=1)
    assert error.value.ename == "AssertionError"
    assert "notebook 05's exercise (DataLoader workers)" in error.value.evalue
    assert "Finish notebook 05 first" in error.value.evalue
    cells = [c for c in nbformat.read(tmp_path / "06.ipynb", 4).cells if c.cell_type == "code"]
    stopped = cells.index(failed_cell(tmp_path / "06.ipynb"))
    assert 'missing_pieces("num_workers"' in cells[stopped].source
    first_training = next(i for i, c in enumerate(cells) if "train_lightning.py" in c.source)
    assert stopped < first_training  # stopped before any training started


def test_notebook_07_on_a_server_without_runs_says_to_run_05(tmp_path, data_dir, monkeypatch):
    state_dir = tmp_path / "empty-stack"
    stack = local_stack.up(state_dir, port=processes.free_port())
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url)
        monkeypatch.setenv("FOOD11_DATA_DIR", str(data_dir))
        copy = fresh_workspace(tmp_path / "work")
        with pytest.raises(pm.PapermillExecutionError) as error:
            run(copy, "07_registry.ipynb", tmp_path / "07.ipynb")
        assert error.value.ename == "AssertionError"
        assert "no experiment food11-classifier yet: run notebook 05 first" in error.value.evalue

        # The experiment with only a run that never finished: still nothing to register.
        client = MlflowClient(stack.url)
        experiment_id = client.create_experiment("food11-classifier")
        client.create_run(experiment_id)
        with pytest.raises(pm.PapermillExecutionError) as error:
            run(copy, "07_registry.ipynb", tmp_path / "07-again.ipynb")
        assert "has no finished run yet: run notebook 05 (and 06) to the end first" in error.value.evalue
        assert client.search_registered_models() == []
    finally:
        local_stack.down(state_dir)
