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

# The training's config for this machine: small photos, no weights download, no frozen phase (from
# random weights it would train a head on random features), one learning rate for the whole network,
# and no early stopping (validation loss rises while BatchNorm's running statistics settle, for about
# four epochs). On the sample set both tracked scripts reach a test accuracy of about 0.8 in 8 epochs.
LOCAL_TRAINING_ARGS = {
    "image_size": 48,
    "initial_epochs": 0,
    "total_epochs": 8,
    "patience": 8,
    "pretrained": False,
    "lr": 2e-3,
    "fine_tune_lr": 2e-3,
}


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
