"""The local target's settings: where it keeps things, and the training sized for a CPU.

Everything lives under one work folder (default `.local-target/`): `Food-11/` (the small data
set), `stack/` (the MLflow server's database, artifacts and log), `output/` (series runs).
"""

from __future__ import annotations

from pathlib import Path

from chi_helpers import food11
from chi_helpers.progress import Clock
from chi_helpers.series import REPO_ROOT

WORKSPACE = REPO_ROOT / "workspace_mlflow"
DEFAULT_WORKDIR = REPO_ROOT / ".local-target"

# The training's config for this machine: small photos, few epochs, no weights download, and
# learning rates that suit random weights. Everything else keeps the node's defaults.
LOCAL_TRAINING_ARGS = {
    "image_size": 32,
    "initial_epochs": 2,
    "total_epochs": 4,
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
        from chi_helpers.local import sample_data  # Pillow: needed only when the sample is made

        counts = sample_data.make_sample_dataset(data_dir)
    return counts
