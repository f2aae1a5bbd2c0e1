"""The local target, end to end: small data, the stack, one tracked training, a summary of what was logged.

Everything lives under one work folder (default `.local-target/`): `Food-11/` (the small data
set), `stack/` (the MLflow server's database, artifacts and log).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import food11, local_stack, sample_data
from .progress import Clock

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = REPO_ROOT / "workspace_mlflow"
DEFAULT_WORKDIR = REPO_ROOT / ".local-target"

# The training's config for this machine: small photos, few epochs, no weights download, and
# learning rates that suit random weights. Everything else keeps the node's defaults.
LOCAL_TRAINING_ARGS = {
    "image_size": 32,
    "initial_epochs": 2,
    "total_epochs": 8,
    "patience": 3,
    "pretrained": False,
    "lr": 3e-3,
    "fine_tune_lr": 1e-3,
}


def as_cli_args(overrides: dict) -> list[str]:
    """`{"image_size": 64}` -> `["--image_size", "64"]`, the scripts' override syntax."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def ensure_sample_data(data_dir: Path, clock: Clock) -> dict:
    """Reuse a usable data set in `data_dir`, or make the small one there."""
    try:
        counts = food11.verify(data_dir)
        clock.say(f"data: reusing {data_dir}")
    except food11.DataLayoutError:
        if data_dir.exists() and any(data_dir.iterdir()):
            raise  # something else is stored there: say so rather than write over it
        clock.say(f"data: making the small Food-11-shaped data set in {data_dir}")
        counts = sample_data.make_sample_dataset(data_dir)
    return counts


def training_env(tracking_uri: str, data_dir: Path) -> dict:
    """The environment a training script runs in here, as it would in the node's Jupyter container."""
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "FOOD11_DATA_DIR": str(data_dir),
        # Short local runs would end before the first 10-second sample.
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1"),
    }


def summarize_run(tracking_uri: str, run_id: str) -> str:
    """What the run logged, in a few lines."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id='{run_id}'"
    )
    training = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
    system = sorted(k for k in run.data.metrics if k.startswith("system/"))
    lines = [
        f"run {run.info.run_name} ({run_id}): {run.info.status}",
        f"  params:   {len(run.data.params)} ({', '.join(sorted(run.data.params)[:6])}, ...)",
        "  metrics:  " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(training.items())),
        f"  system:   {len(system)} series ({', '.join(s.removeprefix('system/') for s in system[:3])}, ...)",
        f"  artifacts: {', '.join(a.path for a in client.list_artifacts(run_id))}",
        f"  models:   {len(models)} logged as {sorted({m.name for m in models})}",
        f"  git commit: {run.data.tags.get('mlflow.source.git.commit', '(not run from a git checkout)')}",
        f"  see it at {tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}",
    ]
    return "\n".join(lines)


def run_local(workdir: str | os.PathLike = DEFAULT_WORKDIR, port: int = local_stack.DEFAULT_PORT) -> int:
    workdir = Path(workdir).resolve()
    clock = Clock()
    data_dir = workdir / "Food-11"
    ensure_sample_data(data_dir, clock)
    stack = local_stack.up(workdir / "stack", port=port, clock=clock)

    from mlflow import MlflowClient

    client = MlflowClient(stack.url)
    before = {r.info.run_id for r in _all_runs(client)}
    command = [sys.executable, str(WORKSPACE / "train_mlflow.py"), *as_cli_args(LOCAL_TRAINING_ARGS)]
    clock.say("training (tracked): " + " ".join(command[1:]))
    done = subprocess.run(command, cwd=workdir, env=training_env(stack.url, data_dir))
    if done.returncode != 0:
        clock.say(f"training failed with exit status {done.returncode}")
        return done.returncode
    new = [r for r in _all_runs(client) if r.info.run_id not in before]
    clock.say("what MLflow recorded:")
    for run in new:
        print(summarize_run(stack.url, run.info.run_id))
    print(f"\nMLflow UI: {stack.url}   (stop it with `python -m chi_helpers stack down --state-dir {workdir / 'stack'}`)")
    return 0


def _all_runs(client):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []
